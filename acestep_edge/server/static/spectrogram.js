// A log-frequency spectrogram drawn on a canvas: Hann-windowed 2048-point FFTs, dB magnitudes.
"use strict";

const N = 2048;
const FLOOR_DB = -90;
// A dark-to-bright ramp (stops of a perceptually ordered map: black, purple, red, orange, cream).
const STOPS = [[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]];

function colour(v) {
  const x = Math.min(1, Math.max(0, v)) * (STOPS.length - 1), i = Math.min(STOPS.length - 2, Math.floor(x)), f = x - i;
  return STOPS[i].map((c, k) => Math.round(c + (STOPS[i + 1][k] - c) * f));
}

/** In-place radix-2 FFT of (re, im), length a power of two. */
function fft(re, im) {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) { [re[i], re[j]] = [re[j], re[i]]; [im[i], im[j]] = [im[j], im[i]]; }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const ang = (-2 * Math.PI) / len, wr = Math.cos(ang), wi = Math.sin(ang);
    for (let i = 0; i < n; i += len) {
      let cr = 1, ci = 0;
      for (let k = 0; k < len / 2; k++) {
        const a = i + k, b = a + len / 2;
        const tr = re[b] * cr - im[b] * ci, ti = re[b] * ci + im[b] * cr;
        re[b] = re[a] - tr; im[b] = im[a] - ti; re[a] += tr; im[a] += ti;
        const nr = cr * wr - ci * wi; ci = cr * wi + ci * wr; cr = nr;
      }
    }
  }
}

/** Draw the spectrogram of `mono` (rate Hz) into `canvas`, one FFT per pixel column, 30 Hz – Nyquist. */
export function drawSpectrogram(canvas, mono, rate, height = 120) {
  const w = Math.max(1, canvas.clientWidth || 600);
  canvas.width = w; canvas.height = height; canvas.style.height = height + "px";
  const g = canvas.getContext("2d"), img = g.createImageData(w, height);
  const hann = new Float32Array(N).map((_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / N));
  const re = new Float32Array(N), im = new Float32Array(N), db = new Float32Array(N / 2);
  const lo = Math.log(30), hi = Math.log(rate / 2);
  // Each pixel row reads the FFT bin at its log-spaced frequency (top = high).
  const rowBin = Array.from({ length: height }, (_, y) =>
    Math.min(N / 2 - 1, Math.round((Math.exp(hi - ((hi - lo) * y) / (height - 1)) / rate) * N)));
  for (let x = 0; x < w; x++) {
    const centre = Math.floor(((x + 0.5) / w) * mono.length);
    for (let i = 0; i < N; i++) {
      const j = centre - N / 2 + i;
      re[i] = j >= 0 && j < mono.length ? mono[j] * hann[i] : 0; im[i] = 0;
    }
    fft(re, im);
    for (let k = 0; k < N / 2; k++) db[k] = 10 * Math.log10((re[k] * re[k] + im[k] * im[k]) / (N / 4) + 1e-12);
    for (let y = 0; y < height; y++) {
      const [r, gg, b] = colour((db[rowBin[y]] - FLOOR_DB) / -FLOOR_DB);
      const p = 4 * (y * w + x);
      img.data[p] = r; img.data[p + 1] = gg; img.data[p + 2] = b; img.data[p + 3] = 255;
    }
  }
  g.putImageData(img, 0, 0);
}

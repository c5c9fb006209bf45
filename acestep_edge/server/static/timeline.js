// A waveform on a time axis: ruler (seconds, and bars when a tempo is set), an optional window
// with handles that can be dragged past either end of the audio (outpainting), and a playhead.
"use strict";

const RULER = 30;      // px of ruler above the waveform
const HANDLE = 7;      // px either side of a window edge that grab it
const SNAP = 0.1;      // seconds: the window snaps to tenths (the runtime rounds durations to 0.1 s)
const STEPS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120];
const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";

export const snap = (t) => Math.round(t / SNAP) * SNAP;
export const fmt = (t) => (Math.round(t * 10) / 10).toFixed(1);

/** Mono peaks: [min, max] per column of the audio between `t0` and `t1` seconds. */
function columnPeaks(mono, rate, offset, t0, t1, columns) {
  const out = new Float32Array(columns * 2);
  const per = (t1 - t0) / columns;
  for (let c = 0; c < columns; c++) {
    const a = Math.floor((t0 + c * per - offset) * rate);
    const b = Math.floor((t0 + (c + 1) * per - offset) * rate);
    let lo = 1, hi = -1;
    for (let i = Math.max(0, a); i < Math.min(mono.length, Math.max(b, a + 1)); i++) {
      const v = mono[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    out[2 * c] = lo > hi ? 0 : lo; out[2 * c + 1] = lo > hi ? 0 : hi;
  }
  return out;
}

export function monoOf(buffer) {
  const n = buffer.length, ch = buffer.numberOfChannels;
  const mono = new Float32Array(n);
  for (let c = 0; c < ch; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < n; i++) mono[i] += data[i] / ch;
  }
  return mono;
}

export class Timeline {
  /** `editable`: the window can be drawn and dragged; `onChange(start, end)` fires when a drag ends. */
  constructor(canvas, { editable = false, onChange = null, onInput = null, onSeek = null, height = 150 } = {}) {
    this.canvas = canvas; this.editable = editable; this.onChange = onChange; this.onInput = onInput; this.onSeek = onSeek;
    this.height = height;
    this.audio = null;          // {mono, rate, seconds, offset}: the audio starts at `offset` s on the axis
    this.extent = [0, 0];       // the source's span on the axis (outside it is outpainting)
    this.window = null;         // {start, end} in axis seconds, end may be past the source
    this.view = [0, 10];
    this.grid = null;           // {bpm, beats}
    this.playhead = null;
    this.drag = null;
    this.active = editable;     // an editable timeline ignores the pointer while its task takes no window
    new ResizeObserver(() => this.draw()).observe(canvas);
    if (editable) this._listen();
  }

  setAudio(mono, rate, offset = 0) {
    this.audio = { mono, rate, seconds: mono.length / rate, offset };
    this.extent = [offset, offset + mono.length / rate];
  }

  /** The axis span; an editable timeline keeps a third of the source as room for outpainting each side. */
  fit(view) {
    if (view) { this.view = view; this.draw(); return; }
    const [a, b] = this.extent;
    const margin = this.editable && this.active ? Math.max(2, (b - a) / 3) : 0;
    const lo = Math.min(a, this.window ? this.window.start : a) - margin;
    const hi = Math.max(b, this.window ? this.window.end : b) + margin;
    this.view = [Math.max(-600, snap(lo)), Math.min(1200, snap(hi))];
    this.draw();
  }

  setWindow(win) { this.window = win; this.draw(); }
  setGrid(bpm, beats) { this.grid = bpm && beats ? { bpm, beats } : null; this.draw(); }
  setPlayhead(t) { this.playhead = t; this.draw(); }

  x(t) { const [a, b] = this.view; return ((t - a) / (b - a)) * this.canvas.clientWidth; }
  t(x) { const [a, b] = this.view; return a + (x / this.canvas.clientWidth) * (b - a); }

  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = this.height;
    if (!w) return;
    c.dataset.viewStart = this.view[0]; c.dataset.viewEnd = this.view[1]; // read by tests and tools
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); c.style.height = h + "px";
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    g.fillStyle = css("--wave-bg"); g.fillRect(0, RULER, w, h - RULER);
    const [sa, sb] = this.extent;
    this._hatch(g, 0, this.x(sa), css("--outside"));
    this._hatch(g, this.x(sb), w, css("--outside"));
    this._ruler(g, w);
    if (this.window) this._region(g, h);
    if (this.audio) this._wave(g, w, h);
    if (this.playhead !== null) {
      g.fillStyle = css("--text"); g.fillRect(Math.round(this.x(this.playhead)), RULER, 1.5, h - RULER);
    }
  }

  _hatch(g, x0, x1, color) {
    if (x1 <= x0) return;
    g.save(); g.beginPath(); g.rect(x0, RULER, x1 - x0, this.height - RULER); g.clip();
    g.strokeStyle = color; g.lineWidth = 1;
    for (let x = x0 - this.height; x < x1; x += 8) { g.moveTo(x, this.height); g.lineTo(x + this.height, RULER); }
    g.stroke(); g.restore();
  }

  _wave(g, w, h) {
    const { mono, rate, offset } = this.audio;
    const x0 = Math.max(0, Math.floor(this.x(this.extent[0]))), x1 = Math.min(w, Math.ceil(this.x(this.extent[1])));
    if (x1 <= x0) return;
    const peaks = columnPeaks(mono, rate, offset, this.t(x0), this.t(x1), x1 - x0);
    const mid = RULER + (h - RULER) / 2, amp = (h - RULER) / 2 - 4;
    g.fillStyle = css("--wave");
    for (let i = 0; i < x1 - x0; i++) {
      const top = mid - peaks[2 * i + 1] * amp, bottom = mid - peaks[2 * i] * amp;
      g.fillRect(x0 + i, top, 1, Math.max(1, bottom - top));
    }
  }

  _region(g, h) {
    const { start, end } = this.window;
    const a = this.x(start), b = this.x(end), [sa, sb] = this.extent;
    g.fillStyle = css("--region"); g.fillRect(a, RULER, b - a, h - RULER);
    // The parts outside the source are outpainting: drawn hatched in the window's colour.
    if (start < sa) this._hatch(g, a, Math.min(b, this.x(sa)), css("--accent"));
    if (end > sb) this._hatch(g, Math.max(a, this.x(sb)), b, css("--accent"));
    g.fillStyle = css("--accent");
    for (const x of [a, b]) {
      g.fillRect(x - 1, RULER, 2, h - RULER);
      if (this.editable) g.fillRect(x - 4, RULER + (h - RULER) / 2 - 12, 8, 24);
    }
    g.font = "11px system-ui, sans-serif"; g.fillStyle = css("--text");
    let label = `${fmt(start)}–${fmt(end)} s`;
    const outL = Math.max(0, sa - start), outR = Math.max(0, end - sb);
    if (outL || outR) label += ` · outpaint ${outL ? "+" + fmt(outL) + " s before" : ""}${outL && outR ? ", " : ""}${outR ? "+" + fmt(outR) + " s after" : ""}`;
    g.fillText(label, Math.max(2, Math.min(a + 4, this.canvas.clientWidth - g.measureText(label).width - 4)), RULER + 13);
  }

  _ruler(g, w) {
    const [a, b] = this.view, pxPerS = w / (b - a);
    g.fillStyle = css("--panel"); g.fillRect(0, 0, w, RULER);
    g.font = "10px system-ui, sans-serif"; g.fillStyle = css("--muted"); g.strokeStyle = css("--muted");
    const step = STEPS.find((s) => s * pxPerS >= 48) || 300;
    g.beginPath();
    for (let t = Math.ceil(a / step) * step; t <= b; t += step) {
      const x = Math.round(this.x(t)) + 0.5;
      g.moveTo(x, 10); g.lineTo(x, 15);
      g.fillText((Math.round(t * 10) / 10) + "s", x + 2, 10);
    }
    g.stroke();
    if (!this.grid) return;
    // Bars: `beats` beats of 60/bpm s each, bar 1 starting at 0 s of the source (axis time 0).
    const bar = (this.grid.beats * 60) / this.grid.bpm;
    const every = [1, 2, 4, 8, 16, 32, 64].find((n) => n * bar * pxPerS >= 28) || 128;
    g.fillStyle = css("--accent"); g.strokeStyle = css("--accent"); g.beginPath();
    for (let n = Math.ceil(a / bar); n * bar <= b; n++) {
      const x = Math.round(this.x(n * bar)) + 0.5;
      g.moveTo(x, 20); g.lineTo(x, n % every ? 24 : RULER);
      if (n % every === 0) g.fillText(String(n >= 0 ? n + 1 : n), x + 2, 28);
    }
    g.stroke();
  }

  // -- interaction -----------------------------------------------------------------------------
  _listen() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => {
      if (!this.audio || e.button !== 0) return;
      if (!this.active) { if (this.onSeek) this.onSeek(this.t(e.offsetX)); return; } // no window here: seek only
      c.setPointerCapture(e.pointerId);
      const x = e.offsetX, t = this.t(x), w = this.window;
      let mode = "new";
      if (w && Math.abs(x - this.x(w.start)) <= HANDLE) mode = "start";
      else if (w && Math.abs(x - this.x(w.end)) <= HANDLE) mode = "end";
      else if (w && t > w.start && t < w.end) mode = "move";
      this.drag = { mode, t0: t, anchor: this._clamp(snap(t)), orig: w ? { ...w } : null };
      if (mode === "new") this.window = { start: this.drag.anchor, end: this.drag.anchor };
      this.draw();
    });
    c.addEventListener("pointermove", (e) => {
      const x = e.offsetX;
      if (!this.drag) { this._cursor(x); return; }
      const t = this._clamp(snap(this.t(x))), d = this.drag;
      if (d.mode === "new") this.window = { start: Math.min(d.anchor, t), end: Math.max(d.anchor, t) };
      else if (d.mode === "start") this.window = { start: Math.min(t, d.orig.end - SNAP), end: d.orig.end };
      else if (d.mode === "end") this.window = { start: d.orig.start, end: Math.max(t, d.orig.start + SNAP) };
      else {
        const len = d.orig.end - d.orig.start;
        const s = this._clamp(snap(d.orig.start + this.t(x) - d.t0), len);
        this.window = { start: s, end: snap(s + len) };
      }
      if (this.onInput) this.onInput(this.window.start, this.window.end);
      this.draw();
    });
    const finish = () => {
      if (!this.drag) return;
      const d = this.drag;
      this.drag = null;
      if (this.window && this.window.end - this.window.start < SNAP / 2) {
        // A click, not a drag: keep the window and move the playhead there instead.
        this.window = d.orig;
        this.draw();
        if (this.onSeek) this.onSeek(d.t0);
        return;
      }
      if (this.onChange) this.onChange(this.window ? this.window.start : null, this.window ? this.window.end : null);
    };
    c.addEventListener("pointerup", finish);
    c.addEventListener("pointercancel", finish);
    c.addEventListener("keydown", (e) => this._key(e));
  }

  _clamp(t, len = 0) { return Math.min(Math.max(t, this.view[0]), this.view[1] - len); }

  _cursor(x) {
    const w = this.window;
    const edge = w && (Math.abs(x - this.x(w.start)) <= HANDLE || Math.abs(x - this.x(w.end)) <= HANDLE);
    this.canvas.style.cursor = edge ? "ew-resize" : w && this.t(x) > w.start && this.t(x) < w.end ? "grab" : "crosshair";
  }

  _key(e) {
    if (!["ArrowLeft", "ArrowRight"].includes(e.key) || !this.audio || !this.active) return;
    e.preventDefault();
    const delta = (e.key === "ArrowLeft" ? -1 : 1) * (e.altKey ? 1 : SNAP);
    const w = this.window || { start: this.extent[0], end: Math.min(this.extent[1], this.extent[0] + 2) };
    if (e.shiftKey) this.window = { start: w.start, end: snap(Math.max(w.start + SNAP, w.end + delta)) };
    else this.window = { start: snap(w.start + delta), end: snap(w.end + delta) };
    this.draw();
    if (this.onChange) this.onChange(this.window.start, this.window.end);
  }
}

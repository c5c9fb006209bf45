// Source and reference audio: drop or pick a file, refuse it before upload when the request would
// pass the server's body limit, send it as a data URI, decode it in the browser for the waveform.
"use strict";

import { monoOf } from "./timeline.js";

const TYPES = { wav: "audio/wav", flac: "audio/flac", ogg: "audio/ogg", oga: "audio/ogg", mp3: "audio/mpeg" };
const RATE = 48000; // the model's rate: the browser resamples to it while decoding, as the runtime does
export const MB = (bytes) => (bytes / 2 ** 20).toFixed(1) + " MB";

/** Length of the data URI a file of `size` bytes becomes (base64 plus the header). */
export const dataURILength = (size, mime) => `data:${mime};base64,`.length + 4 * Math.ceil(size / 3);

export function mimeOf(name, type) {
  const ext = (name.split(".").pop() || "").toLowerCase();
  return TYPES[ext] || (type && type.startsWith("audio/") ? type : null);
}

function readDataURI(file, mime) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(new Blob([file], { type: mime }));
  });
}

async function decode(file) {
  try {
    const ctx = new OfflineAudioContext(1, 1, RATE);
    const buffer = await ctx.decodeAudioData(await file.arrayBuffer());
    return { mono: monoOf(buffer), rate: buffer.sampleRate, seconds: buffer.duration };
  } catch (err) {
    return null; // the server's decoder may still read it; the page just cannot draw it
  }
}

/**
 * One audio field (inputs.audio or settings.referenceAudio): `budget()` says how many bytes the rest
 * of the request takes, `onload(audio)` gets {name, size, mime, dataURI, url, mono, rate, seconds} or null.
 */
export class AudioInput {
  constructor({ param, box, picker, clear, info, budget, limit, onload, onerror }) {
    Object.assign(this, { param, box, picker, clear, info, budget, limit, onload, onerror });
    this.audio = null;
    picker.addEventListener("change", () => { if (picker.files[0]) this.take(picker.files[0]); picker.value = ""; });
    clear.addEventListener("click", () => this.set(null));
    box.addEventListener("dragover", (e) => { e.preventDefault(); box.classList.add("over"); });
    box.addEventListener("dragleave", () => box.classList.remove("over"));
    box.addEventListener("drop", (e) => {
      e.preventDefault(); box.classList.remove("over");
      const file = e.dataTransfer.files[0];
      if (file) this.take(file);
    });
  }

  /** Check, read and decode a File (or Blob with a name); refuses before anything is sent. */
  async take(file) {
    const mime = mimeOf(file.name, file.type);
    if (!mime) {
      this.onerror(this.param, `${this.param}: ${JSON.stringify(file.name)} is not WAV, FLAC, OGG or MP3`);
      return false;
    }
    const body = this.budget() + dataURILength(file.size, mime);
    if (body > this.limit()) {
      this.onerror(this.param, `${this.param}: ${JSON.stringify(file.name)} is ${MB(file.size)}; as a data URI the ` +
        `request would be ${MB(body)}, over this server's limit of ${MB(this.limit())} (its --max-body-mb). ` +
        "Send a shorter or compressed file (FLAC, MP3), or start the server with a larger --max-body-mb.");
      return false;
    }
    this.onerror(this.param, null);
    this.info.textContent = `reading ${file.name}…`;
    const [dataURI, decoded] = await Promise.all([readDataURI(file, mime), decode(file)]);
    this.set({ name: file.name, size: file.size, mime, dataURI, url: URL.createObjectURL(file), ...(decoded || {}) });
    return true;
  }

  set(audio) {
    this.audio = audio;
    this.clear.hidden = !audio;
    this.box.classList.toggle("loaded", !!audio);
    this.info.textContent = !audio ? "Drop a file here, or choose one."
      : `${audio.name} · ${MB(audio.size)}` + (audio.seconds ? ` · ${audio.seconds.toFixed(2)} s` : " · (the browser cannot draw this file)");
    this.onerror(this.param, null);
    this.onload(audio);
  }
}

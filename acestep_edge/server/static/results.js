// One result card: waveform and spectrogram, player, download, seed and timings; for editing tasks the
// source above the result on one time axis with the window marked, and an A/B toggle between them.
"use strict";

import { drawSpectrogram } from "./spectrogram.js";
import { Timeline, fmt, monoOf } from "./timeline.js";

const el = (tag, props = {}, ...children) => {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
};

async function decodeURL(url) {
  const bytes = await (await fetch(url)).arrayBuffer();
  const buffer = await new OfflineAudioContext(1, 1, 48000).decodeAudioData(bytes);
  return { mono: monoOf(buffer), rate: buffer.sampleRate, seconds: buffer.duration };
}

function timings(t) {
  if (!t) return "";
  return Object.entries(t).map(([k, v]) => `${k} ${Number(v).toFixed(2)} s`).join(" · ");
}

/** Prepend a card for `item` (a response data object) rendered from `record` {task, source, reference, window}. */
export async function addResult(item, record, hooks) {
  const s = record.task.settings || {};
  const taskName = s.task || "text2music";
  const src = taskName !== "text2music" && record.source && record.source.mono ? record.source : null;
  const win = ["repaint", "lego"].includes(taskName) ? record.window : null;
  // The result starts where an outpainting window starts (before the source when negative).
  const offset = win ? Math.min(0, win.start) : 0;
  const name = item.audioURL.split("/").pop();
  const beats = { 2: 2, 3: 3, 4: 4, 6: 6 }[s.timeSignature];
  const grid = typeof s.bpm === "number" && beats ? { bpm: s.bpm, beats } : null; // bars on the ruler too

  const resAudio = el("audio", { controls: true, preload: "metadata", src: item.audioURL });
  const link = el("a", { href: item.audioURL, download: name, textContent: "download" });
  const load = el("button", { type: "button", className: "small", textContent: "load settings" });
  const reuse = el("button", { type: "button", className: "small", textContent: "use as source" });
  load.addEventListener("click", () => hooks.loadParams(record, item.seed));
  reuse.addEventListener("click", () => hooks.useAsSource(item.audioURL, name));
  const head = el("div", { className: "result-head" },
    el("strong", { textContent: taskName }), el("span", { className: "meta", textContent: ` seed ${item.seed}` }),
    el("span", { className: "spacer" }), load, reuse);
  const resCanvas = el("canvas", { className: "timeline", tabIndex: 0, ariaLabel: "result waveform" });
  const spec = el("canvas", { className: "spectrogram", ariaLabel: "result spectrogram" });
  const player = el("div", { className: "player" }, resAudio, link);
  const meta = el("div", { className: "meta timings", textContent: timings(item.timings) });
  const li = el("li", { className: "result" }, head);
  li.dataset.seed = item.seed; li.dataset.task = taskName;

  let srcLine = null;
  let seek = (t) => { resAudio.currentTime = Math.max(0, t - offset); }; // a click on a lane moves the player
  if (src) {
    const srcCanvas = el("canvas", { className: "timeline", ariaLabel: "source waveform" });
    const srcAudio = el("audio", { controls: true, preload: "metadata", src: src.url, hidden: true });
    const ab = el("button", { type: "button", className: "small ab", textContent: "A/B: hearing B (result)" });
    ab.setAttribute("aria-pressed", "false");
    li.append(el("div", { className: "lane-label", textContent: "A · source" }), srcCanvas,
      el("div", { className: "lane-label", textContent: "B · result" + (win ? ` · window ${fmt(win.start)}–${fmt(win.end)} s` : "") }),
      resCanvas);
    player.prepend(ab);
    player.append(srcAudio);
    srcLine = new Timeline(srcCanvas, { height: 90 });
    srcLine.setAudio(src.mono, src.rate, 0);
    srcLine.window = win;
    srcLine.grid = grid;
    const players = { A: srcAudio, B: resAudio }, offs = { A: 0, B: offset };
    let active = "B";
    ab.addEventListener("click", () => {
      const other = active === "A" ? "B" : "A", from = players[active], to = players[other];
      const pos = from.currentTime + offs[active], playing = !from.paused;
      from.pause();
      to.currentTime = Math.max(0, Math.min(pos - offs[other], (to.duration || Infinity) - 0.01));
      from.hidden = true; to.hidden = false; active = other;
      if (playing) to.play().catch(() => {});
      ab.textContent = other === "A" ? "A/B: hearing A (source)" : "A/B: hearing B (result)";
      ab.setAttribute("aria-pressed", String(other === "A"));
    });
    seek = (t) => { players[active].currentTime = Math.max(0, t - offs[active]); };
    srcCanvas.addEventListener("click", (e) => seek(srcLine.t(e.offsetX)));
    srcAudio.addEventListener("timeupdate", () => { srcLine.setPlayhead(srcAudio.currentTime); resLine.setPlayhead(srcAudio.currentTime); });
  } else {
    li.append(resCanvas);
  }
  li.append(spec, player, meta);
  if (item.warnings && item.warnings.length) li.append(el("div", { className: "meta warn", textContent: item.warnings.join(" · ") }));
  document.getElementById("results-list").prepend(li);
  if (!record.shown) { record.shown = true; li.scrollIntoView({ block: "nearest" }); } // a render's first result

  const resLine = new Timeline(resCanvas, { height: src ? 90 : 110 });
  resCanvas.addEventListener("click", (e) => seek(resLine.t(e.offsetX)));
  resAudio.addEventListener("timeupdate", () => {
    const t = resAudio.currentTime + offset;
    resLine.setPlayhead(t); if (srcLine) srcLine.setPlayhead(t);
  });
  try {
    const res = await decodeURL(item.audioURL);
    resLine.setAudio(res.mono, res.rate, offset);
    resLine.window = win;
    resLine.grid = grid;
    if (srcLine) {
      const view = [Math.min(0, offset), Math.max(src.seconds, offset + res.seconds)];
      srcLine.fit(view); resLine.fit(view);
    } else resLine.fit();
    drawSpectrogram(spec, res.mono, res.rate);
    li.dataset.seconds = res.seconds.toFixed(3);
  } catch (err) {
    meta.textContent += " · (the browser cannot draw this format)";
  }
}

// acestep-edge studio: builds a Runware audioInference task for any of the six tasks, checks it with
// the server's own validator as you type, sends it async and follows its events.
"use strict";

import { AudioInput, MB } from "./inputs.js";
import { addResult } from "./results.js";
import { Timeline, fmt } from "./timeline.js";

const $ = (id) => document.getElementById(id);
const HELP = {
  text2music: "Music from a prompt and lyrics.",
  cover: "A new rendition of the source: strength sets how far it may move, a timbre reference lends its sound.",
  repaint: "Re-render a window of the source (none: all of it). Drag on the waveform; drag past either end to outpaint.",
  extract: "Pull one track (e.g. the drums) out of the source.",
  lego: "Add a track to the source, optionally inside a window only.",
  complete: "Add the chosen tracks to the source, or render them from silence without one.",
};
const TIMESIG_BEATS = { 2: 2, 3: 3, 4: 4, 6: 6 };
// `touched`: fields edited so far; the live check marks only those (a fresh form is not all red).
const state = { config: null, nextUUID: uuid4(), current: null, localErrors: {}, checkTimer: null, checkSeq: 0,
  touched: new Set(), all: false };

function uuid4() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = $("apikey").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

// `fromCheck`: the text is the live check's, so a later check may clear it (never a render's "done").
function setStatus(text, bad, fromCheck = false) {
  $("status").textContent = text; $("status").className = bad ? "bad" : ""; state.checkShown = fromCheck;
}
const task = () => document.querySelector('input[name="task"]:checked').value;
const shows = (el, t) => !el.dataset.tasks || el.dataset.tasks.split(" ").includes(t);

/** A field's value for the request: a number when it reads as one, else the text (the validator names it). */
function value(id) {
  const v = $(id).value.trim();
  if (v === "") return undefined;
  return /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(v) ? Number(v) : v;
}

// -- the request ---------------------------------------------------------------------------------
function buildTask() {
  const t = task();
  const visible = (id) => {
    for (let el = $(id).closest("[data-tasks]"); el; el = el.parentElement && el.parentElement.closest("[data-tasks]")) {
      if (!shows(el, t)) return false;
    }
    return true;
  };
  const req = { taskType: "audioInference", taskUUID: state.nextUUID, positivePrompt: $("prompt").value };
  const put = (obj, key, id) => { const v = value(id); if (v !== undefined && visible(id)) obj[key] = v; };
  put(req, "duration", "duration");
  put(req, "seed", "seed"); put(req, "steps", "steps"); put(req, "CFGScale", "cfg"); put(req, "numberResults", "results");
  req.outputType = "URL";
  req.outputFormat = $("format").value;
  if (t !== "text2music" && source.audio) req.inputs = { audio: source.audio.dataURI };
  put(req, "strength", "strength");
  const s = {};
  if (t !== "text2music") s.task = t;
  if ($("lyrics").value) s.lyrics = $("lyrics").value;
  put(s, "bpm", "bpm");
  if ($("key").value.trim()) s.keyScale = $("key").value.trim();
  put(s, "timeSignature", "timesig");
  s.vocalLanguage = $("language").value.trim() || "en";
  s.guidanceType = $("guidance").value;
  put(s, "repaintingStart", "wstart"); put(s, "repaintingEnd", "wend");
  if ($("mode").value && visible("mode")) s.repaintMode = $("mode").value;
  if ($("track").value && visible("track")) s.trackName = $("track").value;
  const classes = [...document.querySelectorAll("#classes input:checked")].map((c) => c.value);
  if (classes.length && t === "complete") s.trackClasses = classes;
  put(s, "coverConditioningScale", "coverscale");
  if (reference.audio) s.referenceAudio = reference.audio.dataURI;
  if ($("noise").value) s.noise = $("noise").value;
  if (s.noise === "torch-cuda") put(s, "noiseGpu", "noisegpu");
  req.settings = s;
  const lora = [...document.querySelectorAll("#loras .lora")].filter((row) => row.querySelector("input[type=checkbox]").checked)
    .map((row) => ({ model: row.dataset.name, weight: value(row.querySelector(".weight").id) ?? 1 }));
  if (lora.length) req.lora = lora;
  return req;
}

const shorten = (k, v) => (typeof v === "string" && v.startsWith("data:") && v.length > 80
  ? `${v.slice(0, 40)}… (${MB(v.length)} data URI)` : v);
const requestText = () => JSON.stringify(buildTask(), null, 2);
window.acestepStudio = { requestText, buildTask };

function update() {
  const t = task();
  // complete may go without a source (its length is then `duration`); with one, the source sets it.
  const optional = state.config ? state.config.sourceOptionalTasks || [] : [];
  $("duration").closest("[data-tasks]").dataset.tasks = ["text2music", ...(source.audio ? [] : optional)].join(" ");
  document.querySelectorAll("[data-tasks]").forEach((el) => { el.hidden = !shows(el, t); });
  $("task-help").textContent = HELP[t];
  $("noisegpu-field").hidden = $("noise").value !== "torch-cuda"; // the GPU shapes the torch-cuda draw only
  const windowed = (state.config ? state.config.windowTasks : ["repaint", "lego"]).includes(t);
  if (timeline.active !== windowed) { timeline.active = windowed; timeline.window = windowed ? readWindow() : null; timeline.fit(); }
  timeline.setWindow(windowed ? readWindow() : null);
  timeline.setGrid(Number(value("bpm")) || null, TIMESIG_BEATS[$("timesig").value] || null);
  $("request-json").textContent = JSON.stringify(buildTask(), shorten, 2);
  scheduleCheck();
}

// -- errors next to the field they name ------------------------------------------------------------
function showErrors(errors, live = false) {
  document.querySelectorAll("[data-param] .err").forEach((e) => { e.textContent = ""; });
  document.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  const loose = [];
  const own = Object.entries(state.localErrors).map(([parameter, message]) => ({ parameter, message, own: true }));
  for (const e of [...own, ...errors]) {
    // "lora[1].weight" has no field of its own: its list's box (the part before the first "[" or ".").
    const find = (p) => p && document.querySelector(`[data-param="${p}"]`);
    const box = find(e.parameter) || find(e.parameter && e.parameter.split(/[[.]/)[0]);
    if (live && !e.own && !state.all && !(box && state.touched.has(box.dataset.param))) continue;
    if (!box || box.closest("[hidden]")) { loose.push(e.message); continue; }
    box.querySelector(".err").textContent = e.message;
    const input = box.querySelector("input, select, textarea, canvas");
    if (input) input.setAttribute("aria-invalid", "true");
  }
  return loose;
}

function localError(param, message) {
  if (message) state.localErrors[param] = message; else delete state.localErrors[param];
  showErrors(state.lastCheck || [], true);
}

function scheduleCheck() {
  clearTimeout(state.checkTimer);
  state.checkTimer = setTimeout(check, 250);
}

async function check() {
  // The server's validator on the task with its audio replaced by a stub: same rules, same messages.
  const stub = "data:audio/wav;base64,UklGRg==";
  const t = buildTask();
  if (t.inputs) t.inputs.audio = stub;
  if (t.settings.referenceAudio) t.settings.referenceAudio = stub;
  const seq = ++state.checkSeq;
  try {
    const r = await fetch("/studio/check", { method: "POST", headers: headers(true), body: JSON.stringify(t) });
    const body = await r.json();
    if (seq !== state.checkSeq) return;
    state.lastCheck = body.errors || [];
    const loose = showErrors(state.lastCheck, true);
    if (!state.current && (loose.length || state.checkShown)) setStatus(loose.join("; "), loose.length > 0, true);
  } catch (err) { /* the server is away: the render will say so */ }
}

// -- source, reference and the window --------------------------------------------------------------
const limit = () => (state.config ? state.config.maxBodyBytes : Infinity);
const audioBytes = (input) => (input.audio ? input.audio.dataURI.length : 0);
const baseBytes = () => { const t = buildTask(); delete (t.inputs || {}).audio; delete t.settings.referenceAudio; return JSON.stringify(t).length + 64; };

const timeline = new Timeline($("wave"), {
  editable: true,
  onInput: (a, b) => { $("wstart").value = fmt(a); $("wend").value = fmt(b); },
  onSeek: (t) => { const a = $("source-audio"); a.currentTime = Math.max(0, Math.min(t, a.duration || 0)); },
  onChange: (a, b) => {
    $("wstart").value = a === null ? "" : fmt(a); $("wend").value = b === null ? "" : fmt(b);
    timeline.fit(); update();
  },
});

function readWindow() {
  if (!source.audio || !source.audio.seconds) return null;
  const a = value("wstart"), b = value("wend");
  if (a === undefined && b === undefined) return null;
  const start = typeof a === "number" ? a : 0;
  const end = typeof b === "number" && b !== -1 ? b : source.audio.seconds;
  return end > start ? { start, end } : null;
}

const source = new AudioInput({
  param: "inputs.audio", box: $("source-box"), picker: $("source-file"), clear: $("source-clear"), info: $("source-info"),
  budget: () => baseBytes() + audioBytes(reference), limit, onerror: localError,
  onload: (audio) => {
    const audioEl = $("source-audio");
    $("source-view").hidden = !(audio && audio.mono);
    if (audio && audio.mono) {
      timeline.setAudio(audio.mono, audio.rate);
      audioEl.src = audio.url;
      timeline.window = readWindow();
      timeline.fit();
    } else audioEl.removeAttribute("src");
    update();
  },
});
const reference = new AudioInput({
  param: "settings.referenceAudio", box: $("ref-box"), picker: $("ref-file"), clear: $("ref-clear"), info: $("ref-info"),
  budget: () => baseBytes() + audioBytes(source), limit, onerror: localError, onload: () => update(),
});

$("source-audio").addEventListener("timeupdate", (e) => timeline.setPlayhead(e.target.currentTime));
$("window-clear").addEventListener("click", () => { $("wstart").value = ""; $("wend").value = ""; timeline.fit(); update(); });
for (const id of ["wstart", "wend"]) $(id).addEventListener("change", () => { timeline.window = readWindow(); timeline.fit(); });

// -- render ----------------------------------------------------------------------------------------
async function follow(sent, record) {
  // Server-sent events read through fetch, so the API key can go in a header.
  const r = await fetch(`/v1/tasks/${sent.taskUUID}/events`, { headers: headers(false) });
  if (!r.ok) throw new Error(((await r.json()).errors || [{}])[0].message || "request failed");
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value: chunk, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(chunk, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const name = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (name && data && onEvent(name, JSON.parse(data), record)) { reader.cancel(); return; }
    }
  }
}

function onEvent(name, data, record) {
  if (name === "queued") setStatus(`queued (position ${data.position})`);
  else if (name === "started") setStatus("rendering…");
  else if (name === "progress") {
    $("progress").value = data.progress;
    setStatus(`step ${data.step}/${data.steps}` + (data.results > 1 ? ` · result ${data.result + 1}/${data.results}` : ""));
  } else if (name === "result") addResult(data.data, record, hooks);
  else if (name === "done") { $("progress").value = 1; setStatus("done"); return true; }
  else if (name === "error" || name === "cancelled") {
    const loose = showErrors([data.error]);
    setStatus(loose.length ? data.error.message : "refused: see the marked field", true);
    return true;
  }
  return false;
}

async function render(event) {
  event.preventDefault();
  state.all = true; // from the first render on, every field's error shows
  clearTimeout(state.checkTimer); state.checkSeq++; // a check still on its way must not overwrite the render's status
  const sent = buildTask();
  const record = { task: sent, source: source.audio, reference: reference.audio, window: readWindow() };
  $("render").disabled = true; $("progress").value = 0; setStatus("sending…");
  try {
    const r = await fetch("/v1", { method: "POST", headers: headers(true), body: JSON.stringify([{ ...sent, deliveryMethod: "async" }]) });
    const body = await r.json();
    if (body.errors) {
      const loose = showErrors(body.errors);
      throw new Error(loose.length ? loose.join("; ") : "refused: see the marked field");
    }
    state.current = sent.taskUUID; $("cancel").disabled = false;
    await follow(sent, record);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    state.current = null; $("render").disabled = false; $("cancel").disabled = true;
    state.nextUUID = uuid4(); $("request-json").textContent = JSON.stringify(buildTask(), shorten, 2);
    refreshRecent();
  }
}

async function cancel() {
  if (!state.current) return;
  const r = await fetch(`/v1/tasks/${state.current}`, { method: "DELETE", headers: headers(false) });
  if (!r.ok) setStatus(((await r.json()).errors || [{}])[0].message, true);
}

// -- remix: a result's parameters back into the form, or the result as the next source -----------
const FIELDS = { positivePrompt: "prompt", duration: "duration", steps: "steps", CFGScale: "cfg", strength: "strength",
  outputFormat: "format" };
const SETTINGS = { lyrics: "lyrics", bpm: "bpm", keyScale: "key", timeSignature: "timesig", vocalLanguage: "language",
  guidanceType: "guidance", repaintingStart: "wstart", repaintingEnd: "wend", repaintMode: "mode", trackName: "track",
  coverConditioningScale: "coverscale", noise: "noise", noiseGpu: "noisegpu" };

const hooks = {
  loadParams(record, seed) {
    const t = record.task, s = t.settings || {};
    document.querySelector(`input[name="task"][value="${s.task || "text2music"}"]`).checked = true;
    for (const [k, id] of Object.entries(FIELDS)) $(id).value = t[k] ?? "";
    for (const [k, id] of Object.entries(SETTINGS)) $(id).value = s[k] ?? "";
    if (!t.duration) $("duration").value = "30";
    $("seed").value = seed; $("results").value = "1"; // one result: the seed names exactly this one
    document.querySelectorAll("#classes input").forEach((c) => { c.checked = (s.trackClasses || []).includes(c.value); });
    const lora = Object.fromEntries((t.lora || []).map((a) => [a.model, a.weight]));
    document.querySelectorAll("#loras .lora").forEach((row) => {
      row.querySelector("input[type=checkbox]").checked = row.dataset.name in lora;
      row.querySelector(".weight").value = lora[row.dataset.name] ?? 1;
    });
    reference.set(record.reference || null);
    source.set(record.source || null);
    setStatus(`loaded the settings of seed ${seed}`);
  },
  async useAsSource(url, name) {
    const blob = await (await fetch(url)).blob();
    const ok = await source.take(new File([blob], name, { type: blob.type }));
    if (ok && task() === "text2music") document.querySelector('input[name="task"][value="cover"]').checked = true;
    update();
    $("source-box").scrollIntoView({ block: "nearest" });
  },
};

// -- page furniture --------------------------------------------------------------------------------
async function refreshRecent() {
  const r = await fetch("/v1/renders", { headers: headers(false) });
  if (!r.ok) return;
  const list = $("recent");
  list.replaceChildren();
  for (const job of (await r.json()).data.slice(0, 20)) {
    const li = document.createElement("li");
    const st = document.createElement("span");
    st.className = "state-" + job.status; st.textContent = job.status;
    const prompt = document.createElement("span");
    prompt.className = "prompt"; prompt.textContent = job.positivePrompt; prompt.title = job.positivePrompt;
    const when = document.createElement("span");
    when.className = "meta"; when.textContent = new Date(job.created * 1000).toLocaleTimeString();
    li.append(st, prompt, when);
    for (const res of job.results) {
      if (!res.audioURL) continue;
      const a = document.createElement("a");
      a.href = res.audioURL; a.textContent = "seed " + res.seed; li.append(a);
    }
    list.append(li);
  }
}

async function refreshHealth() {
  try {
    const h = await (await fetch("/health")).json();
    const providers = [...new Set(Object.values(h.providers).map((p) => p[0]))].join(", ");
    const body = state.config ? ` · body limit ${MB(state.config.maxBodyBytes)}` : "";
    $("health").textContent = `bundle ${h.bundle.name} · ${providers} · queue ${h.queue.depth}/${h.queue.capacity}${body}`;
  } catch (err) { $("health").textContent = "server unreachable"; }
}

async function copyRequest() {
  const text = requestText();
  try { await navigator.clipboard.writeText(text); } catch (err) {
    const area = Object.assign(document.createElement("textarea"), { value: text });
    document.body.append(area); area.select(); document.execCommand("copy"); area.remove();
  }
  $("copy").textContent = "copied"; setTimeout(() => { $("copy").textContent = "copy as request"; }, 1500);
}

async function loadAdapters() {
  // The adapter picker, where this server lists adapters (GET /v1/loras, its --lora-dir).
  let list = [];
  if (!state.config || !state.config.adapters) { $("lora-box").hidden = true; return; }
  try {
    const r = await fetch("/v1/loras", { headers: headers(false) });
    if (r.ok) list = (await r.json()).data || [];
  } catch (err) { list = []; }
  $("lora-box").hidden = list.length === 0;
  $("loras").replaceChildren(...list.map((a, i) => {
    const row = Object.assign(document.createElement("div"), { className: "lora" });
    row.dataset.name = a.name;
    const box = Object.assign(document.createElement("input"), { type: "checkbox", disabled: a.kind.includes("refused") });
    const label = document.createElement("label");
    label.append(box, ` ${a.name} `, Object.assign(document.createElement("span"), { className: "muted", textContent: a.kind }));
    const weight = Object.assign(document.createElement("input"), { id: `lora-weight-${i}`, className: "weight", value: "1",
      inputMode: "decimal" });
    weight.setAttribute("aria-label", `weight of ${a.name}`);
    row.append(label, weight);
    return row;
  }));
}

async function start() {
  try { state.config = await (await fetch("/studio/config")).json(); } catch (err) { state.config = null; }
  // Which fields each task takes, from the server's vocabulary (the HTML's data-tasks are the fallback).
  const c = state.config || {};
  const tasksOf = { "source-box": c.sourceTasks, "window-grid": c.windowTasks };
  const fieldsOf = { track: c.trackTasks, strength: c.strengthTasks, coverscale: c.coverScaleTasks };
  for (const [id, list] of Object.entries(tasksOf)) if (list) $(id).dataset.tasks = list.join(" ");
  for (const [id, list] of Object.entries(fieldsOf)) if (list) $(id).closest("[data-tasks]").dataset.tasks = list.join(" ");
  const names = state.config ? state.config.trackNames : [];
  for (const n of names) $("track").append(new Option(n, n));
  $("classes").replaceChildren(...names.map((n) => {
    const l = document.createElement("label");
    const c = Object.assign(document.createElement("input"), { type: "checkbox", value: n });
    l.append(c, " " + n.replace("_", " "));
    return l;
  }));
  // The noise source (settings.noise), where this server's runtime has one.
  for (const n of (state.config && state.config.noiseSources) || []) $("noise").append(new Option(n, n));
  for (const g of (state.config && state.config.gpuPresets) || []) $("gpu-presets").append(new Option(g));
  $("noise-field").hidden = !(state.config && state.config.noiseSources);
  await loadAdapters();
  $("form").addEventListener("submit", render);
  const touch = (e) => { const box = e.target.closest("[data-param]"); if (box) state.touched.add(box.dataset.param); };
  $("form").addEventListener("input", touch, true);
  $("form").addEventListener("change", touch, true);
  $("form").addEventListener("input", update);
  $("form").addEventListener("change", update);
  $("cancel").addEventListener("click", cancel);
  $("copy").addEventListener("click", copyRequest);
  update(); refreshHealth(); refreshRecent();
  setInterval(refreshHealth, 5000);
}

start();

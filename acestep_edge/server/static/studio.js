// acestep-edge studio: builds a Runware audioInference task, sends it async, follows its events.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // taskUUID of the render in progress

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

function setStatus(text, bad) { $("status").textContent = text; $("status").className = bad ? "bad" : ""; }
function errorText(body) { return (body.errors || []).map((e) => e.message).join("; ") || "request failed"; }

function numberOr(id, parse) { const v = $(id).value.trim(); return v === "" ? undefined : parse(v); }

function buildTask() {
  const settings = { lyrics: $("lyrics").value, guidanceType: $("guidance").value,
                     vocalLanguage: $("language").value.trim() || "en" };
  const bpm = numberOr("bpm", parseInt); if (bpm !== undefined) settings.bpm = bpm;
  if ($("key").value.trim()) settings.keyScale = $("key").value.trim();
  if ($("timesig").value) settings.timeSignature = parseInt($("timesig").value);
  const task = { taskType: "audioInference", taskUUID: uuid4(), deliveryMethod: "async",
                 positivePrompt: $("prompt").value, duration: numberOr("duration", parseFloat),
                 steps: numberOr("steps", parseInt), CFGScale: numberOr("cfg", parseFloat),
                 numberResults: numberOr("results", parseInt), outputType: "URL",
                 outputFormat: $("format").value, settings };
  const seed = numberOr("seed", parseInt); if (seed !== undefined) task.seed = seed;
  return task;
}

async function post(tasks) {
  const r = await fetch("/v1", { method: "POST", headers: headers(true), body: JSON.stringify(tasks) });
  return r.json();
}

function addResult(item, task) {
  const li = document.createElement("li");
  const audio = document.createElement("audio");
  audio.controls = true; audio.preload = "metadata"; audio.src = item.audioURL;
  const link = document.createElement("a");
  link.href = item.audioURL; link.download = item.audioURL.split("/").pop(); link.textContent = "download";
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `seed ${item.seed} · ${task.duration} s · ${task.steps} steps · ` +
    `DiT ${(item.timings && item.timings.dit || 0).toFixed(1)} s · `;
  meta.appendChild(link);
  li.append(audio, meta);
  $("results-list").prepend(li);
}

async function follow(task) {
  // Server-sent events read through fetch, so the API key can go in a header.
  const r = await fetch(`/v1/tasks/${task.taskUUID}/events`, { headers: headers(false) });
  if (!r.ok) throw new Error(errorText(await r.json()));
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const name = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (name && data && onEvent(name, JSON.parse(data), task)) { reader.cancel(); return; }
    }
  }
}

function onEvent(name, data, task) {
  if (name === "queued") setStatus(`queued (position ${data.position})`);
  else if (name === "started") setStatus("rendering…");
  else if (name === "progress") {
    $("progress").value = data.progress;
    setStatus(`step ${data.step}/${data.steps}` + (data.results > 1 ? ` · result ${data.result + 1}/${data.results}` : ""));
  } else if (name === "result") addResult(data.data, task);
  else if (name === "done") { $("progress").value = 1; setStatus("done"); return true; }
  else if (name === "error" || name === "cancelled") { setStatus(data.error.message, true); return true; }
  return false;
}

async function render(event) {
  event.preventDefault();
  const task = buildTask();
  $("render").disabled = true; $("progress").value = 0; setStatus("sending…");
  try {
    const body = await post([task]);
    if (body.errors) throw new Error(errorText(body));
    current = task.taskUUID; $("cancel").disabled = false;
    await follow(task);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    current = null; $("render").disabled = false; $("cancel").disabled = true;
    refreshRecent();
  }
}

async function cancel() {
  if (!current) return;
  const r = await fetch(`/v1/tasks/${current}`, { method: "DELETE", headers: headers(false) });
  if (!r.ok) setStatus(errorText(await r.json()), true);
}

async function refreshRecent() {
  const r = await fetch("/v1/renders", { headers: headers(false) });
  if (!r.ok) return;
  const list = $("recent");
  list.replaceChildren();
  for (const job of (await r.json()).data.slice(0, 20)) {
    const li = document.createElement("li");
    const state = document.createElement("span");
    state.className = "state-" + job.status; state.textContent = job.status;
    const prompt = document.createElement("span");
    prompt.className = "prompt"; prompt.textContent = job.positivePrompt; prompt.title = job.positivePrompt;
    const when = document.createElement("span");
    when.className = "meta"; when.textContent = new Date(job.created * 1000).toLocaleTimeString();
    li.append(state, prompt, when);
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
    $("health").textContent = `bundle ${h.bundle.name} · ${providers} · queue ${h.queue.depth}/${h.queue.capacity}`;
  } catch (err) { $("health").textContent = "server unreachable"; }
}

$("form").addEventListener("submit", render);
$("cancel").addEventListener("click", cancel);
refreshHealth(); refreshRecent();
setInterval(refreshHealth, 5000);

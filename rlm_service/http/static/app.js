// The progress page's controls: Run streams a completion over SSE (fetch and a
// ReadableStream, since EventSource cannot POST); Stop aborts that request, which
// the server treats as a cancel; a saved run is replayed with no server at all.
import { SseParser, parseSaved } from "./events.js";
import { RunView } from "./view.js";

const $ = (id) => document.getElementById(id);
const LIMITS = ["max_iterations", "max_depth", "max_llm_calls", "max_total_tokens",
  "max_cost_usd", "timeout_seconds"];

const view = new RunView();
let controller = null;
let clock = 0;

function busy(running) {
  $("run").disabled = running;
  $("stop").disabled = !running;
  $("load-file").disabled = running;
  $("export").disabled = running || view.events.length === 0;
}

function requestBody() {
  const body = { prompt: $("prompt").value, stream_root_text: $("stream-text").checked };
  const context = $("context").value;
  if (context) body.context = context;
  for (const name of LIMITS) {
    const value = $(name).value.trim();
    if (value !== "") body[name] = Number(value);
  }
  return body;
}

async function errorText(response) {
  try { return (await response.json()).error || response.statusText; }
  catch (_) { return response.statusText; }
}

async function start(ev) {
  if (ev) ev.preventDefault();
  if (controller) return;
  if (!$("prompt").value.trim()) {
    $("prompt").focus();
    $("prompt").setAttribute("aria-invalid", "true");
    view.onState("idle", "Prompt is required");
    return;
  }
  $("prompt").removeAttribute("aria-invalid");
  view.reset();
  view.live = true;
  view.start = Date.now();
  controller = new AbortController();
  busy(true);
  view.onState("connecting", "Connecting");
  clock = setInterval(() => view.meters(), 200);
  try {
    const headers = { "Content-Type": "application/json" };
    const key = $("api_key").value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch("/v1/completions:stream", {
      method: "POST", headers,
      body: JSON.stringify(requestBody()), signal: controller.signal });
    if (!response.ok) {
      $("answer-text").textContent = `Error ${response.status}: ${await errorText(response)}`;
      view.finish("rejected");
      return;
    }
    await read(response.body);
    await view.drained();
    if (!view.done) view.finish("disconnected");
  } catch (err) {
    await view.drained();
    if (err.name === "AbortError") {
      $("stop-reason").textContent = "cancelled (Stop)";
      view.finish("stopped");
    } else {
      $("answer-text").textContent = "Connection failed: " + err.message;
      view.finish("error");
    }
  } finally {
    clearInterval(clock);
    if (!view.end) view.end = Date.now();
    controller = null;
    busy(false);
    view.meters();
  }
}

async function read(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    for (const event of parser.feed(value)) view.push(event);
  }
}

function stop() { if (controller) controller.abort(); }

async function replay(text, name) {
  if (controller) return;
  view.reset();
  const generation = view.generation;
  const { events, skipped } = parseSaved(text);
  const times = events.map((e) => (e.time ? Date.parse(e.time) : 0)).filter(Boolean);
  view.start = times.length ? times[0] : 0;
  view.end = times.length ? times[times.length - 1] : 0;
  view.onState("replaying", `Replaying ${name}`);
  $("replay-info").textContent = `${name}: ${events.length} events…`;
  for (const e of events) view.push(e);
  await view.drained();
  if (generation !== view.generation) return; // another run or replay took over
  if (!events.length) view.onState("idle", `${name}: no events found`);
  else if (!view.done) view.onState("replayed (incomplete)", `Replayed ${name}; it has no final event`);
  $("replay-info").textContent = `${name}: ${events.length} events` +
    (skipped ? `, ${skipped} unreadable line${skipped === 1 ? "" : "s"} skipped` : "");
  busy(false);
}

function exportRun() {
  const text = view.events.map((e) => JSON.stringify(e)).join("\n") + "\n";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" }));
  a.download = "rlm-run-" + new Date().toISOString().replace(/[:.]/g, "-") + ".jsonl";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

$("run-form").addEventListener("submit", start);
$("stop").addEventListener("click", stop);
$("export").addEventListener("click", exportRun);
$("context-file").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  if (file) $("context").value = await file.text();
});
$("load-file").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  if (file) await replay(await file.text(), file.name);
  ev.target.value = "";
});
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) start(ev);
  else if (ev.key === "Escape" && controller) stop();
});
// For tests and the console: replay text directly, and read the view's counters.
window.rlmPage = {
  replay,
  stats: () => ({ events: view.events.length, subcalls: view.subcalls, pending: view.pending,
    done: view.done, ...view.states }),
};
busy(false);

// The progress page: runs a completion over the SSE stream (fetch + ReadableStream,
// since EventSource cannot POST), or replays a saved run (JSON lines of events).
// Events are queued and applied once per animation frame, so a run with thousands
// of sub-calls costs one layout per frame, not one per event.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const num = (v) => Number(v || 0); // int64 fields arrive as strings in protobuf JSON
  const LIMITS = ["max_iterations", "max_depth", "max_llm_calls", "max_total_tokens",
    "max_cost_usd", "timeout_seconds"];

  let run = null;        // {events, iterations, nodes, start, end, ...}
  let queue = [];
  let frame = 0;
  let controller = null;
  let clock = 0;

  function newRun() {
    return { events: [], iterations: new Map(), nodes: new Map(), pendingChildren: new Map(),
      start: 0, end: 0, tokens: 0, cost: 0, calls: 0, subcalls: 0, done: false, live: false };
  }

  function reset() {
    run = newRun();
    queue = [];
    $("iterations").replaceChildren();
    $("tree").replaceChildren();
    $("tree-summary").textContent = "none yet";
    $("answer-text").textContent = "";
    $("stop-reason").textContent = "–";
    $("export").disabled = true;
    meters();
  }

  function enqueue(event) {
    run.events.push(event);
    queue.push(event);
    if (!frame) frame = requestAnimationFrame(flush);
  }

  function flush() {
    frame = 0;
    const batch = queue;
    queue = [];
    for (const e of batch) apply(e);
    meters();
  }

  function setState(text) { $("state").textContent = text; }
  function announce(text) { $("announce").textContent = text; }

  function addUsage(u) {
    if (!u) return;
    run.tokens += num(u.promptTokens) + num(u.outputTokens) + num(u.thinkingTokens);
    run.cost += Number(u.costUsd || 0);
    run.calls += num(u.calls);
  }

  function meters() {
    const end = run.end || (run.live ? Date.now() : run.start);
    $("elapsed").textContent = run.start ? ((end - run.start) / 1000).toFixed(1) + " s" : "0.0 s";
    $("tokens").textContent = run.tokens.toLocaleString("en-US");
    $("cost").textContent = "$" + run.cost.toFixed(4);
    $("calls").textContent = String(run.calls);
  }

  function iteration(n) {
    let it = run.iterations.get(n);
    if (!it) {
      const li = document.createElement("li");
      li.className = "iteration";
      const h = document.createElement("h3");
      h.textContent = "Iteration " + n;
      const meta = document.createElement("div"); meta.className = "iter-meta";
      const text = document.createElement("div"); text.className = "model-text";
      const blocks = document.createElement("div");
      li.append(h, meta, text, blocks);
      $("iterations").append(li);
      it = { li, meta, text, blocks };
      run.iterations.set(n, it);
    }
    return it;
  }

  function node(id) {
    let n = run.nodes.get(id);
    if (!n) {
      const li = document.createElement("li");
      const line = document.createElement("div"); line.className = "node";
      const kids = document.createElement("ul");
      li.append(line, kids);
      n = { li, line, kids, data: {} };
      run.nodes.set(id, n);
    }
    return n;
  }

  function drawNode(n) {
    const d = n.data;
    const kind = d.kind === "SUB_CALL_KIND_RLM" ? "rlm_query" : "llm_query";
    const state = d.finished ? (d.error ? "error" : "ok") : "running";
    const u = d.usage || {};
    const tokens = num(u.promptTokens) + num(u.outputTokens) + num(u.thinkingTokens);
    n.line.innerHTML = "";
    const k = document.createElement("span");
    k.className = "kind" + (kind === "rlm_query" ? " rlm" : ""); k.textContent = kind;
    const s = document.createElement("span"); s.className = "state-" + state; s.textContent = " " + state;
    const rest = document.createElement("span");
    rest.textContent = " depth " + (d.depth || 0) + " · " + (d.model || "") +
      (d.finished ? " · " + Number(d.latencySeconds || 0).toFixed(2) + " s · " + tokens + " tok" : "") +
      (d.fellBackToLlm ? " · fell back to llm" : "") +
      " — " + (d.promptPreview || "").slice(0, 80);
    n.line.title = d.error ? (d.errorMessage || "error") : (d.responsePreview || "");
    n.line.append(k, s, rest);
  }

  function apply(e) {
    if (e.runStarted) {
      const r = e.runStarted;
      if (!r.depth) { setState("running"); announce("Run started"); }
    } else if (e.rootTurn) {
      const t = e.rootTurn;
      addUsage(t.usage);
      if (!t.depth) {
        const it = iteration(t.iteration);
        it.text.textContent = t.text || "";
        it.meta.textContent = Number(t.latencySeconds || 0).toFixed(2) + " s · " +
          (num(t.usage && t.usage.promptTokens) + num(t.usage && t.usage.outputTokens)) + " tokens";
      }
    } else if (e.rootTextDelta) {
      const t = e.rootTextDelta;
      if (!t.depth) iteration(t.iteration).text.textContent += t.text || "";
    } else if (e.codeBlock) {
      const c = e.codeBlock;
      if (!c.depth) {
        const it = iteration(c.iteration);
        const code = document.createElement("pre"); code.className = "code";
        code.setAttribute("aria-label", "Code, block " + ((c.blockIndex || 0) + 1));
        code.innerHTML = window.rlmHighlight(c.code || "");
        const out = document.createElement("pre");
        out.className = "output" + (c.error || c.timedOut ? " error" : "");
        out.setAttribute("aria-label", "Output");
        out.textContent = (c.stdout || "") + (c.stderr ? "\n" + c.stderr : "") ||
          "(no output)";
        it.blocks.append(code, out);
      }
    } else if (e.subCallStarted || e.subCallFinished) {
      const s = e.subCallStarted || e.subCallFinished;
      const n = node(s.callId);
      const fresh = !n.data.callId;
      Object.assign(n.data, s, { finished: !!e.subCallFinished });
      if (fresh) {
        run.subcalls++;
        const parent = s.parentId ? node(s.parentId).kids : $("tree");
        parent.append(n.li);
      }
      if (e.subCallFinished && (s.kind !== "SUB_CALL_KIND_RLM" || s.fellBackToLlm)) addUsage(s.usage);
      drawNode(n);
      $("tree-summary").textContent = run.subcalls + " sub-call" + (run.subcalls === 1 ? "" : "s");
    } else if (e.notice) {
      // Shown on the iteration list's tail: trimming, REPL restarts, retries.
      const p = document.createElement("p"); p.className = "iter-meta";
      p.textContent = "notice: " + (e.notice.message || e.notice.kind);
      $("iterations").append(p);
    } else if (e.finalAnswer) {
      const f = e.finalAnswer;
      $("answer-text").textContent = f.answer || "";
      $("stop-reason").textContent = (f.stopReason || "STOP_REASON_ANSWERED").replace("STOP_REASON_", "").toLowerCase();
      if (f.totalUsage) {
        run.tokens = num(f.totalUsage.promptTokens) + num(f.totalUsage.outputTokens) + num(f.totalUsage.thinkingTokens);
        run.cost = Number(f.totalUsage.costUsd || 0); run.calls = num(f.totalUsage.calls);
      }
      finish("answered");
    } else if (e.error) {
      $("answer-text").textContent = "Error " + e.error.code + ": " + e.error.message;
      $("stop-reason").textContent = "error";
      finish("error");
    }
  }

  function finish(state) {
    run.done = true;
    if (!run.end) run.end = run.live ? Date.now() : run.end;
    setState(state);
    announce("Run " + state);
    $("export").disabled = false;
  }

  function timeOf(e) { return e.time ? Date.parse(e.time) : 0; }

  function requestBody() {
    const body = { prompt: $("prompt").value };
    const ctx = $("context").value;
    if (ctx) body.context = ctx;
    for (const name of LIMITS) {
      const v = $(name).value.trim();
      if (v !== "") body[name] = Number(v);
    }
    return body;
  }

  async function start(ev) {
    if (ev) ev.preventDefault();
    if (controller) return;
    if (!$("prompt").value.trim()) { $("prompt").focus(); announce("Prompt is required"); return; }
    reset();
    run.live = true; run.start = Date.now();
    controller = new AbortController();
    $("run").disabled = true; $("stop").disabled = false;
    setState("connecting");
    clock = setInterval(meters, 200);
    try {
      const response = await fetch("/v1/completions:stream", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(requestBody()), signal: controller.signal });
      if (!response.ok) {
        let msg = response.statusText;
        try { msg = (await response.json()).error || msg; } catch (_) { /* not JSON */ }
        $("answer-text").textContent = "Error " + response.status + ": " + msg;
        finish("rejected");
        return;
      }
      await readStream(response.body);
    } catch (err) {
      if (err.name === "AbortError") { flush(); run.end = Date.now(); setState("stopped"); announce("Run stopped"); $("export").disabled = false; }
      else { $("answer-text").textContent = "Connection failed: " + err.message; finish("error"); }
    } finally {
      clearInterval(clock);
      if (!run.end) run.end = Date.now();
      controller = null;
      $("run").disabled = false; $("stop").disabled = true;
      meters();
    }
  }

  async function readStream(stream) {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frameText = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of frameText.split("\n")) {
          if (line.startsWith("data: ")) enqueue(JSON.parse(line.slice(6)));
        }
      }
    }
  }

  function stop() { if (controller) controller.abort(); }

  function replay(text) {
    reset();
    const events = [];
    for (const line of text.split("\n")) {
      const t = line.trim();
      if (!t) continue;
      try { events.push(JSON.parse(t)); } catch (_) { /* skip a torn last line */ }
    }
    events.sort((a, b) => num(a.seq) - num(b.seq));
    run.start = events.length ? timeOf(events[0]) : 0;
    run.end = events.length ? timeOf(events[events.length - 1]) : 0;
    for (const e of events) enqueue(e);
    if (!events.some((e) => e.finalAnswer || e.error)) { flush(); setState("replayed (incomplete)"); $("export").disabled = false; }
  }

  function exportRun() {
    const text = run.events.map((e) => JSON.stringify(e)).join("\n") + "\n";
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" }));
    a.download = "rlm-run-" + new Date().toISOString().replace(/[:.]/g, "-") + ".jsonl";
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  $("run-form").addEventListener("submit", start);
  $("stop").addEventListener("click", stop);
  $("export").addEventListener("click", exportRun);
  $("context-file").addEventListener("change", async (ev) => {
    const f = ev.target.files[0]; if (f) $("context").value = await f.text();
  });
  $("load-file").addEventListener("change", async (ev) => {
    const f = ev.target.files[0]; if (f) replay(await f.text());
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) start(ev);
    else if (ev.key === "Escape" && controller) stop();
  });
  window.rlmPage = { replay, stats: () => ({ events: run.events.length, subcalls: run.subcalls, done: run.done }) };
  reset();
})();

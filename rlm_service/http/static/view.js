// The run's view: iterations, the sub-call tree and the meters. Events are queued
// and applied in animation frames with a time budget, so a run with thousands of
// sub-calls (or a large saved file) never blocks input for longer than a frame.
import { kindOf, num } from "./events.js";

const $ = (id) => document.getElementById(id);
const FRAME_BUDGET_MS = 8;
const tokensOf = (u) => (u ? num(u.promptTokens) + num(u.outputTokens) + num(u.thinkingTokens) : 0);
const el = (tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
};

function highlight(code) {
  const prism = window.Prism;
  if (!prism || !prism.languages.python) return null;
  return prism.highlight(code, prism.languages.python, "python");
}

// The model's reply without its code blocks, which are shown (highlighted, with
// their output) right below it. The same fences as rlm_service/run/parsing.py.
const FENCE = /```(?:repl|python|py)[ \t]*\r?\n[\s\S]*?```/gi;
function showText(target, text) {
  const parts = [];
  let last = 0;
  let block = 0;
  for (const m of text.matchAll(FENCE)) {
    parts.push(text.slice(last, m.index), el("span", "fence", `[code block ${++block}, below]`));
    last = m.index + m[0].length;
  }
  parts.push(text.slice(last));
  target.replaceChildren(...parts);
}

export class RunView {
  constructor() { this.reset(); }

  reset() {
    this.generation = (this.generation || 0) + 1;
    this.waiters = [];
    this.events = [];
    this.queue = [];
    this.head = 0;
    this.iterations = new Map();
    this.nodes = new Map();
    this.depths = new Map();     // depth -> {llm, rlm}
    this.states = { running: 0, ok: 0, error: 0 };
    this.tokens = 0; this.cost = 0; this.calls = 0; this.subcalls = 0;
    this.start = 0; this.end = 0; this.live = false; this.done = false;
    this.duration = null;
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    $("iterations").replaceChildren();
    $("tree").replaceChildren();
    $("tree-summary").textContent = "none yet";
    $("run-info").textContent = "";
    $("answer-text").textContent = "";
    $("stop-reason").textContent = "–";
    this.meters();
  }

  push(event) {
    this.events.push(event);
    this.queue.push(event);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  // Applies queued events until the frame's budget is spent; the rest wait for
  // the next frame.
  flush() {
    this.frame = 0;
    const t0 = performance.now();
    while (this.head < this.queue.length) {
      this.apply(this.queue[this.head++]);
      if ((this.head & 15) === 0 && performance.now() - t0 > FRAME_BUDGET_MS) break;
    }
    this.summary();
    this.meters();
    if (this.head < this.queue.length) { this.frame = requestAnimationFrame(() => this.flush()); return; }
    this.queue = []; this.head = 0;
    for (const resolve of this.waiters.splice(0)) resolve();
  }

  // Resolves once every queued event is on screen.
  drained() {
    if (!this.pending) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  get pending() { return this.queue.length - this.head; }

  meters() {
    const end = this.end || (this.live ? Date.now() : this.start);
    const secs = this.duration !== null ? this.duration : (this.start ? (end - this.start) / 1000 : 0);
    $("elapsed").textContent = secs.toFixed(1) + " s";
    $("tokens").textContent = this.tokens.toLocaleString("en-US");
    $("cost").textContent = "$" + this.cost.toFixed(4);
    $("calls").textContent = String(this.calls);
  }

  summary() {
    if (!this.subcalls) return;
    const parts = [...this.depths.entries()].sort((a, b) => a[0] - b[0]).map(([d, c]) =>
      `depth ${d}: ${c.llm} llm_query, ${c.rlm} rlm_query`);
    const s = this.states;
    $("tree-summary").textContent = `${this.subcalls} sub-call${this.subcalls === 1 ? "" : "s"}` +
      ` (${s.running} running, ${s.ok} ok, ${s.error} failed) · ${parts.join(" · ")}`;
  }

  // Usage inside a child run also counts towards every rlm_query above it.
  addUsage(u, callId) {
    const tokens = tokensOf(u);
    for (let n = this.nodes.get(callId); n && tokens; n = this.nodes.get(n.data.parentId)) {
      n.inner += tokens;
      if (n.data.callId) this.drawNode(n);
    }
    this.tokens += tokens;
    this.cost += Number((u && u.costUsd) || 0);
    this.calls += num(u && u.calls);
  }

  // The whole run's usage when the server reports it: never below what was added.
  setUsage(u) {
    if (!u) return;
    this.tokens = Math.max(this.tokens, tokensOf(u));
    this.cost = Math.max(this.cost, Number(u.costUsd || 0));
    this.calls = Math.max(this.calls, num(u.calls));
  }

  iteration(n) {
    let it = this.iterations.get(n);
    if (!it) {
      const li = el("li", "iteration");
      li.append(el("h3", "", "Iteration " + n));
      it = { li, meta: el("div", "iter-meta"), text: el("div", "model-text"), blocks: el("div") };
      li.append(it.meta, it.text, it.blocks);
      $("iterations").append(li);
      this.iterations.set(n, it);
    }
    return it;
  }

  node(id) {
    let n = this.nodes.get(id);
    if (!n) {
      const li = el("li");
      n = { li, line: el("div", "node"), kids: el("ul"), data: {}, state: null, iters: 0, inner: 0 };
      li.append(n.line, n.kids);
      this.nodes.set(id, n);
    }
    return n;
  }

  drawNode(n) {
    const d = n.data;
    const rlm = d.kind === "SUB_CALL_KIND_RLM";
    const state = !d.finished ? "running" : d.error ? "error" : "ok";
    if (n.state) this.states[n.state]--;
    this.states[state]++;
    n.state = state;
    n.line.dataset.state = state;
    const tool = d.kind === "SUB_CALL_KIND_TOOL";
    const facts = ["depth " + num(d.depth), d.model || d.tool || "?"];
    const tokens = Math.max(tokensOf(d.usage), n.inner);
    if (d.finished) facts.push(Number(d.latencySeconds || 0).toFixed(2) + " s");
    if (d.finished || tokens) facts.push(tokens + " tok");
    if (n.iters) facts.push(n.iters + " iteration" + (n.iters === 1 ? "" : "s"));
    if (d.fellBackToLlm) facts.push("ran as llm_query at max depth");
    const preview = (d.promptPreview || "").slice(0, 80);
    const label = rlm ? "rlm_query" : tool ? "tool" : "llm_query";
    const parts = [el("span", "kind" + (rlm ? " rlm" : ""), label),
      el("span", "state state-" + state, state), el("span", "facts", facts.join(" · ")),
      el("span", "preview", preview)];
    // Shown, not only in a tooltip: keyboard and screen-reader users get it too.
    if (d.error) parts.push(el("div", "error-message", d.errorMessage || "failed"));
    n.line.replaceChildren(...parts);
    n.line.title = d.responsePreview || "";
  }

  apply(e) {
    const kind = kindOf(e);
    const v = e[kind];
    if (kind === "runStarted" && !num(v.depth)) {
      this.onState("running", "Run started");
      $("run-info").textContent = [v.requestId, "root " + v.rootModel, "sub " + v.subModel,
        num(v.contextChars).toLocaleString("en-US") + " context chars (" + (v.contextType || "str") + ")",
        "sandbox: " + (v.sandboxLayers || []).join(", ")].join(" · ");
    } else if (kind === "rootTurn") {
      this.addUsage(v.usage, v.callId);
      if (num(v.depth)) { this.childIteration(v.callId); return; }
      const it = this.iteration(v.iteration);
      showText(it.text, v.text || "");
      it.meta.textContent = Number(v.latencySeconds || 0).toFixed(2) + " s · " + tokensOf(v.usage) + " tokens";
    } else if (kind === "rootTextDelta" && !num(v.depth)) {
      this.iteration(v.iteration).text.textContent += v.text || "";
    } else if (kind === "codeBlock" && !num(v.depth)) {
      this.codeBlock(v);
    } else if (kind === "subCallStarted" || kind === "subCallFinished") {
      this.subCall(v, kind === "subCallFinished");
    } else if (kind === "notice" && !num(v.depth)) {
      $("iterations").append(el("li", "notice", "notice: " + (v.message || v.kind)));
    } else if (kind === "finalAnswer") {
      $("answer-text").textContent = v.answer || "";
      const reason = (v.stopReason || "STOP_REASON_ANSWERED").replace("STOP_REASON_", "").toLowerCase();
      $("stop-reason").textContent = reason + (v.forced ? " (forced answer)" : "");
      this.setUsage(v.totalUsage);
      if (v.durationSeconds !== undefined) this.duration = Number(v.durationSeconds);
      this.finish("answered");
    } else if (kind === "error") {
      $("answer-text").textContent = "Error " + v.code + ": " + v.message;
      $("stop-reason").textContent = "error: " + v.code;
      this.setUsage(v.totalUsage);
      this.finish(v.code === "CANCELLED" ? "cancelled" : "error");
    }
  }

  codeBlock(c) {
    const it = this.iteration(c.iteration);
    // role=group: a <pre> has no role, so screen readers would drop its name.
    const code = el("pre", "code language-python");
    code.setAttribute("role", "group");
    code.setAttribute("aria-label", `Code, iteration ${c.iteration}, block ${num(c.blockIndex)}`);
    const html = highlight(c.code || "");
    if (html === null) code.textContent = c.code || ""; else code.innerHTML = html;
    const failed = c.error || c.timedOut;
    const out = el("pre", "output" + (failed ? " error" : ""),
      [c.stdout, c.stderr].filter(Boolean).join("\n") || "(no output)");
    out.setAttribute("role", "group");
    out.setAttribute("aria-label", "Output" + (c.timedOut ? " (timed out)" : failed ? " (error)" : ""));
    it.blocks.append(code, out);
    if (c.replRestarted) it.blocks.append(el("p", "notice", "The REPL was restarted; its variables were lost."));
  }

  subCall(s, finished) {
    const n = this.node(s.callId);
    if (!n.data.callId) {
      this.subcalls++;
      const depth = num(s.depth);
      const count = this.depths.get(depth) || { llm: 0, rlm: 0 };
      count[s.kind === "SUB_CALL_KIND_RLM" ? "rlm" : "llm"]++;
      this.depths.set(depth, count);
      (s.parentId ? this.node(s.parentId).kids : $("tree")).append(n.li);
    }
    Object.assign(n.data, s, { finished: finished || !!n.data.finished });
    if (finished) {
      if (s.kind !== "SUB_CALL_KIND_RLM" || s.fellBackToLlm) this.addUsage(s.usage, s.parentId);
      this.setUsage(s.runUsage);
    }
    this.drawNode(n);
  }

  childIteration(callId) {
    const n = this.nodes.get(callId);
    if (!n) return;
    n.iters++;
    if (n.data.callId) this.drawNode(n);
  }

  onState(state, message) {
    $("state").textContent = state;
    $("announce").textContent = message;
  }

  finish(state) {
    this.done = true;
    if (!this.end && this.live) this.end = Date.now();
    this.onState(state, "Run " + state);
  }
}

// Event input for the page: the SSE stream of a live run, and saved runs.
// Saved runs come in two spellings of the same protobuf JSON mapping: the page's
// own export and the SSE stream use lowerCamelCase keys, `rlm run --save` keeps
// the proto field names (snake_case). Both become lowerCamelCase here, so the
// view reads one shape.

const camel = (key) => key.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());

export function normalize(value) {
  if (Array.isArray(value)) return value.map(normalize);
  if (value === null || typeof value !== "object") return value;
  const out = {};
  for (const [k, v] of Object.entries(value)) out[camel(k)] = normalize(v);
  return out;
}

// int64 fields arrive as strings in protobuf JSON; absent fields are defaults.
export const num = (v) => Number(v || 0);

export const KINDS = ["runStarted", "rootTurn", "rootTextDelta", "codeBlock", "subCallStarted",
  "subCallFinished", "heartbeat", "notice", "finalAnswer", "error"];

export const kindOf = (e) => KINDS.find((k) => e[k] !== undefined);

// Splits the SSE byte stream into events. Comments (heartbeats) are skipped;
// a frame may carry several data lines, which SSE joins with newlines.
export class SseParser {
  constructor() { this.buffer = ""; }

  // One pass over the buffer and one slice at the end: a chunk may hold
  // hundreds of frames, and slicing the rest after each would be quadratic.
  feed(text) {
    const buffer = this.buffer + text.replace(/\r\n?/g, "\n");
    const events = [];
    let from = 0;
    let cut;
    while ((cut = buffer.indexOf("\n\n", from)) >= 0) {
      const frame = buffer.slice(from, cut);
      from = cut + 2;
      const data = frame.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(l.startsWith("data: ") ? 6 : 5));
      if (data.length) events.push(normalize(JSON.parse(data.join("\n"))));
    }
    this.buffer = buffer.slice(from);
    return events;
  }
}

// A saved run: JSON lines (or a JSON array, or a captured SSE stream). Lines that
// are not events are counted, not fatal: a run saved while it was killed may end
// in a torn line. Events are put in `seq` order; one without a seq (the status
// line `rlm` adds when a call ends without an error event) goes after every
// event above it in the file.
export function parseSaved(text) {
  let items = [];
  let skipped = 0;
  const trimmed = text.trim();
  if (trimmed.startsWith("[")) {
    try { items = JSON.parse(trimmed); } catch (_) { items = []; skipped++; }
  } else {
    for (const raw of trimmed.split(/\r?\n/)) {
      const line = raw.trim().replace(/^data: ?/, "");
      if (!line || line.startsWith(":") || /^(id|event|retry):/.test(line)) continue;
      try { items.push(JSON.parse(line)); } catch (_) { skipped++; }
    }
  }
  const events = [];
  let last = 0;
  items.forEach((item, index) => {
    const e = normalize(item);
    if (!e || typeof e !== "object" || !kindOf(e)) { skipped++; return; }
    const seq = num(e.seq);
    last = Math.max(last, seq);
    events.push({ e, key: seq || last + 0.5, index });
  });
  events.sort((a, b) => a.key - b.key || a.index - b.index);
  return { events: events.map((x) => x.e), skipped };
}

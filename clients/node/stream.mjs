#!/usr/bin/env node
// Streams one rlm-service run and prints each CompletionEvent as one JSON line,
// in the protobuf JSON mapping with proto field names (what grpcurl and `rlm run --json` print).
//
//   node clients/node/stream.mjs HOST:PORT PROMPT [CONTEXT_FILE]
//
// CONTEXT_FILE: a .json file is sent as its list or object, anything else as text, - = stdin.
// Exit codes: 0 the stream ended OK, 2 bad input (usage, unreadable file, INVALID_ARGUMENT),
// 4 any other gRPC error (unavailable, failed, deadline), 130 interrupted.
import { readFileSync } from "node:fs";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

// The repo's own proto files, loaded at run time: shared with the server, never copied.
const PROTO_ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "proto");

const USAGE = "usage: node stream.mjs HOST:PORT PROMPT [CONTEXT_FILE]";

function fail(message, code) {
  process.stderr.write(`stream.mjs: ${message}\n`);
  process.exit(code);
}

// A JSON value as a google.protobuf.Value message. proto-loader takes the
// well-known types from protobufjs's bundled copies, whose field names are
// lowerCamel whatever keepCase says.
function toValue(v) {
  if (v === null) return { nullValue: "NULL_VALUE" };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  switch (typeof v) {
    case "string": return { stringValue: v };
    case "number": return { numberValue: v };
    case "boolean": return { boolValue: v };
    default: {
      const fields = {};
      for (const [k, x] of Object.entries(v)) fields[k] = toValue(x);
      return { structValue: { fields } };
    }
  }
}

function readContext(name) {
  let text;
  try {
    text = readFileSync(name === "-" ? 0 : name, "utf8");
  } catch (err) {
    fail(`${name}: ${err.code === "ENOENT" ? "no such file" : err.message}`, 2);
  }
  if (name === "-" || extname(name).toLowerCase() !== ".json") return { stringValue: text };
  try {
    return toValue(JSON.parse(text));
  } catch (err) {
    fail(`${name}: invalid JSON: ${err.message}`, 2);
  }
}

// 0, 3, 6 or 9 fractional digits, as the protobuf JSON mapping writes them.
function timestamp({ seconds, nanos }) {
  const whole = new Date(Number(seconds) * 1000).toISOString().slice(0, 19);
  const digits = nanos === 0 ? 0 : nanos % 1e6 === 0 ? 3 : nanos % 1e3 === 0 ? 6 : 9;
  const fraction = digits ? "." + String(nanos).padStart(9, "0").slice(0, digits) : "";
  return `${whole}${fraction}Z`;
}

// Timestamps as RFC 3339, like the protobuf JSON mapping; the oneof's virtual
// `event` field is left out because the set field's own name already says it.
function toJson(event) {
  const out = {};
  for (const [key, value] of Object.entries(event)) {
    if (key === "event") continue;
    if (key === "time" && value) {
      out.time = timestamp(value);
      continue;
    }
    out[key] = value;
  }
  return JSON.stringify(out);
}

const [target, prompt, contextFile] = process.argv.slice(2);
if (!target || prompt === undefined) fail(USAGE, 2);

const definition = protoLoader.loadSync("rlm/v1/rlm.proto", {
  includeDirs: [PROTO_ROOT],
  keepCase: true, // proto field names, as in the .proto file and in grpcurl's output
  longs: String, // int64 as strings, as the protobuf JSON mapping has them
  enums: String,
  defaults: false,
  oneofs: true,
});
const rlm = grpc.loadPackageDefinition(definition).rlm.v1;
const client = new rlm.RLMService(target, grpc.credentials.createInsecure(), {
  "grpc.max_send_message_length": 512 * 1024 * 1024,
  "grpc.max_receive_message_length": 512 * 1024 * 1024,
});

const request = { prompt };
if (contextFile !== undefined) request.context = readContext(contextFile);

const call = client.StreamCompletion(request);
// Ctrl-C cancels the call, and with it the run on the server.
process.on("SIGINT", () => {
  call.cancel();
  process.exitCode = 130;
});
// The reader went away (`... | head`): stop the run rather than die on EPIPE.
process.stdout.on("error", () => {
  call.cancel();
  process.exitCode = 141;
});
call.on("data", (event) => process.stdout.write(toJson(event) + "\n"));
call.on("error", (err) => {
  if (err.code === grpc.status.CANCELLED && process.exitCode) return;
  const name = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) ?? err.code;
  process.stderr.write(`stream.mjs: ${name}: ${err.details}\n`);
  process.exitCode = err.code === grpc.status.INVALID_ARGUMENT ? 2 : 4;
});
call.on("end", () => client.close());

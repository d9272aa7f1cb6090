// An independent reader of the bus for the end-to-end tests: subscribes with
// the npm `nats` client (not the project's nats.c code) and decodes every
// batch with `protobufjs` and pkg/events.proto (not protobuf-c).
//
//   node tests/js/sub.mjs --server nats://127.0.0.1:4222 --subject 'ebpf.events.>'
//        [--count N] [--timeout MS] [--user U --pass P] [--proto pkg/events.proto]
//        [--raw DIR]   (also writes each message body to DIR/<n>.bin, n = 1, 2, ...)
//
// Prints {"ready":true} once the subscription is registered with the server,
// then one JSON line per message:
//   {"subject":..., "headers":{name:value}, "size":bytes, "at_ms":ms since ready,
//    "recv_ms":wall-clock ms, "batch":{EventBatch, longs as strings, ids as 16 hex chars}}   (protobuf)
//   (in "batch", addresses and pods[].ips are text; each event's k8s_* fields, k8s_workload and
//   k8s_workload_kind included, are filled from its pod_ref entry when empty; close, exec, dns
//   and the other details as protobufjs decodes them, enums by name, bytes as text)
//   {"subject":..., "headers":..., "size":..., "at_ms":..., "lines":[parsed JSON]}  (JSON)
// and a line {"error":"..."} for a message it cannot decode. Exits after N
// messages or when the timeout passes (status 0 either way; the caller counts).
import { connect } from "nats";
import protobuf from "protobufjs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { writeFileSync } from "node:fs";
import { addr, eventText } from "./event_text.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const opts = {
  server: "nats://127.0.0.1:4222",
  subject: "ebpf.events.>",
  count: 0, // 0 = until the timeout
  timeout: 10000,
  user: undefined,
  pass: undefined,
  proto: path.join(here, "..", "..", "pkg", "events.proto"),
  raw: undefined,
};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const key = argv[i].replace(/^--/, "");
  if (!(key in opts) || i + 1 >= argv.length) {
    console.error(`usage: sub.mjs [--server URL] [--subject S] [--count N] [--timeout MS] ` +
      `[--user U --pass P] [--proto FILE] [--raw DIR]; bad argument ${argv[i]}`);
    process.exit(2);
  }
  opts[key] = ["count", "timeout"].includes(key) ? Number(argv[i + 1]) : argv[i + 1];
}

// keepCase: field names exactly as in the .proto (agent_instance, not agentInstance).
const root = await new protobuf.Root().load(opts.proto, { keepCase: true });
const EventBatch = root.lookupType("ebpfmonitor.EventBatch");

function decodeBatch(data) {
  const msg = EventBatch.decode(data);
  const obj = EventBatch.toObject(msg, { longs: String, enums: String, defaults: true });
  // Bytes fields as text and ids as the API's 16 hex chars, so tests can compare.
  // A pod's ips (4 or 16 bytes each) as the comma-separated text the agent keeps.
  // An event's pod_ref (1-based into batch.pods) fills the k8s_* fields it left empty.
  obj.pods = msg.pods.map((p, i) => {
    const o = obj.pods[i];
    for (const b of p.ips)
      if (b.length !== 4 && b.length !== 16) throw new Error(`pods[${i}]: ip of ${b.length} bytes`);
    o.ips = p.ips.length ? p.ips.map(addr).join(",") : undefined;
    return o;
  });
  const podFields = [
    "node_name", "pod_name", "namespace", "container_id", "pod_uid", "workload", "workload_kind",
  ];
  obj.events = msg.events.map((ev, i) => {
    const o = obj.events[i];
    const ref = o.pod_ref ? obj.pods[o.pod_ref - 1] : undefined;
    if (o.pod_ref && !ref) throw new Error(`event ${i}: pod_ref ${o.pod_ref} past the pod table`);
    if (ref) for (const f of podFields) if (!o[`k8s_${f}`]) o[`k8s_${f}`] = ref[f];
    return eventText(ev, o);
  });
  return obj;
}

const nc = await connect({
  servers: opts.server,
  user: opts.user,
  pass: opts.pass,
  maxReconnectAttempts: -1,
});
const sub = nc.subscribe(opts.subject);
await nc.flush(); // the server has the subscription now
const start = Date.now();
console.log(JSON.stringify({ ready: true }));

const timer = setTimeout(() => sub.unsubscribe(), opts.timeout);
let n = 0;
for await (const m of sub) {
  const headers = {};
  if (m.headers) for (const [k, v] of m.headers) headers[k] = v.length === 1 ? v[0] : v;
  const now = Date.now();
  const line = { subject: m.subject, headers, size: m.data.length, at_ms: now - start, recv_ms: now };
  const ctype = headers["Content-Type"] || "";
  try {
    if (ctype.includes("json")) {
      line.lines = Buffer.from(m.data)
        .toString("utf8")
        .split("\n")
        .filter((l) => l.length > 0)
        .map((l) => JSON.parse(l));
    } else {
      line.batch = decodeBatch(m.data);
    }
  } catch (e) {
    line.error = String(e && e.message ? e.message : e);
  }
  n++;
  if (opts.raw) writeFileSync(path.join(opts.raw, `${n}.bin`), m.data);
  console.log(JSON.stringify(line));
  if (opts.count > 0 && n >= opts.count) break;
}
clearTimeout(timer);
await nc.close();

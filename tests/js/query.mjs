// An independent client of the aggregator replicas' query protocol for the
// end-to-end tests: asks every replica for its share of an /api/events query
// exactly as a replica asks its peers (cmd/aggregator/cluster.c), with the npm
// `nats` client (not nats.c), and decodes each QueryReply with `protobufjs`
// and pkg/events.proto (not protobuf-c).
//
//   node tests/js/query.mjs --server nats://127.0.0.1:4222 --group ebpf-aggregator
//        --query 'peer_pod=web-0&limit=10' [--replicas N] [--timeout MS]
//        [--control ebpf.control] [--replica HEX] [--user U --pass P] [--proto pkg/events.proto]
//
// The request: {"replica":<id>,"query":<the query string>} published on
// <control>.<group>.query (CONTROL_SUBJECT, QUEUE_GROUP) with a reply inbox of
// its own. <id> (1-16 lowercase hex digits, default random) must not be an answering
// replica's: a replica ignores a request it sent itself. Every replica in
// the group answers with its own matches (not the cluster's), newest first.
//
// Prints one JSON line per answer, in arrival order:
//   {"replica":..., "total_count":"n", "has_more":bool, "error":"..." (only when set),
//    "events":[Event as protobufjs decodes it, longs as strings, enums by name]}
//   (each event: id as the API's 16 hex chars, command and exec/dns bytes as text,
//   source_addr and dest_addr as text; the k8s_* and peer_* fields as sent, an
//   unset one as "", numbers unset as 0)
// a line {"decode_error":"..."} for an answer it cannot decode, and last
// {"done":true,"answers":n}. Waits for N answers (--replicas) or the timeout,
// whichever comes first; exits 0 either way (the caller counts), 2 on bad usage.
import { connect, createInbox } from "nats";
import protobuf from "protobufjs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { eventText } from "./event_text.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const opts = {
  server: "nats://127.0.0.1:4222",
  group: "ebpf-aggregator",
  control: "ebpf.control",
  query: "",
  replicas: 0, // 0 = until the timeout
  timeout: 5000,
  replica: randomBytes(8).toString("hex"),
  user: undefined,
  pass: undefined,
  proto: path.join(here, "..", "..", "pkg", "events.proto"),
};
const usage =
  "usage: query.mjs [--server URL] [--group G] [--control SUBJECT] --query QS " +
  "[--replicas N] [--timeout MS] [--replica HEX] [--user U --pass P] [--proto FILE]";
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const key = argv[i].replace(/^--/, "");
  if (!(key in opts) || i + 1 >= argv.length) {
    console.error(`${usage}; bad argument ${argv[i]}`);
    process.exit(2);
  }
  opts[key] = ["replicas", "timeout"].includes(key) ? Number(argv[i + 1]) : argv[i + 1];
}
// A replica id is 1-16 lowercase hex digits (cluster_replica_id_valid).
if (!/^[0-9a-f]{1,16}$/.test(opts.replica)) {
  console.error(`${usage}; --replica must be 1-16 lowercase hex digits, not ${opts.replica}`);
  process.exit(2);
}

// keepCase: field names exactly as in the .proto (peer_pod, not peerPod).
const root = await new protobuf.Root().load(opts.proto, { keepCase: true });
const QueryReply = root.lookupType("ebpfmonitor.QueryReply");

function decodeReply(data) {
  const msg = QueryReply.decode(data);
  const obj = QueryReply.toObject(msg, { longs: String, enums: String, defaults: true });
  obj.error = obj.error || undefined;
  obj.events = msg.events.map((ev, i) => {
    for (const b of [ev.source_addr, ev.dest_addr])
      if (b && b.length && b.length !== 4 && b.length !== 16)
        throw new Error(`event ${i}: an address of ${b.length} bytes`);
    return eventText(ev, obj.events[i]);
  });
  return obj;
}

const nc = await connect({ servers: opts.server, user: opts.user, pass: opts.pass });
const inbox = createInbox();
const sub = nc.subscribe(inbox);
const timer = setTimeout(() => sub.unsubscribe(), opts.timeout);
const request = JSON.stringify({ replica: opts.replica, query: opts.query });
nc.publish(`${opts.control}.${opts.group}.query`, new TextEncoder().encode(request), {
  reply: inbox,
});

let n = 0;
for await (const m of sub) {
  if (m.data.length === 0) continue; // a status message (no responders), not an answer
  let line;
  try {
    line = decodeReply(m.data);
  } catch (e) {
    line = { decode_error: String(e && e.message ? e.message : e) };
  }
  console.log(JSON.stringify(line));
  n++;
  if (opts.replicas > 0 && n >= opts.replicas) break;
}
clearTimeout(timer);
console.log(JSON.stringify({ done: true, answers: n }));
await nc.close();

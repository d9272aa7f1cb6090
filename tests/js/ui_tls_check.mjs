// The web page over TLS (issue 12), in Debian's chromium with playwright-core,
// against a real aggregator started by tests/test_e2e_ui.c with TLS_CERT and
// TLS_KEY (a self-signed certificate the test made) and API_TOKEN set.
// Environment: TLS_URL (https://127.0.0.1:<port>), TOKEN, MARKER (path of a
// marker program to run), MARKER_NAME (its command name), NODE (the agent's
// node name), SHOTS (directory for the screenshot), CHROMIUM (default
// /usr/bin/chromium). The browser context ignores certificate errors (the
// certificate is self-signed), as a user would click through. Prints
// "ok: <step>" per step and "ui-tls: pass" at the end; exits 1 on a failed
// step, 3 when a tool is missing.
import { execFile } from 'node:child_process';
import { assert, env, launch, result, step } from './ui_lib.mjs';

const URL_TLS = env('TLS_URL');
const TOKEN = env('TOKEN');
const MARKER = env('MARKER');
const MARKER_NAME = env('MARKER_NAME');
const NODE = env('NODE');
const SHOTS = env('SHOTS');
const origin = new URL(URL_TLS).origin;

const browser = await launch();
const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: true });
const page = await ctx.newPage();
const errors = [];
const requests = [];
let expect401 = true;
page.on('console', (m) => {
  // The 401 that makes the page ask for the token is reported as a failed load; expected only then.
  if (m.type() === 'error' && !(expect401 && /status of 401/.test(m.text())))
    errors.push('console: ' + m.text());
});
page.on('pageerror', (e) => errors.push('page error: ' + e.message));
page.on('request', (r) => requests.push(r.url()));
page.on('response', (r) => {
  if (r.status() === 401 && !expect401)
    errors.push('unexpected 401 for ' + r.url());
});

const runMarker = () => new Promise((resolve, reject) =>
  execFile(MARKER, [], (err, stdout) => (err ? reject(err) : resolve(stdout))));

await step('the page loads over https and takes the token', async () => {
  const res = await page.goto(URL_TLS + '/', { waitUntil: 'domcontentloaded' });
  assert(res && res.status() === 200, 'GET / over https: ' + (res && res.status()));
  assert(page.url().startsWith('https://'), 'the page is at ' + page.url());
  assert(await page.evaluate(() => location.protocol === 'https:' && window.isSecureContext), 'not a secure context');
  await page.waitForSelector('#token-form:not([hidden])', { timeout: 10000 });
  await page.fill('#token-input', TOKEN);
  await page.click('#token-form button');
  await page.waitForSelector('#view-live[data-stream="open"]', { timeout: 10000 });
  expect401 = false;
});

await step('Live receives a marked exec through the stream over TLS', async () => {
  await runMarker();
  await page.waitForFunction((c) => live.rows.some((e) => e.command === c && e.type === 'exec'), MARKER_NAME, { timeout: 10000 });
});

await step('Nodes renders the node', async () => {
  await page.evaluate(() => { delete document.body.dataset.loaded; });
  await page.click('nav a[data-view="nodes"]');
  await page.waitForFunction(() => document.body.dataset.loaded === 'nodes', null, { timeout: 10000 });
  await page.waitForSelector('#nodes tr[data-node="' + NODE + '"]', { timeout: 10000 });
  const status = await page.$eval('#nodes tr[data-node="' + NODE + '"] td:nth-child(2)', (td) => td.textContent);
  assert(status === 'active', 'node ' + NODE + ' is ' + status);
  await page.screenshot({ path: SHOTS + '/tls.png' });
});

await step('every request went over https to the page\'s origin', async () => {
  const other = requests.filter((u) => new URL(u).origin !== origin);
  assert(requests.length > 0, 'no requests recorded');
  assert(other.length === 0, 'requests elsewhere: ' + other.join(', '));
  assert(requests.some((u) => new URL(u).pathname === '/api/events/stream'), 'no /api/events/stream request: ' + requests.join(', '));
  console.log('  ' + requests.length + ' requests, all to ' + origin);
});

await step('no console errors', async () => {
  assert(errors.length === 0, errors.join('\n'));
});

await browser.close();
console.log(result.failed ? 'ui-tls: FAIL' : 'ui-tls: pass');
process.exit(result.failed ? 1 : 0);

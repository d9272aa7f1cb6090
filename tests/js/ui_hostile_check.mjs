// Hostile names in the page, in Debian's chromium with playwright-core, against
// the aggregator tests/test_e2e_ui.c started, after it made the events described
// in the JSON file HOSTILE (a program run with markup for its name and arguments,
// failed connects of a process named with markup, one without a source address,
// a Kubernetes node's batch whose names are markup). Every view: no dialog, no
// element or handler injected, the names shown as sent, no "undefined" or "null",
// no address with an empty port, and nothing wider than the window.
// Environment: AGGREGATOR_URL, TOKEN, HOSTILE, SHOTS, CHROMIUM. Prints
// "ok: <step>" and "ui-hostile: pass"; exits 1 on a failed step, 3 when a tool is missing.
import { readFileSync } from 'node:fs';
import { assert, env, launch, result, step } from './ui_lib.mjs';

const AGG = env('AGGREGATOR_URL');
const TOKEN = env('TOKEN');
const H = JSON.parse(readFileSync(env('HOSTILE'), 'utf8'));
const SHOTS = env('SHOTS');

const browser = await launch();
const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
await ctx.addInitScript((t) => sessionStorage.setItem('ebpf-monitor-token', t), TOKEN);
const page = await ctx.newPage();
const dialogs = [], errors = [], strays = [];
page.on('dialog', (d) => { dialogs.push(d.type() + ': ' + d.message()); d.dismiss().catch(() => {}); });
page.on('pageerror', (e) => errors.push('page error: ' + e.message));
page.on('console', (m) => { if (m.type() === 'error') errors.push('console: ' + m.text()); });
// An injected <img src=x> would ask for /x.
page.on('request', (r) => { if (!/\/(api\/|ui\/|ready$|$|#)/.test(new URL(r.url()).pathname)) strays.push(r.url()); });

// What markup or a handler would have added: nothing.
async function nothingInjected(view) {
  const found = await page.evaluate(() => {
    const bad = [...document.querySelectorAll('img, iframe, object, embed, script:not([src]), main svg svg, foreignObject')]
      .map((e) => e.outerHTML.slice(0, 80));
    document.querySelectorAll('*').forEach((e) => [...e.attributes].forEach((a) => {
      if (/^on/i.test(a.name) || ((a.name === 'href' || a.name === 'src') && /^\s*javascript:/i.test(a.value)))
        bad.push(e.tagName + ' ' + a.name + '=' + a.value.slice(0, 60));
    }));
    return bad;
  });
  assert(found.length === 0, view + ': injected: ' + found.join(', '));
  assert(dialogs.length === 0, view + ': dialogs: ' + dialogs.join(', '));
  const wide = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
  await page.screenshot({ path: SHOTS + '/hostile-' + view + '.png' });
  assert(wide <= 0, view + ': the page is ' + wide + ' px wider than the window');
}

async function openHash(hash, view) {
  await page.goto(AGG + '/' + hash, { waitUntil: 'domcontentloaded' });
  await page.waitForFunction((v) => document.body.dataset.loaded === v, view, { timeout: 15000 });
}

// The Live rows' cells (the rows in the DOM), once n rows are there.
async function liveCells(hash, n) {
  await openHash(hash, 'live');
  await page.waitForFunction((k) => document.querySelectorAll('#events tbody tr.ev').length >= k, n, { timeout: 15000 });
  return page.$$eval('#events tbody tr.ev', (trs) => trs.map((t) => [...t.children].map((c) => c.textContent)));
}

const noPlaceholder = (text, where) =>
  assert(!/undefined|null|NaN|:(\s|$)/.test(text), where + ': ' + JSON.stringify(text.slice(0, 200)));

await step('an exec with markup for its name and arguments is text in Live and its details', async () => {
  const rows = await liveCells('#live?' + new URLSearchParams({ command: H.exec_comm, type: 'exec' }), 1);
  const [cells] = rows;
  assert(cells[4] === H.exec_comm, 'command cell: ' + cells[4]);
  assert(cells[6].startsWith(H.exec_file + ' ' + H.exec_args.join(' ')), 'detail cell: ' + cells[6].slice(0, 300));
  await page.click('#events tbody tr.ev');
  await page.waitForSelector('#detail:not([hidden])');
  const text = await page.$eval('#detail table', (t) => t.textContent);
  H.exec_args.forEach((a) => assert(text.includes(a), 'the details lack ' + a));
  noPlaceholder(text, 'exec details');
  await nothingInjected('live-exec');
});

await step('failed connects show their addresses without an empty port, [v6] bracketed', async () => {
  const rows = await liveCells('#live?' + new URLSearchParams({ command: H.connect_comm, type: 'connection' }), 3);
  const details = rows.map((c) => c[6]).sort();
  assert(details.includes('→ 10.77.50.5:80 failed (unreachable)'), 'no unreachable 10.77.50.5 row in ' + JSON.stringify(details));
  // No IPv6 address to send from: the kernel's errno names the cause.
  assert(details.some((d) => /^→ \[fd77:50::5\]:80 failed \([A-Za-z]+\)$/.test(d)), 'no [fd77:50::5] row in ' + JSON.stringify(details));
  const refused = new RegExp('^\\[::1\\]:\\d+ → \\[::1\\]:' + H.closed_port + ' failed \\(refused\\)$');
  assert(details.some((d) => refused.test(d)), 'no refused [::1] row in ' + JSON.stringify(details));
  rows.forEach((c) => { assert(c[4] === H.connect_comm, 'command ' + c[4]); noPlaceholder(c.join(' | '), 'row'); });
  await nothingInjected('live-connect');
});

await step('a node, pod and namespace of markup are text in Live', async () => {
  const rows = await liveCells('#live?' + new URLSearchParams({ node: H.node }), 4);
  rows.forEach((c) => {
    assert(c[1] === H.node, 'node cell ' + c[1]);
    noPlaceholder(c.join(' | '), 'row');
  });
  const pods = rows.map((c) => c[5]);
  assert(pods.includes(H.namespace + '/' + H.pod) && pods.includes(H.pod), 'pod cells: ' + JSON.stringify(pods));
  await nothingInjected('live-node');
});

await step('the Map names the workloads as text and stays within the window', async () => {
  await openHash('#map', 'map');
  await page.waitForFunction((w) => [...document.querySelectorAll('#map g.node')].some((g) => g.dataset.label === w),
    H.workload, { timeout: 15000 });
  const labels = await page.$$eval('#map g.node text:not(.kind)', (ts) => ts.map((t) => t.textContent));
  assert(labels.includes(H.workload) && labels.includes(H.long_workload), 'labels: ' + labels.join(', ').slice(0, 300));
  const edges = await page.$eval('#edges', (t) => t.textContent);
  assert(edges.includes(H.peer_dns), 'the edges table lacks ' + H.peer_dns);
  await nothingInjected('map');
});

await step('Nodes names the node as text', async () => {
  await openHash('#nodes', 'nodes');
  const cell = await page.waitForFunction((n) => [...document.querySelectorAll('#nodes tbody tr')]
    .find((t) => t.dataset.node === n)?.children[0].textContent, H.node, { timeout: 15000 });
  assert((await cell.jsonValue()) === H.node, 'node cell');
  await nothingInjected('nodes');
});

await step('Drops & DNS name the workload and query as text', async () => {
  await openHash('#drops', 'drops');
  await page.waitForFunction(([ns, w, q]) => document.querySelector('#drops').textContent.includes(ns + '/' + w) &&
    [...document.querySelectorAll('#dns-top tbody tr')].some((t) => t.dataset.query === q),
  [H.namespace, H.workload, H.query], { timeout: 15000 });
  await nothingInjected('drops');
});

await step('no dialog, page error or stray request', async () => {
  assert(dialogs.length === 0, dialogs.join('; '));
  assert(errors.length === 0, errors.join('; '));
  assert(strays.length === 0, 'requests: ' + strays.join(', '));
});

await browser.close();
if (result.failed)
  process.exit(1);
console.log('ui-hostile: pass');

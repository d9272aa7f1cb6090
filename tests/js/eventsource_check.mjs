// A browser's own EventSource on /api/events/stream, as a page would open it:
// Debian's chromium (playwright-core) loads a page of the aggregator at
// AGGREGATOR_URL and runs `new EventSource('/api/events/stream?node=NODE')`
// there. tests/test_e2e_cluster.c publishes the events and stops and starts
// the aggregator behind that URL; the browser reconnects by itself, with the
// Last-Event-ID it keeps. WANT is every event id the test publishes, in order.
// Prints "opened N", "error N" and "got N" as the page's counts change (the C
// test waits for them), then "eventsource: pass", or "FAIL: ..." and exits 1;
// exits 3 when a tool or a variable is missing. Ends after TIMEOUT_MS (default
// 60 s) at the latest.
import { assert, env, launch, result, step } from './ui_lib.mjs';

const AGG = env('AGGREGATOR_URL');
const NODE = env('NODE');
const WANT = env('WANT').split(',');
const TIMEOUT_MS = Number(process.env.TIMEOUT_MS || 60000);

const browser = await launch();
const page = await browser.newPage();
const requests = []; // the Last-Event-ID header of each stream request, '' for none
page.on('request', async (req) => {
  if (req.url().includes('/api/events/stream'))
    requests.push((await req.allHeaders())['last-event-id'] || '');
});
page.on('pageerror', (e) => console.log('page error: ' + e.message));

// Any page of the aggregator: the stream is then same-origin, as for a page it serves.
await page.goto(AGG + '/health');
await page.evaluate((node) => {
  window.es = { got: [], opens: 0, errors: 0, log: [] };
  const src = new EventSource('/api/events/stream?node=' + encodeURIComponent(node));
  src.onopen = () => { es.opens++; es.log.push(['open', Date.now()]); };
  src.onerror = () => { es.errors++; es.log.push(['error', Date.now(), es.got.length]); };
  src.onmessage = (m) => es.got.push({ id: JSON.parse(m.data).id, lastEventId: m.lastEventId });
}, NODE);

const counts = () => page.evaluate(() => ({ got: es.got.length, opens: es.opens, errors: es.errors }));
let last = { got: 0, opens: 0, errors: 0 };
const deadline = Date.now() + TIMEOUT_MS;
for (;;) {
  const now = await counts();
  for (const k of ['opens', 'errors', 'got'])
    if (now[k] !== last[k])
      console.log((k === 'opens' ? 'opened' : k === 'errors' ? 'error' : 'got') + ' ' + now[k]);
  last = now;
  if (now.got >= WANT.length || Date.now() > deadline)
    break;
  await new Promise((r) => setTimeout(r, 100));
}
await new Promise((r) => setTimeout(r, 1500)); // time for a duplicate to show
const es = await page.evaluate(() => es);

await step('every event once, in order, none missing', () => {
  const got = es.got.map((e) => e.id).join(',');
  assert(got === WANT.join(','), 'got  ' + got + '\nwant ' + WANT.join(','));
});

await step('the browser reconnected by itself, with the id of the last event it had', () => {
  assert(es.opens >= 2, 'opened ' + es.opens + ' times');
  assert(es.got.every((e) => e.lastEventId !== ''), 'an event without an id: ' + JSON.stringify(es.got));
  const drop = es.log.find((l) => l[0] === 'error');
  const dropAt = drop[1], had = es.got[drop[2] - 1].lastEventId;
  const resumed = requests.filter((h) => h !== '');
  assert(requests[0] === '', 'the first request had Last-Event-ID ' + requests[0]);
  assert(resumed.length >= 1 && resumed.every((h) => h === had),
    'requests sent Last-Event-ID ' + JSON.stringify(requests) + ', the last id received was ' + had);
  const reopen = es.log.find((l) => l[0] === 'open' && l[1] > dropAt);
  console.log('reconnect: ' + requests.length + ' requests, open again ' +
    (reopen ? reopen[1] - dropAt : '?') + ' ms after the drop (retry: 1000), Last-Event-ID ' +
    resumed[resumed.length - 1]);
});

await browser.close();
console.log(result.failed ? 'eventsource: FAIL' : 'eventsource: pass');
process.exit(result.failed ? 1 : 0);

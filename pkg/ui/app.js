// The ebpf-monitor web page: four views over the HTTP API (SPEC sections 6,
// 8, 9 and 10), no library, nothing loaded from elsewhere. The view and its
// settings live in the URL fragment (#live?command=curl, #map?window=1h), so
// a view can be shared and survives a reload.
'use strict';

const MAX_ROWS = 2000; // Live keeps this many events; older ones are dropped and counted
const FILTERS = ['type', 'node', 'namespace', 'pod', 'workload', 'command', 'pid'];
const ROW_H = 22; // px, every Live row (the table is virtualised on it)
const WINDOWS = { '5m': 300, '15m': 900, '1h': 3600, '6h': 21600, '24h': 86400 }; // seconds
const TOKEN_KEY = 'ebpf-monitor-token';
const $ = (sel) => document.querySelector(sel);

// ---- the API, with the token asked for on 401 ----

let token = sessionStorage.getItem(TOKEN_KEY);
let tokenWaiters = null; // resolves every call waiting for a token

class HttpError extends Error {
  constructor(status, msg) { super(msg); this.status = status; }
}

function askToken(rejected) {
  if (!tokenWaiters) {
    tokenWaiters = [];
    $('#token-error').textContent = rejected ? 'That token was refused.' : '';
    $('#token-form').hidden = false;
    $('#token-input').focus();
    liveStatus();
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

$('#token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  token = $('#token-input').value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $('#token-form').hidden = true;
  $('#token-input').value = '';
  const waiters = tokenWaiters || [];
  tokenWaiters = null;
  waiters.forEach((w) => w());
});

// A header value carries bytes (ISO-8859-1 to fetch): the token's UTF-8 bytes, as the
// server compares them and curl sends them; any character then goes (fetch throws on one
// past U+00FF).
const headerBytes = (s) => String.fromCharCode(...new TextEncoder().encode(s));

// fetch() with the token; on 401 asks for one and tries again.
async function apiFetch(path, opts = {}) {
  for (;;) {
    const headers = token ? { Authorization: 'Bearer ' + headerBytes(token) } : {};
    const res = await fetch(path, { ...opts, headers, cache: 'no-store' });
    if (res.status !== 401)
      return res;
    await askToken(Boolean(token));
  }
}

async function apiJson(path) {
  const res = await apiFetch(path);
  let body = null;
  try { body = await res.json(); } catch (e) { /* not JSON: reported below */ }
  if (!res.ok)
    throw new HttpError(res.status, (body && body.error) || res.status + ' ' + res.statusText);
  if (body === null)
    throw new HttpError(res.status, path + ' did not answer JSON');
  return body;
}

// ---- the URL fragment: #view?filters ----

function parseHash() {
  const h = location.hash.replace(/^#/, '');
  const q = h.indexOf('?');
  const view = (q < 0 ? h : h.slice(0, q)) || 'live';
  return { view, params: new URLSearchParams(q < 0 ? '' : h.slice(q + 1)) };
}

function setHash(view, params) {
  const qs = params && params.toString();
  const h = '#' + view + (qs ? '?' + qs : '');
  if (location.hash !== h)
    location.hash = h;
}

// ---- status banner: what the page cannot show is said, never implied ----

const problems = new Map(); // source -> message

function problem(source, msg) {
  if (msg)
    problems.set(source, msg);
  else
    problems.delete(source);
  const b = $('#banner');
  // Two sources refused for one reason (the stream and the history, for one bad filter) say it once.
  b.textContent = [...new Set(problems.values())].join(' · ');
  b.hidden = problems.size === 0;
}

let serverKind = null; // 'aggregator' or 'agent', from /api/stats

// Why NATS is not connected, as the server last heard it (bus.last_error of /api/stats, such as
// "Authorization Violation"): " (reason)", or '' when it does not say.
function busReason(s) {
  const b = s && s.bus;
  if (!b)
    return '';
  const why = (!b.connected && b.last_error) || (b.control && !b.control.connected && b.control.last_error);
  return why ? ' (' + why + ')' : '';
}

async function checkHealth() {
  // Both asked at once; the statistics are used only when the server answers.
  const stats = apiJson('api/stats');
  stats.catch(() => {}); // awaited below, or not needed when the server is down
  try {
    const ready = await fetch('ready', { cache: 'no-store' }).then((r) => r.json());
    if (ready.nats === 'disconnected')
      problem('ready', 'The aggregator is not connected to NATS' + busReason(await stats.catch(() => null)) +
        ': no new events are arriving.');
    else if (ready.status && ready.status !== 'ready')
      problem('ready', 'The agent is not ready: no eBPF program is attached.');
    else
      problem('ready', null);
  } catch (e) {
    problem('ready', 'The server does not answer (' + e.message + '): what is shown may be out of date.');
    problem('partial', null); // the last answer's state no longer says anything
    return;
  }
  try {
    const s = await stats;
    serverKind = 'replica' in s ? 'aggregator' : 'agent';
    $('#scope').textContent = serverKind === 'aggregator'
      ? 'cluster (replica ' + s.replica + ')' : 'node ' + s.node;
    if (s.partial)
      problem('partial', 'Partial answer: ' + s.replicas.answered + ' of ' + s.replicas.expected +
        ' known aggregator replicas answered' + (s.bus && !s.bus.connected
          ? ' (NATS is unreachable, so other replicas could not be asked)' : '') +
        ': totals and events may be incomplete.');
    else
      problem('partial', null);
    if (serverKind === 'agent' && s.bus && !s.bus.connected)
      problem('bus', 'This agent is not connected to NATS' + busReason(s) + ': the aggregator is not receiving its events.');
    else
      problem('bus', null);
    lastStats = s;
  } catch (e) {
    problem('partial', 'Statistics unavailable: ' + e.message);
  }
}

let lastStats = null;

// ---- formatting ----

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null)
    e.textContent = String(text);
  if (cls)
    e.className = cls;
  return e;
}

function row(cells, numericFrom) {
  const tr = document.createElement('tr');
  cells.forEach((c, i) => tr.appendChild(el('td', c, i >= numericFrom ? 'num' : '')));
  return tr;
}

const shortTime = (t) => (t ? String(t).replace('T', ' ').replace(/\.(\d{3})\d*Z$/, '.$1') : '');

// An address and port as written: [v6]:port, v4:port, the address alone without a port, '' without either.
function hostPort(ip, port) {
  const host = ip && String(ip).includes(':') ? '[' + ip + ']' : ip || '';
  return port === undefined || port === null ? host : host + ':' + port;
}

// "source → destination"; a connect that failed before it had a source (no route) has none.
function addrs(e) {
  const src = hostPort(e.source_ip, e.source_port);
  return (src ? src + ' ' : '') + '→ ' + hostPort(e.dest_ip, e.dest_port);
}

// The parts that are there, joined by sep: an absent field leaves no gap or placeholder.
const present = (parts, sep) => parts.filter((p) => p !== undefined && p !== null && p !== '').join(sep);

function detail(e) {
  switch (e.type) {
    case 'exec': return present([e.filename, ...[].concat(e.args ?? [])], ' ');
    case 'exit': return e.signal ? 'killed by signal ' + e.signal + (e.core_dumped ? ', core dumped' : '')
      : present(['exit', e.exit_code], ' ');
    case 'connection':
    case 'accept':
      return addrs(e) + (e.status ? ' ' + e.status : '') + (e.error ? ' (' + e.error + ')' : '');
    case 'close':
      return addrs(e) + (e.role ? ' ' + e.role : '') + ', ' + (e.bytes_sent ?? 0) + ' B sent, ' + (e.bytes_received ?? 0) + ' B received' +
        (e.retransmits ? ', ' + e.retransmits + ' retransmits' : '') + (e.reset ? ', reset ' + e.reset : '');
    case 'dns':
      return present([e.query, e.query_type, e.rcode ?? e.status], ' ');
    case 'packet_drop':
      return (e.drop_reason || '') + (e.suppressed ? ' (+' + e.suppressed + ' suppressed)' : '');
    default: return '';
  }
}

// ---- Live ----
//
// The table is virtualised: live.rows holds up to MAX_ROWS events (newest
// first) and only the rows in the scrolled-to part of #live-scroll (plus a
// few either side) are in the DOM, between two spacer rows that give the
// table its full height. Every row is ROW_H pixels high, so the visible
// slice follows from scrollTop alone. New events from the stream wait in
// live.incoming and are added once per animation frame.

const live = {
  rows: [], // newest first
  ids: new Set(),
  dropped: 0,
  paused: false,
  incoming: [], // from the stream, not in the table yet; oldest first
  pendingDropped: 0, // dropped from incoming while paused
  abort: null,
  state: 'closed',
  query: '',
  flushQueued: false,
  renderQueued: false,
  selected: null,
  received: 0, // events read from the stream since the page opened
  newest: 0, // the newest timestamp (ns) of an event shown or waiting
  catchUp: false, // events from a stream outage are waiting: order the rows by time
};

// As typed: the API matches names exactly, and a command may end in a space.
function liveParams() {
  const p = new URLSearchParams();
  const f = $('#filters');
  FILTERS.forEach((k) => {
    const v = f.elements[k].value;
    if (v !== '')
      p.set(k, v);
  });
  return p;
}

// A link's type that is no single choice of the list (a list such as "exec,exit", another
// case, a mistake) becomes a choice of its own, so it is asked for and refused by the API
// rather than dropped.
function setFilterInputs(params) {
  const f = $('#filters');
  FILTERS.forEach((k) => {
    const el = f.elements[k], v = params.get(k) || '';
    if (el.tagName === 'SELECT') {
      el.querySelectorAll('option[data-linked]').forEach((o) => { if (o.value !== v) o.remove(); });
      if (v && ![...el.options].some((o) => o.value === v)) {
        const o = document.createElement('option');
        o.value = v;
        o.textContent = v;
        o.dataset.linked = '';
        el.appendChild(o);
      }
    }
    el.value = v;
  });
}

function liveStatus() {
  const state = tokenWaiters ? 'waiting for the API token' : live.state === 'open' ? 'live' : live.state;
  const parts = [state, live.rows.length + ' events in the table'];
  if (live.dropped)
    parts.push(live.dropped + ' older events dropped from the table (it keeps ' + MAX_ROWS + ')');
  if (live.paused)
    parts.push('paused: ' + live.incoming.length + ' waiting' +
      (live.pendingDropped ? ', ' + live.pendingDropped + ' dropped while paused' : ''));
  $('#live-status').textContent = parts.join(' · ');
  const v = $('#view-live');
  v.dataset.stream = live.state;
  v.dataset.rows = live.rows.length;
  v.dataset.dropped = live.dropped;
}

function eventRow(e) {
  const pod = e.k8s_pod_name ? present([e.k8s_namespace, e.k8s_pod_name], '/') : '';
  const tr = row([shortTime(e.time), e.node, e.type, e.pid, e.command, pod, detail(e)], 99);
  tr.className = 'ev';
  tr.dataset.command = e.command || '';
  tr.dataset.type = e.type || '';
  tr.addEventListener('click', () => showDetail(e));
  return tr;
}

function showDetail(e) {
  live.selected = e;
  const t = $('#detail table');
  t.replaceChildren();
  Object.keys(e).forEach((k) => {
    const v = e[k];
    t.appendChild(row([k, typeof v === 'object' ? JSON.stringify(v) : v], 99));
  });
  $('#detail').hidden = false;
  renderLive();
}

$('#detail-close').addEventListener('click', () => {
  $('#detail').hidden = true;
  live.selected = null;
  renderLive();
});

const rowOf = new WeakMap(); // event -> its table row, built once, when first shown

function rowFor(e) {
  let tr = rowOf.get(e);
  if (!tr)
    rowOf.set(e, (tr = eventRow(e)));
  tr.classList.toggle('selected', e === live.selected);
  return tr;
}

function spacer(height) {
  const tr = document.createElement('tr');
  tr.className = 'spacer';
  tr.style.height = height + 'px';
  return tr;
}

// Puts the rows of the visible slice in the DOM (and nothing else).
function renderLive() {
  live.renderQueued = false;
  const box = $('#live-scroll');
  const n = live.rows.length;
  const headH = $('#events thead').offsetHeight;
  const top = Math.max(box.scrollTop - headH, 0);
  const first = Math.max(Math.floor(top / ROW_H) - 10, 0);
  const last = Math.min(first + Math.ceil(box.clientHeight / ROW_H) + 20, n);
  const trs = [spacer(first * ROW_H)];
  for (let i = first; i < last; i++)
    trs.push(rowFor(live.rows[i]));
  trs.push(spacer((n - last) * ROW_H));
  $('#events tbody').replaceChildren(...trs);
}

function queueRender() {
  if (!live.renderQueued) {
    live.renderQueued = true;
    requestAnimationFrame(renderLive);
  }
}

$('#live-scroll').addEventListener('scroll', queueRender, { passive: true });
window.addEventListener('resize', queueRender);

// Drops events from the table (they are the oldest), counted.
function forget(gone) {
  live.dropped += gone.length;
  gone.forEach((e) => {
    if (e.id)
      live.ids.delete(e.id);
    if (e === live.selected)
      live.selected = null;
  });
}

// Adds events to the table: newer ones (oldest first, as they arrived) at the
// top, older ones (newest first, as /api/events answers) at the bottom. A
// reader scrolled down keeps the rows they look at: the scroll position moves
// down by the rows added above it.
function addEvents(events, newer) {
  const fresh = events.filter((e) => !(e.id && live.ids.has(e.id)));
  fresh.forEach((e) => {
    if (e.id)
      live.ids.add(e.id);
    if (e.timestamp > live.newest)
      live.newest = e.timestamp;
  });
  if (newer) {
    fresh.reverse();
    if (fresh.length > MAX_ROWS)
      forget(fresh.splice(MAX_ROWS));
    live.rows = fresh.concat(live.rows);
    const box = $('#live-scroll');
    if (box.scrollTop > 0)
      box.scrollTop += fresh.length * ROW_H;
  } else {
    const room = Math.max(MAX_ROWS - live.rows.length, 0);
    if (fresh.length > room)
      forget(fresh.splice(room));
    live.rows = live.rows.concat(fresh);
  }
  if (newer && live.catchUp) {
    // Events from an outage of the stream come after some newer ones: in time order again.
    live.catchUp = false;
    live.rows.sort((a, b) => (b.timestamp || 0) - (a.timestamp || 0));
  }
  if (live.rows.length > MAX_ROWS)
    forget(live.rows.splice(MAX_ROWS));
  liveStatus();
  renderLive();
}

// Stream events wait in live.incoming (bounded) for the next frame, or for
// Resume; one frame adds them all at once.
function flushIncoming() {
  live.flushQueued = false;
  if (live.paused || live.incoming.length === 0)
    return;
  const batch = live.incoming;
  live.incoming = [];
  addEvents(batch, true);
}

function onStreamEvent(e) {
  live.received++;
  queueEvent(e);
}

// An event for the table's top: shown at the next frame, or on resume.
function queueEvent(e) {
  live.incoming.push(e);
  // Paused: exactly MAX_ROWS wait. Live: trimmed in one go at twice that (the
  // next frame keeps MAX_ROWS of them anyway), not one splice per event.
  const cap = live.paused ? MAX_ROWS : 2 * MAX_ROWS;
  if (live.incoming.length > cap) {
    const over = live.incoming.length - MAX_ROWS;
    live.incoming.splice(0, over);
    if (live.paused)
      live.pendingDropped += over;
    else
      live.dropped += over;
  }
  if (live.paused) {
    liveStatus();
  } else if (!live.flushQueued) {
    live.flushQueued = true;
    requestAnimationFrame(flushIncoming);
  }
}

// The events from while the stream was down, asked for once it is back: those
// since the newest one seen, less 30 s for batches that arrive late (duplicates
// are dropped by id). When more came than one page holds, the banner says so.
// openedMs: when the stream was last open (the browser's clock).
async function catchUp(ctl, openedMs) {
  const p = new URLSearchParams(live.query);
  // With no event seen yet: from when the stream was last open, less a minute for clocks.
  const since = live.newest ? BigInt(Math.floor(live.newest)) - 30000000000n
    : BigInt(openedMs - 60000) * 1000000n;
  if (!p.has('since'))
    p.set('since', since.toString());
  p.set('limit', '1000');
  try {
    const page = await apiJson('api/events?' + p.toString());
    if (live.abort !== ctl)
      return;
    const missed = page.events.filter((e) => !(e.id && live.ids.has(e.id)));
    // Some not shown only when the page is full and its oldest event is not one already shown
    // (the window starts 30 s back: it holds shown events, which total_count counts too).
    const oldest = page.events[page.events.length - 1];
    const cut = page.total_count > page.events.length && !(oldest && oldest.id && live.ids.has(oldest.id));
    if (missed.length) {
      live.catchUp = true;
      missed.reverse().forEach(queueEvent); // oldest first, as the stream sends them
    }
    if (cut)
      problem('gap', 'The live stream was disconnected and more events came meanwhile than one page (' +
        page.events.length + ') holds: the older ones are not shown (they are in /api/events).');
    else
      problem('gap', null);
  } catch (err) {
    if (live.abort === ctl)
      problem('gap', 'The live stream was disconnected and the events from then could not be loaded: ' + err.message);
  }
}

// Reads /api/events/stream with fetch so the Authorization header can be sent.
async function readStream(query, signal, onOpen) {
  const res = await apiFetch('api/events/stream' + (query ? '?' + query : ''), { signal });
  if (!res.ok) {
    let msg = res.status + ' ' + res.statusText;
    try { msg = (await res.json()).error || msg; } catch (e) { /* keep the status */ }
    throw new HttpError(res.status, msg);
  }
  live.state = 'open';
  problem('stream', null);
  liveStatus();
  firstLoad('ui-live-open');
  onOpen();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done)
      return;
    buf += value;
    let pos = 0, end;
    while ((end = buf.indexOf('\n\n', pos)) >= 0) {
      const block = buf.slice(pos, end);
      pos = end + 2;
      // The server sends one "data:" line per event; anything else the long way.
      const data = block.startsWith('data:') && block.indexOf('\n') < 0 ? block.slice(5)
        : block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
      if (!data)
        continue;
      try { onStreamEvent(JSON.parse(data)); } catch (err) { problem('stream', 'A malformed event was skipped: ' + err.message); }
    }
    buf = buf.slice(pos);
    if (buf.length > 1 << 20) { // no event is this long: not a stream of events
      buf = '';
      problem('stream', 'More than 1 MiB without an event boundary was skipped.');
    }
  }
}

async function startLive(params) {
  const query = params.toString();
  if (live.abort && live.query === query)
    return;
  stopLive();
  live.query = query;
  live.rows = [];
  live.newest = 0;
  live.catchUp = false;
  live.ids.clear();
  live.dropped = 0;
  live.incoming = [];
  live.pendingDropped = 0;
  live.selected = null;
  $('#detail').hidden = true;
  $('#live-scroll').scrollTop = 0;
  $('#view-live').dataset.history = '';
  liveStatus();
  renderLive();
  const ctl = new AbortController();
  live.abort = ctl;
  // History first (what happened before the page opened), then the stream.
  apiJson('api/events?' + (query ? query + '&' : '') + 'limit=200').then((page) => {
    if (live.abort !== ctl)
      return;
    addEvents(page.events, false);
    $('#view-live').dataset.history = 'loaded';
    firstLoad('ui-live-history');
    if (page.replicas && page.replicas.answered < page.replicas.expected)
      problem('history', 'Partial history: ' + page.replicas.answered + ' of ' + page.replicas.expected + ' replicas answered.');
    else
      problem('history', null);
  }).catch((err) => {
    if (live.abort === ctl)
      problem('history', 'Could not load recent events: ' + err.message);
  });
  let delay = 500, opened = 0, openedMs = 0;
  while (live.abort === ctl) {
    live.state = 'connecting';
    liveStatus();
    try {
      // Open again after an outage: what happened meanwhile is in the history.
      await readStream(query, ctl.signal, () => {
        if (opened++ > 0)
          catchUp(ctl, openedMs);
        openedMs = Date.now();
      });
      delay = 500;
      if (live.abort === ctl)
        problem('stream', 'The live stream ended; reconnecting.');
    } catch (err) {
      if (live.abort !== ctl)
        return;
      if (err.status === 400) {
        live.state = 'refused';
        problem('stream', 'Filter refused: ' + err.message);
        liveStatus();
        return;
      }
      problem('stream', 'The live stream is disconnected (' + err.message + '); reconnecting.');
    }
    if (live.abort !== ctl)
      return;
    live.state = 'reconnecting';
    liveStatus();
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

function stopLive() {
  if (live.abort) {
    live.abort.abort();
    live.abort = null;
  }
  live.state = 'closed';
  problem('stream', null);
  problem('history', null);
  problem('gap', null);
}

$('#filters').addEventListener('submit', (ev) => {
  ev.preventDefault();
  setHash('live', liveParams());
});
$('#clear').addEventListener('click', () => {
  setFilterInputs(new URLSearchParams());
  setHash('live', null);
});
$('#pause').addEventListener('click', () => {
  live.paused = !live.paused;
  $('#pause').textContent = live.paused ? 'Resume' : 'Pause';
  flushIncoming();
  liveStatus();
});

// ---- shared by the views ----

const svgNS = $('#map').namespaceURI; // SVG's, from an <svg> of the page

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(svgNS, tag);
  Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
  if (text !== undefined)
    e.textContent = String(text);
  return e;
}

function fmtBytes(n) {
  if (!n)
    return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  const i = Math.min(Math.floor(Math.log2(n) / 10), u.length - 1);
  return (i ? (n / 2 ** (10 * i)).toFixed(1) : n) + ' ' + u[i];
}

const fmtMs = (ns) => (ns ? (ns / 1e6).toFixed(ns < 1e6 ? 3 : 1) + ' ms' : '–');

// The view's time window (?window=15m in the URL) and the select showing it.
function windowOf(params, select) {
  const asked = params.get('window');
  const w = WINDOWS[asked] ? asked : '15m';
  // A link's window this page does not offer is said, not silently replaced.
  problem('window', asked === null || WINDOWS[asked] ? null
    : 'No window "' + asked + '" (one of ' + Object.keys(WINDOWS).join(', ') + '): showing ' + w + '.');
  select.value = w;
  const untilMs = Date.now();
  return { name: w, sinceMs: untilMs - WINDOWS[w] * 1000, untilMs };
}

const epochNs = (ms) => (BigInt(Math.floor(ms)) * 1000000n).toString();

['map', 'drops'].forEach((view) => {
  $('#' + view + '-window').addEventListener('change', (ev) => {
    const p = parseHash().params;
    p.set('window', ev.target.value);
    setHash(view, p);
  });
});

// The server's own API description: which paths and event types it serves.
let apiDoc = null;

async function getApiDoc() {
  if (!apiDoc)
    apiDoc = await apiJson('api/openapi.json');
  return apiDoc;
}

// Whether /api/events accepts type=t, from the parameter's schema.
function eventTypeServed(doc, t) {
  const ops = doc.paths && doc.paths['/api/events'] && doc.paths['/api/events'].get;
  const params = ((ops && ops.parameters) || []).map((p) => {
    if (!p.$ref)
      return p;
    return p.$ref.replace(/^#\//, '').split('/').reduce((o, k) => (o ? o[k] : undefined), doc);
  });
  const type = params.find((p) => p && p.name === 'type');
  const pattern = type && type.schema && type.schema.pattern;
  return Boolean(pattern && new RegExp(pattern).test(t));
}

// ---- Nodes ----

const prevEvents = new Map(); // node -> [events, ms]

function card(label, value, bad, key) {
  const c = el('div', null, 'card' + (bad ? ' bad' : ''));
  c.appendChild(el('b', value));
  c.appendChild(el('span', label));
  if (key) {
    c.dataset.counter = key;
    c.dataset.value = typeof value === 'number' ? value : '';
  }
  return c;
}

async function refreshNodes() {
  await checkHealth();
  const s = lastStats;
  if (!s)
    return;
  let nodes = s.nodes || {};
  let replicas = s.replicas;
  if (serverKind === 'aggregator') {
    const n = await apiJson('api/nodes');
    nodes = n.nodes;
    replicas = n.replicas;
  }
  const cards = $('#loss');
  // As ebpf_*_stream_dropped_total: stream.dropped holds publish_dropped already; an aggregator's
  // stream also misses what its bus subscription dropped.
  const stream = s.stream.dropped + (s.stream.bus_dropped || 0);
  const list = [card('events', s.total_events), card('kernel drops', s.kernel_drops, s.kernel_drops > 0, 'kernel-drops'),
    card('runs the kernel skipped', s.kernel_missed, s.kernel_missed > 0, 'kernel-missed')];
  if (serverKind === 'aggregator') {
    list.push(card('agent drops', s.agent_drops, s.agent_drops > 0, 'agent-drops'),
      card('lost batches', s.lost_batches, s.lost_batches > 0, 'lost-batches'),
      card('rejected batches', s.rejected_total, s.rejected_total > 0, 'rejected-batches'),
      card('rejected events', s.rejected_events_total, s.rejected_events_total > 0, 'rejected-events'),
      card('bus dropped', s.bus_dropped, s.bus_dropped > 0, 'bus-dropped'),
      card('store failed', s.store_failed, s.store_failed > 0, 'store-failed'),
      card('replicas answered', replicas.answered + '/' + replicas.expected,
        replicas.answered < replicas.expected, 'replicas'));
  } else {
    list.push(card('drops suppressed', s.drops_suppressed, false, 'suppressed'),
      card('history failed', s.history.failed, s.history.failed > 0, 'history-failed'));
    if (s.bus) {
      const b = s.bus;
      list.push(card('NATS', b.connected ? 'connected' : 'disconnected', !b.connected, 'bus'),
        card('outage buffer (batches)', b.queue_batches, b.queue_batches > 1, 'outage-buffer'),
        card('outage buffer bytes', fmtBytes(b.queue_bytes) + ' of ' + fmtBytes(b.outage_buffer_bytes), b.queue_batches > 1),
        card('batches dropped', b.batches_dropped, b.batches_dropped > 0, 'batches-dropped'),
        card('events dropped', b.agent_drops, b.agent_drops > 0, 'agent-drops'),
        card('publish errors', b.publish_errors, b.publish_errors > 0, 'publish-errors'),
        card('disconnects', b.disconnects, b.disconnects > 0, 'disconnects'));
    }
  }
  list.push(card('history evicted', s.history.evicted_count + s.history.evicted_age),
    card('stream dropped', stream, stream > 0, 'stream-dropped'),
    card('events by type', Object.entries(s.events_by_type).map(([k, v]) => k + ' ' + v).join(', ') || 'none'));
  cards.replaceChildren(...list);
  const tbody = $('#nodes tbody');
  const now = Date.now();
  tbody.replaceChildren();
  Object.keys(nodes).sort().forEach((name) => {
    const n = nodes[name];
    const prev = prevEvents.get(name);
    const rate = prev && now > prev[1] ? ((n.events - prev[0]) * 1000 / (now - prev[1])).toFixed(1) : '…';
    prevEvents.set(name, [n.events, now]);
    const tr = row([name, n.status || 'active', n.events, rate, n.kernel_drops ?? '', n.kernel_missed ?? '',
      n.agent_drops ?? '', n.lost_batches ?? '', n.batches ?? '', n.instances ?? '', shortTime(n.last_seen)], 2);
    tr.dataset.node = name;
    tr.children[1].className = 'status-' + (n.status || 'active');
    [4, 5, 6, 7].forEach((i) => { if (Number(tr.children[i].textContent) > 0) tr.children[i].classList.add('bad'); });
    tbody.appendChild(tr);
  });
  if (Object.keys(nodes).length === 0)
    tbody.appendChild(row(['No node has sent events yet.'], 99));
}

// ---- Drops and DNS ----

const PALETTE = ['#1f6feb', '#bf8700', '#b42318', '#1a7f37', '#8250df', '#0e7490', '#6e7781'];

// Packet drops over the window in 30 bars, stacked by kernel reason (the six
// most frequent; the rest as "other"). Each event counts itself and the drops
// the agent suppressed into it (rate limit), so the bars are packets dropped.
function drawDropsChart(events, win, truncatedBeforeMs) {
  const svg = $('#drops-chart');
  const W = 800, H = 170, L = 48, B = 22, T = 8, N = 30;
  const span = win.untilMs - win.sinceMs;
  const weight = (e) => 1 + (e.suppressed || 0);
  const totals = new Map();
  events.forEach((e) => totals.set(e.drop_reason || 'unknown', (totals.get(e.drop_reason || 'unknown') || 0) + weight(e)));
  const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1]).map(([r]) => r);
  const shown = ranked.slice(0, ranked.length > 7 ? 6 : 7);
  const keyOf = (r) => (shown.includes(r) ? r : 'other');
  const keys = ranked.length > shown.length ? shown.concat('other') : shown;
  const bins = Array.from({ length: N }, () => new Map());
  events.forEach((e) => {
    const t = Date.parse(e.time);
    if (!(t >= win.sinceMs && t <= win.untilMs))
      return;
    const b = bins[Math.min(Math.floor(((t - win.sinceMs) / span) * N), N - 1)];
    const k = keyOf(e.drop_reason || 'unknown');
    b.set(k, (b.get(k) || 0) + weight(e));
  });
  const max = Math.max(1, ...bins.map((b) => [...b.values()].reduce((a, v) => a + v, 0)));
  const bw = (W - L - 4) / N;
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const parts = [svgEl('line', { x1: L, y1: y(0), x2: W - 4, y2: y(0), class: 'axis' }),
    svgEl('text', { x: L - 4, y: y(max) + 4, 'text-anchor': 'end' }, max),
    svgEl('text', { x: L - 4, y: y(0), 'text-anchor': 'end' }, 0)];
  if (truncatedBeforeMs && truncatedBeforeMs > win.sinceMs)
    parts.push(svgEl('rect', { x: L, y: T, width: ((truncatedBeforeMs - win.sinceMs) / span) * (W - L - 4),
      height: H - T - B, class: 'uncounted' }, undefined));
  bins.forEach((b, i) => {
    let acc = 0;
    keys.forEach((k) => {
      const v = b.get(k) || 0;
      if (!v)
        return;
      const r = svgEl('rect', { x: L + i * bw + 1, y: y(acc + v), width: Math.max(bw - 2, 1),
        height: y(acc) - y(acc + v), fill: PALETTE[keys.indexOf(k) % PALETTE.length], class: 'bar' });
      r.dataset.reason = k;
      r.dataset.count = v;
      const from = new Date(win.sinceMs + (i * span) / N);
      r.appendChild(svgEl('title', {}, k + ': ' + v + ' from ' + from.toISOString().slice(11, 19) + ' UTC'));
      parts.push(r);
      acc += v;
    });
  });
  [0, N / 2, N].forEach((i) => {
    const t = new Date(win.sinceMs + (i * span) / N).toISOString().slice(11, 16);
    parts.push(svgEl('text', { x: L + i * bw, y: H - 6, 'text-anchor': i === 0 ? 'start' : i === N ? 'end' : 'middle' }, t + (i === N ? ' UTC' : '')));
  });
  svg.replaceChildren(...parts);
  const legend = $('#drops-legend');
  legend.replaceChildren(...keys.map((k, i) => {
    const s = el('span', k);
    s.style.setProperty('--swatch', PALETTE[i % PALETTE.length]);
    return s;
  }));
  svg.toggleAttribute('hidden', events.length === 0); // an SVG element has no .hidden property
  legend.hidden = events.length === 0;
}

// Where the server's history starts within win (ms), to 1/32 of it, when it no
// longer holds the window's start: it evicted events (HISTORY_SIZE, HISTORY_MAX_AGE)
// and holds none at or before it. null when it reaches back that far. Each probe is a
// limit=1 query, newest first: an event at or before t means the history reaches t.
async function historyStart(win) {
  const h = (lastStats && lastStats.history) || {};
  if (!((h.evicted_count || 0) + (h.evicted_age || 0)))
    return null;
  const reaches = async (ms) => (await apiJson('api/events?limit=1&until=' + epochNs(ms))).count > 0;
  if (await reaches(win.sinceMs))
    return null;
  let lo = win.sinceMs, hi = win.untilMs;
  for (let i = 0; i < 5; i++) {
    const mid = (lo + hi) / 2;
    if (await reaches(mid))
      hi = mid;
    else
      lo = mid;
  }
  return hi;
}

async function refreshDrops() {
  await checkHealth();
  const win = windowOf(parseHash().params, $('#drops-window'));
  const page = await apiJson('api/events?type=packet_drop&limit=10000&since=' + epochNs(win.sinceMs));
  const held = await historyStart(win);
  const by = new Map();
  page.events.forEach((e) => {
    const r = e.drop_reason || 'unknown';
    const c = by.get(r) || { n: 0, suppressed: 0, last: '', where: new Map() };
    c.n++;
    c.suppressed += e.suppressed || 0;
    if ((e.time || '') > c.last)
      c.last = e.time;
    // In Kubernetes a drop names the pod whose socket lost the packet.
    if (e.k8s_workload) {
      const w = (e.k8s_namespace || '') + '/' + e.k8s_workload;
      c.where.set(w, (c.where.get(w) || 0) + 1);
    }
    by.set(r, c);
  });
  const tbody = $('#drops tbody');
  tbody.replaceChildren();
  [...by.entries()].sort((a, b) => b[1].n - a[1].n).forEach(([r, c]) => {
    const tr = row([r, c.n, c.suppressed, shortTime(c.last)], 1);
    tr.appendChild(el('td', topList(c.where, 3)));
    tr.dataset.reason = r;
    tbody.appendChild(tr);
  });
  let msg = page.count + ' packet_drop events in the last ' + win.name;
  let truncated = null;
  if (page.total_count > page.count) {
    truncated = Date.parse(page.events[page.events.length - 1].time);
    msg += ' (the newest ' + page.count + ' of ' + page.total_count + ': the grey part of the chart is not counted)';
  }
  if (page.count === 0)
    msg = 'No packet drops in the last ' + win.name + '.';
  if (held) {
    msg += ' — the history holds events only since ' + shortTime(new Date(held).toISOString()) +
      ' (HISTORY_SIZE, HISTORY_MAX_AGE): drops before are not counted (the grey part of the chart)';
    truncated = Math.max(truncated || 0, held);
  }
  if (page.replicas && page.replicas.answered < page.replicas.expected)
    msg += ' — partial: ' + page.replicas.answered + ' of ' + page.replicas.expected + ' replicas answered';
  $('#drops-status').textContent = msg;
  $('#drops-status').classList.toggle('cut', Boolean(held));
  drawDropsChart(page.events, win, truncated);
  await refreshDns(win, held);
}

// The n largest counts of a Map as "key count, key count (+k more)"; '' when empty.
function topList(counts, n) {
  const all = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  const text = all.slice(0, n).map(([k, v]) => k + ' ' + v).join(', ');
  return all.length > n ? text + ' (+' + (all.length - n) + ' more)' : text;
}

// What a dns event's answer points at, as its peer fields name it: the Service, else the
// workload or pod (namespace/name); '' when nothing is named.
function pointsAt(e) {
  if (e.peer_service)
    return e.peer_service;
  const name = e.peer_workload || e.peer_pod;
  return name ? (e.peer_namespace || '') + '/' + name : '';
}

// DNS: only when the server records dns events (the README's Events) and some
// exist; otherwise a plain sentence and no request that would be refused.
async function refreshDns(win, held) {
  const note = $('#dns-status');
  const panel = $('#dns-data');
  const doc = await getApiDoc();
  const say = (state, text) => {
    $('#view-drops').dataset.dns = state;
    note.textContent = text;
    panel.hidden = state !== 'shown';
  };
  if (!eventTypeServed(doc, 'dns'))
    return say('unsupported', 'No DNS data: this server does not record DNS queries (its API has no dns event type).');
  const recorded = (lastStats && lastStats.events_by_type && lastStats.events_by_type.dns) || 0;
  if (!recorded)
    return say('none', 'No DNS data: no DNS query has been recorded yet.');
  let page;
  try {
    page = await apiJson('api/events?type=dns&limit=10000&since=' + epochNs(win.sinceMs));
  } catch (err) {
    if (err.status === 400)
      return say('unsupported', 'No DNS data: the server refused type=dns (' + err.message + ').');
    throw err;
  }
  if (page.count === 0)
    return say('none', 'No DNS data in the last ' + win.name + ' (' + recorded + ' queries recorded before it).');
  const names = new Map();
  const rcodes = new Map();
  let timeouts = 0, unknown = 0, failed = 0;
  page.events.forEach((e) => {
    const n = names.get(e.query) || { n: 0, nx: 0, servfail: 0, timeout: 0, at: '' };
    n.n++;
    if (!n.at) // the newest answer that names something (events come newest first)
      n.at = pointsAt(e);
    if (e.rcode === 'NXDOMAIN')
      n.nx++;
    if (e.rcode === 'SERVFAIL')
      n.servfail++;
    if (e.status === 'timeout') {
      n.timeout++;
      timeouts++;
    }
    if (e.status === 'unknown') // no answer seen, and an answer that may have been its own was lost
      unknown++;
    if (e.status === 'failed') // the kernel reported an error on its socket: e.error names it
      failed++;
    names.set(e.query, n);
    if (e.rcode !== undefined)
      rcodes.set(String(e.rcode), (rcodes.get(String(e.rcode)) || 0) + 1);
  });
  const nx = rcodes.get('NXDOMAIN') || 0, sf = rcodes.get('SERVFAIL') || 0;
  $('#dns-cards').replaceChildren(card('queries', page.count, false, 'dns-queries'),
    card('NXDOMAIN', nx, nx > 0, 'dns-nxdomain'), card('SERVFAIL', sf, sf > 0, 'dns-servfail'),
    card('timeouts', timeouts, timeouts > 0, 'dns-timeouts'),
    card('outcome unknown (answers lost)', unknown, unknown > 0, 'dns-unknown'),
    card('failed (refused, unreachable)', failed, failed > 0, 'dns-failed'),
    card('answers by rcode', [...rcodes.entries()].map(([k, v]) => k + ' ' + v).join(', ') || 'none'));
  const tbody = $('#dns-top tbody');
  tbody.replaceChildren(...[...names.entries()].sort((a, b) => b[1].n - a[1].n).slice(0, 20).map(([q, n]) => {
    const tr = row([q, n.n, n.nx, n.servfail, n.timeout], 1);
    tr.appendChild(el('td', n.at));
    tr.dataset.query = q;
    [2, 3, 4].forEach((i) => { if (Number(tr.children[i].textContent) > 0) tr.children[i].classList.add('bad'); });
    return tr;
  }));
  let text = page.count + ' DNS queries in the last ' + win.name;
  if (page.total_count > page.count)
    text += ' (the newest ' + page.count + ' of ' + page.total_count + ')';
  if (held)
    text += ' — the history holds events only since ' + shortTime(new Date(held).toISOString()) + ': earlier queries are not counted';
  say('shown', text);
}

// ---- Map ----
//
// The /api/flows edges as a graph drawn here (no library): endpoints grouped
// into boxes (a Kubernetes namespace, a node's processes, or "outside the
// cluster"), the boxes in columns so that most edges run left to right (a
// box goes one column right of the boxes that connect to it, a few passes,
// outside the cluster last), the endpoints in a box ordered by the mean
// position of their neighbours (two passes, which uncrosses most edges).
// The edges between two endpoints (one per port and protocol) are drawn as
// one link with their sums; its details list each of them.

const mapState = { sig: '', edges: [], selected: null }; // selected: a link's key

// An endpoint's identity, label, box, and the Live filter that shows it.
function endpointOf(x) {
  x = x || {};
  if (x.workload && (x.workload_kind === 'Process' || !x.namespace)) {
    const node = x.node || '';
    return { id: 'proc:' + node + '/' + x.workload, label: x.workload, kind: 'Process',
      group: 'node ' + (node || '?'), filter: node ? { node, command: x.workload } : { command: x.workload } };
  }
  if (x.workload)
    return { id: 'wl:' + x.namespace + '/' + x.workload, label: x.workload, kind: x.workload_kind || '',
      group: 'namespace ' + x.namespace, filter: { namespace: x.namespace, workload: x.workload } };
  if (x.service)
    return { id: 'svc:' + (x.namespace || '') + '/' + x.service, label: x.service, kind: 'Service',
      group: 'namespace ' + (x.namespace || '?'), filter: null };
  const ip = x.ip || '?';
  // One endpoint per address and name: a process that resolved a name and one that did not
  // reach the same address as two endpoints, each labelled as its edges say.
  return { id: 'ip:' + ip + (x.dns ? ' ' + x.dns : ''), label: x.dns ? x.dns + ' (' + ip + ')' : ip, kind: 'outside', group: 'outside the cluster', filter: null };
}

const linkKey = (e) => endpointOf(e.source).id + '>' + endpointOf(e.destination).id;
const failRate = (e) => (e.connections ? e.failed / e.connections : 0);

function edgeColour(e) {
  const r = failRate(e);
  return r === 0 ? '#1a7f37' : r < 0.05 ? '#bf8700' : r < 0.25 ? '#e16f24' : '#b42318';
}

function layoutMap(edges) {
  const nodes = new Map();
  const groups = new Map();
  const addNode = (x) => {
    const n = endpointOf(x);
    if (!nodes.has(n.id)) {
      n.nbrs = new Set();
      nodes.set(n.id, n);
      if (!groups.has(n.group))
        groups.set(n.group, { name: n.group, nodes: [], col: 0 });
      groups.get(n.group).nodes.push(n);
    }
    return nodes.get(n.id);
  };
  const byPair = new Map();
  edges.forEach((e) => {
    const s = addNode(e.source), d = addNode(e.destination);
    s.nbrs.add(d);
    d.nbrs.add(s);
    const k = linkKey(e);
    if (!byPair.has(k))
      byPair.set(k, { key: k, s, d, edges: [], connections: 0, failed: 0 });
    const l = byPair.get(k);
    l.edges.push(e);
    l.connections += e.connections;
    l.failed += e.failed;
  });
  const links = [...byPair.values()];
  const gl = [...groups.values()].sort((a, b) => a.name.localeCompare(b.name));
  const outside = groups.get('outside the cluster');
  for (let pass = 0; pass < gl.length; pass++) {
    links.forEach(({ s, d }) => {
      const gs = groups.get(s.group), gd = groups.get(d.group);
      if (gs !== gd && gd !== outside && gd.col < gs.col + 1)
        gd.col = Math.min(gs.col + 1, gl.length - 1);
    });
  }
  let ncols = Math.max(0, ...gl.filter((g) => g !== outside).map((g) => g.col)) + 1;
  if (outside)
    outside.col = gl.length === 1 ? 0 : ncols++;
  const COL_W = 360, BOX_W = 230, NODE_H = 40, HEAD = 26, PAD = 14, GAP = 24;
  // Initial order, then two barycentre passes within each box.
  gl.forEach((g) => g.nodes.sort((a, b) => a.label.localeCompare(b.label)));
  const place = () => {
    const colY = new Array(ncols).fill(10);
    gl.forEach((g) => {
      g.x = 10 + g.col * COL_W;
      g.y = colY[g.col];
      g.h = HEAD + g.nodes.length * NODE_H + PAD / 2;
      g.nodes.forEach((n, i) => {
        n.x = g.x + 18; // the circle; edges arrive at its left
        n.out = g.x + BOX_W; // edges leave from the box's right side, clear of the label
        n.y = g.y + HEAD + i * NODE_H + NODE_H / 2;
      });
      colY[g.col] += g.h + GAP;
    });
    return Math.max(...colY);
  };
  let height = place();
  for (let pass = 0; pass < 2; pass++) {
    gl.forEach((g) => {
      const bary = (n) => (n.nbrs.size ? [...n.nbrs].reduce((a, m) => a + m.y, 0) / n.nbrs.size : n.y);
      const b = new Map(g.nodes.map((n) => [n, bary(n)]));
      g.nodes.sort((p, q) => b.get(p) - b.get(q));
    });
    height = place();
  }
  return { nodes, groups: gl, links, width: (ncols - 1) * COL_W + BOX_W + 140, height, BOX_W };
}

// The point at t (0-1) of the cubic Bézier curve c ([[x, y] × 4]).
function bezierAt(c, t) {
  const u = 1 - t, k = [u * u * u, 3 * u * u * t, 3 * u * t * t, t * t * t];
  return [0, 1].map((i) => k.reduce((a, w, j) => a + w * c[j][i], 0));
}

// A measure of text in the page's font: (text, size in px) → its width.
function textMeasure() {
  const ctx = document.createElement('canvas').getContext('2d');
  const family = getComputedStyle(document.body).fontFamily;
  return (text, px) => {
    if (!ctx)
      return text.length * px * 0.65;
    ctx.font = px + 'px ' + family;
    return ctx.measureText(text).width;
  };
}

// The box of text of width w and height h whose baseline starts at (x, y), with a margin.
const textBox = (x, y, w, h) => ({ x0: x - 2, x1: x + w + 2, y0: y - h - 1, y1: y + 3 });
const boxesMeet = (a, b) => a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;

function drawMap(edges) {
  const svg = $('#map');
  const L = layoutMap(edges);
  const maxConn = Math.max(1, ...L.links.map((l) => l.connections));
  const parts = [svgEl('defs', {})];
  parts[0].appendChild(svgEl('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5,
    markerUnits: 'userSpaceOnUse', markerWidth: 10, markerHeight: 10, orient: 'auto' })).appendChild(svgEl('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#57606a' }));
  L.groups.forEach((g) => {
    parts.push(svgEl('rect', { x: g.x, y: g.y, width: L.BOX_W, height: g.h, rx: 6, class: 'group' }),
      svgEl('text', { x: g.x + 8, y: g.y + 17, class: 'group-label' }, g.name));
  });
  const keys = new Set(L.links.map((l) => l.key));
  // Where the counts may go: not over an endpoint's name or a box's title, nor over another
  // count (many links meet halfway where their ends' heights add up alike).
  const taken = [], textWidth = textMeasure();
  L.nodes.forEach((n) => taken.push(textBox(n.x + 12, n.y + 4, textWidth(n.label, 12), 12),
    textBox(n.x + 12, n.y + 16, textWidth(n.kind, 10), 10)));
  L.groups.forEach((g) => taken.push(textBox(g.x + 8, g.y + 17, textWidth(g.name, 12) * 1.1, 12))); // bold
  const labels = [];
  L.links.forEach((l) => {
    const { s, d } = l;
    const off = keys.has(d.id + '>' + s.id) && s.id < d.id ? 16 : 0; // a link back, apart
    let path, curve = null;
    if (s === d) {
      path = `M${s.out},${s.y - 4} c40,-30 40,38 2,8`;
    } else if (Math.abs(s.x - d.x) < 1) { // same box column: bow out to the right
      const bow = 50 + Math.abs(d.y - s.y) / 4 + off;
      curve = [[s.out, s.y], [s.out + bow, s.y], [d.out + bow, d.y], [d.out + 2, d.y]];
    } else {
      const x1 = s.out, x2 = d.x - 9, dx = Math.max(Math.abs(x2 - x1) / 2, 40);
      curve = [[x1, s.y], [x1 + dx, s.y + off], [x2 - dx, d.y + off], [x2, d.y]];
    }
    if (curve)
      path = 'M' + curve[0] + ' C' + curve.slice(1).join(' ');
    const width = 1.5 + 8 * Math.log1p(l.connections) / Math.log1p(maxConn);
    const g = svgEl('g', { class: 'edge' + (mapState.selected === l.key ? ' selected' : '') });
    Object.assign(g.dataset, { key: l.key, src: s.label, dst: d.label, connections: l.connections, failed: l.failed,
      ports: l.edges.map((e) => e.port).join(' ') });
    const ports = l.edges.map((e) => e.port + '/' + e.protocol);
    g.append(svgEl('path', { d: path, class: 'edge-line', stroke: edgeColour(l), 'stroke-width': width.toFixed(1), 'marker-end': 'url(#arrow)' }),
      svgEl('path', { d: path, class: 'edge-hit' }),
      svgEl('title', {}, s.label + ' → ' + d.label + ' (' + (ports.length > 4 ? ports.length + ' ports' : ports.join(', ')) + '): ' +
        l.connections + ' connections, ' + l.failed + ' failed'));
    g.addEventListener('click', () => showLink(l));
    parts.push(g);
    if (curve) // the count, halfway along or as near it as there is room; else in the title only
      labels.push({ l, curve, text: l.connections + (l.failed ? ' (' + l.failed + ' failed)' : '') });
  });
  // The busiest links' counts first: where there is no room, a quiet link's goes.
  labels.sort((a, b) => b.l.connections - a.l.connections);
  labels.forEach(({ l, curve, text }) => {
    const w = textWidth(text, 11);
    for (const t of [0.5, 0.42, 0.58, 0.34, 0.66, 0.26, 0.74, 0.18, 0.82]) {
      const [x, y] = bezierAt(curve, t);
      const box = textBox(x - w / 2, y - 4, w, 11);
      if (taken.some((b) => boxesMeet(b, box)))
        continue;
      taken.push(box);
      parts.push(svgEl('text', { x, y: y - 4, class: 'edge-label', 'text-anchor': 'middle', 'data-key': l.key }, text));
      break;
    }
  });
  L.nodes.forEach((n) => {
    const g = svgEl('g', { class: 'node' + (n.filter ? ' linked' : '') });
    g.dataset.id = n.id;
    g.dataset.label = n.label;
    g.append(svgEl('circle', { cx: n.x, cy: n.y, r: 7 }),
      svgEl('text', { x: n.x + 12, y: n.y + 4 }, n.label),
      svgEl('text', { x: n.x + 12, y: n.y + 16, class: 'kind' }, n.kind),
      svgEl('title', {}, n.filter ? 'Show ' + n.label + ' in Live' : n.label + ' (outside the cluster: no Live filter)'));
    if (n.filter)
      g.addEventListener('click', () => setHash('live', new URLSearchParams(n.filter)));
    parts.push(g);
  });
  svg.setAttribute('viewBox', '0 0 ' + Math.max(L.width, 400) + ' ' + Math.max(L.height, 120));
  svg.style.height = Math.max(L.height, 120) + 'px';
  svg.style.maxWidth = Math.max(L.width, 400) + 'px';
  svg.replaceChildren(...parts);
  svg.toggleAttribute('hidden', edges.length === 0); // an SVG element has no .hidden property
  $('#map-legend').hidden = edges.length === 0;
  const tbody = $('#edges tbody');
  tbody.replaceChildren(...edges.map((e) => {
    const tr = row([endpointOf(e.source).label, endpointOf(e.destination).label, e.port, e.protocol,
      e.connections, e.failed, (failRate(e) * 100).toFixed(1) + '%', fmtMs(e.latency_p50_ns), fmtMs(e.latency_p99_ns)], 2);
    tr.addEventListener('click', () => showLink(L.links.find((l) => l.key === linkKey(e))));
    return tr;
  }));
  $('#edges').hidden = edges.length === 0;
  mapState.links = L.links;
}

// The details of a link: its sums, then each edge (port) with all its figures.
function showLink(l) {
  mapState.selected = l.key;
  document.querySelectorAll('#map g.edge').forEach((g) => g.classList.toggle('selected', g.dataset.key === l.key));
  const fieldRow = (k, v) => {
    const tr = row([k, v], 99);
    tr.dataset.field = k;
    return tr;
  };
  const box = $('#edge-detail .parts');
  const sum = el('table');
  sum.append(fieldRow('source', l.s.label + ' (' + l.s.kind + ', ' + l.s.group + ')'),
    fieldRow('destination', l.d.label + ' (' + l.d.group + ')'),
    fieldRow('connections', l.connections), fieldRow('failed', l.failed),
    fieldRow('failure rate', (failRate(l) * 100).toFixed(1) + '%'));
  const parts = [sum];
  [...l.edges].sort((a, b) => b.connections - a.connections).forEach((e) => {
    const part = el('div', null, 'edge-part');
    part.dataset.port = e.port;
    part.appendChild(el('h3', 'port ' + e.port + '/' + e.protocol + (e.destination.service ? ' via service ' + e.destination.service : '')));
    const t = el('table');
    [['connections', e.connections], ['established', e.established], ['failed', e.failed],
      ...(e.attempted ? [['attempted (UDP)', e.attempted]] : []),
      ['failure rate', (failRate(e) * 100).toFixed(1) + '%'],
      ['failed by cause', Object.entries(e.failed_by_error || {}).map(([k, v]) => k + ' ' + v).join(', ') || 'none'],
      ['resets', e.resets], ['retransmits', e.retransmits],
      ['bytes sent', fmtBytes(e.bytes_sent) + ' (' + e.bytes_sent + ')'],
      ['bytes received', fmtBytes(e.bytes_received) + ' (' + e.bytes_received + ')'],
      ['latency p50', fmtMs(e.latency_p50_ns)], ['latency p90', fmtMs(e.latency_p90_ns)], ['latency p99', fmtMs(e.latency_p99_ns)],
      ['first seen', shortTime(e.first_seen)], ['last seen', shortTime(e.last_seen)],
    ].forEach(([k, v]) => t.appendChild(fieldRow(k, v)));
    part.appendChild(t);
    parts.push(part);
  });
  box.replaceChildren(...parts);
  $('#edge-detail h2').textContent = l.s.label + ' → ' + l.d.label;
  $('#edge-detail').hidden = false;
}

$('#edge-close').addEventListener('click', () => {
  $('#edge-detail').hidden = true;
  mapState.selected = null;
  document.querySelectorAll('#map g.edge.selected').forEach((g) => g.classList.remove('selected'));
});

async function refreshMap() {
  const status = $('#map-status');
  const doc = await getApiDoc();
  const win = windowOf(parseHash().params, $('#map-window'));
  if (!(doc.paths && doc.paths['/api/flows'])) {
    status.textContent = 'The flows API (/api/flows) is not available on this server, so there ' +
      'is no service map to draw. Connections still appear in Live (type connection and accept).';
    return;
  }
  const page = await apiJson('api/flows?since=' + epochNs(win.sinceMs) + '&until=' + epochNs(win.untilMs));
  const edges = page.edges || [];
  const sig = JSON.stringify(edges);
  if (sig !== mapState.sig) { // redrawn only when something changed, so a click is not lost
    mapState.sig = sig;
    mapState.edges = edges;
    drawMap(edges);
    const sel = mapState.links.find((l) => l.key === mapState.selected);
    if (sel && !$('#edge-detail').hidden)
      showLink(sel);
  }
  // The server keeps the busiest edges (its default limit): say so when it left some out.
  const total = page.total_count > page.count ? page.total_count : page.count;
  const shown = total > page.count ? 'the busiest ' + page.count + ' of ' + total + ' edges' : page.count + ' edges';
  let msg = edges.length ? shown + ' in the last ' + win.name + ' (click an edge for its details, an endpoint to see it in Live)'
    : 'No connections in the last ' + win.name + '.';
  status.classList.toggle('cut', total > page.count);
  if (page.partial || (page.replicas && page.replicas.answered < page.replicas.expected))
    msg += ' — partial answer: ' + page.replicas.answered + ' of ' + page.replicas.expected + ' replicas; counts may be short';
  status.textContent = msg;
}

// ---- views ----

// Performance marks of the first load: the page is interactive once its first
// view has loaded and, for Live, the history is drawn and the stream is open.
function firstLoad(name) {
  if (performance.getEntriesByName(name).length)
    return;
  performance.mark(name);
  const done = (n) => performance.getEntriesByName(n).length > 0;
  const live = parseHash().view === 'live' || !parseHash().view;
  if (!done('ui-interactive') && done('ui-view-loaded') && (!live || (done('ui-live-open') && done('ui-live-history'))))
    performance.mark('ui-interactive');
}

const refreshers = { nodes: refreshNodes, drops: refreshDrops, map: refreshMap };
const intervals = { live: 5000, nodes: 2000, drops: 5000, map: 10000 };
let timer = null;
let viewGen = 0; // a tick of an earlier showView() does not schedule another

function showView() {
  const gen = ++viewGen;
  const { view, params } = parseHash();
  const name = ['live', 'nodes', 'drops', 'map'].includes(view) ? view : 'live';
  document.querySelectorAll('main > section').forEach((s) => { s.hidden = s.id !== 'view-' + name; });
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.dataset.view === name));
  clearTimeout(timer);
  problem('view', null);
  problem('window', null);
  if (name === 'live') {
    setFilterInputs(params);
    startLive(liveParams());
    queueRender();
  } else {
    stopLive();
  }
  const tick = async () => {
    try {
      await (refreshers[name] || checkHealth)();
      problem('view', null);
    } catch (err) {
      problem('view', 'Could not load the ' + name + ' view: ' + err.message);
    }
    if (gen !== viewGen)
      return;
    document.body.dataset.loaded = name;
    firstLoad('ui-view-loaded');
    if (parseHash().view === view)
      timer = setTimeout(tick, intervals[name]);
  };
  tick();
}

window.addEventListener('hashchange', showView);
showView();
// Live's type choices: dns too once the server records it (SPEC section 9).
getApiDoc().then((doc) => {
  if (!eventTypeServed(doc, 'dns'))
    return;
  const sel = $('#filters select[name=type]');
  const linked = [...sel.options].find((o) => o.value === 'dns'); // made for a link to it
  if (linked) {
    delete linked.dataset.linked; // one of the list's choices now
    return;
  }
  const keep = sel.value;
  sel.appendChild(el('option', 'dns'));
  sel.value = parseHash().params.get('type') || keep;
  if (parseHash().view === 'live' && sel.value === 'dns')
    startLive(liveParams()); // a link to #live?type=dns opened before the option existed
}).catch(() => {}); // the views that need the description report its failure

// The ebpf-monitor web page: four views over the HTTP API (SPEC sections 6,
// 8 and 10), no library, nothing loaded from elsewhere. The view and the
// Live filters live in the URL fragment (#live?command=curl), so a view can
// be shared and survives a reload.
'use strict';

const MAX_ROWS = 2000; // Live keeps this many events; older ones are dropped and counted
const FILTERS = ['type', 'node', 'namespace', 'pod', 'command', 'pid'];
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

// fetch() with the token; on 401 asks for one and tries again.
async function apiFetch(path, opts = {}) {
  for (;;) {
    const headers = token ? { Authorization: 'Bearer ' + token } : {};
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
  b.textContent = [...problems.values()].join(' · ');
  b.hidden = problems.size === 0;
}

let serverKind = null; // 'aggregator' or 'agent', from /api/stats

async function checkHealth() {
  try {
    const ready = await fetch('ready', { cache: 'no-store' }).then((r) => r.json());
    if (ready.nats === 'disconnected')
      problem('ready', 'The aggregator is not connected to NATS: no new events are arriving.');
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
    const s = await apiJson('api/stats');
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
      problem('bus', 'This agent is not connected to NATS: the aggregator is not receiving its events.');
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

function detail(e) {
  switch (e.type) {
    case 'exec': return (e.filename || '') + (e.args ? ' ' + [].concat(e.args).join(' ') : '');
    case 'exit': return 'exit ' + (e.exit_code ?? '');
    case 'connection':
    case 'accept':
      return (e.source_ip || '') + ':' + (e.source_port ?? '') + ' → ' + (e.dest_ip || '') + ':' +
        (e.dest_port ?? '') + (e.status ? ' ' + e.status : '') + (e.error ? ' (' + e.error + ')' : '');
    case 'packet_drop':
      return (e.drop_reason || '') + (e.suppressed ? ' (+' + e.suppressed + ' suppressed)' : '');
    default: return '';
  }
}

// ---- Live ----

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
};

function liveParams() {
  const p = new URLSearchParams();
  const f = $('#filters');
  FILTERS.forEach((k) => {
    const v = f.elements[k].value.trim();
    if (v)
      p.set(k, v);
  });
  return p;
}

function setFilterInputs(params) {
  const f = $('#filters');
  FILTERS.forEach((k) => { f.elements[k].value = params.get(k) || ''; });
}

function liveStatus() {
  const state = tokenWaiters ? 'waiting for the API token' : live.state === 'open' ? 'live' : live.state;
  const parts = [state, live.rows.length + ' events shown'];
  if (live.dropped)
    parts.push(live.dropped + ' older events dropped from the table (it keeps ' + MAX_ROWS + ')');
  if (live.paused)
    parts.push('paused: ' + live.incoming.length + ' waiting' +
      (live.pendingDropped ? ', ' + live.pendingDropped + ' dropped while paused' : ''));
  $('#live-status').textContent = parts.join(' · ');
  $('#view-live').dataset.stream = live.state;
}

function eventRow(e) {
  const tr = row([shortTime(e.time), e.node, e.type, e.pid, e.command, e.k8s_pod_name ? e.k8s_namespace + '/' + e.k8s_pod_name : '', detail(e)], 99);
  tr.dataset.command = e.command || '';
  tr.dataset.type = e.type || '';
  tr.addEventListener('click', () => showDetail(e, tr));
  return tr;
}

function showDetail(e, tr) {
  document.querySelectorAll('#events tr.selected').forEach((r) => r.classList.remove('selected'));
  tr.classList.add('selected');
  const t = $('#detail table');
  t.replaceChildren();
  Object.keys(e).forEach((k) => {
    const v = e[k];
    t.appendChild(row([k, typeof v === 'object' ? JSON.stringify(v) : v], 99));
  });
  $('#detail').hidden = false;
}

$('#detail-close').addEventListener('click', () => { $('#detail').hidden = true; });

const rowOf = new WeakMap(); // event -> its table row, built once

function rowFor(e) {
  let tr = rowOf.get(e);
  if (!tr)
    rowOf.set(e, (tr = eventRow(e)));
  return tr;
}

// Drops events from the table (they are the oldest), counted.
function forget(gone) {
  live.dropped += gone.length;
  gone.forEach((e) => {
    if (e.id)
      live.ids.delete(e.id);
    const tr = rowOf.get(e);
    if (tr)
      tr.remove();
  });
}

// Adds events to the table: newer ones (oldest first, as they arrived) at the
// top, older ones (newest first, as /api/events answers) at the bottom. Only
// the new rows are built and only the dropped ones removed, so a full table
// costs no more per event than an empty one.
function addEvents(events, newer) {
  const fresh = events.filter((e) => !(e.id && live.ids.has(e.id)));
  fresh.forEach((e) => e.id && live.ids.add(e.id));
  const tbody = $('#events tbody');
  const frag = document.createDocumentFragment();
  if (newer) {
    fresh.reverse();
    if (fresh.length > MAX_ROWS)
      forget(fresh.splice(MAX_ROWS));
    fresh.forEach((e) => frag.appendChild(rowFor(e)));
    tbody.prepend(frag);
    live.rows = fresh.concat(live.rows);
  } else {
    const room = Math.max(MAX_ROWS - live.rows.length, 0);
    if (fresh.length > room)
      forget(fresh.splice(room));
    fresh.forEach((e) => frag.appendChild(rowFor(e)));
    tbody.append(frag);
    live.rows = live.rows.concat(fresh);
  }
  if (live.rows.length > MAX_ROWS)
    forget(live.rows.splice(MAX_ROWS));
  liveStatus();
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
  live.incoming.push(e);
  if (live.incoming.length > MAX_ROWS) {
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

// Reads /api/events/stream with fetch so the Authorization header can be sent.
async function readStream(query, signal) {
  const res = await apiFetch('api/events/stream' + (query ? '?' + query : ''), { signal });
  if (!res.ok) {
    let msg = res.status + ' ' + res.statusText;
    try { msg = (await res.json()).error || msg; } catch (e) { /* keep the status */ }
    throw new HttpError(res.status, msg);
  }
  live.state = 'open';
  problem('stream', null);
  liveStatus();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done)
      return;
    buf += value;
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
      if (!data)
        continue;
      try { onStreamEvent(JSON.parse(data)); } catch (err) { problem('stream', 'A malformed event was skipped: ' + err.message); }
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
  live.ids.clear();
  live.dropped = 0;
  live.incoming = [];
  live.pendingDropped = 0;
  $('#detail').hidden = true;
  $('#events tbody').replaceChildren();
  liveStatus();
  const ctl = new AbortController();
  live.abort = ctl;
  // History first (what happened before the page opened), then the stream.
  apiJson('api/events?' + (query ? query + '&' : '') + 'limit=200').then((page) => {
    if (live.abort !== ctl)
      return;
    addEvents(page.events, false);
    if (page.replicas && page.replicas.answered < page.replicas.expected)
      problem('history', 'Partial history: ' + page.replicas.answered + ' of ' + page.replicas.expected + ' replicas answered.');
    else
      problem('history', null);
  }).catch((err) => {
    if (live.abort === ctl)
      problem('history', 'Could not load recent events: ' + err.message);
  });
  let delay = 500;
  while (live.abort === ctl) {
    live.state = 'connecting';
    liveStatus();
    try {
      await readStream(query, ctl.signal);
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

// ---- Nodes ----

const prevEvents = new Map(); // node -> [events, ms]

function card(label, value, bad) {
  const c = el('div', null, 'card' + (bad ? ' bad' : ''));
  c.appendChild(el('b', value));
  c.appendChild(el('span', label));
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
  cards.replaceChildren();
  cards.appendChild(card('events', s.total_events));
  cards.appendChild(card('kernel drops', s.kernel_drops, s.kernel_drops > 0));
  if (serverKind === 'aggregator') {
    cards.appendChild(card('agent drops', s.agent_drops, s.agent_drops > 0));
    cards.appendChild(card('lost batches', s.lost_batches, s.lost_batches > 0));
    cards.appendChild(card('rejected batches', s.rejected_total, s.rejected_total > 0));
    cards.appendChild(card('rejected events', s.rejected_events_total, s.rejected_events_total > 0));
    cards.appendChild(card('bus dropped', s.bus_dropped, s.bus_dropped > 0));
    cards.appendChild(card('store failed', s.store_failed, s.store_failed > 0));
    cards.appendChild(card('replicas answered', replicas.answered + '/' + replicas.expected,
      replicas.answered < replicas.expected));
  } else {
    cards.appendChild(card('drops suppressed', s.drops_suppressed));
    cards.appendChild(card('history failed', s.history.failed, s.history.failed > 0));
  }
  cards.appendChild(card('history evicted', s.history.evicted_count + s.history.evicted_age));
  cards.appendChild(card('stream dropped', s.stream.dropped + (s.stream.publish_dropped || 0),
    s.stream.dropped + (s.stream.publish_dropped || 0) > 0));
  cards.appendChild(card('events by type',
    Object.entries(s.events_by_type).map(([k, v]) => k + ' ' + v).join(', ') || 'none'));
  const tbody = $('#nodes tbody');
  const now = Date.now();
  tbody.replaceChildren();
  Object.keys(nodes).sort().forEach((name) => {
    const n = nodes[name];
    const prev = prevEvents.get(name);
    const rate = prev && now > prev[1] ? ((n.events - prev[0]) * 1000 / (now - prev[1])).toFixed(1) : '…';
    prevEvents.set(name, [n.events, now]);
    const tr = row([name, n.status || 'active', n.events, rate, n.kernel_drops ?? '', n.agent_drops ?? '',
      n.lost_batches ?? '', n.batches ?? '', n.instances ?? '', shortTime(n.last_seen)], 2);
    tr.dataset.node = name;
    tr.children[1].className = 'status-' + (n.status || 'active');
    tbody.appendChild(tr);
  });
  if (Object.keys(nodes).length === 0)
    tbody.appendChild(row(['No node has sent events yet.'], 99));
}

// ---- Drops ----

async function refreshDrops() {
  const page = await apiJson('api/events?type=packet_drop&limit=10000');
  const by = new Map();
  page.events.forEach((e) => {
    const r = e.drop_reason || 'unknown';
    const c = by.get(r) || { n: 0, suppressed: 0, last: '' };
    c.n++;
    c.suppressed += e.suppressed || 0;
    if ((e.time || '') > c.last)
      c.last = e.time;
    by.set(r, c);
  });
  const tbody = $('#drops tbody');
  tbody.replaceChildren();
  [...by.entries()].sort((a, b) => b[1].n - a[1].n).forEach(([r, c]) => {
    const tr = row([r, c.n, c.suppressed, shortTime(c.last)], 1);
    tr.dataset.reason = r;
    tbody.appendChild(tr);
  });
  let msg = page.count + ' packet_drop events';
  if (page.total_count > page.count)
    msg += ' (the newest ' + page.count + ' of ' + page.total_count + ' held)';
  if (page.count === 0)
    msg = 'No packet drops in the history.';
  if (page.replicas && page.replicas.answered < page.replicas.expected)
    msg += ' — partial: ' + page.replicas.answered + ' of ' + page.replicas.expected + ' replicas answered';
  $('#drops-status').textContent = msg;
}

// ---- Map ----

let flowsDocumented = null;

async function refreshMap() {
  if (flowsDocumented === null) {
    // The server's own API description says whether it serves flows.
    const doc = await apiJson('api/openapi.json');
    flowsDocumented = Boolean(doc.paths && doc.paths['/api/flows']);
  }
  const status = $('#map-status');
  if (!flowsDocumented) {
    status.textContent = 'The flows API (/api/flows) is not available on this server yet, so there ' +
      'is no service map to draw. Connections still appear in Live (type connection and accept).';
    return;
  }
  let page;
  try {
    page = await apiJson('api/flows');
  } catch (err) {
    if (err.status !== 404)
      throw err;
    status.textContent = 'The flows API (/api/flows) is not available on this server yet.';
    return;
  }
  drawMap(page.edges || []);
  status.textContent = page.count + ' edges' + (page.partial ? ' — partial answer: ' +
    page.replicas.answered + ' of ' + page.replicas.expected + ' replicas' : '');
}

function endpoint(x) {
  if (!x)
    return '?';
  if (x.workload)
    return (x.namespace ? x.namespace + '/' : '') + x.workload;
  return x.dns || x.ip || '?';
}

function drawMap(edges) {
  const svg = $('#map');
  const ns = svg.namespaceURI;
  const names = [...new Set(edges.flatMap((e) => [endpoint(e.source), endpoint(e.destination)]))].sort();
  const pos = new Map(names.map((n, i) => {
    const a = (2 * Math.PI * i) / Math.max(names.length, 1);
    return [n, [400 + 300 * Math.cos(a), 250 + 200 * Math.sin(a)]];
  }));
  svg.replaceChildren();
  const tbody = $('#edges tbody');
  tbody.replaceChildren();
  edges.forEach((e) => {
    const [x1, y1] = pos.get(endpoint(e.source));
    const [x2, y2] = pos.get(endpoint(e.destination));
    const line = document.createElementNS(ns, 'line');
    const failRate = e.connections ? (e.failed || 0) / e.connections : 0;
    Object.entries({ x1, y1, x2, y2, 'stroke-width': 1 + Math.log2(1 + (e.connections || 0)),
      stroke: failRate > 0.1 ? '#b42318' : failRate > 0 ? '#9a6700' : '#1a7f37' })
      .forEach(([k, v]) => line.setAttribute(k, v));
    const title = document.createElementNS(ns, 'title');
    title.textContent = endpoint(e.source) + ' → ' + endpoint(e.destination) + ':' + e.port + ' ' +
      e.connections + ' connections, ' + (e.failed || 0) + ' failed';
    line.appendChild(title);
    svg.appendChild(line);
    tbody.appendChild(row([endpoint(e.source), endpoint(e.destination), e.port, e.connections,
      e.failed || 0, e.latency_p50_ns ? (e.latency_p50_ns / 1e6).toFixed(2) + ' ms' : ''], 2));
  });
  names.forEach((n) => {
    const [x, y] = pos.get(n);
    const c = document.createElementNS(ns, 'circle');
    Object.entries({ cx: x, cy: y, r: 6, fill: '#1f6feb' }).forEach(([k, v]) => c.setAttribute(k, v));
    const t = document.createElementNS(ns, 'text');
    Object.entries({ x: x + 8, y: y - 8 }).forEach(([k, v]) => t.setAttribute(k, v));
    t.textContent = n;
    svg.append(c, t);
  });
  svg.hidden = false;
  $('#edges').hidden = false;
}

// ---- views ----

const refreshers = { nodes: refreshNodes, drops: refreshDrops, map: refreshMap };
let timer = null;

function showView() {
  const { view, params } = parseHash();
  const name = ['live', 'nodes', 'drops', 'map'].includes(view) ? view : 'live';
  document.querySelectorAll('main > section').forEach((s) => { s.hidden = s.id !== 'view-' + name; });
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.dataset.view === name));
  clearTimeout(timer);
  problem('view', null);
  if (name === 'live') {
    setFilterInputs(params);
    startLive(liveParams());
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
    document.body.dataset.loaded = name;
    if (parseHash().view === view)
      timer = setTimeout(tick, name === 'live' ? 5000 : 2000);
  };
  tick();
}

window.addEventListener('hashchange', showView);
showView();

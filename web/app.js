// Management page of proxy_public. Plain JavaScript, no framework: every element is
// created once and updated in place, so the polling never steals focus or scroll.
'use strict';

(function () {
  const POLL_MS = 1000;            // /list is fetched about once a second
  const REQUEST_TIMEOUT_MS = 8000; // a request that takes longer is given up
  const HISTORY_SECONDS = 300;     // the chart shows the last five minutes
  const TOKEN_KEY = 'proxy_public.token';

  const $ = (id) => document.getElementById(id);

  const el = {
    signin: $('signin'),
    signinForm: $('signin-form'),
    token: $('token'),
    signinButton: $('signin-button'),
    signinError: $('signin-error'),
    signOut: $('sign-out'),
    whoami: $('whoami'),
    updated: $('updated'),
    dashboard: $('dashboard'),
    connError: $('conn-error'),
    scope: $('scope'),
    scopeText: $('scope-text'),
    scopePrivates: $('scope-privates'),
    scopePorts: $('scope-ports'),
    scopeLimits: $('scope-limits'),
    nodesSection: $('nodes-section'),
    nodesBody: document.querySelector('#nodes tbody'),
    nodesEmpty: $('nodes-empty'),
    clusterStore: $('cluster-store'),
    clusterStoreState: $('cluster-store-state'),
    clusterStoreUrl: $('cluster-store-url'),
    privatesNodesHead: document.querySelector('#privates th.col-nodes'),
    appsClusterHint: $('apps-cluster-hint'),
    privatesBody: document.querySelector('#privates tbody'),
    privatesEmpty: $('privates-empty'),
    privatesError: $('privates-error'),
    privatesStatus: $('privates-status'),
    appsBody: document.querySelector('#apps tbody'),
    appsEmpty: $('apps-empty'),
    appsError: $('apps-error'),
    appsStatus: $('apps-status'),
    connectionsBody: document.querySelector('#connections tbody'),
    connectionsEmpty: $('connections-empty'),
    connectionsTruncated: $('connections-truncated'),
    connectionsError: $('connections-error'),
    connectionsStatus: $('connections-status'),
    chart: $('chart'),
    chartSummary: $('chart-summary'),
    regForm: $('register-form'),
    regName: $('reg-name'),
    regPublicPort: $('reg-public-port'),
    regTargetHost: $('reg-target-host'),
    regTargetPort: $('reg-target-port'),
    regPrivate: $('reg-private'),
    regProtocol: $('reg-protocol'),
    regFtpField: $('reg-ftp-field'),
    regFtpRange: $('reg-ftp-range'),
    regAllowFrom: $('reg-allow-from'),
    regProxyProtocol: $('reg-proxy-protocol'),
    regSubmit: $('reg-submit'),
    regError: $('register-error'),
    regStatus: $('register-status'),
    tokensSection: $('tokens-section'),
    tokensBody: document.querySelector('#tokens tbody'),
    tokensEmpty: $('tokens-empty'),
    tokensError: $('tokens-error'),
    tokensStatus: $('tokens-status'),
    tokenCreated: $('token-created'),
    tokenCreatedTitle: $('token-created-title'),
    newToken: $('new-token'),
    copyToken: $('copy-token'),
    tokenSave: $('token-save'),
    tokenCommand: $('token-command'),
    copyCommand: $('copy-command'),
    tokenCopyStatus: $('token-copy-status'),
    tokenDone: $('token-done'),
    tokForm: $('token-form'),
    tokLabel: $('tok-label'),
    tokPrivates: $('tok-privates'),
    tokPorts: $('tok-ports'),
    tokMaxApps: $('tok-max-apps'),
    tokMaxConns: $('tok-max-conns'),
    tokSubmit: $('tok-submit'),
    tokError: $('token-form-error'),
    confirm: $('confirm'),
    confirmText: $('confirm-text'),
    confirmTitle: $('confirm-title'),
    confirmOk: $('confirm-ok'),
  };

  // ---------------------------------------------------------------- formatting

  const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

  // 0 B, 999 B, 1.2 KiB, 12 KiB, 1.2 MiB ...: three significant digits at most.
  function formatBytes(n) {
    if (!Number.isFinite(n) || n < 0) return '–';
    let i = 0;
    while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
    if (i === 0) return Math.round(n) + ' B';
    const text = n < 10 ? n.toFixed(1) : String(Math.round(n));
    return text + ' ' + UNITS[i];
  }

  function formatRate(bytesPerSecond) {
    if (bytesPerSecond === null || bytesPerSecond === undefined) return '–';
    return formatBytes(bytesPerSecond) + '/s';
  }

  function formatCount(n) {
    return Number.isFinite(n) ? n.toLocaleString('en-US') : '–';
  }

  function formatAgo(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + ' s ago';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min ago';
    const h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + (m % 60) + ' min ago';
    return Math.floor(h / 24) + ' days ago';
  }

  function pad2(n) { return String(n).padStart(2, '0'); }

  function formatTime(d) {
    return d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' +
      pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
  }

  // Sets text only when it changed: no needless layout, no flicker.
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function setAttr(node, name, value) {
    if (node.getAttribute(name) !== value) node.setAttribute(name, value);
  }

  // ---------------------------------------------------------------- token

  let token = null;

  function loadToken() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }

  function saveToken(t) {
    try { sessionStorage.setItem(TOKEN_KEY, t); } catch (e) { /* private mode: keep it in memory */ }
  }

  function forgetToken() {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* nothing stored */ }
  }

  // ---------------------------------------------------------------- HTTP

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const STATUS_WORDS = {
    400: 'The server did not accept the request.',
    401: 'The token was not accepted.',
    403: 'The server refused the request.',
    404: 'The server does not know that.',
    409: 'That conflicts with something that already exists.',
    413: 'The request was too large.',
    500: 'The server ran into a problem.',
    503: 'The server is busy; try again in a moment.',
  };

  // Calls the API with the token; resolves to the parsed JSON body, or rejects with an
  // ApiError whose message is a sentence a person understands.
  async function api(method, path, body, withToken) {
    const headers = { 'Accept': 'application/json' };
    const t = withToken === undefined ? token : withToken;
    if (t !== null) headers['Authorization'] = 'Bearer ' + t;
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), REQUEST_TIMEOUT_MS);
    init.signal = ctrl.signal;
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      const why = e && e.name === 'AbortError'
        ? 'The server did not answer in time.'
        : 'Could not reach the server. Is proxy_public still running?';
      throw new ApiError(0, why);
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    let text = '';
    try {
      text = await res.text();
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!res.ok) {
      let message = data && typeof data.error === 'string' && data.error.trim()
        ? data.error.trim()
        : (STATUS_WORDS[res.status] || ('The server answered with status ' + res.status + '.'));
      if (!/[.!?]$/.test(message)) message += '.';
      throw new ApiError(res.status, message);
    }
    if (data === null || typeof data !== 'object') {
      throw new ApiError(res.status, 'The server sent an answer this page cannot read.');
    }
    return data;
  }

  // ---------------------------------------------------------------- sign in / out

  function showSignin(message) {
    stopPolling();
    token = null;
    forgetToken();
    isAdmin = false;
    hideCreatedToken();
    renderTokens([]);
    el.dashboard.hidden = true;
    el.signOut.hidden = true;
    el.whoami.hidden = true;
    el.updated.hidden = true;
    el.signin.hidden = false;
    setText(el.signinError, message || '');
    el.token.value = '';
    setAttr(el.token, 'aria-invalid', message ? 'true' : 'false');
    el.token.focus();
  }

  function showDashboard() {
    el.signin.hidden = true;
    el.dashboard.hidden = false;
    el.signOut.hidden = false;
    el.whoami.hidden = false;
    el.updated.hidden = false;
    setText(el.signinError, '');
  }

  el.signinForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const candidate = el.token.value.trim();
    if (!candidate) {
      setText(el.signinError, 'Enter the token first.');
      setAttr(el.token, 'aria-invalid', 'true');
      el.token.focus();
      return;
    }
    el.signinButton.disabled = true;
    setText(el.signinError, '');
    try {
      const data = await api('GET', '/list', undefined, candidate);
      token = candidate;
      saveToken(candidate);
      el.token.value = '';
      setAttr(el.token, 'aria-invalid', 'false');
      isAdmin = data.admin === true;
      resetRates();
      showDashboard();
      await refresh();
      startPolling();
      $('main').focus();
    } catch (e) {
      const msg = e.status === 401
        ? 'That token was not accepted. Check it and try again: it is the token proxy_public was started with.'
        : e.message;
      setText(el.signinError, msg);
      setAttr(el.token, 'aria-invalid', 'true');
      el.token.select();
      el.token.focus();
    } finally {
      el.signinButton.disabled = false;
    }
  });

  el.signOut.addEventListener('click', () => {
    showSignin('');
    for (const node of [el.signinError, el.appsStatus, el.regStatus, el.regError, el.appsError,
      el.privatesError, el.privatesStatus, el.connectionsError, el.connectionsStatus,
      el.tokensError, el.tokensStatus, el.tokError]) {
      setText(node, '');
    }
  });

  // ---------------------------------------------------------------- polling

  let pollTimer = null;
  let pollGeneration = 0;   // a sign-out ends the loop even while a request is in flight
  let lastPollOk = true;
  let pollCount = 0;

  function startPolling() {
    stopPolling();
    const gen = ++pollGeneration;
    const loop = async () => {
      if (gen !== pollGeneration) return;
      await refresh();
      if (gen !== pollGeneration) return;
      pollTimer = setTimeout(loop, POLL_MS);
    };
    pollTimer = setTimeout(loop, POLL_MS);
  }

  function stopPolling() {
    pollGeneration++;
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
  }

  // One poll: /list, and beside it /connections and (for the admin) /tokens. A failure of
  // the latter two is told in their own section; only /list decides "lost contact".
  async function refresh() {
    if (token === null) return;
    const gen = pollGeneration;
    const stale = () => gen !== pollGeneration || token === null;
    try {
      const [data, connections, tokensFirst] = await Promise.all([
        api('GET', '/list'),
        api('GET', '/connections').catch((e) => e),
        isAdmin ? api('GET', '/tokens').catch((e) => e) : Promise.resolve(null),
      ]);
      if (stale()) return;
      applyIdentity(data);
      // Signed in again in this tab (a reload): whether this is the admin is known only now.
      const tokens = isAdmin && tokensFirst === null
        ? await api('GET', '/tokens').catch((e) => e) : tokensFirst;
      if (stale()) return;
      renderTokensAnswer(tokens);
      render(data);
      renderConnectionsAnswer(connections);
      if (!lastPollOk) setText(el.connError, '');
      lastPollOk = true;
    } catch (e) {
      if (gen !== pollGeneration || token === null) return;
      if (e.status === 401) {
        showSignin('The server no longer accepts this token (was it changed?). Sign in again.');
        return;
      }
      lastPollOk = false;
      setText(el.connError, 'Lost contact with the server: ' + e.message + ' Retrying every second.');
      setAttr(el.updated, 'data-stale', 'true');
    }
  }

  // ---------------------------------------------------------------- rates

  // name -> {t, bytesIn, bytesOut, rateIn, rateOut}
  let rates = new Map();
  // [{t, in, out}] totals across apps, one per poll, HISTORY_SECONDS long
  let history = [];

  function resetRates() {
    rates = new Map();
    history = [];
  }

  function updateRates(apps, now) {
    const seen = new Set();
    let totalIn = 0;
    let totalOut = 0;
    let known = false;
    for (const app of apps) {
      seen.add(app.name);
      const prev = rates.get(app.name);
      const entry = { t: now, bytesIn: app.bytes_in, bytesOut: app.bytes_out, rateIn: null, rateOut: null };
      if (prev) {
        const dt = (now - prev.t) / 1000;
        const dIn = app.bytes_in - prev.bytesIn;
        const dOut = app.bytes_out - prev.bytesOut;
        // A counter that went down means the app was re-registered or the server restarted.
        if (dt > 0 && dIn >= 0 && dOut >= 0) {
          entry.rateIn = dIn / dt;
          entry.rateOut = dOut / dt;
          totalIn += entry.rateIn;
          totalOut += entry.rateOut;
          known = true;
        }
      }
      rates.set(app.name, entry);
    }
    for (const name of Array.from(rates.keys())) {
      if (!seen.has(name)) rates.delete(name);
    }
    if (known || apps.length === 0) {
      history.push({ t: now, in: totalIn, out: totalOut });
      const cutoff = now - HISTORY_SECONDS * 1000;
      while (history.length > 0 && history[0].t < cutoff) history.shift();
    }
  }

  // ---------------------------------------------------------------- rendering

  function num(v) {
    return typeof v === 'number' && Number.isFinite(v) ? v : NaN;
  }

  // An FTP app's mode, as the Protocol cell says it.
  function ftpModeText(a) {
    if (a.ftp_mode === 'fixed') return 'FTP (fixed ' + a.ftp_range + ')';
    return 'FTP (rewrite)' + (a.tls_sessions > 0 ? ' · TLS seen' : '');
  }

  function ftpModeTitle(a) {
    if (a.ftp_mode === 'fixed') {
      return 'Fixed passive-range mode (for FTPS): ports ' + a.ftp_range +
        ' are forwarded one to one; the server announces this address and those ports itself';
    }
    return 'Passive replies and PORT commands are rewritten; data ports come from --ftp-ports' +
      (a.tls_sessions > 0 ? '. ' + formatCount(a.tls_sessions) + ' control connection(s) switched ' +
        'to TLS (AUTH TLS) and could not be rewritten: use the fixed passive range for FTPS' : '');
  }

  function render(data) {
    const now = performance.now();
    const privates = Array.isArray(data.privates) ? data.privates : [];
    const apps = (Array.isArray(data.apps) ? data.apps : []).map((a) => ({
      name: String(a.name),
      public_port: num(a.public_port),
      target_host: String(a.target_host === undefined ? '' : a.target_host),
      target_port: num(a.target_port),
      private: a.private === undefined || a.private === null ? '' : String(a.private),
      online: a.online === true,
      disabled: a.disabled === true,
      // Why its private proxy would refuse to dial the target (its --allow rules), if it would.
      home_refuses: typeof a.home_refuses === 'string' ? a.home_refuses : '',
      // Registered by a scoped token: its id, and its label ("(revoked)" once it is).
      owner: typeof a.owner === 'string' ? a.owner : '',
      owner_label: typeof a.owner_label === 'string' ? a.owner_label : '',
      udp: a.protocol === 'udp',
      ftp: a.protocol === 'ftp',
      // "rewrite" (replies and PORT rewritten) or "fixed" (a passive range, for FTPS).
      ftp_mode: a.ftp_mode === 'fixed' ? 'fixed' : 'rewrite',
      ftp_range: a.ftp_passive_ports === undefined ? '' : String(a.ftp_passive_ports),
      tls_sessions: num(a.tls_sessions),
      // A UDP app counts sessions (client address and port pairs) instead.
      active_connections: num(a.protocol === 'udp' ? a.active_sessions : a.active_connections),
      total_connections: num(a.protocol === 'udp' ? a.total_sessions : a.total_connections),
      // An FTP app: its data connections beside the control ones.
      active_data: num(a.active_data_connections),
      total_data: num(a.total_data_connections),
      bytes_in: num(a.bytes_in),
      bytes_out: num(a.bytes_out),
      // A UDP app: datagrams each way and those dropped, by reason.
      datagrams_in: num(a.datagrams_in),
      datagrams_out: num(a.datagrams_out),
      drops: a.drops && typeof a.drops === 'object' ? a.drops : null,
      // In a cluster: the app's counters summed over every live node (the ones above are
      // this node's).
      cluster: a.cluster && typeof a.cluster === 'object' ? {
        active_connections: num(a.cluster.active_connections),
        total_connections: num(a.cluster.total_connections),
        bytes_in: num(a.cluster.bytes_in),
        bytes_out: num(a.cluster.bytes_out),
      } : null,
    }));
    // Only a node of a cluster (--cluster) sends "cluster"; without it the page is as ever.
    const cluster = data.cluster && typeof data.cluster === 'object' ? data.cluster : null;
    pollCount++;
    updateRates(apps, now);
    renderCluster(cluster);
    renderPrivates(privates, cluster);
    renderApps(apps, cluster !== null);
    renderPrivateSelect(privates);
    drawChart();
    const at = new Date();
    setText(el.updated, 'Updated ' + pad2(at.getHours()) + ':' + pad2(at.getMinutes()) + ':' + pad2(at.getSeconds()));
    setAttr(el.updated, 'data-stale', 'false');
    setAttr(el.updated, 'data-polls', String(pollCount));
  }

  // Keeps tbody's rows keyed (by item.key, else item.name): existing rows are updated,
  // new ones inserted in key order, vanished ones removed. Rows are never rebuilt.
  function syncRows(tbody, rowsByKey, items, create, update) {
    const keyOf = (item) => (item.key === undefined ? item.name : item.key);
    const keys = new Set();
    for (const item of items) keys.add(keyOf(item));
    for (const [key, row] of rowsByKey) {
      if (!keys.has(key)) {
        row.tr.remove();
        rowsByKey.delete(key);
      }
    }
    const sorted = items.slice().sort((a, b) => {
      const ka = keyOf(a);
      const kb = keyOf(b);
      return ka < kb ? -1 : ka > kb ? 1 : 0;
    });
    let previous = null;
    for (const item of sorted) {
      let row = rowsByKey.get(keyOf(item));
      if (!row) {
        row = create(item);
        rowsByKey.set(keyOf(item), row);
        const next = previous ? previous.tr.nextSibling : tbody.firstChild;
        tbody.insertBefore(row.tr, next);
      }
      update(row, item);
      previous = row;
    }
  }

  // A table row whose first cell is a row header (th): {tr, name}.
  function headedRow(key, label) {
    const tr = document.createElement('tr');
    tr.setAttribute('role', 'row');
    tr.setAttribute('data-name', key);
    const name = document.createElement('th');
    name.scope = 'row';
    name.setAttribute('role', 'rowheader');
    name.setAttribute('data-label', label || 'Name');
    tr.appendChild(name);
    return { tr, name };
  }

  function cell(tr, label, className) {
    const td = document.createElement('td');
    // Explicit roles: the phone layout turns the table into blocks, which can otherwise
    // cost it its table semantics in some browsers.
    td.setAttribute('role', 'cell');
    td.setAttribute('data-label', label);
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }

  function button(text, className, ariaLabel, onClick) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = className;
    b.textContent = text;
    if (ariaLabel) b.setAttribute('aria-label', ariaLabel);
    b.addEventListener('click', () => onClick(b));
    return b;
  }

  function stateBadge(td) {
    const span = document.createElement('span');
    span.className = 'badge';
    td.appendChild(span);
    return span;
  }

  // kind: online, offline, disabled or refused (style.css gives each its look).
  function setBadge(badge, text, kind) {
    setText(badge, text);
    const cls = 'badge badge-' + kind;
    if (badge.className !== cls) badge.className = cls;
  }

  function setState(badge, online) {
    setBadge(badge, online ? 'online' : 'offline', online ? 'online' : 'offline');
  }

  // A cell's own value: its first text node, so that a line under it (a <small>) stays.
  function setLead(td, text) {
    const first = td.firstChild;
    if (first && first.nodeType === Node.TEXT_NODE) {
      if (first.nodeValue !== text) first.nodeValue = text;
    } else {
      td.insertBefore(document.createTextNode(text), first);
    }
  }

  // A byte counter: short text, the exact number in its title and data-value.
  function setBytes(td, n) {
    setLead(td, formatBytes(n));
    setAttr(td, 'data-value', String(n));
    setAttr(td, 'title', formatCount(n) + ' bytes');
  }

  // A cell with a <time> and a muted "(… ago)" after it: {time, ago}.
  function timeCell(td) {
    const value = document.createElement('span');
    value.className = 'value';
    const parts = { time: document.createElement('time'), ago: document.createElement('span') };
    parts.ago.className = 'muted';
    value.appendChild(parts.time);
    value.appendChild(parts.ago);
    td.appendChild(value);
    return parts;
  }

  // Shows an RFC 3339 time in local time; agoText(date) gives the muted part. Returns
  // false (and shows nothing) when iso is not a time.
  function setTime(parts, iso, agoText) {
    const d = iso ? new Date(iso) : null;
    if (!d || Number.isNaN(d.getTime())) {
      setAttr(parts.time, 'datetime', '');
      setText(parts.ago, '');
      return false;
    }
    setAttr(parts.time, 'datetime', iso);
    setText(parts.time, formatTime(d));
    setText(parts.ago, agoText ? agoText(d) : '');
    return true;
  }

  const sinceAgo = (d) => ' (' + formatAgo(Date.now() - d.getTime()) + ')';

  // Whether a node is shown (not hidden, nor inside something hidden).
  function shown(node) {
    return node.isConnected && node.getClientRects().length > 0;
  }

  // ---------------------------------------------------------------- cluster nodes

  const nodeRows = new Map();

  const STORE_DOWN = 'Cluster store: down — registrations are refused until it returns; ' +
    'running apps keep working.';

  // The Nodes part: shown only when /list has "cluster" (proxy_public --cluster).
  function renderCluster(cluster) {
    el.nodesSection.hidden = cluster === null;
    if (cluster === null) return;
    const up = cluster.store === 'up';
    setText(el.clusterStoreState, up ? 'Cluster store: up' : STORE_DOWN);
    setText(el.clusterStoreUrl, typeof cluster.url === 'string' && cluster.url ? '(' + cluster.url + ')' : '');
    setAttr(el.clusterStore, 'class', up ? 'store store-up' : 'store store-down');
    setAttr(el.clusterStore, 'data-store', up ? 'up' : 'down');
    const self = typeof cluster.node === 'string' ? cluster.node : '';
    const items = (Array.isArray(cluster.nodes) ? cluster.nodes : [])
      .filter((n) => n && typeof n === 'object')
      .map((n) => ({
        name: String(n.name),
        address: n.address === undefined || n.address === null ? '' : String(n.address),
        since: n.up_since ? String(n.up_since) : null,
        tunnels: num(n.tunnels),
        connections: num(n.connections),
        self: n.self === true || (n.self === undefined && String(n.name) === self),
      }));
    syncRows(el.nodesBody, nodeRows, items, (n) => {
      const row = headedRow(n.name);
      row.label = document.createElement('span');
      row.selfBadge = document.createElement('span');
      row.selfBadge.className = 'badge badge-self';
      row.selfBadge.textContent = 'self';
      row.selfBadge.title = 'the node this page comes from';
      row.name.append(row.label, ' ', row.selfBadge);
      row.address = cell(row.tr, 'Address', 'mono');
      row.since = timeCell(cell(row.tr, 'Up since'));
      row.tunnels = cell(row.tr, 'Tunnels', 'num');
      row.connections = cell(row.tr, 'Connections', 'num');
      return row;
    }, (row, n) => {
      setText(row.label, n.name);
      if (row.selfBadge.hidden !== !n.self) row.selfBadge.hidden = !n.self;
      setAttr(row.tr, 'data-self', n.self ? 'true' : 'false');
      setText(row.address, n.address || '–');
      if (!setTime(row.since, n.since, sinceAgo)) setText(row.since.time, 'unknown');
      setText(row.tunnels, formatCount(n.tunnels));
      setAttr(row.tunnels, 'title', 'private proxies with a tunnel to ' + n.name);
      setText(row.connections, formatCount(n.connections));
      setAttr(row.connections, 'title', 'client connections ' + n.name + ' relays now');
    });
    el.nodesEmpty.hidden = items.length !== 0;
  }

  // ---------------------------------------------------------------- private proxies

  const privateRows = new Map();

  const REFUSE_CHOICES = [[0, 'just disconnect'], [60, '1 min'], [600, '10 min'], [3600, '1 h'], [86400, '1 day']];

  // "Refuse for" (a labelled select) and the Kick button, for an online private.
  function kickControls(name) {
    const group = document.createElement('span');
    group.className = 'inline-controls';
    const label = document.createElement('label');
    const select = document.createElement('select');
    select.id = 'refuse-' + name;
    select.className = 'small';
    label.htmlFor = select.id;
    label.append('Refuse ');
    const who = document.createElement('span');
    who.className = 'visually-hidden';
    who.textContent = name + ' ';
    label.append(who, 'for');
    for (const [seconds, text] of REFUSE_CHOICES) {
      const opt = document.createElement('option');
      opt.value = String(seconds);
      opt.textContent = text;
      select.appendChild(opt);
    }
    const kick = button('Kick', 'danger small', 'Kick ' + name,
      (b) => kickPrivate(name, Number(select.value), b, false));
    group.append(label, select, kick);
    return { group, select, kick };
  }

  function tokenLabel(id) {
    if (!id) return '';
    if (scopeToken && scopeToken.id === id) return scopeToken.label;
    return tokenLabels.get(id) || id;
  }

  function renderPrivates(privates, cluster) {
    const inCluster = cluster !== null;
    const liveNodes = inCluster && Array.isArray(cluster.nodes)
      ? cluster.nodes.map((n) => String(n && n.name)).sort() : [];
    el.privatesNodesHead.hidden = !inCluster;
    const items = privates.map((p) => ({
      // In a cluster: the nodes it has a tunnel to.
      nodes: Array.isArray(p.nodes) ? p.nodes.map(String).sort() : [],
      name: String(p.name),
      online: p.online === true,
      address: p.address ? String(p.address) : '',
      since: p.connected_since ? String(p.connected_since) : null,
      token: typeof p.token === 'string' ? p.token : '',
      refusedFor: Number.isFinite(p.refused_for) && p.refused_for > 0 ? p.refused_for : 0,
      // Its tunnel's link broke and it waits for a resume (RFC 3339 time), and what
      // resumption did so far: links resumed, connections carried over one, lost by one.
      suspended: p.suspended_since ? String(p.suspended_since) : null,
      resumes: num(p.resumes),
      carried: num(p.conns_resumed),
      lost: num(p.conns_lost_on_break),
    }));
    syncRows(el.privatesBody, privateRows, items, (p) => {
      const row = headedRow(p.name);
      row.state = stateBadge(cell(row.tr, 'State'));
      row.address = cell(row.tr, 'Address', 'mono');
      row.since = timeCell(cell(row.tr, 'Connected since'));
      row.resumes = cell(row.tr, 'Resumes');
      row.token = cell(row.tr, 'Token');
      row.nodes = cell(row.tr, 'Nodes', 'col-nodes has-line');
      row.nodesOn = document.createElement('span');
      row.nodesMissing = document.createElement('small');
      row.nodesMissing.className = 'nodes-missing';
      row.nodes.append(row.nodesOn, row.nodesMissing);
      row.actions = cell(row.tr, 'Actions', 'actions');
      Object.assign(row, kickControls(p.name));
      row.letIn = button('Let in now', 'secondary small', 'Let ' + p.name + ' in now',
        (b) => kickPrivate(p.name, 0, b, true));
      row.actions.append(row.group, row.letIn);
      return row;
    }, (row, p) => {
      setText(row.name, p.name);
      if (p.refusedFor > 0) setBadge(row.state, 'refused for ' + p.refusedFor + ' s', 'refused');
      else if (p.suspended) setBadge(row.state, 'resuming', 'refused');
      else setState(row.state, p.online);
      setAttr(row.state, 'title', p.suspended
        ? 'the link broke at ' + new Date(p.suspended).toLocaleTimeString() +
          '; its connections wait for it to come back (resume)' : '');
      setText(row.resumes, formatCount(p.resumes) + ' · carried ' + formatCount(p.carried) +
        ' · lost ' + formatCount(p.lost));
      setAttr(row.resumes, 'title', 'links that broke and were resumed; connections carried ' +
        'over a break; connections closed by one');
      setText(row.address, p.address || '–');
      if (!setTime(row.since, p.since, () => (p.online ? sinceAgo(new Date(p.since)) : ' (last time)'))) {
        setText(row.since.time, p.online ? 'unknown' : 'not since the server started');
      }
      setText(row.token, p.token ? tokenLabel(p.token) : p.online ? 'admin' : '–');
      setAttr(row.token, 'title', p.token ? 'token id ' + p.token : '');
      if (row.nodes.hidden !== !inCluster) row.nodes.hidden = !inCluster;
      const missing = inCluster ? liveNodes.filter((n) => !p.nodes.includes(n)) : [];
      setText(row.nodesOn, inCluster ? (p.nodes.length ? p.nodes.join(', ') : 'none') : '');
      setAttr(row.nodesOn, 'title', inCluster ? 'it has a tunnel to ' +
        (p.nodes.length ? p.nodes.join(', ') : 'no node') : '');
      setText(row.nodesMissing, missing.length ? 'not to ' + missing.join(', ') : '');
      if (row.nodesMissing.hidden !== (missing.length === 0)) row.nodesMissing.hidden = missing.length === 0;
      row.group.hidden = !p.online;
      row.letIn.hidden = p.refusedFor === 0;
    });
    el.privatesEmpty.hidden = items.length !== 0;
  }

  // POST /kick: refuseFor 0 just disconnects; letIn: it ends a refusal of an offline private
  // (the server's kick with refuse_for 0).
  function kickPrivate(name, refuseFor, b, letIn) {
    const choice = REFUSE_CHOICES.find(([seconds]) => seconds === refuseFor);
    return performAction({
      button: b,
      messages: { error: el.privatesError, status: el.privatesStatus },
      path: '/kick',
      body: { private: name, refuse_for: refuseFor },
      success: () => (letIn
        ? name + ' may connect again; it comes back after its next retry.'
        : refuseFor > 0
          ? 'Kicked ' + name + '; it is refused for ' + (choice ? choice[1] : refuseFor + ' s') + '.'
          : 'Kicked ' + name + '; it may come back at once.'),
      failure: 'Could not ' + (letIn ? 'let ' + name + ' in' : 'kick ' + name),
      // The Kick button goes with the tunnel: "Let in now" takes over, or the title.
      focusAfter: () => {
        const row = privateRows.get(name);
        return row && shown(row.letIn) ? row.letIn : $('privates-title');
      },
    });
  }

  // ---------------------------------------------------------------- apps

  const appRows = new Map();

  function renderApps(apps, inCluster) {
    syncRows(el.appsBody, appRows, apps, (a) => {
      const row = headedRow(a.name);
      const tr = row.tr;
      Object.assign(row, {
        port: cell(tr, 'Public port', 'num'),
        protocol: cell(tr, 'Protocol'),
        target: cell(tr, 'Target', 'mono'),
        private: cell(tr, 'Private'),
        owner: cell(tr, 'Owner'),
        state: stateBadge(cell(tr, 'State')),
        active: cell(tr, 'Active', 'num'),
        total: cell(tr, 'Total', 'num'),
        bytesIn: cell(tr, 'Bytes in', 'num'),
        bytesOut: cell(tr, 'Bytes out', 'num'),
        rateIn: cell(tr, 'In now', 'num'),
        rateOut: cell(tr, 'Out now', 'num'),
        actions: cell(tr, 'Actions', 'actions'),
      });
      // Why the home side would refuse the target: shown under the badge.
      row.why = document.createElement('small');
      row.why.className = 'why';
      row.why.hidden = true;
      row.state.parentNode.appendChild(row.why);
      // A UDP app's datagrams and drops: under its session counts.
      row.dgrams = document.createElement('small');
      row.dgrams.className = 'dgrams';
      row.dgrams.hidden = true;
      row.total.appendChild(row.dgrams);
      row.port.classList.add('col-port');
      row.active.classList.add('col-active');
      row.total.classList.add('col-total');
      row.bytesIn.classList.add('col-bytes-in');
      row.bytesOut.classList.add('col-bytes-out');
      row.rateIn.classList.add('col-rate-in');
      row.rateOut.classList.add('col-rate-out');
      row.toggle = button('Disable', 'secondary small', 'Disable ' + a.name,
        (b) => setAppDisabled(a.name, !row.disabled, b));
      row.button = button('Unregister', 'danger small', 'Unregister ' + a.name,
        (b) => confirmUnregister(a.name, b));
      row.actions.append(row.toggle, row.button);
      return row;
    }, (row, a) => {
      setText(row.name, a.name);
      setText(row.port, Number.isFinite(a.public_port) ? String(a.public_port) : '–');
      setText(row.protocol, a.udp ? 'UDP' : a.ftp ? ftpModeText(a) : 'TCP');
      setAttr(row.protocol, 'title', a.ftp ? ftpModeTitle(a) : '');
      setAttr(row.active, 'title', a.udp ? 'UDP sessions open now'
        : a.ftp ? 'FTP control / data connections open now' : 'connections open now');
      setAttr(row.total, 'title', a.udp ? 'UDP sessions since start'
        : a.ftp ? 'FTP control / data connections since start' : 'connections since start');
      setText(row.target, a.target_host + ':' + (Number.isFinite(a.target_port) ? a.target_port : '?'));
      setText(row.private, a.private || '–');
      setText(row.owner, a.owner_label || (a.owner ? a.owner : 'admin'));
      setAttr(row.owner, 'title', a.owner ? 'token id ' + a.owner : 'registered with the admin token');
      row.disabled = a.disabled;
      if (a.disabled) setBadge(row.state, 'disabled', 'disabled');
      else if (a.home_refuses) setBadge(row.state, 'home refuses', 'refused');
      else setState(row.state, a.online);
      setText(row.why, a.home_refuses);
      if (row.why.hidden !== !a.home_refuses) row.why.hidden = !a.home_refuses;
      setText(row.toggle, a.disabled ? 'Enable' : 'Disable');
      setAttr(row.toggle, 'aria-label', (a.disabled ? 'Enable ' : 'Disable ') + a.name);
      setLead(row.active, formatCount(a.active_connections) +
        (a.ftp ? ' / ' + formatCount(a.active_data) : ''));
      setAttr(row.active, 'data-value', String(a.active_connections));
      setTotal(row, a.ftp ? formatCount(a.total_connections) + ' / ' + formatCount(a.total_data)
        : formatCount(a.total_connections));
      setDatagrams(row, a);
      setAttr(row.total, 'data-value', String(a.total_connections));
      setBytes(row.bytesIn, a.bytes_in);
      setBytes(row.bytesOut, a.bytes_out);
      const r = rates.get(a.name);
      const rin = r && r.rateIn !== null ? r.rateIn : null;
      const rout = r && r.rateOut !== null ? r.rateOut : null;
      setText(row.rateIn, formatRate(rin));
      setAttr(row.rateIn, 'data-value', rin === null ? '' : String(Math.round(rin)));
      setText(row.rateOut, formatRate(rout));
      setAttr(row.rateOut, 'data-value', rout === null ? '' : String(Math.round(rout)));
      setClusterLines(row, a, inCluster);
    });
    el.appsEmpty.hidden = apps.length !== 0;
    el.appsClusterHint.hidden = !inCluster;
  }

  // The Total cell: its count as the first text node (the datagram line stays beside it).
  function setTotal(row, text) {
    setLead(row.total, text);
  }

  // In a cluster, a line "all nodes: …" under a counter of this node; made on first use,
  // hidden and emptied (so the cell reads as before) when there is no cluster.
  function setClusterLine(row, key, td, text, title) {
    let small = row[key];
    if (text === null) {
      if (small) {
        setText(small, '');
        if (!small.hidden) small.hidden = true;
      }
      return;
    }
    if (!small) {
      small = document.createElement('small');
      small.className = 'cluster-sum';
      td.appendChild(small);
      td.classList.add('has-line');
      row[key] = small;
    }
    setText(small, 'all\u00a0nodes: ' + text);
    setAttr(small, 'title', title);
    if (small.hidden) small.hidden = false;
  }

  function setClusterLines(row, a, inCluster) {
    const c = inCluster ? a.cluster : null;
    const what = a.udp ? 'UDP sessions' : a.ftp ? 'FTP control connections' : 'connections';
    setClusterLine(row, 'clActive', row.active, c ? formatCount(c.active_connections) : null,
      what + ' open now on every live node together');
    setClusterLine(row, 'clTotal', row.total, c ? formatCount(c.total_connections) : null,
      what + ' since start, every live node together');
    setClusterLine(row, 'clBytesIn', row.bytesIn, c ? formatBytes(c.bytes_in) : null,
      c ? formatCount(c.bytes_in) + ' bytes client → app, every live node together' : '');
    setClusterLine(row, 'clBytesOut', row.bytesOut, c ? formatBytes(c.bytes_out) : null,
      c ? formatCount(c.bytes_out) + ' bytes app → client, every live node together' : '');
    for (const [key, v] of [['clActive', c && c.active_connections], ['clTotal', c && c.total_connections],
      ['clBytesIn', c && c.bytes_in], ['clBytesOut', c && c.bytes_out]]) {
      if (row[key]) setAttr(row[key], 'data-value', c ? String(v) : '');
    }
  }

  const DROP_REASONS = [['oversize', 'too large'], ['queue_full', 'queue full'],
    ['session_limit', 'session limit'], ['unreachable', 'target unreachable'],
    ['tunnel_down', 'tunnel down']];

  // "1,204 in · 1,180 out · 3 dropped" for a UDP app; the reasons in the title.
  function setDatagrams(row, a) {
    if (!a.udp) {
      if (!row.dgrams.hidden) row.dgrams.hidden = true;
      return;
    }
    let dropped = 0;
    const parts = [];
    for (const [key, label] of DROP_REASONS) {
      const n = a.drops ? num(a.drops[key]) : 0;
      if (Number.isFinite(n) && n > 0) {
        dropped += n;
        parts.push(label + ': ' + formatCount(n));
      }
    }
    setText(row.dgrams, 'datagrams ' + formatCount(a.datagrams_in) + ' in · ' +
      formatCount(a.datagrams_out) + ' out · ' + formatCount(dropped) + ' dropped');
    setAttr(row.dgrams, 'title', parts.length ? 'dropped: ' + parts.join(', ') : 'nothing dropped');
    setAttr(row.dgrams, 'data-dropped', String(dropped));
    if (row.dgrams.hidden) row.dgrams.hidden = false;
  }

  // POST /disable or /enable. The button stays (its label flips), and so does the focus.
  function setAppDisabled(name, disable, b) {
    const row = appRows.get(name);
    const port = row ? row.port.textContent : '?';
    return performAction({
      button: b,
      messages: { error: el.appsError, status: el.appsStatus },
      path: disable ? '/disable' : '/enable',
      body: { name },
      success: () => (disable
        ? 'Disabled ' + name + ': public port ' + port + ' refuses new connections.'
        : 'Enabled ' + name + ': public port ' + port + ' accepts connections again.'),
      failure: 'Could not ' + (disable ? 'disable ' : 'enable ') + name,
      focusAfter: () => $('apps-title'),
    });
  }

  // ---------------------------------------------------------------- connections

  const connectionRows = new Map();

  function renderConnectionsAnswer(answer) {
    if (answer instanceof Error) {
      pollProblem(el.connectionsError, 'Could not read the connections: ' + answer.message);
      return;
    }
    pollProblem(el.connectionsError, '');
    const list = answer && Array.isArray(answer.connections) ? answer.connections : [];
    renderConnections(list.map((c) => ({
      private: String(c.private),
      id: num(c.id),
      app: String(c.app),
      client: String(c.client),
      since: c.since ? String(c.since) : null,
      bytes_in: num(c.bytes_in),
      bytes_out: num(c.bytes_out),
    })));
    const total = answer ? num(answer.total) : NaN;
    const truncated = answer !== null && answer.truncated === true;
    el.connectionsTruncated.hidden = !truncated;
    if (truncated) {
      setText(el.connectionsTruncated, 'Showing the first ' + formatCount(list.length) + ' of ' +
        formatCount(total) + ' open connections.');
    }
  }

  function renderConnections(items) {
    // Keyed by app, private and id: the oldest connection of an app first.
    for (const c of items) c.key = c.app + '\n' + c.private + '\n' + String(c.id).padStart(20, '0');
    syncRows(el.connectionsBody, connectionRows, items, (c) => {
      const row = headedRow(c.private + '/' + c.id, 'App');
      row.private = cell(row.tr, 'Private');
      row.client = cell(row.tr, 'Client', 'mono');
      row.since = timeCell(cell(row.tr, 'Since'));
      row.bytesIn = cell(row.tr, 'Bytes in', 'num');
      row.bytesOut = cell(row.tr, 'Bytes out', 'num');
      row.actions = cell(row.tr, 'Actions', 'actions');
      row.button = button('Close', 'danger small', 'Close the connection from ' + c.client + ' to ' + c.app,
        (b) => closeConnection(c, b));
      row.actions.appendChild(row.button);
      return row;
    }, (row, c) => {
      setText(row.name, c.app);
      setText(row.private, c.private);
      setText(row.client, c.client);
      setTime(row.since, c.since, sinceAgo);
      setBytes(row.bytesIn, c.bytes_in);
      setBytes(row.bytesOut, c.bytes_out);
    });
    el.connectionsEmpty.hidden = items.length !== 0;
  }

  function closeConnection(c, b) {
    return performAction({
      button: b,
      messages: { error: el.connectionsError, status: el.connectionsStatus },
      path: '/connections/close',
      body: { private: c.private, id: c.id },
      success: () => 'Closed the connection from ' + c.client + ' to ' + c.app + '.',
      failure: 'Could not close the connection from ' + c.client,
      focusAfter: () => $('connections-title'),
    });
  }

  // ---------------------------------------------------------------- who is signed in

  let isAdmin = false;
  let scopeToken = null;         // a scoped token's own scope, from /list
  let tokenLabels = new Map();   // token id -> label, from /tokens (the admin's)

  function scopeLimits(t) {
    return formatCount(num(t.max_apps)) + ' apps, ' + formatCount(num(t.max_conns)) +
      ' client connections at once';
  }

  function applyIdentity(data) {
    isAdmin = data.admin === true;
    scopeToken = !isAdmin && data.token && typeof data.token === 'object' ? data.token : null;
    el.tokensSection.hidden = !isAdmin;
    el.scope.hidden = scopeToken === null;
    if (isAdmin) {
      setText(el.whoami, 'Signed in with the admin token');
    } else if (scopeToken) {
      const label = String(scopeToken.label);
      setText(el.whoami, 'Signed in with the token “' + label + '”');
      setText(el.scopeText, 'The token “' + label + '” (id ' + String(scopeToken.id) + ') may do this:');
      setText(el.scopePrivates, Array.isArray(scopeToken.privates) ? scopeToken.privates.join(', ') : '–');
      setText(el.scopePorts, String(scopeToken.ports || '–'));
      setText(el.scopeLimits, scopeLimits(scopeToken));
    } else {
      setText(el.whoami, 'Signed in');
    }
  }

  // The <select> keeps its options (and the user's choice) across polls.
  function renderPrivateSelect(privates) {
    const select = el.regPrivate;
    const names = privates.map((p) => String(p.name)).sort();
    const online = new Map(privates.map((p) => [String(p.name), p.online === true]));
    const existing = new Map();
    for (const opt of Array.from(select.options)) {
      if (opt.value === '' || !online.has(opt.value)) {
        if (opt.value === '' && names.length === 0) { existing.set('', opt); continue; }
        opt.remove();
      } else {
        existing.set(opt.value, opt);
      }
    }
    if (names.length === 0 && !existing.has('')) {
      const opt = document.createElement('option');
      opt.value = '';
      opt.textContent = 'No private proxy known yet';
      select.appendChild(opt);
    }
    let previous = null;
    for (const name of names) {
      let opt = existing.get(name);
      if (!opt) {
        opt = document.createElement('option');
        opt.value = name;
        const next = previous ? previous.nextSibling : select.firstChild;
        select.insertBefore(opt, next);
      }
      setText(opt, name + (online.get(name) ? '' : ' (offline)'));
      previous = opt;
    }
  }

  // ---------------------------------------------------------------- chart

  const chartColors = { in: '#2f7ed8', out: '#d9822b' };

  function readColors() {
    const style = getComputedStyle(document.documentElement);
    return {
      in: style.getPropertyValue('--chart-in').trim() || chartColors.in,
      out: style.getPropertyValue('--chart-out').trim() || chartColors.out,
      grid: style.getPropertyValue('--chart-grid').trim() || '#ccc',
      text: style.getPropertyValue('--muted').trim() || '#666',
    };
  }

  // A "nice" top for the y axis: 1, 2 or 5 times a power of 1024-ish steps in bytes/s.
  function niceMax(v) {
    if (!(v > 0)) return 1024;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) {
      if (v <= m * p) return m * p;
    }
    return 10 * p;
  }

  function drawChart() {
    const canvas = el.chart;
    const cssWidth = canvas.clientWidth;
    const cssHeight = canvas.clientHeight;
    if (cssWidth === 0 || cssHeight === 0) return;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(cssWidth * dpr);
    const h = Math.round(cssHeight * dpr);
    if (canvas.width !== w) canvas.width = w;
    if (canvas.height !== h) canvas.height = h;
    const ctx = canvas.getContext('2d');
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssWidth, cssHeight);
    const colors = readColors();

    const now = history.length ? history[history.length - 1].t : performance.now();
    let peak = 0;
    for (const s of history) peak = Math.max(peak, s.in, s.out);
    const top = niceMax(peak);
    const left = 4;
    const right = cssWidth - 4;
    const plotTop = 16;
    const bottom = cssHeight - 16;
    // The x axis covers what has been seen so far, from one minute up to HISTORY_SECONDS.
    const seen = history.length ? now - history[0].t : 0;
    const span = Math.min(HISTORY_SECONDS * 1000, Math.max(60 * 1000, seen));
    const x = (t) => right - ((now - t) / span) * (right - left);
    const y = (v) => bottom - (v / top) * (bottom - plotTop);

    ctx.font = '11px system-ui, sans-serif';
    ctx.lineWidth = 1;
    ctx.strokeStyle = colors.grid;
    ctx.fillStyle = colors.text;
    ctx.textBaseline = 'top';
    for (const frac of [0, 0.5, 1]) {
      const yy = Math.round(y(top * frac)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(right, yy);
      ctx.stroke();
    }
    ctx.textAlign = 'left';
    ctx.fillText(formatRate(top), left, 1);
    ctx.textBaseline = 'bottom';
    ctx.fillText(span >= 120 * 1000 ? Math.round(span / 60000) + ' min ago' : Math.round(span / 1000) + ' s ago', left, cssHeight - 1);
    ctx.textAlign = 'right';
    ctx.fillText('now', right, cssHeight - 1);

    // "in" is a filled area with its line, "out" a line on top (dashed, so that equal
    // rates, as with an echo app, still show both).
    if (history.length >= 2) {
      const trace = (key) => {
        history.forEach((s, i) => {
          const px = x(s.t);
          const py = y(s[key]);
          if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
        });
      };
      ctx.beginPath();
      trace('in');
      ctx.lineTo(x(history[history.length - 1].t), bottom);
      ctx.lineTo(x(history[0].t), bottom);
      ctx.closePath();
      ctx.globalAlpha = 0.18;
      ctx.fillStyle = colors.in;
      ctx.fill();
      ctx.globalAlpha = 1;
      ctx.lineJoin = 'round';
      for (const key of ['in', 'out']) {
        ctx.beginPath();
        ctx.lineWidth = key === 'in' ? 2.5 : 2;
        ctx.setLineDash(key === 'out' ? [6, 4] : []);
        ctx.strokeStyle = colors[key];
        trace(key);
        ctx.stroke();
      }
      ctx.setLineDash([]);
    }

    const last = history.length ? history[history.length - 1] : null;
    const summary = last
      ? 'Now ' + formatRate(last.in) + ' in, ' + formatRate(last.out) + ' out; peak ' +
        formatRate(peak) + ' over the last ' + Math.round(HISTORY_SECONDS / 60) + ' minutes.'
      : 'Waiting for a second sample…';
    setText(el.chartSummary, summary);
    setAttr(el.chart, 'aria-label', 'Throughput chart. ' + summary);
    setAttr(el.chart, 'data-peak', String(Math.round(peak)));
  }

  let resizeTimer = null;
  window.addEventListener('resize', () => {
    if (resizeTimer !== null) clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawChart, 100);
  });

  // ---------------------------------------------------------------- register

  const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;

  function parsePort(text) {
    const t = text.trim();
    if (!/^[0-9]{1,5}$/.test(t)) return null;
    const n = Number(t);
    return n >= 1 && n <= 65535 ? n : null;
  }

  function clearInvalid() {
    for (const input of [el.regName, el.regPublicPort, el.regTargetHost, el.regTargetPort, el.regPrivate]) {
      setAttr(input, 'aria-invalid', 'false');
    }
  }

  // A form's error, in its alert line; the field it is about is marked and focused.
  function showFieldError(errorNode, statusNode, message, field) {
    if (statusNode) setText(statusNode, '');
    setText(errorNode, message);
    if (field) {
      setAttr(field, 'aria-invalid', 'true');
      field.focus();
    }
  }

  function formError(message, field) {
    showFieldError(el.regError, el.regStatus, message, field);
  }

  // Which field an API error is most likely about, so it can be marked and focused.
  function fieldForError(message) {
    const m = message.toLowerCase();
    if (/public.?port|\bport\b.*(taken|in use|used)/.test(m)) return el.regPublicPort;
    if (/target.?port/.test(m)) return el.regTargetPort;
    if (/target.?host|host/.test(m)) return el.regTargetHost;
    if (/private/.test(m)) return el.regPrivate;
    if (/name/.test(m)) return el.regName;
    if (/port/.test(m)) return el.regPublicPort;
    return null;
  }

  // The passive range field belongs to FTP apps only.
  el.regProtocol.addEventListener('change', () => {
    el.regFtpField.hidden = el.regProtocol.value !== 'ftp';
  });

  el.regForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearInvalid();
    setText(el.regError, '');
    setText(el.regStatus, '');
    const name = el.regName.value.trim();
    const host = el.regTargetHost.value.trim();
    const publicPortText = el.regPublicPort.value;
    const targetPortText = el.regTargetPort.value;
    if (!NAME_RE.test(name)) {
      formError(name === ''
        ? 'Give the app a name.'
        : 'The name may only use letters, digits, dots, dashes and underscores (at most 64).', el.regName);
      return;
    }
    const publicPort = parsePort(publicPortText);
    if (publicPort === null) {
      formError('The public port must be a whole number from 1 to 65535' +
        (publicPortText.trim() ? ' (' + publicPortText.trim() + ' is not).' : '.'), el.regPublicPort);
      return;
    }
    if (host === '') {
      formError('Give the target host (for example 127.0.0.1), as the private side should dial it.', el.regTargetHost);
      return;
    }
    const targetPort = parsePort(targetPortText);
    if (targetPort === null) {
      formError('The target port must be a whole number from 1 to 65535' +
        (targetPortText.trim() ? ' (' + targetPortText.trim() + ' is not).' : '.'), el.regTargetPort);
      return;
    }
    const body = { name, public_port: publicPort, target_host: host, target_port: targetPort };
    if (el.regPrivate.value) body.private = el.regPrivate.value;
    if (el.regProtocol.value === 'udp') body.protocol = 'udp';
    if (el.regProtocol.value === 'ftp') {
      body.protocol = 'ftp';
      const range = el.regFtpRange.value.trim();
      if (range !== '') {
        if (!/^[0-9]{4,5}-[0-9]{4,5}$/.test(range)) {
          formError('The FTP passive range must be LOW-HIGH, for example 40000-40099.', el.regFtpRange);
          return;
        }
        body.ftp_passive_ports = range;
      }
    }
    // Allowed clients and the PROXY protocol: the server checks each entry
    // and says which one is wrong.
    const allow = el.regAllowFrom.value.split(/[\s,]+/).filter((x) => x !== '');
    if (allow.length) body.allow_from = allow;
    if (el.regProxyProtocol.value !== '0') {
      if (body.protocol) {
        formError('The PROXY protocol is for TCP apps.', el.regProxyProtocol);
        return;
      }
      body.proxy_protocol = Number(el.regProxyProtocol.value);
    }
    el.regSubmit.disabled = true;
    try {
      await api('POST', '/register', body);
      setText(el.regStatus, 'Registered ' + name + ' on public ' +
        (body.protocol === 'udp' ? 'UDP' : body.protocol === 'ftp' ? 'FTP' : 'TCP') + ' port ' +
        publicPort + '.');
      el.regName.value = '';
      el.regPublicPort.value = '';
      el.regTargetPort.value = '';
      el.regAllowFrom.value = '';
      el.regProxyProtocol.value = '0';
      await refresh();
    } catch (e) {
      if (e.status === 401) {
        showSignin('The server no longer accepts this token. Sign in again.');
        return;
      }
      formError('Could not register ' + name + ': ' + e.message, fieldForError(e.message));
    } finally {
      el.regSubmit.disabled = false;
    }
  });

  // ---------------------------------------------------------------- actions

  // A section's alert line tells a failed poll or a failed action; a poll that works again
  // clears only what a poll said there.
  function pollProblem(node, message) {
    if (message) {
      setText(node, message);
      node.setAttribute('data-from-poll', '');
    } else if (node.hasAttribute('data-from-poll')) {
      setText(node, '');
      node.removeAttribute('data-from-poll');
    }
  }

  // One POST from a button of a section: clears the section's messages, disables the button
  // meanwhile, tells the outcome in the section's status or alert line (the server's words
  // on failure), refreshes, and keeps the keyboard focus on the button, or when it is gone
  // (its row went, or it is hidden now) on focusAfter(). Resolves to the answer, or null.
  async function performAction({ button: b, messages, path, body, success, failure, focusAfter }) {
    setText(messages.error, '');
    messages.error.removeAttribute('data-from-poll');
    setText(messages.status, '');
    b.disabled = true;
    try {
      const answer = await api('POST', path, body);
      setText(messages.status, success(answer));
      await refresh();
      return answer;
    } catch (e) {
      if (e.status === 401) {
        showSignin('The server no longer accepts this token. Sign in again.');
        return null;
      }
      setText(messages.error, failure + ': ' + e.message);
      return null;
    } finally {
      b.disabled = false;
      if (token !== null) {
        if (shown(b)) b.focus();
        else focusAfter().focus();
      }
    }
  }

  // The confirm dialog, for every action that cannot be undone. Resolves to true on OK.
  function askConfirm({ title, text, ok }) {
    const dlg = el.confirm;
    setText(el.confirmTitle, title);
    setText(el.confirmText, text);
    setText(el.confirmOk, ok);
    if (typeof dlg.showModal !== 'function') {
      return Promise.resolve(window.confirm(title));
    }
    return new Promise((resolve) => {
      const done = () => {
        dlg.removeEventListener('close', done);
        resolve(dlg.returnValue === 'ok');
      };
      dlg.returnValue = '';
      dlg.addEventListener('close', done);
      dlg.showModal();
    });
  }

  // ---------------------------------------------------------------- unregister

  async function confirmUnregister(name, b) {
    const row = appRows.get(name);
    const port = row ? row.port.textContent : '?';
    const ok = await askConfirm({
      title: 'Unregister ' + name + '?',
      text: 'Public port ' + port + ' stops accepting connections at once. ' +
        'Connections already open run to their end.',
      ok: 'Unregister',
    });
    if (!ok) {
      if (b.isConnected) b.focus();
      return;
    }
    await performAction({
      button: b,
      messages: { error: el.appsError, status: el.appsStatus },
      path: '/unregister',
      body: { name },
      success: () => 'Unregistered ' + name + '.',
      failure: 'Could not unregister ' + name,
      focusAfter: () => $('apps-title'),
    });
  }

  // ---------------------------------------------------------------- tokens (the admin's)

  const tokenRows = new Map();

  function renderTokensAnswer(answer) {
    if (answer === null) return;           // not the admin: nothing asked
    if (answer instanceof Error) {
      pollProblem(el.tokensError, 'Could not read the tokens: ' + answer.message);
      return;
    }
    pollProblem(el.tokensError, '');
    renderTokens(Array.isArray(answer.tokens) ? answer.tokens : []);
  }

  function renderTokens(tokens) {
    const items = tokens.map((t) => ({
      id: String(t.id),
      label: String(t.label),
      privates: Array.isArray(t.privates) ? t.privates.map(String) : [],
      ports: String(t.ports === undefined ? '' : t.ports),
      max_apps: num(t.max_apps),
      max_conns: num(t.max_conns),
      created: t.created ? String(t.created) : null,
    }));
    tokenLabels = new Map(items.map((t) => [t.id, t.label]));
    // Keyed by label, then id: labels need not be unique.
    for (const t of items) t.key = t.label + '\n' + t.id;
    syncRows(el.tokensBody, tokenRows, items, (t) => {
      const row = headedRow(t.id, 'Label');
      row.id = cell(row.tr, 'ID', 'mono');
      row.privates = cell(row.tr, 'Private names', 'mono');
      row.ports = cell(row.tr, 'Ports', 'mono');
      row.maxApps = cell(row.tr, 'Max apps', 'num');
      row.maxConns = cell(row.tr, 'Max conns', 'num');
      row.created = timeCell(cell(row.tr, 'Created'));
      row.actions = cell(row.tr, 'Actions', 'actions');
      row.button = button('Revoke', 'danger small', 'Revoke token ' + t.label,
        (b) => confirmRevoke(t, b));
      row.button.title = 'token id ' + t.id;
      row.actions.appendChild(row.button);
      return row;
    }, (row, t) => {
      setText(row.name, t.label);
      setText(row.id, t.id);
      setText(row.privates, t.privates.join(', '));
      setText(row.ports, t.ports);
      setText(row.maxApps, formatCount(t.max_apps));
      setText(row.maxConns, formatCount(t.max_conns));
      setTime(row.created, t.created, null);
    });
    el.tokensEmpty.hidden = items.length !== 0;
  }

  async function confirmRevoke(t, b) {
    const ok = await askConfirm({
      title: 'Revoke the token “' + t.label + '”?',
      text: 'Its private proxies are disconnected at once and cannot connect again with it. ' +
        'Its apps stay registered (owner “(revoked)”) and refuse clients until you unregister them.',
      ok: 'Revoke',
    });
    if (!ok) {
      if (b.isConnected) b.focus();
      return;
    }
    await performAction({
      button: b,
      messages: { error: el.tokensError, status: el.tokensStatus },
      path: '/tokens/revoke',
      body: { id: t.id },
      success: (answer) => {
        const n = num(answer.tunnels_closed);
        return 'Revoked the token “' + t.label + '”: ' + formatCount(n) +
          (n === 1 ? ' tunnel' : ' tunnels') + ' closed.';
      },
      failure: 'Could not revoke the token “' + t.label + '”',
      focusAfter: () => $('tokens-title'),
    });
  }

  // ------------------------------------------- create a token, and show it once

  const TOKEN_FILE = '~/.config/proxy_private/token';

  // How to start a private proxy with the new token: the token goes into a file, never
  // onto a command line (other users of a machine can read command lines).
  function privateCommand(t) {
    const host = location.hostname.replace(/^\[(.*)\]$/, '$1') || 'HOST';
    const first = Array.isArray(t.privates) && t.privates.length ? String(t.privates[0]) : 'NAME';
    const name = first.endsWith('*') ? first.slice(0, -1) + 'NAME' : first;
    return 'proxy_private ' + host + ' TUNNEL_PORT --token-file ' + TOKEN_FILE + ' --name ' + name;
  }

  function showCreatedToken(t) {
    setText(el.tokenCreatedTitle, 'New token for “' + String(t.label) + '”');
    el.newToken.value = String(t.token);
    setText(el.tokenSave, 'mkdir -p ~/.config/proxy_private\n(umask 077; cat > ' + TOKEN_FILE + ')\n' +
      'chmod 600 ' + TOKEN_FILE);
    setText(el.tokenCommand, privateCommand(t));
    setText(el.tokenCopyStatus, '');
    el.tokenCreated.hidden = false;
    el.newToken.focus();
    el.newToken.select();
  }

  // Forgets the shown token (sign-out, or "I have saved it").
  function hideCreatedToken() {
    el.newToken.value = '';
    setText(el.tokenCopyStatus, '');
    el.tokenCreated.hidden = true;
  }

  // Copies text; where the Clipboard API is missing (plain HTTP to a public address) or
  // refused, selects source and copies the selection.
  async function copyText(text, source, what) {
    let copied = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        copied = true;
      }
    } catch (e) { /* fall back to the selection */ }
    if (!copied) {
      if (source instanceof HTMLInputElement) {
        source.focus();
        source.select();
      } else {
        const range = document.createRange();
        range.selectNodeContents(source);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
      }
      try { copied = document.execCommand('copy'); } catch (e) { copied = false; }
    }
    setText(el.tokenCopyStatus, copied
      ? what + ' copied to the clipboard.'
      : 'Could not copy: the ' + what.toLowerCase() + ' is selected, press Ctrl-C (or ⌘-C).');
  }

  el.copyToken.addEventListener('click', () => copyText(el.newToken.value, el.newToken, 'Token'));
  el.copyCommand.addEventListener('click', () => copyText(el.tokenCommand.textContent, el.tokenCommand, 'Command'));
  el.tokenDone.addEventListener('click', () => {
    hideCreatedToken();
    $('token-form-title').focus();
  });

  const tokenFields = [el.tokLabel, el.tokPrivates, el.tokPorts, el.tokMaxApps, el.tokMaxConns];

  // Which field a refusal of POST /tokens is about: the server names it in quotes.
  function tokenFieldForError(message) {
    const m = /'(label|privates|ports|max_apps|max_conns)'/.exec(message);
    if (!m) return null;
    return { label: el.tokLabel, privates: el.tokPrivates, ports: el.tokPorts,
      max_apps: el.tokMaxApps, max_conns: el.tokMaxConns }[m[1]];
  }

  // An optional whole number: undefined when empty, null when not a number.
  function optionalCount(text) {
    const t = text.trim();
    if (t === '') return undefined;
    return /^[0-9]{1,9}$/.test(t) ? Number(t) : null;
  }

  el.tokForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    for (const input of tokenFields) setAttr(input, 'aria-invalid', 'false');
    setText(el.tokError, '');
    setText(el.tokensStatus, '');
    const fail = (message, field) => showFieldError(el.tokError, null, message, field);
    const body = {
      label: el.tokLabel.value.trim(),
      privates: el.tokPrivates.value.split(',').map((n) => n.trim()).filter((n) => n !== ''),
      ports: el.tokPorts.value.replace(/\s+/g, ''),
    };
    if (body.label === '') return fail('Give the token a label: who it is for.', el.tokLabel);
    if (body.privates.length === 0) {
      return fail('Give the names its private proxies may use (comma-separated; alice-* allows every name that starts so).', el.tokPrivates);
    }
    if (body.ports === '') return fail('Give the public ports its apps may use, for example 20000-20099.', el.tokPorts);
    for (const [key, input, what] of [['max_apps', el.tokMaxApps, 'Max apps'], ['max_conns', el.tokMaxConns, 'Max conns']]) {
      const n = optionalCount(input.value);
      if (n === null) return fail(what + ' must be a whole number (or empty for the default).', input);
      if (n !== undefined) body[key] = n;
    }
    el.tokSubmit.disabled = true;
    try {
      const created = await api('POST', '/tokens', body);
      for (const input of tokenFields) input.value = '';
      showCreatedToken(created);
      await refresh();
    } catch (e) {
      if (e.status === 401) {
        showSignin('The server no longer accepts this token. Sign in again.');
        return;
      }
      fail('Could not create the token: ' + e.message, tokenFieldForError(e.message));
    } finally {
      el.tokSubmit.disabled = false;
    }
  });

  // ---------------------------------------------------------------- start

  for (const id of ['apps-title', 'privates-title', 'connections-title', 'tokens-title', 'token-form-title']) {
    $(id).tabIndex = -1;
  }
  const saved = loadToken();
  if (saved) {
    token = saved;
    showDashboard();
    refresh().then(() => { if (token !== null) startPolling(); });
  } else {
    showSignin('');
  }
})();

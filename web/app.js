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
    updated: $('updated'),
    dashboard: $('dashboard'),
    connError: $('conn-error'),
    privatesBody: document.querySelector('#privates tbody'),
    privatesEmpty: $('privates-empty'),
    appsBody: document.querySelector('#apps tbody'),
    appsEmpty: $('apps-empty'),
    appsError: $('apps-error'),
    appsStatus: $('apps-status'),
    chart: $('chart'),
    chartSummary: $('chart-summary'),
    regForm: $('register-form'),
    regName: $('reg-name'),
    regPublicPort: $('reg-public-port'),
    regTargetHost: $('reg-target-host'),
    regTargetPort: $('reg-target-port'),
    regPrivate: $('reg-private'),
    regSubmit: $('reg-submit'),
    regError: $('register-error'),
    regStatus: $('register-status'),
    confirm: $('confirm'),
    confirmText: $('confirm-text'),
    confirmTitle: $('confirm-title'),
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
    el.dashboard.hidden = true;
    el.signOut.hidden = true;
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
      resetRates();
      showDashboard();
      render(data);
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
    setText(el.signinError, '');
    setText(el.appsStatus, '');
    setText(el.regStatus, '');
    setText(el.regError, '');
    setText(el.appsError, '');
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

  async function refresh() {
    if (token === null) return;
    const gen = pollGeneration;
    try {
      const data = await api('GET', '/list');
      if (gen !== pollGeneration || token === null) return;
      render(data);
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
      active_connections: num(a.active_connections),
      total_connections: num(a.total_connections),
      bytes_in: num(a.bytes_in),
      bytes_out: num(a.bytes_out),
    }));
    pollCount++;
    updateRates(apps, now);
    renderPrivates(privates);
    renderApps(apps);
    renderPrivateSelect(privates);
    drawChart();
    const at = new Date();
    setText(el.updated, 'Updated ' + pad2(at.getHours()) + ':' + pad2(at.getMinutes()) + ':' + pad2(at.getSeconds()));
    setAttr(el.updated, 'data-stale', 'false');
    setAttr(el.updated, 'data-polls', String(pollCount));
  }

  // Keeps tbody's rows keyed by name: existing rows are updated, new ones inserted in
  // name order, vanished ones removed. Rows are never rebuilt.
  function syncRows(tbody, rowsByKey, items, create, update) {
    const keys = new Set();
    for (const item of items) keys.add(item.name);
    for (const [key, row] of rowsByKey) {
      if (!keys.has(key)) {
        row.tr.remove();
        rowsByKey.delete(key);
      }
    }
    const sorted = items.slice().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    let previous = null;
    for (const item of sorted) {
      let row = rowsByKey.get(item.name);
      if (!row) {
        row = create(item);
        rowsByKey.set(item.name, row);
        const next = previous ? previous.tr.nextSibling : tbody.firstChild;
        tbody.insertBefore(row.tr, next);
      }
      update(row, item);
      previous = row;
    }
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

  function stateBadge(td) {
    const span = document.createElement('span');
    span.className = 'badge';
    td.appendChild(span);
    return span;
  }

  function setState(badge, online) {
    setText(badge, online ? 'online' : 'offline');
    const cls = 'badge ' + (online ? 'badge-online' : 'badge-offline');
    if (badge.className !== cls) badge.className = cls;
  }

  const privateRows = new Map();

  function renderPrivates(privates) {
    const items = privates.map((p) => ({
      name: String(p.name),
      online: p.online === true,
      address: p.address ? String(p.address) : '',
      since: p.connected_since ? String(p.connected_since) : null,
    }));
    syncRows(el.privatesBody, privateRows, items, (p) => {
      const tr = document.createElement('tr');
      tr.setAttribute('role', 'row');
      tr.setAttribute('data-name', p.name);
      const name = document.createElement('th');
      name.scope = 'row';
      name.setAttribute('role', 'rowheader');
      name.setAttribute('data-label', 'Name');
      tr.appendChild(name);
      const row = {
        tr,
        name,
        state: stateBadge(cell(tr, 'State')),
        address: cell(tr, 'Address', 'mono'),
        since: cell(tr, 'Connected since'),
      };
      const value = document.createElement('span');
      value.className = 'value';
      row.time = document.createElement('time');
      row.ago = document.createElement('span');
      row.ago.className = 'muted';
      value.appendChild(row.time);
      value.appendChild(row.ago);
      row.since.appendChild(value);
      return row;
    }, (row, p) => {
      setText(row.name, p.name);
      setState(row.state, p.online);
      setText(row.address, p.address || '–');
      const d = p.since ? new Date(p.since) : null;
      if (d && !Number.isNaN(d.getTime())) {
        setAttr(row.time, 'datetime', p.since);
        setText(row.time, formatTime(d));
        setText(row.ago, p.online ? ' (' + formatAgo(Date.now() - d.getTime()) + ')' : ' (last time)');
      } else {
        setAttr(row.time, 'datetime', '');
        setText(row.time, p.online ? 'unknown' : 'not since the server started');
        setText(row.ago, '');
      }
    });
    el.privatesEmpty.hidden = items.length !== 0;
  }

  const appRows = new Map();

  function renderApps(apps) {
    syncRows(el.appsBody, appRows, apps, (a) => {
      const tr = document.createElement('tr');
      tr.setAttribute('role', 'row');
      tr.setAttribute('data-name', a.name);
      const name = document.createElement('th');
      name.scope = 'row';
      name.setAttribute('role', 'rowheader');
      name.setAttribute('data-label', 'Name');
      tr.appendChild(name);
      const row = {
        tr,
        name,
        port: cell(tr, 'Public port', 'num'),
        target: cell(tr, 'Target', 'mono'),
        private: cell(tr, 'Private'),
        state: stateBadge(cell(tr, 'State')),
        active: cell(tr, 'Active', 'num'),
        total: cell(tr, 'Total', 'num'),
        bytesIn: cell(tr, 'Bytes in', 'num'),
        bytesOut: cell(tr, 'Bytes out', 'num'),
        rateIn: cell(tr, 'In now', 'num'),
        rateOut: cell(tr, 'Out now', 'num'),
        actions: cell(tr, 'Actions', 'actions'),
      };
      row.port.classList.add('col-port');
      row.active.classList.add('col-active');
      row.total.classList.add('col-total');
      row.bytesIn.classList.add('col-bytes-in');
      row.bytesOut.classList.add('col-bytes-out');
      row.rateIn.classList.add('col-rate-in');
      row.rateOut.classList.add('col-rate-out');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'danger small';
      button.textContent = 'Unregister';
      button.setAttribute('aria-label', 'Unregister ' + a.name);
      button.addEventListener('click', () => confirmUnregister(a.name, button));
      row.actions.appendChild(button);
      row.button = button;
      return row;
    }, (row, a) => {
      setText(row.name, a.name);
      setText(row.port, Number.isFinite(a.public_port) ? String(a.public_port) : '–');
      setText(row.target, a.target_host + ':' + (Number.isFinite(a.target_port) ? a.target_port : '?'));
      setText(row.private, a.private || '–');
      setState(row.state, a.online);
      setText(row.active, formatCount(a.active_connections));
      setAttr(row.active, 'data-value', String(a.active_connections));
      setText(row.total, formatCount(a.total_connections));
      setAttr(row.total, 'data-value', String(a.total_connections));
      setText(row.bytesIn, formatBytes(a.bytes_in));
      setAttr(row.bytesIn, 'data-value', String(a.bytes_in));
      setAttr(row.bytesIn, 'title', formatCount(a.bytes_in) + ' bytes');
      setText(row.bytesOut, formatBytes(a.bytes_out));
      setAttr(row.bytesOut, 'data-value', String(a.bytes_out));
      setAttr(row.bytesOut, 'title', formatCount(a.bytes_out) + ' bytes');
      const r = rates.get(a.name);
      const rin = r && r.rateIn !== null ? r.rateIn : null;
      const rout = r && r.rateOut !== null ? r.rateOut : null;
      setText(row.rateIn, formatRate(rin));
      setAttr(row.rateIn, 'data-value', rin === null ? '' : String(Math.round(rin)));
      setText(row.rateOut, formatRate(rout));
      setAttr(row.rateOut, 'data-value', rout === null ? '' : String(Math.round(rout)));
    });
    el.appsEmpty.hidden = apps.length !== 0;
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

  function formError(message, field) {
    setText(el.regStatus, '');
    setText(el.regError, message);
    if (field) {
      setAttr(field, 'aria-invalid', 'true');
      field.focus();
    }
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
    el.regSubmit.disabled = true;
    try {
      await api('POST', '/register', body);
      setText(el.regStatus, 'Registered ' + name + ' on public port ' + publicPort + '.');
      el.regName.value = '';
      el.regPublicPort.value = '';
      el.regTargetPort.value = '';
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

  // ---------------------------------------------------------------- unregister

  function askConfirm(name, port) {
    const dlg = el.confirm;
    setText(el.confirmTitle, 'Unregister ' + name + '?');
    setText(el.confirmText, 'Public port ' + port + ' stops accepting connections at once. ' +
      'Connections already open run to their end.');
    if (typeof dlg.showModal !== 'function') {
      return Promise.resolve(window.confirm('Unregister ' + name + '?'));
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

  async function confirmUnregister(name, button) {
    const row = appRows.get(name);
    const port = row ? row.port.textContent : '?';
    const ok = await askConfirm(name, port);
    if (!ok) {
      if (button.isConnected) button.focus();
      return;
    }
    setText(el.appsError, '');
    setText(el.appsStatus, '');
    button.disabled = true;
    try {
      await api('POST', '/unregister', { name });
      setText(el.appsStatus, 'Unregistered ' + name + '.');
      await refresh();
      // The row is gone: put the keyboard focus somewhere sensible.
      if (!button.isConnected) $('apps-title').focus();
    } catch (e) {
      if (e.status === 401) {
        showSignin('The server no longer accepts this token. Sign in again.');
        return;
      }
      setText(el.appsError, 'Could not unregister ' + name + ': ' + e.message);
      if (button.isConnected) button.focus();
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- start

  $('apps-title').tabIndex = -1;
  const saved = loadToken();
  if (saved) {
    token = saved;
    showDashboard();
    refresh().then(() => { if (token !== null) startPolling(); });
  } else {
    showSignin('');
  }
})();

// End-to-end test of the management page in Debian's chromium, driven by playwright-core,
// against the real proxy_public and proxy_private started by run.sh. Every wait is
// bounded; the first failing step stops the run (the later ones are counted as failed).
'use strict';

const dgram = require('dgram');
const net = require('net');
const { spawn } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error('e2e: ' + name + ' is not set (run tests/browser/run.sh)');
    process.exit(2);
  }
  return v;
};

const BASE = env('WEB_URL').replace(/\/$/, '');
const TOKEN = env('TOKEN');
const TUNNEL_PORT = Number(env('TUNNEL_PORT'));
const WEB_PORT = Number(env('WEB_PORT'));
const APP_PORT = Number(env('APP_PORT'));
const OUT_DIR = env('OUT_DIR');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// Processes that must stay up (a name's PID is set to 0 once it is stopped on purpose), and
// their logs in OUT_DIR.
const PIDS = { proxy_public: Number(process.env.PUBLIC_PID || 0), proxy_private: Number(process.env.PRIVATE_PID || 0) };
const LOGS = { proxy_public: 'public.log', proxy_private: 'private.log', 'proxy_private friend': 'friend.log' };
// For the second proxy_private, started here with a token created on the page.
const BIN_DIR = process.env.BIN_DIR || path.join(__dirname, '..', '..');
const WORK_DIR = process.env.WORK_DIR || os.tmpdir();
const KNOWN_HOSTS = process.env.KNOWN_HOSTS || path.join(WORK_DIR, 'known_hosts');
const PRIVATE_ARGS = (process.env.PRIVATE_ARGS || '').split(/\s+/).filter((a) => a !== '');
const TOTAL_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT || 240) * 1000;
const WAIT_MS = 15000;     // the longest any single condition is waited for
const APP = 'web';         // the app registered through the form
const FRIEND = 'friend';   // label of the scoped token, and name of its private proxy
const FRIEND_APP = 'friend-app';

// ------------------------------------------------------------------ small helpers

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

class Failure extends Error {}

function check(cond, message) {
  if (!cond) throw new Failure(message);
}

function processesAlive() {
  for (const [name, pid] of Object.entries(PIDS)) {
    if (!pid) continue;
    try { process.kill(pid, 0); } catch (e) { throw new Failure(name + ' (pid ' + pid + ') has exited; see tests/out/browser/' + LOGS[name]); }
  }
}

// Polls fn until it returns a truthy value; fails with a description after timeoutMs.
async function waitFor(description, fn, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      if (e instanceof Failure) throw e;
      last = e.message;
    }
    processesAlive();
    if (Date.now() > deadline) {
      throw new Failure('timed out after ' + timeoutMs / 1000 + ' s waiting for ' + description +
        (last !== undefined && last !== false && last !== null ? ' (last: ' + JSON.stringify(last) + ')' : ''));
    }
    await sleep(100);
  }
}

async function apiRaw(method, p, body, token = TOKEN) {
  const headers = {};
  if (token !== null) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(BASE + p, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch (e) { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}

async function list() {
  const r = await apiRaw('GET', '/list');
  check(r.status === 200 && r.json, 'GET /list answered ' + r.status + ': ' + r.text.slice(0, 200));
  return r.json;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

// One TCP client through the public port. Keeps count of what it sent and received.
class Client {
  constructor(port) {
    this.port = port;
    this.sent = 0;
    this.received = 0;
    this.closed = false;
    this.error = null;
  }

  connect() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.sock.destroy(); reject(new Failure('connect to port ' + this.port + ' timed out')); }, WAIT_MS);
      this.sock = net.connect({ host: '127.0.0.1', port: this.port }, () => { clearTimeout(timer); resolve(); });
      this.sock.on('data', (d) => { this.received += d.length; });
      this.sock.on('error', (e) => { clearTimeout(timer); this.error = e; reject(e); });
      this.sock.on('close', () => { this.closed = true; });
    });
  }

  write(buf) {
    this.sent += buf.length;
    return new Promise((resolve) => this.sock.write(buf, resolve));
  }

  // Waits until every byte sent has come back (the app echoes).
  echoed(what) {
    return waitFor(what + ': all ' + this.sent + ' bytes echoed back', () => {
      if (this.error) throw new Failure(what + ': ' + this.error.message);
      return this.received === this.sent;
    });
  }

  async end() {
    this.sock.end();
    await waitFor('the client connection to close', () => this.closed);
  }
}

// Whether a TCP connection to port is refused (false: it was accepted).
function portRefuses(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.setTimeout(5000, () => { s.destroy(); resolve(false); });
    s.on('connect', () => { s.destroy(); resolve(false); });
    s.on('error', (e) => resolve(e.code === 'ECONNREFUSED'));
  });
}

// A connection through port that echoes 1000 bytes and ends.
async function echoThrough(port, what) {
  const c = new Client(port);
  await c.connect();
  await c.write(payload(1000, 7));
  await c.echoed(what);
  await c.end();
}

// The second proxy_private: the scoped token in a file of mode 600 (--token-file), and an
// app of its own. Its exit status is kept in friend.exit.
const friend = { token: null, id: null, ports: [], proc: null, exit: null };

function startFriend() {
  const file = path.join(WORK_DIR, 'friend.token');
  fs.writeFileSync(file, friend.token + '\n', { mode: 0o600 });
  fs.chmodSync(file, 0o600);
  const log = fs.openSync(path.join(OUT_DIR, LOGS['proxy_private friend']), 'w');
  const args = ['127.0.0.1', String(TUNNEL_PORT), '--token-file', file, '--name', FRIEND,
    '--known-hosts', KNOWN_HOSTS, '--register', FRIEND_APP + ':' + friend.ports[0] + ':127.0.0.1:' + APP_PORT,
    ...PRIVATE_ARGS];
  friend.proc = spawn(path.join(BIN_DIR, 'proxy_private'), args, { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  // run.sh stops it should this script be stopped first.
  fs.appendFileSync(path.join(WORK_DIR, 'extra.pids'), friend.proc.pid + '\n');
  friend.proc.on('exit', (code, signal) => { friend.exit = { code, signal }; });
  PIDS['proxy_private friend'] = friend.proc.pid;
}

function stopFriend() {
  if (friend.proc && friend.exit === null) friend.proc.kill('SIGTERM');
}

function payload(n, seed) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

// ------------------------------------------------------------------ the steps

let browser = null;
let context = null;
let page = null;
let userDataDir = null;
const problems = [];      // console errors, CSP violations, foreign requests
const sent = { in: 0, out: 0, connections: 0 };
let serverGone = false;   // set once the test stops proxy_public on purpose

// Console errors, CSP violations and requests to other origins of a tab go to problems.
function watchPage(p) {
  const origin = new URL(BASE).origin;
  p.on('request', (req) => {
    const u = req.url();
    if (!u.startsWith('data:') && !u.startsWith('blob:') && new URL(u).origin !== origin) {
      problems.push('request to another origin: ' + u);
    }
  });
  p.on('pageerror', (e) => problems.push('uncaught error in the page: ' + e.message));
  p.on('console', (m) => {
    const t = m.text();
    if (/Content Security Policy|Refused to/i.test(t)) problems.push('CSP: ' + t);
    else if (m.type() === 'error' && !/status of (400|401|404|409|422)/.test(t) && !serverGone) problems.push('console error: ' + t);
  });
}

function appRow() { return page.locator('#apps tbody tr[data-name="' + APP + '"]'); }

async function cellValue(cls) {
  const v = await appRow().locator('td.' + cls).getAttribute('data-value', { timeout: 2000 });
  return v === null || v === '' ? null : Number(v);
}

async function pollCount() {
  return Number(await page.locator('#updated').getAttribute('data-polls')) || 0;
}

// Waits until the page has drawn at least n more /list answers.
async function waitPolls(n) {
  const start = await pollCount();
  await waitFor(n + ' more refreshes of the page', async () => (await pollCount()) >= start + n);
}

async function registerViaForm(fields) {
  const form = page.locator('#register-form');
  await form.getByLabel('Name', { exact: true }).fill(fields.name);
  await form.getByLabel('Public port', { exact: true }).fill(String(fields.public_port));
  await form.getByLabel('Protocol', { exact: true }).selectOption(fields.protocol || 'tcp');
  await form.getByLabel('Target host', { exact: true }).fill(fields.target_host);
  await form.getByLabel('Target port', { exact: true }).fill(String(fields.target_port));
  await form.getByLabel('Private', { exact: true }).selectOption(fields.private);
  if (fields.allow_from) await form.getByLabel('Allowed clients', { exact: true }).fill(fields.allow_from);
  if (fields.proxy_protocol) await form.getByLabel('PROXY protocol', { exact: true }).selectOption(String(fields.proxy_protocol));
  await page.getByRole('button', { name: 'Register', exact: true }).click();
}

function registerAlert() {
  return page.locator('#register-form').locator('xpath=..').getByRole('alert');
}

const steps = [
  ['the server answers: page at /, /list with the token, private "home" online', async () => {
    const home = await waitFor('proxy_public to answer GET /list and "home" to be online', async () => {
      const r = await apiRaw('GET', '/list');
      if (r.status !== 200 || !r.json) return false;
      return (r.json.privates || []).find((p) => p.name === 'home' && p.online === true);
    }, 30000);
    check(home, 'private "home" is not online');
    const r = await apiRaw('GET', '/', undefined, null);
    check(r.status === 200, 'GET / answered ' + r.status);
    check(/<form id="signin-form"/.test(r.text), 'GET / is not the management page');
    check(/text\/html/.test(r.headers.get('content-type') || ''), 'GET / has Content-Type ' + r.headers.get('content-type'));
    for (const asset of ['/app.js', '/style.css']) {
      const a = await apiRaw('GET', asset, undefined, null);
      check(a.status === 200 && a.text.length > 100, 'GET ' + asset + ' answered ' + a.status);
    }
  }],

  ['the API refuses a missing or wrong token with 401', { soft: true }, async () => {
    for (const t of [null, 'not-the-token']) {
      const r = await apiRaw('GET', '/list', undefined, t);
      check(r.status === 401, 'GET /list with ' + (t ? 'a wrong' : 'no') + ' token answered ' + r.status);
    }
  }],

  ['the server sends Content-Security-Policy default-src \'self\' with the page', { soft: true }, async () => {
    const r = await apiRaw('GET', '/', undefined, null);
    const csp = r.headers.get('content-security-policy') || '';
    check(/default-src\s+'self'/.test(csp), 'GET / has no Content-Security-Policy "default-src \'self\'" (got "' + csp + '")');
  }],

  ['chromium opens the page: sign-in form with a labelled token field, nothing inline', async () => {
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-chromium-'));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1280, height: 900 },
      timeout: 30000,
    });
    context.setDefaultTimeout(WAIT_MS);
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(BASE).origin });
    page = context.pages()[0] || await context.newPage();
    watchPage(page);
    await page.goto(BASE + '/', { waitUntil: 'load' });
    await page.getByLabel('Token', { exact: true }).waitFor({ state: 'visible' });
    check(await page.getByLabel('Token', { exact: true }).getAttribute('type') === 'password', 'the token field is not a password field');
    await page.getByRole('button', { name: 'Sign in', exact: true }).waitFor({ state: 'visible' });
    const inline = await page.evaluate(() => {
      const bad = [];
      document.querySelectorAll('script:not([src])').forEach(() => bad.push('inline <script>'));
      document.querySelectorAll('style').forEach(() => bad.push('<style> element'));
      document.querySelectorAll('*').forEach((e) => {
        for (const a of e.getAttributeNames()) {
          if (a === 'style' || a.startsWith('on')) bad.push(e.tagName.toLowerCase() + '[' + a + ']');
        }
      });
      return bad;
    });
    check(inline.length === 0, 'inline code or style in the page: ' + inline.join(', '));
  }],

  ['a wrong token is refused in words', async () => {
    await page.getByLabel('Token', { exact: true }).fill('definitely-not-the-token');
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    const alert = page.locator('#signin').getByRole('alert');
    await waitFor('the sign-in error', async () => /not accepted/i.test(await alert.textContent()));
    check(await page.locator('#dashboard').isHidden(), 'the dashboard is shown after a wrong token');
    const stored = await page.evaluate(() => sessionStorage.length);
    check(stored === 0, 'a wrong token was stored in sessionStorage');
  }],

  ['signing in with the token (from the keyboard) shows the private proxy online', async () => {
    const field = page.getByLabel('Token', { exact: true });
    await field.fill(TOKEN);
    await field.press('Enter');
    await page.locator('#dashboard').waitFor({ state: 'visible' });
    await page.getByRole('button', { name: 'Sign out', exact: true }).waitFor({ state: 'visible' });
    const row = page.locator('#privates tbody tr[data-name="home"]');
    await waitFor('private "home" shown online', async () => /online/.test(await row.textContent()));
    const addr = await row.locator('td[data-label="Address"]').textContent();
    check(/^127\.0\.0\.1:\d+$/.test(addr.trim()), 'private address shown as "' + addr + '"');
    const since = await row.locator('time').getAttribute('datetime');
    check(since && !Number.isNaN(Date.parse(since)), 'connected since not shown (datetime "' + since + '")');
    const resumes = (await row.locator('td[data-label="Resumes"]').textContent()).trim();
    check(resumes === '0 · carried 0 · lost 0', 'the Resumes cell says "' + resumes + '"');
    const opts = await page.getByLabel('Private', { exact: true }).locator('option').allTextContents();
    check(opts.some((o) => o.trim() === 'home'), 'the Private select does not offer "home": ' + JSON.stringify(opts));
  }],

  ['the sign-in survives a reload of the tab (sessionStorage)', async () => {
    await page.reload({ waitUntil: 'load' });
    await page.locator('#dashboard').waitFor({ state: 'visible' });
    await waitFor('a refresh after the reload', async () => (await pollCount()) >= 1);
  }],

  ['registering an app through the form adds its row, online', async () => {
    const port = await freePort();
    sent.publicPort = port;
    await registerViaForm({ name: APP, public_port: port, target_host: '127.0.0.1', target_port: APP_PORT, private: 'home' });
    await appRow().waitFor({ state: 'visible' });
    await waitFor('app "' + APP + '" shown online', async () => /online/.test(await appRow().locator('td[data-label="State"]').textContent()));
    const text = await appRow().textContent();
    check(text.includes(String(port)), 'the row does not show public port ' + port);
    check(text.includes('127.0.0.1:' + APP_PORT), 'the row does not show target 127.0.0.1:' + APP_PORT);
    check(text.includes('home'), 'the row does not show its private');
    const app = (await list()).apps.find((a) => a.name === APP);
    check(app && app.public_port === port && app.target_port === APP_PORT && app.private === 'home',
      'GET /list does not have the app as registered: ' + JSON.stringify(app));
    check((await page.getByLabel('Name', { exact: true }).inputValue()) === '', 'the form was not cleared after success');
  }],

  ['a UDP app registered through the form shows its protocol, its datagrams and drops', async () => {
    const port = await freePort();
    const name = APP + '-udp';
    await registerViaForm({ name, public_port: port, target_host: '127.0.0.1', target_port: 53, private: 'home', protocol: 'udp' });
    const row = page.locator('#apps tbody tr[data-name="' + name + '"]');
    await row.waitFor({ state: 'visible' });
    await waitFor('the UDP app row says UDP', async () => (await row.locator('td[data-label="Protocol"]').textContent()) === 'UDP');
    check((await appRow().locator('td[data-label="Protocol"]').textContent()) === 'TCP', 'the TCP app row does not say TCP');
    const app = (await list()).apps.find((a) => a.name === name);
    check(app && app.protocol === 'udp' && app.public_port === port && app.active_sessions === 0,
      'GET /list does not have the UDP app as registered: ' + JSON.stringify(app));
    // Datagrams to it: counted in, and shown under its sessions with the drops.
    const sock = dgram.createSocket('udp4');
    try {
      await waitFor('the page to count datagrams in', async () => {
        await new Promise((resolve) => sock.send(Buffer.from('ping'), port, '127.0.0.1', () => resolve()));
        const t = await row.locator('td[data-label="Total"] small.dgrams').textContent();
        return /^datagrams [1-9][0-9,]* in · [0-9,]+ out · [0-9,]+ dropped$/.test(t);
      });
    } finally {
      sock.close();
    }
    const r = await apiRaw('POST', '/unregister', { name });
    check(r.status === 200, 'unregistering the UDP app answered ' + r.status);
    await row.waitFor({ state: 'detached' });
  }],

  ['allowed clients and the PROXY protocol given in the form reach the server', async () => {
    const port = await freePort();
    const name = APP + '-pp';
    await registerViaForm({ name, public_port: port, target_host: '::1', target_port: 8443, private: 'home',
      allow_from: '192.0.2.0/24, 2001:db8::/32', proxy_protocol: 2 });
    const row = page.locator('#apps tbody tr[data-name="' + name + '"]');
    await row.waitFor({ state: 'visible' });
    const app = (await list()).apps.find((a) => a.name === name);
    check(app && app.proxy_protocol === 2 && JSON.stringify(app.allow_from) === '["192.0.2.0/24","2001:db8::/32"]' &&
      app.target_host === '::1', 'GET /list does not have the app as registered: ' + JSON.stringify(app));
    const r = await apiRaw('POST', '/unregister', { name });
    check(r.status === 200, 'unregistering the app answered ' + r.status);
    await row.waitFor({ state: 'detached' });
  }],

  ['an FTP app registered through the form shows its mode', async () => {
    const port = await freePort();
    const name = APP + '-ftp';
    await registerViaForm({ name, public_port: port, target_host: '127.0.0.1', target_port: 21, private: 'home', protocol: 'ftp' });
    const row = page.locator('#apps tbody tr[data-name="' + name + '"]');
    await row.waitFor({ state: 'visible' });
    await waitFor('the FTP app row says FTP (rewrite)', async () => (await row.locator('td[data-label="Protocol"]').textContent()) === 'FTP (rewrite)');
    await waitFor('the FTP app row counts control / data', async () => (await row.locator('td[data-label="Active"]').textContent()) === '0 / 0');
    const app = (await list()).apps.find((a) => a.name === name);
    check(app && app.protocol === 'ftp' && app.ftp_mode === 'rewrite' && app.total_data_connections === 0,
      'GET /list does not have the FTP app as registered: ' + JSON.stringify(app));
    const r = await apiRaw('POST', '/unregister', { name });
    check(r.status === 200, 'unregistering the FTP app answered ' + r.status);
    await row.waitFor({ state: 'detached' });
  }],

  ['refreshes keep focus, typed text, scroll position and the row elements', async () => {
    await page.evaluate((name) => { window.__e2eRow = document.querySelector('#apps tbody tr[data-name="' + name + '"]'); }, APP);
    const nameField = page.getByLabel('Name', { exact: true });
    await nameField.focus();
    await nameField.pressSequentially('draft');
    await page.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
    const scrollBefore = await page.evaluate(() => window.scrollY);
    await waitPolls(3);
    const state = await page.evaluate((name) => ({
      focused: document.activeElement && document.activeElement.id,
      value: document.getElementById('reg-name').value,
      scroll: window.scrollY,
      sameRow: window.__e2eRow === document.querySelector('#apps tbody tr[data-name="' + name + '"]') && window.__e2eRow.isConnected,
    }), APP);
    check(state.focused === 'reg-name', 'focus moved to "' + state.focused + '" during refreshes');
    check(state.value === 'draft', 'the typed text became "' + state.value + '"');
    check(state.scroll === scrollBefore, 'scroll moved from ' + scrollBefore + ' to ' + state.scroll);
    check(state.sameRow, 'the app row was rebuilt instead of updated in place');
    await nameField.fill('');
  }],

  ['traffic through the public port shows up live: connections, bytes, throughput, chart', async () => {
    const port = sent.publicPort;
    const before = (await list()).apps.find((a) => a.name === APP);
    check(before.total_connections === 0 && before.bytes_in === 0 && before.bytes_out === 0,
      'a fresh app does not start at zero: ' + JSON.stringify(before));
    // A connection held open: the page must show one active connection.
    const held = new Client(port);
    await held.connect();
    await held.write(payload(1000, 1));
    await held.echoed('held connection');
    await waitFor('Active = 1 on the page', async () => (await cellValue('col-active')) === 1);
    // Two bulk connections.
    for (let i = 0; i < 2; i++) {
      const c = new Client(port);
      await c.connect();
      await c.write(payload(200000, i + 2));
      await c.echoed('bulk connection ' + (i + 1));
      await c.end();
      sent.in += c.sent;
      sent.out += c.received;
    }
    // A trickle that goes on until the page shows a throughput in both directions.
    const trickle = new Client(port);
    await trickle.connect();
    let stop = false;
    const pump = (async () => {
      while (!stop) {
        await trickle.write(payload(32768, 9));
        await sleep(50);
      }
    })();
    try {
      await waitFor('"In now" and "Out now" above zero', async () =>
        (await cellValue('col-rate-in')) > 0 && (await cellValue('col-rate-out')) > 0);
      await waitFor('the chart to have a peak above zero', async () =>
        Number(await page.locator('#chart').getAttribute('data-peak')) > 0);
      await waitFor('the chart summary to show a rate', async () =>
        /peak [0-9.]+ (B|KiB|MiB|GiB)\/s/.test(await page.locator('#chart-summary').textContent()));
    } finally {
      stop = true;
      await pump;
    }
    await trickle.echoed('trickle connection');
    await trickle.end();
    sent.in += trickle.sent;
    sent.out += trickle.received;
    await held.end();
    sent.in += held.sent;
    sent.out += held.received;
    // A plain HTTP request through the tunnel, counted byte for byte too.
    const http = new Client(port);
    await http.connect();
    await http.write(Buffer.from('GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n'));
    await waitFor('the HTTP answer through the tunnel', () => http.closed || http.error);
    check(http.received > 0, 'no HTTP answer came back through the tunnel');
    sent.in += http.sent;
    sent.out += http.received;
    sent.connections = 5;
    await waitFor('Total = ' + sent.connections + ', Active = 0, Bytes in = ' + sent.in + ', Bytes out = ' + sent.out + ' on the page', async () => {
      const v = [await cellValue('col-total'), await cellValue('col-active'), await cellValue('col-bytes-in'), await cellValue('col-bytes-out')];
      if (v[0] === sent.connections && v[1] === 0 && v[2] === sent.in && v[3] === sent.out) return true;
      throw new Error('the page shows Total, Active, Bytes in, Bytes out = ' + v.join(', '));
    });
    const inText = (await appRow().locator('td.col-bytes-in').textContent()).trim();
    check(/^[0-9.]+ (KiB|MiB)$/.test(inText), 'bytes in shown as "' + inText + '", not human readable');
  }],

  ['screenshots: desktop and phone-sized, no sideways scrolling on the phone', async () => {
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(OUT_DIR, 'desktop.png'), fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    await waitPolls(1);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await page.screenshot({ path: path.join(OUT_DIR, 'phone.png'), fullPage: true });
    check(overflow <= 0, 'the page is ' + overflow + ' px wider than a 390 px phone screen');
    // The phone layout stacks the cells; the tables must still be tables to a screen reader.
    const apps = page.getByRole('table').filter({ has: page.getByRole('rowheader', { name: APP, exact: true }) });
    check(await apps.count() === 1, 'on a phone, the apps table is no longer exposed as a table with a row header ' + APP);
    check(await apps.getByRole('cell', { name: String(sent.publicPort), exact: true }).count() === 1,
      'on a phone, the public port is not exposed as a table cell');
    await page.getByRole('button', { name: 'Unregister ' + APP, exact: true }).waitFor({ state: 'visible' });
    await page.setViewportSize({ width: 1280, height: 900 });
  }],

  ['a connection held open shows in Connections with its client address; Close ends it', async () => {
    const held = new Client(sent.publicPort);
    await held.connect();
    await held.write(payload(1000, 3));
    await held.echoed('held connection');
    const client = '127.0.0.1:' + held.sock.localPort;
    const row = page.locator('#connections tbody tr').filter({ hasText: client });
    await waitFor('the connection from ' + client + ' in the Connections table', async () => (await row.count()) === 1);
    check((await row.getByRole('rowheader').textContent()) === APP, 'the connection row does not name app ' + APP);
    check((await row.locator('td[data-label="Private"]').textContent()) === 'home', 'the connection row does not name private home');
    check((await row.locator('td[data-label="Client"]').textContent()) === client, 'the connection row does not show client ' + client);
    const since = await row.locator('time').getAttribute('datetime');
    check(since && !Number.isNaN(Date.parse(since)), 'the connection row has no "since" time (datetime "' + since + '")');
    await waitFor('bytes in and out = 1000 on the connection row', async () =>
      (await row.locator('td[data-label="Bytes in"]').getAttribute('data-value')) === '1000' &&
      (await row.locator('td[data-label="Bytes out"]').getAttribute('data-value')) === '1000');
    const api = await apiRaw('GET', '/connections');
    check(api.status === 200 && api.json.connections.some((c) => c.client === client && c.app === APP),
      'GET /connections does not list ' + client + ': ' + api.text.slice(0, 300));
    await page.getByRole('button', { name: 'Close the connection from ' + client + ' to ' + APP, exact: true }).click();
    await waitFor('the client\'s socket to be closed by the server', () => held.closed);
    await row.waitFor({ state: 'detached' });
    await page.locator('#connections-status').getByText('Closed the connection from ' + client).waitFor({ state: 'visible' });
    check(await page.locator('#connections-empty').isVisible(), 'the Connections table does not say that nobody is connected');
    // A cut list (the server lists at most 1000): the page says how many there are in all.
    const cut = { private: 'home', id: 999999, app: APP, client: '127.0.0.1:1', since: new Date().toISOString(), bytes_in: 0, bytes_out: 0 };
    await page.route('**/connections', (route) => (route.request().method() === 'GET'
      ? route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({ connections: [cut], total: 1500, truncated: true }) })
      : route.continue()));
    const note = page.locator('#connections-truncated');
    try {
      await waitFor('"Showing the first 1 of 1,500" under the Connections table', async () =>
        (await note.isVisible()) && (await note.textContent()) === 'Showing the first 1 of 1,500 open connections.');
    } finally {
      await page.unroute('**/connections');
    }
    await waitFor('the note gone with the real answer again', async () => (await note.isHidden()) &&
      (await page.locator('#connections tbody tr').count()) === 0);
  }],

  ['a cluster answer (put in by the test): Nodes, the store up and down, each private\'s nodes, each app\'s sum; names are text; without it the page is as before', async () => {
    const section = page.locator('#nodes-section');
    const nodesHead = page.locator('#privates th.col-nodes');
    const sums = page.locator('#apps small.cluster-sum');
    const asBefore = async () => (await section.isHidden()) && (await nodesHead.isHidden()) &&
      (await page.locator('#privates td.col-nodes:visible').count()) === 0 &&
      (await sums.locator('visible=true').count()) === 0 && (await page.locator('#apps-cluster-hint').isHidden());
    check(await asBefore(), 'without "cluster" in /list the page shows cluster parts');
    const activeBefore = (await appRow().locator('td.col-active').textContent()).trim();
    // What a node of a cluster adds to /list (docs/API.md), around the real answer.
    const HOSTILE = '<img src=x onerror="window.__pwned=1">';
    let store = 'up';
    const up = new Date(Date.now() - 90000).toISOString().replace(/\.[0-9]+Z$/, 'Z');
    await page.route('**/list', async (route) => {
      if (route.request().method() !== 'GET') return route.continue();
      const res = await route.fetch();
      const j = await res.json();
      j.cluster = { store, url: 'redis://127.0.0.1:6379/0', node: 'n1', nodes: [
        { name: 'n1', address: '127.0.0.11:6300', up_since: up, tunnels: 2, connections: 3, self: true },
        { name: 'n2', address: '127.0.0.12:6300', up_since: up, tunnels: 1, connections: 40, self: false },
        { name: HOSTILE, address: '[2001:db8::3]:6300', up_since: up, tunnels: 0, connections: 0, self: false }] };
      for (const p of j.privates || []) p.nodes = p.name === 'home' ? ['n1', 'n2'] : ['n1'];
      for (const a of j.apps || []) {
        a.cluster = { active_connections: 1000, total_connections: 2000, bytes_in: 3 * 1048576, bytes_out: 4096 };
      }
      return route.fulfill({ response: res, json: j });
    });
    try {
      await waitFor('the Nodes part with three nodes', async () => (await section.isVisible()) &&
        (await page.locator('#nodes tbody tr').count()) === 3);
      const storeLine = page.locator('#cluster-store');
      check((await page.locator('#cluster-store-state').textContent()) === 'Cluster store: up' &&
        (await storeLine.getAttribute('data-store')) === 'up', 'the store is not shown up');
      check((await page.locator('#cluster-store-url').textContent()) === '(redis://127.0.0.1:6379/0)', 'the store\'s URL is not shown');
      const n1 = page.locator('#nodes tbody tr[data-name="n1"]');
      check(await n1.locator('.badge-self').isVisible(), 'n1 is not marked self');
      check(await page.locator('#nodes tbody tr[data-name="n2"] .badge-self').isHidden(), 'n2 is marked self');
      check((await n1.locator('td[data-label="Address"]').textContent()) === '127.0.0.11:6300', 'n1\'s address is not shown');
      check((await page.locator('#nodes tbody tr[data-name="n2"] td[data-label="Connections"]').textContent()) === '40', 'n2\'s connections are not shown');
      check(/\(1 min ago\)|\(90 s ago\)|\(9[0-9] s ago\)/.test(await n1.locator('td[data-label="Up since"]').textContent()) ||
        /ago/.test(await n1.locator('td[data-label="Up since"]').textContent()), 'n1\'s up since is not shown');
      const hostileRow = page.locator('#nodes tbody tr').filter({ hasText: 'onerror' });
      check((await hostileRow.getByRole('rowheader').textContent()).startsWith(HOSTILE), 'a node\'s name is not shown as text');
      check((await page.locator('#dashboard img').count()) === 0 && !(await page.evaluate(() => window.__pwned)),
        'a node\'s name became markup');
      await nodesHead.waitFor({ state: 'visible' });
      const home = page.locator('#privates tbody tr[data-name="home"] td.col-nodes');
      check(/^n1, n2/.test(await home.textContent()), 'home\'s nodes are not shown (' + await home.textContent() + ')');
      check((await home.locator('small.nodes-missing').textContent()) === 'not to ' + HOSTILE, 'the node home has no tunnel to is not named');
      const sum = appRow().locator('td.col-active small.cluster-sum');
      await waitFor('the app\'s sum over the nodes', async () => (await sum.isVisible()) && (await sum.getAttribute('data-value')) === '1000');
      check((await sum.textContent()) === 'all\u00a0nodes: 1,000', 'the sum reads "' + await sum.textContent() + '"');
      check((await appRow().locator('td.col-bytes-in small.cluster-sum').textContent()) === 'all\u00a0nodes: 3.0 MiB', 'the bytes over the nodes are not shown');
      check((await appRow().locator('td.col-active').evaluate((td) => td.firstChild.nodeValue)) === activeBefore,
        'this node\'s own count is no longer the cell\'s first line');
      check(await page.locator('#apps-cluster-hint').isVisible(), 'the apps\' hint on the sums is missing');
      store = 'down';
      await waitFor('the store shown down, in red words', async () => (await storeLine.getAttribute('data-store')) === 'down' &&
        /^Cluster store: down — registrations are refused until it returns; running apps keep working/.test(await page.locator('#cluster-store-state').textContent()) &&
        /store-down/.test(await storeLine.getAttribute('class')));
      await page.screenshot({ path: path.join(OUT_DIR, 'cluster.png'), fullPage: true });
    } finally {
      await page.unroute('**/list');
    }
    await waitFor('the page as before once /list has no "cluster"', asBefore);
    check((await appRow().locator('td.col-active').textContent()).trim() === activeBefore ||
      /^[0-9]+$/.test((await appRow().locator('td.col-active').textContent()).trim()), 'the Active cell does not read as before');
  }],

  ['Disable from the page: the app shows "disabled" and its port refuses; Enable: it accepts again', async () => {
    const port = sent.publicPort;
    const state = appRow().locator('td[data-label="State"] .badge');
    await page.getByRole('button', { name: 'Disable ' + APP, exact: true }).click();
    await waitFor('the app shown "disabled"', async () => (await state.textContent()) === 'disabled');
    check(/badge-disabled/.test(await state.getAttribute('class')), 'the disabled badge does not look distinct');
    await waitFor('public port ' + port + ' to refuse connections', () => portRefuses(port));
    const app = (await list()).apps.find((a) => a.name === APP);
    check(app.disabled === true && app.online === false, 'GET /list does not say the app is disabled: ' + JSON.stringify(app));
    const enable = page.getByRole('button', { name: 'Enable ' + APP, exact: true });
    await enable.waitFor({ state: 'visible' });
    const focused = await page.evaluate(() => document.activeElement && document.activeElement.getAttribute('aria-label'));
    check(focused === 'Enable ' + APP, 'the focus is on "' + focused + '", not on the toggled button');
    await page.getByText('Disabled ' + APP + ': public port ' + port).waitFor({ state: 'visible' });
    await enable.click();
    await waitFor('the app shown online again', async () => (await state.textContent()) === 'online');
    await waitFor('public port ' + port + ' to accept again', async () => !(await portRefuses(port)));
    await echoThrough(port, 'a connection after Enable');
  }],

  ['Kick "home" (refuse for: just disconnect): it is disconnected and comes back by itself', async () => {
    const row = page.locator('#privates tbody tr[data-name="home"]');
    const before = (await list()).privates.find((p) => p.name === 'home');
    check(before && before.online, 'home is not online before the kick');
    const addressBefore = await row.locator('td[data-label="Address"]').textContent();
    // Every state the badge shows, also between two checks of this script.
    await page.evaluate(() => {
      const badge = document.querySelector('#privates tbody tr[data-name="home"] .badge');
      window.__homeStates = [badge.textContent];
      new MutationObserver(() => window.__homeStates.push(badge.textContent))
        .observe(badge, { childList: true, characterData: true, subtree: true });
    });
    const choice = page.getByLabel('Refuse home for', { exact: true });
    check(await choice.inputValue() === '0', 'the "Refuse for" choice does not start at "just disconnect"');
    await page.getByRole('button', { name: 'Kick home', exact: true }).click();
    await page.getByText('Kicked home; it may come back at once.').waitFor({ state: 'visible' });
    await waitFor('home back online through a new tunnel (another address on the page)', async () => {
      const p = (await list()).privates.find((x) => x.name === 'home');
      return p.online && p.reconnects === before.reconnects + 1 &&
        /online/.test(await row.locator('.badge').textContent()) &&
        (await row.locator('td[data-label="Address"]').textContent()) !== addressBefore;
    });
    check(/ev=refused|kicked|disconnected_by_admin/.test(fs.readFileSync(path.join(OUT_DIR, 'private.log'), 'utf8')),
      'private.log does not tell the kick');
    const seen = await page.evaluate(() => window.__homeStates);
    console.log('     (the page showed home: ' + seen.filter((t, i) => i === 0 || seen[i - 1] !== t).join(' → ') + ')');
    await waitFor('app ' + APP + ' online again', async () => /online/.test(await appRow().locator('td[data-label="State"]').textContent()));
    await echoThrough(sent.publicPort, 'a connection after the kick');
  }],

  ['Tokens: a bad field is refused in the server\'s words; a new token is shown once, in a box, with a copy button and a --token-file command', async () => {
    const form = page.locator('#token-form');
    check(await page.locator('#tokens-section').isVisible(), 'the admin does not see the Tokens part');
    friend.ports = [await freePort(), await freePort()];
    const fill = async (ports) => {
      await form.getByLabel('Label', { exact: true }).fill(FRIEND);
      await form.getByLabel('Private names', { exact: true }).fill(FRIEND);
      await form.getByLabel('Ports', { exact: true }).fill(ports);
      await form.getByLabel('Max apps', { exact: true }).fill('2');
      await form.getByLabel('Max conns', { exact: true }).fill('5');
      await page.getByRole('button', { name: 'Create token', exact: true }).click();
    };
    const direct = await apiRaw('POST', '/tokens', { label: FRIEND, privates: [FRIEND], ports: 'lots' });
    check(direct.status === 400 && direct.json && direct.json.error, 'POST /tokens with ports "lots" answered ' + direct.status);
    await fill('lots');
    const alert = page.locator('#token-form-error');
    await waitFor('the server\'s words about the ports', async () =>
      (await alert.textContent()).includes(direct.json.error.trim().replace(/\.$/, '')));
    check(await form.getByLabel('Ports', { exact: true }).getAttribute('aria-invalid') === 'true', 'the ports field is not marked invalid');
    check(await page.evaluate(() => document.activeElement.id) === 'tok-ports', 'the focus is not on the ports field');
    check((await apiRaw('GET', '/tokens')).json.tokens.length === 0, 'a refused token was created');

    await fill(friend.ports.join(','));
    const box = page.locator('#token-created');
    await box.waitFor({ state: 'visible' });
    const field = box.getByLabel('New token', { exact: true });
    friend.token = await field.inputValue();
    check(/^[0-9a-f]{64}$/.test(friend.token), 'the box does not show a token of 64 hex digits: "' + friend.token + '"');
    check(await page.evaluate(() => document.activeElement.id) === 'new-token', 'the focus did not move to the new token');
    const boxText = (await box.textContent()).replace(/\s+/g, ' ');
    check(/will not be shown again/.test(boxText), 'the box does not say the token will not be shown again');
    check(/chmod 600/.test(boxText), 'the box does not say chmod 600');
    const command = await box.locator('#token-command').textContent();
    check(command === 'proxy_private 127.0.0.1 TUNNEL_PORT --token-file ~/.config/proxy_private/token --name ' + FRIEND,
      'the command line in the box is "' + command + '"');
    check(!(await box.locator('pre').allTextContents()).join('\n').includes(friend.token), 'the token is on a command line of the box');
    await box.getByRole('button', { name: 'Copy token', exact: true }).click();
    await box.getByText('Token copied to the clipboard.').waitFor({ state: 'visible' });
    const clip = await page.evaluate(() => navigator.clipboard.readText());
    check(clip === friend.token, 'the clipboard holds "' + clip + '", not the token');
    // Listed, without the token.
    const row = page.locator('#tokens tbody tr').filter({ has: page.getByRole('rowheader', { name: FRIEND, exact: true }) });
    await waitFor('the token listed in the Tokens table', async () => (await row.count()) === 1);
    const listed = (await apiRaw('GET', '/tokens')).json.tokens;
    check(listed.length === 1 && listed[0].label === FRIEND && listed[0].token === undefined, 'GET /tokens: ' + JSON.stringify(listed));
    friend.id = listed[0].id;
    check((await row.locator('td[data-label="ID"]').textContent()) === friend.id, 'the token row does not show its id');
    check((await row.locator('td[data-label="Ports"]').textContent()) === friend.ports.join(','), 'the token row does not show its ports');
    check((await row.locator('td[data-label="Private names"]').textContent()) === FRIEND, 'the token row does not show its private names');
    check((await row.locator('td[data-label="Max apps"]').textContent()) === '2' &&
      (await row.locator('td[data-label="Max conns"]').textContent()) === '5', 'the token row does not show its limits');
    check(!Number.isNaN(Date.parse(await row.locator('time').getAttribute('datetime'))), 'the token row has no creation time');
    check(!(await page.locator('#tokens').textContent()).includes(friend.token), 'the token itself is in the Tokens table');
    // The token works on the API, within its scope.
    const mine = await apiRaw('GET', '/list', undefined, friend.token);
    check(mine.status === 200 && mine.json.admin === false && mine.json.token && mine.json.token.label === FRIEND,
      'GET /list with the new token answered ' + mine.status + ' ' + mine.text.slice(0, 300));
    check(mine.json.apps.length === 0, 'the new token sees apps that are not its own: ' + JSON.stringify(mine.json.apps));
    check((await apiRaw('GET', '/tokens', undefined, friend.token)).status === 403, 'the new token may list tokens');
  }],

  ['a proxy_private started with that token (--token-file) comes online; its app shows its owner', async () => {
    startFriend();
    const prow = page.locator('#privates tbody tr[data-name="' + FRIEND + '"]');
    await waitFor('private ' + FRIEND + ' shown online', async () => (await prow.count()) === 1 &&
      /online/.test(await prow.locator('.badge').textContent()));
    check((await prow.locator('td[data-label="Token"]').textContent()) === FRIEND, 'the private row does not show its token\'s label');
    check((await page.locator('#privates tbody tr[data-name="home"] td[data-label="Token"]').textContent()) === 'admin',
      'the private row of home does not say the admin token');
    const arow = page.locator('#apps tbody tr[data-name="' + FRIEND_APP + '"]');
    await waitFor('app ' + FRIEND_APP + ' shown online', async () => (await arow.count()) === 1 &&
      /online/.test(await arow.locator('td[data-label="State"]').textContent()));
    check((await arow.locator('td[data-label="Owner"]').textContent()) === FRIEND, 'the app row does not show its owner');
    check((await appRow().locator('td[data-label="Owner"]').textContent()) === 'admin', 'the admin\'s app does not say owner admin');
    await echoThrough(friend.ports[0], 'a connection through the scoped token\'s app');
  }],

  ['the new parts on a phone-sized screen: no sideways scrolling, Kick and the token box usable', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    try {
      await waitPolls(1);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      await page.screenshot({ path: path.join(OUT_DIR, 'tokens-phone.png'), fullPage: true });
      check(overflow <= 0, 'with the token box and the new columns the page is ' + overflow + ' px wider than a 390 px phone screen');
      await page.getByRole('button', { name: 'Kick ' + FRIEND, exact: true }).waitFor({ state: 'visible' });
      await page.getByRole('button', { name: 'Copy token', exact: true }).waitFor({ state: 'visible' });
    } finally {
      await page.setViewportSize({ width: 1280, height: 900 });
    }
    await waitPolls(1);
    const wide = await page.evaluate(() => Array.from(document.querySelectorAll('.table-wrap'))
      .filter((w) => w.scrollWidth > w.clientWidth).map((w) => w.firstElementChild.id + ' by ' + (w.scrollWidth - w.clientWidth) + ' px'));
    check(wide.length === 0, 'at 1280 px, tables wider than their card: ' + wide.join(', '));
    await page.screenshot({ path: path.join(OUT_DIR, 'tokens.png'), fullPage: true });
    await page.getByRole('button', { name: 'I have saved it: hide the token', exact: true }).click();
    await page.locator('#token-created').waitFor({ state: 'hidden' });
    check(await page.locator('#new-token').inputValue() === '', 'the hidden box still holds the token');
    check(!(await page.content()).includes(friend.token), 'the token is still in the page');
  }],

  ['signed in with the scoped token (another tab): its scope shown, no Tokens part, only its apps, privates and connections', async () => {
    const heldAdmin = new Client(sent.publicPort);
    const heldFriend = new Client(friend.ports[0]);
    const tab = await context.newPage();
    watchPage(tab);
    try {
      for (const c of [heldAdmin, heldFriend]) {
        await c.connect();
        await c.write(payload(100, 5));
        await c.echoed('a held connection');
      }
      await tab.goto(BASE + '/', { waitUntil: 'load' });
      const field = tab.getByLabel('Token', { exact: true });
      await field.fill(friend.token);
      await field.press('Enter');
      await tab.locator('#dashboard').waitFor({ state: 'visible' });
      await waitFor('the header to name the token', async () => /Signed in with the token “friend”/.test(await tab.locator('#whoami').textContent()));
      const scope = tab.locator('#scope');
      check(await scope.isVisible(), 'the scope of the token is not shown');
      check((await tab.locator('#scope-ports').textContent()) === friend.ports.join(','), 'the scope does not show its ports');
      check((await tab.locator('#scope-privates').textContent()) === FRIEND, 'the scope does not show its private names');
      check(/2 apps, 5 client connections/.test(await tab.locator('#scope-limits').textContent()), 'the scope does not show its limits');
      check(await tab.locator('#tokens-section').isHidden(), 'a scoped token sees the Tokens part');
      await waitFor('only its app in the Apps table', async () => {
        const names = await tab.locator('#apps tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.name));
        return names.length === 1 && names[0] === FRIEND_APP;
      });
      const privates = await tab.locator('#privates tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.name));
      check(privates.length === 1 && privates[0] === FRIEND, 'a scoped token sees the privates ' + JSON.stringify(privates));
      const mine = '127.0.0.1:' + heldFriend.sock.localPort;
      await waitFor('its connection in its Connections table', async () =>
        (await tab.locator('#connections tbody tr').filter({ hasText: mine }).count()) === 1);
      check(await tab.locator('#connections tbody tr').count() === 1, 'a scoped token sees other apps\' connections');
      check(await tab.getByRole('button', { name: 'Kick ' + FRIEND, exact: true }).isVisible(), 'a scoped token cannot kick its own private');
      const opts = await tab.getByLabel('Private', { exact: true }).locator('option').allTextContents();
      check(opts.length === 1 && opts[0].trim() === FRIEND, 'the register form offers the privates ' + JSON.stringify(opts));
      await tab.screenshot({ path: path.join(OUT_DIR, 'scoped.png'), fullPage: true });
      // The admin's tab sees both connections meanwhile.
      await waitFor('both held connections on the admin\'s page', async () => (await page.locator('#connections tbody tr').count()) === 2);
    } finally {
      await tab.close();
      for (const c of [heldAdmin, heldFriend]) if (c.sock && !c.closed) await c.end();
    }
  }],

  ['Kick "friend" for 1 min: offline, "refused for N s"; "Let in now" lets it back', async () => {
    const row = page.locator('#privates tbody tr[data-name="' + FRIEND + '"]');
    const badge = row.locator('.badge');
    await page.getByLabel('Refuse ' + FRIEND + ' for', { exact: true }).selectOption({ label: '1 min' });
    await page.getByRole('button', { name: 'Kick ' + FRIEND, exact: true }).click();
    await page.getByText('Kicked ' + FRIEND + '; it is refused for 1 min.').waitFor({ state: 'visible' });
    await waitFor('"refused for N s" (N from 1 to 60) on the page', async () => {
      const m = /^refused for ([0-9]+) s$/.exec(await badge.textContent());
      return m && Number(m[1]) >= 1 && Number(m[1]) <= 60;
    });
    check(/badge-refused/.test(await badge.getAttribute('class')), 'the refused badge does not look distinct');
    const p = (await list()).privates.find((x) => x.name === FRIEND);
    check(p.online === false && p.refused_for > 0 && p.refused_for <= 60, 'GET /list: ' + JSON.stringify(p));
    const letIn = page.getByRole('button', { name: 'Let ' + FRIEND + ' in now', exact: true });
    await letIn.waitFor({ state: 'visible' });
    check(await page.evaluate(() => document.activeElement && document.activeElement.getAttribute('aria-label')) === 'Let ' + FRIEND + ' in now',
      'the focus did not move to "Let in now" when the Kick button went');
    check(await page.getByRole('button', { name: 'Kick ' + FRIEND, exact: true }).isHidden(), 'an offline private still offers Kick');
    check(friend.exit === null, 'proxy_private friend exited after a kick: ' + JSON.stringify(friend.exit));
    await letIn.click();
    // It retries with its backoff: 1 s, 2 s, 4 s (and up to half more).
    await waitFor(FRIEND + ' back online', async () => /^online$/.test(await badge.textContent()), 20000);
    await letIn.waitFor({ state: 'hidden' });
  }],

  ['Revoke the token from the page: asks first, says tunnels_closed, its private is turned away for good', async () => {
    const row = page.locator('#tokens tbody tr[data-name="' + friend.id + '"]');
    await page.getByRole('button', { name: 'Revoke token ' + FRIEND, exact: true }).click();
    const dialog = page.getByRole('dialog');
    await dialog.waitFor({ state: 'visible' });
    check((await dialog.textContent()).includes(FRIEND), 'the confirmation does not name the token');
    await page.screenshot({ path: path.join(OUT_DIR, 'revoke-confirm.png') });
    PIDS['proxy_private friend'] = 0;    // it is to exit now
    await dialog.getByRole('button', { name: 'Revoke', exact: true }).click();
    await page.getByText('Revoked the token “' + FRIEND + '”: 1 tunnel closed.').waitFor({ state: 'visible' });
    await row.waitFor({ state: 'detached' });
    check(await page.evaluate(() => document.activeElement && document.activeElement.id) === 'tokens-title',
      'the focus is not on the Tokens title after its row went');
    await waitFor('proxy_private friend to exit (its token is revoked)', () => friend.exit !== null);
    check(friend.exit.code === 3, 'proxy_private friend exited with ' + JSON.stringify(friend.exit) + ', not code 3');
    const arow = page.locator('#apps tbody tr[data-name="' + FRIEND_APP + '"]');
    await waitFor('its app shown with the owner "(revoked)", offline', async () =>
      (await arow.locator('td[data-label="Owner"]').textContent()) === '(revoked)' &&
      /offline/.test(await arow.locator('td[data-label="State"]').textContent()));
    check((await apiRaw('GET', '/list', undefined, friend.token)).status === 401, 'the revoked token still works on the API');
    check((await apiRaw('POST', '/unregister', { name: FRIEND_APP })).status === 200, 'could not unregister ' + FRIEND_APP);
    await arow.waitFor({ state: 'detached' });
  }],

  ['a public port of 70000 is refused beside the form', async () => {
    await registerViaForm({ name: 'bad', public_port: 70000, target_host: '127.0.0.1', target_port: APP_PORT, private: 'home' });
    await waitFor('an error about the port', async () => /65535/.test(await registerAlert().textContent()));
    check(await page.getByLabel('Public port', { exact: true }).getAttribute('aria-invalid') === 'true', 'the port field is not marked invalid');
    const r = await apiRaw('POST', '/register', { name: 'bad', public_port: 70000, target_host: '127.0.0.1', target_port: APP_PORT, private: 'home' });
    check(r.status === 400 && r.json && typeof r.json.error === 'string' && r.json.error.length > 0,
      'POST /register with port 70000 answered ' + r.status + ' ' + r.text.slice(0, 200));
  }],

  ['the web port, the tunnel port, a taken name and a target the home side refuses are refused with the server\'s words', async () => {
    for (const [fields, status, what] of [
      [{ name: 'bad', public_port: WEB_PORT }, 400, 'the web port'],
      [{ name: 'bad', public_port: TUNNEL_PORT }, 400, 'the tunnel port'],
      [{ name: APP, public_port: await freePort() }, 409, 'a taken name'],
      // "home" runs with the default allowlist (loopback and its --register targets).
      [{ name: 'bad', public_port: await freePort(), target_host: '192.0.2.1' }, 422, 'a target outside home\'s --allow rules'],
    ]) {
      const body = Object.assign({ target_host: '127.0.0.1', target_port: APP_PORT, private: 'home' }, fields);
      const direct = await apiRaw('POST', '/register', body);
      check(direct.status === status && direct.json && direct.json.error,
        'POST /register with ' + what + ' answered ' + direct.status + ' (expected ' + status + '): ' + direct.text.slice(0, 200));
      await page.getByLabel('Name', { exact: true }).fill('');
      await registerViaForm(body);
      await waitFor('the error for ' + what + ' beside the form', async () =>
        (await registerAlert().textContent()).includes(direct.json.error.trim().replace(/\.$/, '')));
    }
    await page.locator('#register-form').scrollIntoViewIfNeeded();
    await page.screenshot({ path: path.join(OUT_DIR, 'register-error.png') });
    const apps = (await list()).apps.map((a) => a.name);
    check(!apps.includes('bad'), 'a refused app was registered anyway');
  }],

  ['unregister asks first; cancel keeps the app, confirm removes it and closes its port', async () => {
    await page.getByLabel('Name', { exact: true }).fill('');
    await page.getByRole('button', { name: 'Unregister ' + APP, exact: true }).click();
    const dialog = page.getByRole('dialog');
    await dialog.waitFor({ state: 'visible' });
    check((await dialog.textContent()).includes(APP), 'the confirmation does not name the app');
    await dialog.getByRole('button', { name: 'Cancel', exact: true }).click();
    await dialog.waitFor({ state: 'hidden' });
    await waitPolls(1);
    check(await appRow().count() === 1, 'cancelling removed the app');
    check((await list()).apps.some((a) => a.name === APP), 'cancelling unregistered the app');
    // Now from the keyboard: focus the button, Enter, then confirm.
    await page.getByRole('button', { name: 'Unregister ' + APP, exact: true }).focus();
    await page.keyboard.press('Enter');
    await dialog.waitFor({ state: 'visible' });
    await page.screenshot({ path: path.join(OUT_DIR, 'confirm.png') });
    await dialog.getByRole('button', { name: 'Unregister', exact: true }).click();
    await appRow().waitFor({ state: 'detached' });
    check(!(await list()).apps.some((a) => a.name === APP), 'GET /list still has the app');
    await waitFor('public port ' + sent.publicPort + ' to refuse connections', () => new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: sent.publicPort });
      s.on('connect', () => { s.destroy(); resolve(false); });
      s.on('error', (e) => resolve(e.code === 'ECONNREFUSED'));
    }));
    await page.getByText('Unregistered ' + APP + '.').waitFor({ state: 'visible' });
  }],

  ['signing out forgets the token and shows the sign-in form', async () => {
    await page.getByRole('button', { name: 'Sign out', exact: true }).click();
    await page.getByLabel('Token', { exact: true }).waitFor({ state: 'visible' });
    check(await page.locator('#dashboard').isHidden(), 'the dashboard is still shown');
    check(await page.evaluate(() => sessionStorage.length) === 0, 'the token is still in sessionStorage');
    await page.reload({ waitUntil: 'load' });
    await page.getByLabel('Token', { exact: true }).waitFor({ state: 'visible' });
  }],

  ['the page shows a private going offline, then the server going away, without a reload', async () => {
    const field = page.getByLabel('Token', { exact: true });
    await field.fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    const row = page.locator('#privates tbody tr[data-name="home"]');
    await waitFor('private "home" shown online', async () => /online/.test(await row.textContent()));
    const stopping = (name) => {
      process.kill(PIDS[name], 'SIGTERM');
      PIDS[name] = 0;     // no longer expected to be running
    };
    stopping('proxy_private');
    await waitFor('private "home" shown offline', async () => /offline/.test(await row.textContent()));
    serverGone = true;    // from here on, failed requests are expected in the console
    stopping('proxy_public');
    const banner = page.locator('#conn-error');
    await waitFor('the "lost contact" alert', async () => /Lost contact/.test(await banner.textContent()));
    check(await page.locator('#dashboard').isVisible(), 'the dashboard was hidden when the server went away');
  }],

  ['no console errors, CSP violations or requests to other origins', async () => {
    check(problems.length === 0, problems.join('; '));
  }],
];

// ------------------------------------------------------------------ run

async function main() {
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  let stopped = false;
  for (const step of steps) {
    const name = step[0];
    const fn = step[step.length - 1];
    const soft = step.length > 2 && step[1].soft;
    if (stopped) {
      console.log('SKIP ' + name + ' (an earlier step failed)');
      skipped++;
      continue;
    }
    try {
      await fn();
      console.log('ok   ' + name);
      passed++;
    } catch (e) {
      console.log('FAIL ' + name + '\n     ' + (e instanceof Failure ? e.message : (e.stack || String(e)).split('\n').slice(0, 4).join('\n     ')));
      failed++;
      if (soft) continue;   // a check of the server alone: the page steps go on
      stopped = true;
      if (page) {
        try { await page.screenshot({ path: path.join(OUT_DIR, 'failure.png'), fullPage: true }); } catch (e2) { /* no page */ }
      }
    }
  }
  console.log(passed + ' passed, ' + failed + ' failed' + (skipped ? ', ' + skipped + ' skipped' : ''));
  return failed === 0 ? 0 : 1;
}

async function closeBrowser() {
  stopFriend();
  if (context) {
    try { await Promise.race([context.close(), sleep(10000)]); } catch (e) { /* already gone */ }
  }
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
}

const watchdog = setTimeout(() => {
  console.log('FAIL the whole browser test took longer than ' + TOTAL_TIMEOUT_MS / 1000 + ' s');
  closeBrowser().finally(() => process.exit(1));
}, TOTAL_TIMEOUT_MS);

main()
  .catch((e) => { console.log('FAIL ' + (e.stack || e)); return 1; })
  .then(async (rc) => {
    clearTimeout(watchdog);
    await closeBrowser();
    process.exit(rc);
  });

// End-to-end test of the management page in Debian's chromium, driven by playwright-core,
// against the real proxy_public and proxy_private started by run.sh. Every wait is
// bounded; the first failing step stops the run (the later ones are counted as failed).
'use strict';

const net = require('net');
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
const PIDS = { proxy_public: Number(process.env.PUBLIC_PID || 0), proxy_private: Number(process.env.PRIVATE_PID || 0) };
const TOTAL_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT || 240) * 1000;
const WAIT_MS = 15000;     // the longest any single condition is waited for
const APP = 'web';         // the app registered through the form

// ------------------------------------------------------------------ small helpers

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

class Failure extends Error {}

function check(cond, message) {
  if (!cond) throw new Failure(message);
}

function processesAlive() {
  for (const [name, pid] of Object.entries(PIDS)) {
    if (!pid) continue;
    try { process.kill(pid, 0); } catch (e) { throw new Failure(name + ' (pid ' + pid + ') has exited; see tests/out/browser/' + (name === 'proxy_public' ? 'public' : 'private') + '.log'); }
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
  await form.getByLabel('Target host', { exact: true }).fill(fields.target_host);
  await form.getByLabel('Target port', { exact: true }).fill(String(fields.target_port));
  await form.getByLabel('Private', { exact: true }).selectOption(fields.private);
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
    page = context.pages()[0] || await context.newPage();
    const origin = new URL(BASE).origin;
    page.on('request', (req) => {
      const u = req.url();
      if (!u.startsWith('data:') && !u.startsWith('blob:') && new URL(u).origin !== origin) {
        problems.push('request to another origin: ' + u);
      }
    });
    page.on('pageerror', (e) => problems.push('uncaught error in the page: ' + e.message));
    page.on('console', (m) => {
      const t = m.text();
      if (/Content Security Policy|Refused to/i.test(t)) problems.push('CSP: ' + t);
      else if (m.type() === 'error' && !/status of (400|401|404|409)/.test(t) && !serverGone) problems.push('console error: ' + t);
    });
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

  ['a public port of 70000 is refused beside the form', async () => {
    await registerViaForm({ name: 'bad', public_port: 70000, target_host: '127.0.0.1', target_port: APP_PORT, private: 'home' });
    await waitFor('an error about the port', async () => /65535/.test(await registerAlert().textContent()));
    check(await page.getByLabel('Public port', { exact: true }).getAttribute('aria-invalid') === 'true', 'the port field is not marked invalid');
    const r = await apiRaw('POST', '/register', { name: 'bad', public_port: 70000, target_host: '127.0.0.1', target_port: APP_PORT, private: 'home' });
    check(r.status === 400 && r.json && typeof r.json.error === 'string' && r.json.error.length > 0,
      'POST /register with port 70000 answered ' + r.status + ' ' + r.text.slice(0, 200));
  }],

  ['the web port, the tunnel port and a taken name are refused with the server\'s words', async () => {
    for (const [fields, status, what] of [
      [{ name: 'bad', public_port: WEB_PORT }, 400, 'the web port'],
      [{ name: 'bad', public_port: TUNNEL_PORT }, 400, 'the tunnel port'],
      [{ name: APP, public_port: await freePort() }, 409, 'a taken name'],
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

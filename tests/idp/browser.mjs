// Drives Debian's headless Chromium (/usr/bin/chromium) through a script of steps, for cvpn's
// tests: a real browser signing in through real pages. Test-only.
//
//   node browser.mjs [--user-data-dir DIR] [--ca FILE] [--ignore-https-errors] [--timeout-ms N] [--screenshot-dir DIR]
//                    [--resolve HOST=IP]... [--allow-host HOST]... [--chromium PATH] SCRIPT.json
//
// SCRIPT.json is a list of steps (or {"steps": [...]}); each is one object, with an optional
// "timeout_ms" (default --timeout-ms, 20000): every wait is bounded.
//   {"goto": URL}                       load URL (waits for the load event)
//   {"fill": SELECTOR, "value": TEXT}   type into a field (CSS or Playwright selector)
//   {"click": SELECTOR}                 click an element
//   {"click_text": TEXT}                click the element showing TEXT
//   {"wait_url": REGEX}                 wait until the page URL matches REGEX (JS RegExp)
//   {"wait_text": TEXT}                 wait until the page shows TEXT
//   {"expect_text": TEXT}               the page shows TEXT now (waits up to 2 s for it)
//   {"expect_no_text": TEXT}            the page does not show TEXT now
//   {"expect_url": REGEX}               the page URL matches REGEX now
//   {"screenshot": PATH}                a PNG of the page (relative: under --screenshot-dir)
//   {"download": SELECTOR, "path": P}   click a download link and save the file to P
//   {"remember": SELECTOR, "as": NAME}  keep an element's text (in the result's "remembered")
//   {"fill_totp": SELECTOR, "secret": NAME, "offset": N}  type the TOTP code of a remembered
//                                       base32 secret, N 30-second steps from now
//   {"print_text": true}                add the page's visible text to "texts"
//
// It prints one JSON object on stdout:
//   {"ok": true|false, "final_url": …, "texts": […], "navigations": [every main-frame URL, in
//    order], "blocked": [off-machine URLs refused], "screenshots": […], "console_errors": […], "steps_done": N,
//    "failed_step": N|null, "error": "…"|null}
// and exits 0 when every step passed, 1 when one failed (a screenshot of that moment is taken
// into --screenshot-dir, when given), 2 on bad usage.
//
// HTTPS: Chromium trusts only the system store (and a per-user NSS database, whose tool,
// certutil, is not installed here). --ca FILE (PEM, one or more certificates) trusts those
// certificates' public keys through Chromium's --ignore-certificate-errors-spki-list: a TLS
// error on a chain holding one of those keys is ignored, others still fail. Chromium matches
// the keys of the chain the server sent, so put the server's own certificate in FILE (seen
// here: a server sending only its leaf, FILE with only the CA: ERR_CERT_AUTHORITY_INVALID;
// FILE with CA and leaf: the page loads).
// --ignore-https-errors ignores every certificate error (fine for a localhost test CA).
//
// Network: the browser reaches loopback only (127.0.0.0/8, ::1, localhost, the names given
// with --resolve HOST=IP, which Chromium's resolver maps to IP, and the hosts given with
// --allow-host: a test host's address in a network namespace the test made). Every other request is
// aborted before it leaves (oidc-provider's pages ask for a web font, for one), and listed in
// "blocked".

import { X509Certificate, createHash, createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';

import { chromium } from 'playwright-core';

function usage(msg) {
  console.error(`browser.mjs: ${msg}`);
  console.error('usage: node browser.mjs [--ca FILE] [--ignore-https-errors] [--timeout-ms N] [--screenshot-dir DIR] [--chromium PATH] SCRIPT.json');
  process.exit(2);
}

const opts = {
  ca: null, resolve: [], allowHosts: [], ignoreHttpsErrors: false, timeoutMs: 20000, screenshotDir: null, chromium: '/usr/bin/chromium', script: null,
};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 1) {
  const a = argv[i];
  const value = () => {
    if (i + 1 >= argv.length) usage(`${a} needs a value`);
    i += 1;
    return argv[i];
  };
  if (a === '--ca') opts.ca = value();
  else if (a === '--resolve') {
    const [host, ip] = value().split('=');
    if (!host || !ip) usage('--resolve HOST=IP');
    opts.resolve.push({ host: host.toLowerCase(), ip });
  } else if (a === '--allow-host') opts.allowHosts.push(value().toLowerCase());
  else if (a === '--ignore-https-errors') opts.ignoreHttpsErrors = true;
  else if (a === '--timeout-ms') opts.timeoutMs = Number(value());
  else if (a === '--screenshot-dir') opts.screenshotDir = value();
  else if (a === '--chromium') opts.chromium = value();
  else if (a === '--user-data-dir') opts.userDataDir = value();
  else if (a.startsWith('--')) usage(`unknown option ${a}`);
  else if (opts.script) usage('one script only');
  else opts.script = a;
}
if (!opts.script) usage('no script');
if (!(opts.timeoutMs > 0)) usage('--timeout-ms must be a positive number');

let steps;
try {
  const parsed = JSON.parse(readFileSync(opts.script, 'utf8'));
  steps = Array.isArray(parsed) ? parsed : parsed.steps;
  if (!Array.isArray(steps)) throw new Error('not a list of steps');
} catch (e) {
  usage(`script ${opts.script}: ${e.message}`);
}

function spkiHashes(pemFile) {
  const pem = readFileSync(pemFile, 'utf8');
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (!blocks.length) usage(`--ca ${pemFile}: no certificate`);
  return blocks.map((b) => {
    const der = new X509Certificate(b).publicKey.export({ type: 'spki', format: 'der' });
    return createHash('sha256').update(der).digest('base64');
  });
}

const args = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage',
];
if (opts.resolve.length) {
  args.push(`--host-resolver-rules=${opts.resolve.map((r) => `MAP ${r.host} ${r.ip}`).join(', ')}`);
}
if (opts.ca) args.push(`--ignore-certificate-errors-spki-list=${spkiHashes(opts.ca).join(',')}`);

const result = {
  ok: false,
  final_url: null,
  texts: [],
  navigations: [],
  screenshots: [],
  console_errors: [],
  blocked: [],
  steps_done: 0,
  failed_step: null,
  error: null,
};

function shotPath(p) {
  if (isAbsolute(p) || !opts.screenshotDir) return p;
  return join(opts.screenshotDir, p);
}


function isLocal(url) {
  let u;
  try {
    u = new URL(url);
  } catch {
    return false;
  }
  if (['data:', 'blob:', 'about:'].includes(u.protocol)) return true;
  const host = u.hostname.toLowerCase();
  return /^127\.\d+\.\d+\.\d+$/.test(host) || host === '[::1]' || host === 'localhost'
    || opts.resolve.some((r) => r.host === host) || opts.allowHosts.includes(host);
}

async function visibleText(page) {
  try {
    return await page.locator('body').innerText({ timeout: 2000 });
  } catch {
    return '';
  }
}

// Values read off pages by "remember" steps, for later steps of the same run.
const remembered = {};

// RFC 6238 code (SHA-1, 6 digits, 30 s) of a base32 secret, `offset` steps from now: what an
// authenticator app that scanned the secret shows.
function totp(base32, offset) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const ch of base32.replace(/[\s=]/g, '').toUpperCase()) {
    const v = alphabet.indexOf(ch);
    if (v < 0) throw new Error(`not base32: ${base32}`);
    bits += v.toString(2).padStart(5, '0');
  }
  const key = Buffer.alloc(Math.floor(bits.length / 8));
  for (let i = 0; i < key.length; i += 1) key[i] = parseInt(bits.slice(i * 8, i * 8 + 8), 2);
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 1000 / 30) + offset));
  const mac = createHmac('sha1', key).update(counter).digest();
  const o = mac[mac.length - 1] & 0xf;
  const n = ((mac[o] & 0x7f) << 24) | (mac[o + 1] << 16) | (mac[o + 2] << 8) | mac[o + 3];
  return String(n % 1000000).padStart(6, '0');
}

async function runStep(page, step) {
  const timeout = step.timeout_ms ?? opts.timeoutMs;
  if ('goto' in step) {
    // Chromium aborts a load with ERR_NETWORK_CHANGED when any interface of the host changes,
    // and other tests add and remove veths all the time: such a load is tried again (a GET).
    for (let attempt = 1; ; attempt += 1) {
      try {
        await page.goto(step.goto, { timeout, waitUntil: 'load' });
        break;
      } catch (e) {
        if (attempt >= 4 || !String(e?.message).includes('ERR_NETWORK_CHANGED')) throw e;
        await new Promise((r) => setTimeout(r, 200 * attempt));
      }
    }
  } else if ('fill' in step) {
    await page.locator(step.fill).fill(String(step.value ?? ''), { timeout });
  } else if ('click' in step) {
    await page.locator(step.click).first().click({ timeout });
  } else if ('click_text' in step) {
    await page.getByText(step.click_text, { exact: false }).first().click({ timeout });
  } else if ('wait_url' in step) {
    const re = new RegExp(step.wait_url);
    await page.waitForURL((u) => re.test(u.href), { timeout, waitUntil: 'commit' });
  } else if ('wait_text' in step) {
    await page.getByText(step.wait_text, { exact: false }).first().waitFor({ state: 'visible', timeout });
  } else if ('expect_text' in step) {
    try {
      await page.getByText(step.expect_text, { exact: false }).first()
        .waitFor({ state: 'visible', timeout: Math.min(timeout, 2000) });
    } catch {
      throw new Error(`the page does not show ${JSON.stringify(step.expect_text)}`);
    }
  } else if ('expect_no_text' in step) {
    const text = await visibleText(page);
    if (text.includes(step.expect_no_text)) {
      throw new Error(`the page shows ${JSON.stringify(step.expect_no_text)}`);
    }
  } else if ('expect_url' in step) {
    if (!new RegExp(step.expect_url).test(page.url())) {
      throw new Error(`the URL ${page.url()} does not match /${step.expect_url}/`);
    }
  } else if ('screenshot' in step) {
    const p = shotPath(step.screenshot);
    await page.screenshot({ path: p, fullPage: true, timeout });
    result.screenshots.push(p);
  } else if ('print_text' in step) {
    result.texts.push(await visibleText(page));
  } else if ('remember' in step) {
    remembered[step.as] = (await page.locator(step.remember).first().innerText({ timeout })).trim();
    result.remembered = { ...remembered };
  } else if ('fill_totp' in step) {
    const secret = remembered[step.secret];
    if (!secret) throw new Error(`nothing remembered as ${step.secret}`);
    await page.locator(step.fill_totp).fill(totp(secret, step.offset ?? 0), { timeout });
  } else if ('download' in step) {
    // Click a link that downloads a file and save the file where the step says. Headless
    // Chromium now and then cancels a download it has just started (seen in CI: `saveAs:
    // canceled` with the server's answer complete): click again, at most three times, and
    // say so in the result; a download that never completes still fails the step.
    for (let attempt = 1; ; attempt += 1) {
      const [download] = await Promise.all([
        page.waitForEvent('download', { timeout }),
        page.locator(step.download).first().click({ timeout }),
      ]);
      const failure = await download.failure();
      if (failure === null) {
        await download.saveAs(step.path);
        break;
      }
      result.retries = (result.retries ?? []).concat(`download ${step.download}: ${failure}`);
      if (attempt >= 3) throw new Error(`the download failed ${attempt} times: ${failure}`);
    }
    result.downloads = result.downloads ?? [];
    result.downloads.push(step.path);
  } else {
    throw new Error(`unknown step ${JSON.stringify(step)}`);
  }
}

// A profile of the caller's (kept: cookies outlive the run) or a fresh one (removed).
const keepProfile = Boolean(opts.userDataDir);
if (keepProfile) mkdirSync(opts.userDataDir, { recursive: true });
const userDataDir = opts.userDataDir ?? mkdtempSync(join(tmpdir(), 'cvpn-chromium-'));
let context;
let exitCode = 1;
// A hard bound on the whole run: the steps' own bounds plus launch and teardown.
const overall = setTimeout(() => {
  result.error = result.error ?? 'browser.mjs: overall time limit reached';
  process.stdout.write(`${JSON.stringify(result)}\n`);
  if (!keepProfile) { try { rmSync(userDataDir, { recursive: true, force: true }); } catch { /* best effort */ } }
  process.exit(1);
}, (steps.length + 2) * opts.timeoutMs + 10000);
overall.unref();

try {
  if (opts.screenshotDir) mkdirSync(opts.screenshotDir, { recursive: true });
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: opts.chromium,
    headless: true,
    args,
    ignoreHTTPSErrors: opts.ignoreHttpsErrors,
    timeout: opts.timeoutMs,
    env: { ...process.env, HOME: userDataDir },
  });
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (isLocal(url)) return route.continue();
    result.blocked.push(url);
    return route.abort('blockedbyclient');
  });
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(opts.timeoutMs);
  page.setDefaultNavigationTimeout(opts.timeoutMs);
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) result.navigations.push(frame.url());
  });
  page.on('console', (msg) => {
    if (msg.type() === 'error') result.console_errors.push(msg.text());
  });
  page.on('pageerror', (err) => result.console_errors.push(String(err)));
  for (let i = 0; i < steps.length; i += 1) {
    try {
      await runStep(page, steps[i]);
      result.steps_done = i + 1;
    } catch (e) {
      result.failed_step = i;
      const text = (await visibleText(page)).slice(0, 2000);
      result.error = `step ${i} ${JSON.stringify(steps[i])} failed at ${page.url()}: ${e.message.split('\n')[0]}`
        + (text ? `\n--- page text ---\n${text}` : '');
      if (opts.screenshotDir) {
        const p = join(opts.screenshotDir, `failed-step-${i}-${Date.now()}.png`);
        try {
          await page.screenshot({ path: p, fullPage: true, timeout: 5000 });
          result.screenshots.push(p);
        } catch { /* the page may be gone */ }
      }
      break;
    }
  }
  result.final_url = page.url();
  result.ok = result.failed_step === null;
  exitCode = result.ok ? 0 : 1;
} catch (e) {
  result.error = `browser.mjs: ${e.message}`;
} finally {
  if (context) {
    try { await context.close(); } catch { /* already gone */ }
  }
  if (!keepProfile) { try { rmSync(userDataDir, { recursive: true, force: true }); } catch { /* best effort */ } }
}
process.stdout.write(`${JSON.stringify(result)}\n`);
if (!result.ok) console.error(result.error);
process.exit(exitCode);

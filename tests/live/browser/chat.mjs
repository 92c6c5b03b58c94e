// A person at a browser on a tailnet peer, for tests/live/test_browser.py:
//
//   node chat.mjs CONFIG.json      (run inside the client network namespace)
//
// Debian's Chromium (LIMINATI_CHROMIUM, never a downloaded browser), driven by playwright-core
// (LIMINATI_PLAYWRIGHT: the package folder scripts/install-browser-deps.sh made). Names are
// resolved by the system resolver (our dnsmasq) and the only CA trusted beyond the built-in
// roots is ours, from $HOME/.pki/nssdb: no certificate error is ignored.
//
// Signs in to Open WebUI, checks the model selector offers the served model, sends a message
// and samples the answer's length while it streams, screenshots the chat; then adds a record
// on the DNS admin page (HTTP basic auth) through its form and screenshots that page.
// Prints one JSON line (the report) on stdout; progress and failures go to stderr. On failure
// it saves a screenshot of the page as it was (…-failure.png) and exits 1.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.LIMINATI_PLAYWRIGHT);
const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  // no autofill lookups of Google's (our dnsmasq refuses them anyway): a quieter query log
  '--disable-features=AutofillServerCommunication',
];
const t0 = Date.now();
const log = (...args) => console.error(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...args);
const shot = (name) => path.join(cfg.out_dir, name);

const report = { screenshots: [], answer_lengths: [], answer_times: [] };
fs.rmSync(cfg.user_data_dir, { recursive: true, force: true });
const context = await chromium.launchPersistentContext(cfg.user_data_dir, {
  executablePath: process.env.LIMINATI_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: FLAGS,
  viewport: { width: 1280, height: 800 },
  // only for the DNS admin page: Open WebUI never sees these
  httpCredentials: {
    username: cfg.dns_user,
    password: cfg.dns_password,
    origin: new URL(cfg.dns_url).origin,
  },
});
context.setDefaultTimeout(30_000);
const page = context.pages()[0] ?? (await context.newPage());
page.on('pageerror', (err) => log('page error:', String(err).slice(0, 300)));
page.on('requestfailed', (req) => log('request failed:', req.url(), req.failure()?.errorText));
page.on('response', (resp) => {
  if (resp.status() >= 400) log('HTTP', resp.status(), resp.url());
});

let step = 'start';
try {
  // -- Open WebUI: sign in ------------------------------------------------------------------
  step = 'open Open WebUI';
  log(step, cfg.webui_url);
  const first = await page.goto(cfg.webui_url);
  // a TLS failure (our CA not trusted, a wrong name) would have thrown net::ERR_CERT_*
  report.first_status = first?.status();
  await page.waitForURL((url) => url.pathname.startsWith('/auth'));
  report.security = await first?.securityDetails();

  step = 'sign in';
  await page.locator('input#email[type=email]').fill(cfg.email);
  await page.locator('input#password[type=password]').fill(cfg.password);
  await page.screenshot({ path: shot('webui-signin.png') });
  report.screenshots.push(shot('webui-signin.png'));
  await page.locator('form button[type=submit]').click();
  await page.waitForURL((url) => !url.pathname.startsWith('/auth'));
  // the first sign-in of a new version shows "What's New": dismiss it whenever it shows up
  await page.addLocatorHandler(
    page.getByRole('button', { name: "Okay, Let's Go!" }),
    async (button) => {
      log("dismissing the What's New dialog");
      await button.click();
    },
  );
  const input = page.locator('#chat-input[contenteditable=true]');
  await input.waitFor();
  report.signed_in = true;
  log('signed in');

  // -- the model selector offers the served model -----------------------------------------
  step = 'model selector';
  const selector = page.locator('#model-selector-model-button');
  await selector.click();
  const option = page.getByRole('option').filter({ hasText: cfg.model });
  await option.first().waitFor();
  report.model_selector = await page.getByRole('option').allInnerTexts();
  report.model_selected = await selector.getAttribute('aria-label');
  log('model selector:', JSON.stringify(report.model_selector), report.model_selected);
  await option.first().click();
  await page.locator('[role=listbox]').waitFor({ state: 'hidden' }).catch(() => {});

  // -- chat: the answer streams in --------------------------------------------------------
  step = 'chat';
  await input.click();
  await page.keyboard.type(cfg.prompt);
  await page.keyboard.press('Enter');
  const sentAt = Date.now();
  log('sent:', cfg.prompt);
  const answer = page.locator('.chat-assistant').last();
  const done = page.getByRole('button', { name: 'Regenerate' });
  const stop = page.getByRole('button', { name: 'Stop' });
  // Open WebUI asks the model for the chat's title first; a one-request-at-a-time server
  // (llama.cpp) makes the answer wait for it. Then the answer is sampled every 50 ms; a tiny
  // model may ramble on to its context's end, so after cfg.stream_seconds of streaming the
  // person presses Stop, as one would.
  const deadline = sentAt + cfg.answer_timeout * 1000;
  let firstTextAt = null;
  report.stopped = false;
  for (;;) {
    if (Date.now() > deadline) throw new Error(`no complete answer after ${cfg.answer_timeout}s`);
    const text = (await answer.count()) ? await answer.innerText() : '';
    const now = Date.now();
    if (text.trim().length > 0 && text.length !== report.answer_lengths.at(-1)) {
      firstTextAt ??= now;
      report.answer_lengths.push(text.length);
      report.answer_times.push((now - sentAt) / 1000);
    }
    if (firstTextAt !== null && (await done.count()) > 0) break;
    if (firstTextAt !== null && !report.stopped && now - firstTextAt > cfg.stream_seconds * 1000) {
      log(`still streaming after ${cfg.stream_seconds}s: Stop`);
      await stop.click();
      report.stopped = true;
    }
    await page.waitForTimeout(50);
  }
  report.answer = await answer.innerText();
  await page.mouse.move(0, 0); // no tooltip in the screenshot
  await page.waitForTimeout(500);
  log(`answer (${report.answer.length} chars) after ${report.answer_times.at(-1)}s,`,
    `${report.answer_lengths.length} sizes seen`);
  await page.screenshot({ path: shot('webui-chat.png') });
  report.screenshots.push(shot('webui-chat.png'));

  // -- the DNS admin page: add a record through the form --------------------------------
  step = 'DNS admin page';
  log(step, cfg.dns_url);
  const admin = await page.goto(cfg.dns_url);
  report.dns_status = admin?.status();
  const form = page.locator('form.add');
  await form.locator('input[name=name]').fill(cfg.new_name);
  await form.locator('input[name=address]').fill(cfg.new_address);
  await Promise.all([page.waitForURL(cfg.dns_url), form.locator('button[type=submit]').click()]);
  const row = page.locator('tr').filter({ hasText: cfg.new_name });
  await row.first().waitFor();
  report.dns_page_records = await page.locator('table').first().innerText();
  report.dns_errors = await page.locator('[role=alert]').allInnerTexts();
  await page.screenshot({ path: shot('dns-admin.png'), fullPage: true });
  report.screenshots.push(shot('dns-admin.png'));
  log('record added');
} catch (err) {
  log(`FAILED at "${step}" (${page.url()}):`, err?.stack ?? String(err));
  try {
    await page.screenshot({ path: shot('browser-failure.png'), fullPage: true });
    log('screenshot:', shot('browser-failure.png'));
  } catch {}
  await context.close();
  process.exit(1);
}
await context.close();
report.seconds = (Date.now() - t0) / 1000;
console.log(JSON.stringify(report));

#!/usr/bin/env node
// The live chat widget in a real browser: Debian's Chromium (headless) driven by playwright-core.
// Opens the demo page, sends a message through the widget, waits for its ack, waits for an
// agent reply, reloads and checks that the conversation is shown again, takes a screenshot.
//
//   scripts/browser.sh   # once: chromium + playwright-core in $OMNIGATE_CACHE/node
//   NODE_PATH=${OMNIGATE_CACHE:-$HOME/.cache/omnigate}/node/node_modules \
//     node tests/livechat/widget_test.mjs --url http://127.0.0.1:PORT/livechat/CHANNEL/demo \
//       --text "hello from chromium" --expect-reply "REPLY TEXT" --screenshot out.png
//
// Flags: --url (required), --text (default "hello from chromium"), --expect-reply (text the
// agent reply must contain; without it any reply will do), --expect-typing NAME (before the
// reply, the "NAME is typing" line must show), --screenshot PATH (the open widget
// after the reload; on failure PATH.failed.png), --timeout-ms (each wait, default 30000),
// --chromium PATH (default $CHROMIUM or /usr/bin/chromium), --history-from-server (before the
// reload, delete the widget's stored transcript but keep its visitor token, so the page sends
// last_seq 0 and the server's welcome.replies and welcome.history must bring both back).
//
// stdout: one JSON object per line, in this order (a test reads them as they come):
//   {"step":"sent","client_id","event_id","conversation_key","visitor_token"}  the ack arrived
//   {"step":"typing","text"}   the agent's typing line is shown (only with --expect-typing)
//   {"step":"reply","text","seq","read_seq"}   the agent reply is shown (and was reported read)
//   {"step":"history","ok":true,"source":"local"|"server"}   shown again after the reload
// Exit 0 when all passed; 1 with the reason, the page's console and websocket frames on stderr.
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import os from 'node:os';
import path from 'node:path';

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: 'string' },
      text: { type: 'string', default: 'hello from chromium' },
      'expect-reply': { type: 'string' },
      'expect-typing': { type: 'string' },
      screenshot: { type: 'string' },
      'timeout-ms': { type: 'string', default: '30000' },
      chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
      'history-from-server': { type: 'boolean', default: false },
    },
  }));
} catch (e) {
  console.error(`widget_test: ${e.message}`);
  process.exit(1);
}
if (!opts.url) {
  console.error('widget_test: --url http://HOST:PORT/livechat/CHANNEL/demo is required');
  process.exit(1);
}
const timeout = Number(opts['timeout-ms']);
if (!(timeout > 0)) {
  console.error('widget_test: --timeout-ms must be a positive number');
  process.exit(1);
}

function loadPlaywright() {
  const require = createRequire(import.meta.url);
  const cache = process.env.OMNIGATE_CACHE || path.join(os.homedir(), '.cache', 'omnigate');
  const candidates = [
    process.env.PLAYWRIGHT_CORE,
    'playwright-core', // NODE_PATH
    path.join(cache, 'node', 'node_modules', 'playwright-core'),
  ].filter(Boolean);
  for (const c of candidates) {
    try {
      return require(c);
    } catch (e) {
      if (e.code !== 'MODULE_NOT_FOUND') throw e;
    }
  }
  console.error('widget_test: playwright-core not found; run scripts/browser.sh and set ' +
    'NODE_PATH=$OMNIGATE_CACHE/node/node_modules (or PLAYWRIGHT_CORE=path/to/playwright-core)');
  process.exit(1);
}

const { chromium } = loadPlaywright();
const trace = []; // console messages and websocket frames, shown on failure
function note(line) {
  trace.push(`${new Date().toISOString().slice(11, 23)} ${line.length > 500 ? line.slice(0, 500) + '…' : line}`);
  if (trace.length > 200) trace.shift();
}
function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

let step = 'launch';
let browser;
let page;
// Whatever hangs, the process ends.
const watchdog = setTimeout(() => {
  console.error(`widget_test: FAILED: no progress for ${(timeout * 5 + 60000) / 1000} s (step ${step})`);
  process.exit(1);
}, timeout * 5 + 60000);

// The widget's DOM, read inside the page.
async function openWidget() {
  await page.waitForSelector('#omnigate-chat-bubble', { state: 'visible', timeout });
  if (await page.isHidden('#omnigate-chat-panel')) await page.click('#omnigate-chat-bubble');
  await page.waitForSelector('#omnigate-chat-panel', { state: 'visible', timeout });
  await page.waitForSelector('#omnigate-chat-input', { state: 'visible', timeout });
}

function findVisitor(text) {
  const all = [...document.querySelectorAll('.omnigate-msg.omnigate-msg-visitor')];
  const m = all.reverse().find((n) => n.querySelector('.omnigate-msg-text')?.textContent === text);
  return m ? { client_id: m.getAttribute('data-client-id'), state: m.getAttribute('data-state') } : null;
}

function findAgent(want) {
  for (const n of document.querySelectorAll('.omnigate-msg.omnigate-msg-agent')) {
    const text = n.querySelector('.omnigate-msg-text')?.textContent ?? '';
    if (want == null ? text.length > 0 : text.includes(want)) return { text, seq: Number(n.getAttribute('data-seq')) };
  }
  return null;
}

async function waitFor(what, fn, arg) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout, polling: 100 });
    return await handle.jsonValue();
  } catch (e) {
    if (e.name === 'TimeoutError') throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    throw e;
  }
}

async function main() {
  browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 }, locale: 'en-US' });
  page = await context.newPage();
  page.on('console', (m) => note(`[console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => note(`[pageerror] ${e.message}`));
  page.on('requestfailed', (r) => note(`[requestfailed] ${r.url()} ${r.failure()?.errorText}`));
  page.on('websocket', (ws) => {
    note(`[ws open] ${ws.url()}`);
    ws.on('framesent', (f) => note(`[ws >] ${f.payload}`));
    ws.on('framereceived', (f) => note(`[ws <] ${f.payload}`));
    ws.on('socketerror', (e) => note(`[ws error] ${e}`));
    ws.on('close', () => note('[ws close]'));
  });

  step = 'load';
  const res = await page.goto(opts.url, { waitUntil: 'load', timeout });
  if (!res || !res.ok()) throw new Error(`GET ${opts.url} answered ${res ? res.status() : 'nothing'}`);
  await openWidget();

  step = 'send';
  await page.fill('#omnigate-chat-input', opts.text);
  await page.press('#omnigate-chat-input', 'Enter');
  const { client_id } = await waitFor(`the message "${opts.text}" in the list`, findVisitor, opts.text);
  const state = await waitFor(`the ack of ${client_id} (data-state="sent")`, (id) => {
    const n = document.querySelector(`.omnigate-msg-visitor[data-client-id="${CSS.escape(id)}"]`);
    const s = n && n.getAttribute('data-state');
    if (s === 'failed') return { failed: true };
    return s === 'sent' ? { failed: false } : null;
  }, client_id);
  if (state.failed) throw new Error(`message ${client_id} was marked failed (no ack within the widget's send timeout)`);
  const st = await page.evaluate(() => window.OmnigateChat.state);
  const msg = st.messages.find((m) => m.client_id === client_id);
  emit({ step: 'sent', client_id, event_id: msg?.event_id ?? null, conversation_key: st.conversation_key,
    visitor_token: st.visitor_token });

  if (opts['expect-typing'] != null) {
    step = 'typing';
    const text = await waitFor(`"${opts['expect-typing']} is typing" shown`, (name) => {
      const n = document.querySelector('#omnigate-chat-typing');
      return n && !n.hidden && n.textContent.includes(name) ? n.textContent : null;
    }, opts['expect-typing']);
    emit({ step: 'typing', text });
  }

  step = 'reply';
  const want = opts['expect-reply'] ?? null;
  const reply = await waitFor(want == null ? 'an agent reply' : `an agent reply containing "${want}"`, findAgent, want);
  const readSeq = await waitFor(`the widget to report reply ${reply.seq} read`,
    (seq) => (window.OmnigateChat.state.read_seq >= seq ? window.OmnigateChat.state.read_seq : null), reply.seq);
  emit({ step: 'reply', text: reply.text, seq: reply.seq, read_seq: readSeq });

  step = 'history';
  if (opts['history-from-server']) {
    await page.evaluate(() => localStorage.removeItem(`omnigate-chat:${window.OmnigateChat.state.channel}:log`));
  }
  await page.reload({ waitUntil: 'load', timeout });
  await openWidget();
  try {
    await page.waitForFunction(([text, want]) => {
      const all = [...document.querySelectorAll('.omnigate-msg-visitor')];
      const mine = all.some((n) => n.querySelector('.omnigate-msg-text')?.textContent === text &&
        n.getAttribute('data-state') === 'sent');
      const agent = [...document.querySelectorAll('.omnigate-msg-agent .omnigate-msg-text')]
        .some((n) => (want == null ? n.textContent.length > 0 : n.textContent.includes(want)));
      return mine && agent && window.OmnigateChat.state.connected;
    }, [opts.text, want], { timeout, polling: 100 });
  } catch (e) {
    if (e.name !== 'TimeoutError') throw e;
    const seen = await page.evaluate(([text, want]) => ({
      visitor: [...document.querySelectorAll('.omnigate-msg-visitor')].map((n) =>
        `${n.getAttribute('data-state')}: ${n.querySelector('.omnigate-msg-text')?.textContent}`),
      agent: [...document.querySelectorAll('.omnigate-msg-agent .omnigate-msg-text')].map((n) => n.textContent),
      connected: window.OmnigateChat.state.connected,
      text, want,
    }), [opts.text, want]);
    throw new Error(`after the reload the conversation is not shown again: ${JSON.stringify(seen)}`);
  }
  emit({ step: 'history', ok: true, source: opts['history-from-server'] ? 'server' : 'local' });

  step = 'screenshot';
  if (opts.screenshot) await page.screenshot({ path: opts.screenshot });
}

let failed = null;
try {
  await main();
} catch (e) {
  failed = e;
}
if (failed) {
  console.error(`widget_test: FAILED at step ${step}: ${failed.message}`);
  if (page && opts.screenshot) {
    const p = `${opts.screenshot}.failed.png`;
    try {
      await page.screenshot({ path: p, timeout: 5000 });
      console.error(`widget_test: screenshot of the failure in ${p}`);
    } catch { /* the page is gone */ }
  }
  if (trace.length) console.error(`widget_test: the page's console and websocket frames:\n  ${trace.join('\n  ')}`);
}
try {
  await browser?.close();
} catch { /* already gone */ }
clearTimeout(watchdog);
process.exit(failed ? 1 : 0);

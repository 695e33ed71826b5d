/*
 * Omnigate live chat widget, protocol omnigate.livechat.v1 (see docs/livechat.md).
 *
 *   <script src="https://GATEWAY/livechat/CHANNEL/widget.js" defer></script>
 *
 * Optional attributes on that tag: data-channel (else taken from the path),
 * data-identity-id, data-identity-email, data-identity-name, data-identity-hash,
 * data-title, data-color (CSS colour), data-server (origin, else the script's),
 * data-send-timeout-ms (how long a message may wait for its ack; default 15000).
 * The injected <style> takes the script tag's CSP nonce, if it has one.
 * Plain JavaScript, no dependencies, no build step. window.OmnigateChat is the API.
 */
(function () {
  'use strict';
  if (window.OmnigateChat) return;

  var PROTOCOL = 'omnigate.livechat.v1';
  var BACKOFF_MIN = 500, BACKOFF_MAX = 30000;
  var TYPING_EVERY = 3000, TYPING_IDLE = 5000, AGENT_TYPING_TTL = 15000;
  var SILENCE_MS = 70000; // the server pings every 25 s: this long without a frame = dead socket
  var KEEP = 200;         // transcript entries kept in localStorage
  var MAX_TEXT = 4000;

  var script = document.currentScript || (function () {
    var all = document.querySelectorAll('script[src*="/livechat/"][src*="widget.js"]');
    return all[all.length - 1];
  })();
  if (!script) return;
  function attr(n) {
    var v = script.getAttribute('data-' + n);
    return v === null || v === '' ? undefined : v;
  }
  var src = new URL(script.src, location.href);
  var m = /^(.*)\/livechat\/([^\/]+)\/widget\.js$/.exec(src.pathname);
  var channel = attr('channel') || (m && decodeURIComponent(m[2]));
  if (!channel) {
    console.error('omnigate chat: no channel (set data-channel or load /livechat/{channel}/widget.js)');
    return;
  }
  var base = (attr('server') || src.origin).replace(/\/$/, '') + (m && !attr('server') ? m[1] : '') +
    '/livechat/' + encodeURIComponent(channel);
  var wsUrl = base.replace(/^http/, 'ws') + '/ws';
  var title = attr('title') || 'Chat with us';
  var sendTimeout = Number(attr('send-timeout-ms')) || 15000;

  var identity = null;
  ['id', 'email', 'name', 'hash'].forEach(function (k) {
    var v = attr('identity-' + k);
    if (v !== undefined) (identity = identity || {})[k] = v;
  });
  var who = identity ? identity.id || identity.email || '' : '';

  // ---- storage: one set of keys per channel --------------------------------------------
  var KEY = 'omnigate-chat:' + channel + ':';
  function load(k, dflt) {
    try { var v = localStorage.getItem(KEY + k); return v === null ? dflt : JSON.parse(v); } catch (e) { return dflt; }
  }
  function store(k, v) {
    try {
      if (v === undefined || v === null) localStorage.removeItem(KEY + k);
      else localStorage.setItem(KEY + k, JSON.stringify(v));
    } catch (e) { /* private mode or full: the chat still works, without memory */ }
  }

  var token = load('token', null);
  var lastSeq = load('seq', 0) || 0;
  var readSeq = load('read', 0) || 0;
  var log = load('log', []);
  if (!Array.isArray(log)) log = [];
  var stored = load('who', '');
  if (stored && stored !== who) {
    // Someone else was signed in: their conversation is not this visitor's.
    token = null; lastSeq = 0; readSeq = 0; log = [];
    ['token', 'seq', 'read', 'log'].forEach(function (k) { store(k, null); });
  }
  // last_seq says which replies are shown: with no transcript here, ask for all of them.
  if (!log.length) lastSeq = 0;
  log.forEach(function (e) { if (e.kind === 'agent' && e.seq > lastSeq) lastSeq = e.seq; });

  // ---- connection state ----------------------------------------------------------------
  var ws = null, welcomed = false, attempt = 0, reconnectTimer = null, fatal = null;
  var conversationKey = null, verified = false, lastFrameAt = 0, lastSent = null;
  var typingOn = false, typingSentAt = 0, typingIdle = null, agentTypingTimer = null;
  var timers = {}; // client_id -> {fail, retry}
  var isOpen = false;
  var el = {};     // DOM nodes
  var nodes = {};  // transcript key -> message element

  function find(id) {
    for (var i = 0; i < log.length; i++) if (log[i].kind === 'visitor' && log[i].client_id === id) return log[i];
    return null;
  }
  function findAgent(seq) {
    for (var i = 0; i < log.length; i++) if (log[i].kind === 'agent' && log[i].seq === seq) return log[i];
    return null;
  }
  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join('');
  }

  function save() {
    var extra = log.length - KEEP;
    if (extra > 0) {
      log = log.filter(function (e) {
        if (extra > 0 && !(e.kind === 'visitor' && e.state !== 'sent')) { extra--; return false; }
        return true;
      });
    }
    store('log', log);
    store('seq', lastSeq);
  }

  function raw(frame) {
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  function connect() {
    if (ws || fatal) return;
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    setStatus('Connecting…');
    var sock, sentToken = token;
    try { sock = new WebSocket(wsUrl, PROTOCOL); } catch (e) { schedule(); return; }
    ws = sock;
    welcomed = false;
    lastFrameAt = Date.now();
    sock.onopen = function () {
      if (sock !== ws) return;
      lastFrameAt = Date.now();
      var hello = { type: 'hello', last_seq: lastSeq,
        page: { url: location.href, referrer: document.referrer, language: navigator.language } };
      if (token) hello.visitor_token = token;
      if (identity) hello.identity = identity;
      raw(hello);
    };
    sock.onmessage = function (ev) {
      if (sock !== ws) return;
      lastFrameAt = Date.now();
      var f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      if (f && typeof f.type === 'string') handle(f);
    };
    sock.onclose = function (ev) {
      if (sock !== ws) return;
      ws = null;
      welcomed = false;
      closed(ev.code, sentToken);
    };
  }

  // Forget a socket at once (a dead TCP connection can take minutes to report its close).
  function drop() {
    var s = ws;
    if (!s) return;
    ws = null;
    welcomed = false;
    try { s.close(); } catch (e) { /* already closing */ }
    closed(0, token);
  }

  setInterval(function () {
    if (ws && lastFrameAt && Date.now() - lastFrameAt > SILENCE_MS) drop();
  }, 10000);

  function schedule(delay) {
    if (fatal || reconnectTimer || ws) return;
    if (delay === undefined) {
      var top = Math.min(BACKOFF_MAX, BACKOFF_MIN * Math.pow(2, attempt++));
      delay = top / 2 + Math.random() * top / 2;
    }
    setStatus('Reconnecting…');
    reconnectTimer = setTimeout(function () { reconnectTimer = null; connect(); }, delay);
  }

  function closed(code, sentToken) {
    agentTyping(false);
    typingOn = false;
    if (code === 4401) {
      if (sentToken) { // the token is not (or no longer) good: start a new conversation
        token = null;
        store('token', null);
        resetConversation();
        schedule(0);
        return;
      }
      return stop('This chat could not verify who you are.');
    }
    if (code === 4403) return stop('Chat is not available on this page.');
    if (code === 4413 && lastSent) fail(lastSent);
    schedule();
  }

  function stop(msg) {
    fatal = msg;
    setStatus(msg);
    log.forEach(function (e) { if (e.kind === 'visitor' && e.state === 'sending') fail(e.client_id); });
  }

  function resetConversation() {
    log = log.filter(function (e) { return e.kind === 'visitor' && e.state !== 'sent'; });
    lastSeq = 0;
    readSeq = 0;
    store('read', 0);
    save();
    render();
  }

  // ---- frames from the server ----------------------------------------------------------
  function handle(f) {
    switch (f.type) {
      case 'welcome': return welcome(f);
      case 'ack': return ack(f);
      case 'nack': return nack(f);
      case 'reply': reply(f); save(); render(); return markRead();
      case 'typing': return agentTyping(!!f.on, f.agent && f.agent.name);
      case 'ping': return raw({ type: 'pong' });
      case 'error': return setStatus(f.message || f.code || 'Error');
    }
  }

  function welcome(f) {
    if (f.visitor_token && token && f.visitor_token !== token) resetConversation();
    if (f.visitor_token) token = f.visitor_token;
    store('token', token);
    store('who', who);
    conversationKey = f.conversation_key || null;
    verified = !!f.verified;
    welcomed = true;
    attempt = 0;
    (Array.isArray(f.replies) ? f.replies : []).forEach(reply);
    if (Array.isArray(f.history)) mergeHistory(f.history);
    // What is still waiting goes again, with the same client ids: the server deduplicates.
    log.forEach(function (e) { if (e.kind === 'visitor' && e.state === 'sending') transmit(e, false); });
    save();
    render();
    setStatus('');
    markRead();
  }

  function ack(f) {
    var e = find(f.client_id);
    if (!e) return;
    e.state = 'sent';
    e.event_id = f.event_id;
    clearTimers(e.client_id);
    save();
    render();
  }

  function nack(f) {
    var e = find(f.client_id);
    if (!e || e.state !== 'sending') return;
    var ms = f.retry_after_ms;
    if (typeof ms !== 'number' || ms < 0) return fail(e.client_id);
    var t = timers[e.client_id] || (timers[e.client_id] = {});
    clearTimeout(t.retry);
    t.retry = setTimeout(function () {
      var x = find(f.client_id);
      if (x && x.state === 'sending' && welcomed) frame(x);
    }, ms);
  }

  function reply(r) {
    if (!r || typeof r.seq !== 'number') return;
    if (!findAgent(r.seq)) {
      insertAgent({ kind: 'agent', seq: r.seq, event_id: r.event_id, text: r.text || '',
        attachments: Array.isArray(r.attachments) ? r.attachments : [],
        agent: (r.agent && r.agent.name) || '' });
      agentTyping(false);
    }
    if (r.seq > lastSeq) lastSeq = r.seq;
  }

  // Replies stay in seq order whatever order they arrive in.
  function insertAgent(e) {
    var at = log.length;
    for (var i = 0; i < log.length; i++) if (log[i].kind === 'agent' && log[i].seq > e.seq) { at = i; break; }
    log.splice(at, 0, e);
    if (e.seq > lastSeq) lastSeq = e.seq;
  }

  // The visitor's own acknowledged messages: settle the ones still waiting here, and add the
  // ones this page has never seen (another device, a cleared transcript). `after_seq`, when
  // the server gives it, places a message after the reply it followed; else at the top.
  function mergeHistory(list) {
    var front = 0;
    list.forEach(function (h) {
      if (!h || !h.client_id) return;
      var e = find(h.client_id);
      if (e) {
        if (e.state !== 'sent') { e.state = 'sent'; e.event_id = h.event_id; clearTimers(h.client_id); }
        return;
      }
      e = { kind: 'visitor', client_id: h.client_id, text: h.text || '', attachments: [], state: 'sent',
        event_id: h.event_id };
      var at = front++;
      if (typeof h.after_seq === 'number') {
        at = log.length;
        for (var i = 0; i < log.length; i++) if (log[i].kind === 'agent' && log[i].seq > h.after_seq) { at = i; break; }
      }
      log.splice(at, 0, e);
    });
  }

  // ---- sending -------------------------------------------------------------------------
  function frame(e) {
    if (raw({ type: 'message', client_id: e.client_id, text: e.text, attachments: e.attachments || [] })) {
      lastSent = e.client_id;
    }
  }

  function transmit(e, fresh) {
    e.state = 'sending';
    var t = timers[e.client_id] || (timers[e.client_id] = {});
    clearTimeout(t.retry);
    if (fresh || !t.fail) {
      clearTimeout(t.fail);
      t.fail = setTimeout(function () { fail(e.client_id); }, sendTimeout);
    }
    if (welcomed) frame(e);
    else if (!ws) { attempt = 0; connect(); }
  }

  function clearTimers(id) {
    var t = timers[id];
    if (t) { clearTimeout(t.fail); clearTimeout(t.retry); delete timers[id]; }
  }

  function fail(id) {
    var e = find(id);
    clearTimers(id);
    if (!e || e.state !== 'sending') return;
    e.state = 'failed';
    save();
    render();
  }

  function send(text, attachments, files) {
    text = String(text == null ? '' : text).trim().slice(0, MAX_TEXT);
    if (!text && !(attachments && attachments.length)) return null;
    if (typingOn) sendTyping(false);
    var e = { kind: 'visitor', client_id: newId(), text: text, attachments: attachments || [], state: 'sending' };
    if (files) e.files = files;
    log.push(e);
    transmit(e, true);
    save();
    render(true);
    return e.client_id;
  }

  function retry(id) {
    var e = find(id);
    if (!e || e.state !== 'failed' || fatal) return false;
    transmit(e, true);
    save();
    render();
    return true;
  }

  function sendTyping(on) {
    typingOn = on;
    typingSentAt = Date.now();
    if (welcomed) raw({ type: 'typing', on: on });
  }

  function onInput() {
    clearTimeout(typingIdle);
    if (!el.input.value.trim()) { if (typingOn) sendTyping(false); return; }
    if (!typingOn || Date.now() - typingSentAt > TYPING_EVERY) sendTyping(true);
    typingIdle = setTimeout(function () { if (typingOn) sendTyping(false); }, TYPING_IDLE);
  }

  function markRead() {
    if (!isOpen || document.visibilityState === 'hidden' || !welcomed || lastSeq <= readSeq) return;
    if (raw({ type: 'read', seq: lastSeq })) {
      readSeq = lastSeq;
      store('read', readSeq);
      render();
    }
  }

  function upload(file) {
    if (!welcomed || !token) { setStatus('Not connected yet, try again in a moment.'); return; }
    setStatus('Uploading ' + file.name + '…');
    var body = new FormData();
    body.append('file', file, file.name);
    fetch(base + '/uploads', { method: 'POST', headers: { Authorization: 'Bearer ' + token }, body: body })
      .then(function (res) {
        if (res.status !== 201) throw new Error(res.status === 413 ? 'the file is too large' : 'HTTP ' + res.status);
        return res.json();
      })
      .then(function (u) {
        setStatus('');
        var text = el.input.value;
        el.input.value = '';
        send(text || file.name, [u.upload_id], [{ name: file.name, size: u.size }]);
      })
      .catch(function (err) { setStatus('Upload failed: ' + err.message); });
  }

  // ---- rendering -----------------------------------------------------------------------
  var CSS = [
    '&{position:fixed;right:20px;bottom:20px;z-index:2147483000;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2937;--og-accent:#2563eb}',
    '& *{box-sizing:border-box;margin:0;font-family:inherit;letter-spacing:normal;text-transform:none}',
    '& [hidden]{display:none!important}',
    '& #omnigate-chat-bubble{width:56px;height:56px;border-radius:50%;border:0;padding:0;background:var(--og-accent);color:#fff;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);display:flex;align-items:center;justify-content:center;position:relative;margin-left:auto}',
    '& #omnigate-chat-bubble svg{width:26px;height:26px;fill:#fff}',
    '& button:focus-visible{outline:3px solid #f59e0b;outline-offset:2px}',
    '& #omnigate-chat-input:focus{outline:2px solid var(--og-accent);outline-offset:-1px}',
    '& #omnigate-chat-badge{position:absolute;top:-4px;right:-4px;min-width:20px;height:20px;border-radius:10px;background:#dc2626;color:#fff;font-size:12px;font-weight:600;line-height:20px;text-align:center;padding:0 5px}',
    '& #omnigate-chat-panel{position:absolute;right:0;bottom:72px;width:360px;max-width:calc(100vw - 40px);height:520px;max-height:calc(100vh - 112px);background:#fff;border-radius:12px;box-shadow:0 10px 40px rgba(0,0,0,.25);display:flex;flex-direction:column;overflow:hidden}',
    '& .omnigate-chat-header{background:var(--og-accent);color:#fff;padding:12px 14px;display:flex;align-items:center;gap:8px}',
    '& #omnigate-chat-title{font-weight:600;font-size:15px;flex:1;color:#fff}',
    '& #omnigate-chat-close{background:transparent;border:0;color:#fff;font-size:22px;line-height:1;cursor:pointer;padding:2px 8px;border-radius:6px}',
    '& #omnigate-chat-status{font-size:12px;padding:6px 14px;background:#fef3c7;color:#92400e}',
    '& #omnigate-chat-body{flex:1;overflow-y:auto;padding:12px;background:#f9fafb}',
    '& #omnigate-chat-empty{color:#6b7280;text-align:center;padding:24px 8px}',
    '& #omnigate-chat-log{display:flex;flex-direction:column;gap:8px}',
    '& .omnigate-msg{max-width:80%;padding:8px 11px;border-radius:14px;white-space:pre-wrap;overflow-wrap:anywhere}',
    '& .omnigate-msg-visitor{align-self:flex-end;background:var(--og-accent);color:#fff;border-bottom-right-radius:4px}',
    '& .omnigate-msg-visitor[data-state=sending]{opacity:.7}',
    '& .omnigate-msg-visitor[data-state=failed]{background:#fee2e2;color:#7f1d1d;border:1px solid #fca5a5}',
    '& .omnigate-msg-agent{align-self:flex-start;background:#fff;border:1px solid #e5e7eb;border-bottom-left-radius:4px}',
    '& .omnigate-msg-author{font-size:12px;font-weight:600;color:#4b5563;margin-bottom:2px}',
    '& .omnigate-msg-meta{font-size:11px;margin-top:3px;text-align:right;opacity:.85}',
    '& .omnigate-msg-retry{background:none;border:0;color:inherit;text-decoration:underline;cursor:pointer;padding:0;font-size:11px;font-weight:600}',
    '& .omnigate-msg a{color:inherit;text-decoration:underline}',
    '& .omnigate-msg-file{display:block;font-size:12px;margin-top:4px}',
    '& #omnigate-chat-typing{font-size:12px;color:#6b7280;padding:4px 14px;font-style:italic}',
    '& #omnigate-chat-form{display:flex;gap:6px;padding:10px;border-top:1px solid #e5e7eb;align-items:flex-end;background:#fff}',
    '& #omnigate-chat-input{flex:1;resize:none;border:1px solid #d1d5db;border-radius:8px;padding:8px 10px;height:38px;max-height:120px;background:#fff;color:#1f2937;font-size:14px;line-height:1.45}',
    '& #omnigate-chat-send{background:var(--og-accent);color:#fff;border:0;border-radius:8px;padding:0 14px;height:38px;font-weight:600;font-size:14px;cursor:pointer}',
    '& #omnigate-chat-attach{background:none;border:1px solid #d1d5db;border-radius:8px;width:38px;height:38px;cursor:pointer;color:#4b5563;font-size:18px;padding:0}',
    '@media (max-width:480px){&{right:12px;bottom:12px}& #omnigate-chat-panel{position:fixed;inset:0;width:auto;max-width:none;height:auto;max-height:none;border-radius:0}&.omnigate-open #omnigate-chat-bubble{display:none}}',
    '@media (prefers-reduced-motion:no-preference){& #omnigate-chat-panel{animation:omnigate-chat-in .15s ease-out}}',
    '@keyframes omnigate-chat-in{from{opacity:0;transform:translateY(8px)}}'
  ].join('\n').replace(/&/g, '#omnigate-chat-root');

  function h(tag, props, kids) {
    var n = document.createElement(tag);
    for (var k in props) {
      if (k === 'text') n.textContent = props[k];
      else if (k === 'html') n.innerHTML = props[k];
      else if (k.slice(0, 2) === 'on') n.addEventListener(k.slice(2), props[k]);
      else if (props[k] !== undefined && props[k] !== false) n.setAttribute(k, props[k] === true ? '' : props[k]);
    }
    (kids || []).forEach(function (c) { if (c) n.appendChild(c); });
    return n;
  }

  function mount() {
    if (document.getElementById('omnigate-chat-root')) return;
    document.head.appendChild(h('style', { id: 'omnigate-chat-style', nonce: script.nonce || undefined, text: CSS }));
    el.bubble = h('button', { id: 'omnigate-chat-bubble', type: 'button', 'aria-label': 'Open chat',
      'aria-expanded': 'false', 'aria-controls': 'omnigate-chat-panel', onclick: function () { isOpen ? close() : open(); },
      html: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z"/></svg>' },
      [el.badge = h('span', { id: 'omnigate-chat-badge', 'aria-hidden': 'true', hidden: true })]);
    el.input = h('textarea', { id: 'omnigate-chat-input', rows: '1', maxlength: String(MAX_TEXT),
      'aria-label': 'Message', placeholder: 'Write a message…', oninput: onInput,
      onkeydown: function (ev) {
        if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submit(); }
      } });
    el.file = h('input', { type: 'file', hidden: true, tabindex: '-1', onchange: function () {
      if (el.file.files[0]) upload(el.file.files[0]);
      el.file.value = '';
    } });
    el.panel = h('div', { id: 'omnigate-chat-panel', role: 'dialog', 'aria-label': title, hidden: true,
      onkeydown: function (ev) { if (ev.key === 'Escape') { ev.stopPropagation(); close(); } } }, [
      h('div', { 'class': 'omnigate-chat-header' }, [
        h('span', { id: 'omnigate-chat-title', text: title }),
        h('button', { id: 'omnigate-chat-close', type: 'button', 'aria-label': 'Close chat', text: '×', onclick: close })
      ]),
      el.status = h('div', { id: 'omnigate-chat-status', role: 'status', hidden: true }),
      el.body = h('div', { id: 'omnigate-chat-body' }, [
        el.empty = h('p', { id: 'omnigate-chat-empty', text: 'Ask us anything. We will answer here.' }),
        el.log = h('div', { id: 'omnigate-chat-log', role: 'log', 'aria-live': 'polite', 'aria-label': 'Messages' })
      ]),
      el.typing = h('div', { id: 'omnigate-chat-typing', hidden: true, text: 'Agent is typing…' }),
      h('form', { id: 'omnigate-chat-form', onsubmit: function (ev) { ev.preventDefault(); submit(); } }, [
        h('button', { id: 'omnigate-chat-attach', type: 'button', 'aria-label': 'Attach a file', text: '+',
          onclick: function () { el.file.click(); } }),
        el.file, el.input,
        el.send = h('button', { id: 'omnigate-chat-send', type: 'submit', text: 'Send' })
      ])
    ]);
    el.root = h('div', { id: 'omnigate-chat-root' }, [el.panel, el.bubble]);
    if (attr('color')) el.root.style.setProperty('--og-accent', attr('color'));
    document.body.appendChild(el.root);
    render(true);
    setStatus(statusText);
    var was = false;
    try { was = sessionStorage.getItem(KEY + 'open') === '1'; } catch (e) { /* none */ }
    if (was) open(true);
  }

  function submit() {
    if (send(el.input.value)) el.input.value = '';
    el.input.focus();
  }

  var statusText = '';
  function setStatus(text) {
    statusText = text;
    if (!el.status) return;
    el.status.textContent = text;
    el.status.hidden = !text;
  }

  function agentTyping(on, name) {
    clearTimeout(agentTypingTimer);
    if (!el.typing) return;
    el.typing.hidden = !on;
    if (on) {
      el.typing.textContent = (name || 'Agent') + ' is typing…';
      agentTypingTimer = setTimeout(function () { el.typing.hidden = true; }, AGENT_TYPING_TTL);
    }
  }

  // Text with http(s) links made clickable, never as HTML.
  function fill(node, text) {
    var re = /\bhttps?:\/\/[^\s<>"]+[^\s<>".,;:!?)\]]/g, at = 0, mm;
    while ((mm = re.exec(text))) {
      node.appendChild(document.createTextNode(text.slice(at, mm.index)));
      node.appendChild(h('a', { href: mm[0], target: '_blank', rel: 'noopener noreferrer', text: mm[0] }));
      at = mm.index + mm[0].length;
    }
    node.appendChild(document.createTextNode(text.slice(at)));
  }

  var LABEL = { sending: 'Sending…', sent: 'Sent', failed: 'Failed — ' };

  function build(e) {
    var n, text = h('div', { 'class': 'omnigate-msg-text' });
    fill(text, e.text);
    if (e.kind === 'agent') {
      n = h('div', { 'class': 'omnigate-msg omnigate-msg-agent', 'data-seq': String(e.seq), 'data-state': 'sent' },
        [e.agent ? h('div', { 'class': 'omnigate-msg-author', text: e.agent }) : null, text]);
      (e.attachments || []).forEach(function (a) {
        var url = a && typeof a === 'object' && a.url;
        var name = (a && (a.name || a.filename)) || 'Attachment';
        n.appendChild(url && /^https?:/.test(url)
          ? h('a', { 'class': 'omnigate-msg-file', href: url, target: '_blank', rel: 'noopener noreferrer', text: '📎 ' + name })
          : h('span', { 'class': 'omnigate-msg-file', text: '📎 ' + name }));
      });
      return n;
    }
    n = h('div', { 'class': 'omnigate-msg omnigate-msg-visitor', 'data-client-id': e.client_id }, [text]);
    (e.files || []).forEach(function (f) { n.appendChild(h('span', { 'class': 'omnigate-msg-file', text: '📎 ' + f.name })); });
    n.appendChild(h('div', { 'class': 'omnigate-msg-meta' }, [
      h('span', { 'class': 'omnigate-msg-status' }),
      h('button', { 'class': 'omnigate-msg-retry', type: 'button', text: 'Retry', hidden: true,
        onclick: function () { retry(e.client_id); } })
    ]));
    return n;
  }

  function render(scroll) {
    if (!el.log) return;
    var b = el.body, near = b.scrollHeight - b.scrollTop - b.clientHeight < 60, keep = {}, prev = null;
    log.forEach(function (e) {
      var k = e.kind === 'agent' ? 'a' + e.seq : 'v' + e.client_id, n = nodes[k];
      keep[k] = 1;
      if (!n) n = nodes[k] = build(e);
      if (e.kind === 'visitor' && n.getAttribute('data-state') !== e.state) {
        n.setAttribute('data-state', e.state);
        n.querySelector('.omnigate-msg-status').textContent = LABEL[e.state] || e.state;
        n.querySelector('.omnigate-msg-retry').hidden = e.state !== 'failed';
      }
      var want = prev ? prev.nextSibling : el.log.firstChild;
      if (want !== n) el.log.insertBefore(n, want);
      prev = n;
    });
    for (var k in nodes) if (!keep[k]) { nodes[k].remove(); delete nodes[k]; }
    el.empty.hidden = log.length > 0;
    var unread = log.filter(function (e) { return e.kind === 'agent' && e.seq > readSeq; }).length;
    el.badge.hidden = isOpen || !unread;
    el.badge.textContent = String(unread);
    el.bubble.setAttribute('aria-label', unread && !isOpen ? 'Open chat, ' + unread + ' unread' : isOpen ? 'Close chat' : 'Open chat');
    if (scroll || near) b.scrollTop = b.scrollHeight;
  }

  function open(noFocus) {
    if (!el.panel) return;
    isOpen = true;
    el.panel.hidden = false;
    el.root.classList.add('omnigate-open');
    el.bubble.setAttribute('aria-expanded', 'true');
    try { sessionStorage.setItem(KEY + 'open', '1'); } catch (e) { /* none */ }
    connect();
    render(true);
    markRead();
    if (noFocus !== true) el.input.focus();
  }

  function close() {
    if (!el.panel) return;
    var inside = el.panel.contains(document.activeElement);
    isOpen = false;
    el.panel.hidden = true;
    el.root.classList.remove('omnigate-open');
    el.bubble.setAttribute('aria-expanded', 'false');
    try { sessionStorage.removeItem(KEY + 'open'); } catch (e) { /* none */ }
    render();
    if (inside) el.bubble.focus();
  }

  // ---- start ---------------------------------------------------------------------------
  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState !== 'visible') return;
    if (ws && welcomed) raw({ type: 'ping' });
    else if (!ws && reconnectTimer) { attempt = 0; clearTimeout(reconnectTimer); reconnectTimer = null; connect(); }
    markRead();
  });
  window.addEventListener('online', function () {
    if (!ws && reconnectTimer) { attempt = 0; clearTimeout(reconnectTimer); reconnectTimer = null; connect(); }
  });
  // Another tab of the same site wrote the transcript: take what it learnt.
  window.addEventListener('storage', function (ev) {
    if (ev.key !== KEY + 'log' || !ev.newValue) return;
    var other;
    try { other = JSON.parse(ev.newValue); } catch (e) { return; }
    if (!Array.isArray(other)) return;
    other.forEach(function (o, i) {
      if (o.kind === 'agent') { if (typeof o.seq === 'number' && !findAgent(o.seq)) insertAgent(o); return; }
      var e = find(o.client_id);
      if (e) { if (o.state === 'sent' && e.state !== 'sent') { e.state = 'sent'; e.event_id = o.event_id; clearTimers(o.client_id); } return; }
      var before = i > 0 && other[i - 1], at = log.length;
      if (before) for (var j = 0; j < log.length; j++) {
        var x = log[j];
        if (before.kind === x.kind && (x.kind === 'agent' ? x.seq === before.seq : x.client_id === before.client_id)) { at = j + 1; break; }
      }
      log.splice(at, 0, o);
    });
    render();
  });

  var pending = false;
  log.forEach(function (e) {
    if (e.kind === 'visitor' && e.state === 'sending') {
      pending = true;
      timers[e.client_id] = { fail: setTimeout(function () { fail(e.client_id); }, sendTimeout) };
    }
  });
  // A visitor who never chatted gets no socket (and no visitor) until the panel is opened.
  if (token || pending) connect();
  if (document.body) mount(); else document.addEventListener('DOMContentLoaded', mount);

  window.OmnigateChat = {
    version: PROTOCOL,
    open: function () { open(); },
    close: close,
    send: function (text) { return send(text); },
    retry: retry,
    // Forget this channel's conversation on this browser (token, transcript).
    reset: function () {
      ['token', 'seq', 'read', 'log', 'who'].forEach(function (k) { store(k, null); });
      token = null;
      log.forEach(function (e) { clearTimers(e.client_id); });
      log = [];
      lastSeq = readSeq = 0;
      var s = ws;
      ws = null;
      welcomed = false;
      if (s) s.close();
      clearTimeout(reconnectTimer);
      reconnectTimer = null;
      render();
      if (isOpen) connect();
    },
    get state() {
      return {
        channel: channel, url: wsUrl, connected: welcomed, visitor_token: token,
        conversation_key: conversationKey, verified: verified, last_seq: lastSeq, read_seq: readSeq,
        open: isOpen, error: fatal,
        messages: log.map(function (e) { return JSON.parse(JSON.stringify(e)); })
      };
    }
  };
})();

// infer console: one vanilla script, no build step, no dependencies.
// It calls the activator's JSON API (same origin) with the API key the user
// signs in with, kept in sessionStorage: closing the tab forgets it. It
// shows what that key may see: the API filters, the console only hides
// pages a user key would be refused (GET /v1/me says the role).
'use strict';
(() => {
  const KEY = 'infer.apiKey';
  const POLL_MS = 1000; // the deployments page shows a state change within a second
  const DEP_PAGE = 100; // deployments a page of the deployments page shows (and polls)
  const main = document.getElementById('main');
  const state = { key: null, me: null, gen: 0, deployments: [] };

  // ---- DOM helpers -------------------------------------------------------

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, kids);
    return el;
  }
  const SVGNS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVGNS, tag);
    setAttrs(el, attrs);
    append(el, kids);
    return el;
  }
  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.setAttribute('class', v);
      else if (k === 'text') el.textContent = v;
      else if (k in el && typeof v !== 'string' && !(el instanceof SVGElement)) el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  function append(el, kids) {
    for (const c of kids.flat(Infinity)) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
  }
  let uid = 0;
  const id = (p) => `${p}-${++uid}`;
  // field is a labelled control: the label wraps it, so clicking the text
  // focuses it and screen readers announce it.
  function field(label, control, hint) {
    const hid = hint ? id('hint') : null;
    if (hid) control.setAttribute('aria-describedby', hid);
    return h('label', {}, label, control, hint && h('span', { class: 'hint', id: hid }, hint));
  }
  function toast(msg) {
    const t = document.getElementById('toast');
    t.textContent = msg;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.textContent = ''; }, 4000);
  }

  // ---- formatting --------------------------------------------------------

  const nf = new Intl.NumberFormat();
  function fmtInt(n) { return nf.format(n || 0); }
  function fmtUSD(x) {
    x = x || 0;
    return '$' + (x !== 0 && Math.abs(x) < 0.01 ? x.toPrecision(2) : x.toFixed(2));
  }
  function fmtMs(ms) {
    if (ms == null || isNaN(ms)) return '—';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }
  function fmtDur(ms) {
    const sec = Math.max(0, Math.round(ms / 1000));
    if (sec < 60) return `${sec} s`;
    if (sec < 3600) return `${Math.floor(sec / 60)} min ${sec % 60} s`;
    return `${Math.floor(sec / 3600)} h ${Math.floor(sec % 3600 / 60)} min`;
  }
  // A duration (seconds in the API) as Go writes it back ("5m0s"), which
  // is also what PUT accepts.
  function goDur(secs) {
    const ns = secs * 1e9;
    let sec = Math.round(secs);
    if (sec === 0 && ns > 0) return `${ns / 1e6}ms`;
    const hrs = Math.floor(sec / 3600); sec -= hrs * 3600;
    const min = Math.floor(sec / 60); sec -= min * 60;
    return (hrs ? `${hrs}h` : '') + (hrs || min ? `${min}m` : '') + `${sec}s`;
  }
  function fmtBytes(n) {
    const u = ['B', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
  }
  function fmtParams(n) {
    if (!n) return '—';
    for (const [d, u] of [[1e9, 'B'], [1e6, 'M'], [1e3, 'K']]) if (n >= d) return `${(n / d).toFixed(n >= 10 * d ? 0 : 1)}${u}`;
    return String(n);
  }
  const timeFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
  function fmtTime(t) {
    const d = new Date(t);
    return isNaN(d) || d.getFullYear() < 2000 ? '—' : timeFmt.format(d);
  }
  const isZeroTime = (t) => !t || t.startsWith('0001-');

  // ---- API ---------------------------------------------------------------

  class APIError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || `HTTP ${status}`);
      this.status = status; this.code = e.code; this.param = e.param;
    }
  }
  async function api(method, path, body) {
    const opt = { method, headers: { Authorization: `Bearer ${state.key}` } };
    if (body !== undefined) {
      opt.headers['Content-Type'] = 'application/json';
      opt.body = JSON.stringify(body);
    }
    const r = await fetch(path, opt);
    const text = await r.text();
    let j = null;
    try { j = text ? JSON.parse(text) : null; } catch (_) { /* not JSON: reported below */ }
    if (!r.ok) {
      if (r.status === 401 && state.key) signOut('Your API key is no longer valid (revoked?). Sign in again.');
      throw new APIError(r.status, j);
    }
    return j;
  }
  // apiAll reads a list endpoint page by page (limit 1000, after the last
  // ID) up to max records: the API returns one page at a time.
  async function apiAll(path, max = 10000) {
    const sep = path.includes('?') ? '&' : '?';
    let out = [], after = '';
    for (;;) {
      const r = await api('GET', `${path}${sep}limit=1000${after ? `&after=${encodeURIComponent(after)}` : ''}`);
      out = out.concat((r && r.data) || []);
      if (!r || !r.has_more || !r.last_id || out.length >= max) return { data: out };
      after = r.last_id;
    }
  }
  const isAdmin = () => state.me && state.me.role === 'admin';

  async function loadDeployments() {
    const r = await apiAll('/v1/deployments');
    state.deployments = r.data || [];
    return state.deployments;
  }

  // ---- deployment state --------------------------------------------------

  // depState is what a person wants to know at a glance: at zero, starting
  // (and which phase), ready, draining. Phases come from runner heartbeats.
  function depState(d) {
    const rs = d.runners || [];
    if (rs.some((r) => r.phase === 'ready')) return { state: 'ready', label: 'ready' };
    if (rs.length === 0) {
      return d.queued > 0 ? { state: 'starting', label: 'starting: waiting for a runner' } : { state: 'zero', label: 'at zero' };
    }
    if (rs.every((r) => r.phase === 'draining')) return { state: 'draining', label: 'draining' };
    const r = rs.find((x) => x.phase === 'loading') || rs.find((x) => x.phase === 'fetching') || rs[0];
    switch (r.phase) {
      case 'loading': return { state: 'loading', label: 'starting: loading model' };
      case 'fetching': return { state: 'fetching', label: `starting: ${r.detail || 'fetching weights'}` };
      default: return { state: 'starting', label: 'starting runner' };
    }
  }
  function badge(st) {
    return h('span', { class: `badge s-${st.state}`, 'data-state': st.state, text: st.label });
  }
  function lastActivity(r) {
    const ts = [r.last_request, r.cold_start && r.cold_start.ready, r.started_at].filter((t) => !isZeroTime(t)).map((t) => Date.parse(t));
    return ts.length ? Math.max(...ts) : NaN;
  }
  // scaleToZero says when the deployment's last runner will stop if no
  // request comes: idle timeout after the runners' last request.
  function scaleToZero(d) {
    const rs = d.runners || [];
    if (d.min_runners > 0) return `never (keeps ${d.min_runners})`;
    if (!rs.length) return '—';
    if (d.queued > 0 || d.in_flight > 0 || rs.some((r) => r.in_flight > 0)) return 'busy';
    if (!rs.every((r) => r.phase === 'ready')) return 'after it starts';
    const last = Math.max(...rs.map(lastActivity));
    if (isNaN(last)) return '—';
    const left = last + d.idle_timeout * 1e3 - Date.now();
    return left > 0 ? `in ${fmtDur(left)}` : 'now';
  }
  function runnerSummary(d) {
    const rs = d.runners || [];
    if (!rs.length) return '0';
    return rs.map((r) => `${r.phase}${r.phase === 'ready' ? ` ${r.in_flight}/${r.slots}` : ''}`).join(', ');
  }

  // ---- router ------------------------------------------------------------

  const pages = {
    deployments: pageDeployments, deployment: pageDeployment, playground: pagePlayground,
    deploy: pageDeploy, usage: pageUsage, keys: pageKeys,
  };
  const adminPages = new Set(['deploy', 'keys']);

  function route() {
    const gen = ++state.gen; // a page's loops stop when the page is left
    const ctx = { alive: () => gen === state.gen };
    if (!state.key) { pageSignIn(); return; }
    const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
    let name = parts[0] || 'deployments';
    if (!pages[name] || (adminPages.has(name) && !isAdmin())) name = 'deployments';
    for (const a of document.querySelectorAll('#nav a')) {
      const target = a.getAttribute('href').slice(2);
      if (target === name || (name === 'deployment' && target === 'deployments')) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    main.replaceChildren();
    const title = pages[name](main, parts.slice(1), ctx);
    document.title = `${title} · infer`;
    // Screen readers hear the new page; keyboard focus starts at its top.
    if (document.activeElement && document.activeElement.closest('nav')) main.focus();
  }

  function showChrome(on) {
    document.getElementById('nav').hidden = !on;
    document.getElementById('who').hidden = !on;
    if (on) {
      for (const li of document.querySelectorAll('[data-admin]')) li.hidden = !isAdmin();
      document.getElementById('who-name').textContent = `${state.me.name || state.me.id} (${state.me.role})`;
    }
  }

  function signOut(msg) {
    sessionStorage.removeItem(KEY);
    state.key = null; state.me = null;
    showChrome(false);
    state.gen++;
    pageSignIn(msg);
  }

  async function signIn(key) {
    state.key = key;
    state.me = await api('GET', '/v1/me');
    sessionStorage.setItem(KEY, key);
    showChrome(true);
  }

  // ---- sign in -------------------------------------------------------------

  function pageSignIn(msg) {
    document.title = 'Sign in · infer';
    const input = h('input', { type: 'password', name: 'key', autocomplete: 'off', required: true, spellcheck: 'false', id: 'signin-key' });
    const err = h('p', { class: 'error', role: 'alert', id: 'signin-error', text: msg || '' });
    const form = h('form', { class: 'panel', id: 'signin' },
      h('h1', { text: 'Sign in' }),
      h('p', { class: 'muted' }, 'Paste an API key (',
        h('code', { text: 'infer dev' }), ' prints an admin key; ', h('code', { text: 'infer keys create' }),
        ' makes others). It stays in this tab only and is forgotten when the tab closes.'),
      field('API key', input),
      h('p', {}, h('button', { type: 'submit', text: 'Sign in' })),
      err);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      err.textContent = '';
      try {
        await signIn(input.value.trim());
        if (location.hash.replace(/^#\/?/, '') === '') location.hash = '#/deployments';
        else route();
      } catch (e) {
        state.key = null;
        err.textContent = e.status === 401 ? 'That key is not valid, or it was revoked.' : `Could not sign in: ${e.message}`;
        input.focus();
      }
    });
    main.replaceChildren(h('div', { class: 'cols' }, form));
    input.focus();
  }

  // ---- deployments ---------------------------------------------------------

  function pageDeployments(root, _args, ctx) {
    const err = h('p', { class: 'error', role: 'alert' });
    const tbody = h('tbody');
    const empty = h('p', { class: 'muted', hidden: true },
      'No deployments yet. ', isAdmin() ? h('a', { href: '#/deploy', text: 'Deploy a model.' }) : 'An admin key can deploy one.');
    const updated = h('span', { class: 'muted', id: 'dep-updated', 'aria-hidden': 'true' });
    // One page of deployments is shown and polled (a tenant may have
    // thousands: each listed deployment with a queue costs the server a
    // JetStream lookup); cursors holds the after= of each page visited.
    const cursors = [''];
    let lastID = null, timer = null;
    const prev = h('button', { type: 'button', class: 'secondary', id: 'dep-prev', text: 'Previous page', hidden: true,
      onclick: () => { cursors.pop(); poll(0); } });
    const next = h('button', { type: 'button', class: 'secondary', id: 'dep-next', text: 'Next page', hidden: true,
      onclick: () => { if (lastID) { cursors.push(lastID); poll(0); } } });
    const pager = h('p', { class: 'row' }, prev, next);
    function poll(ms) { clearTimeout(timer); timer = setTimeout(tick, ms); }
    root.append(
      h('div', { class: 'row head' }, h('h1', { text: 'Deployments' }), isAdmin() && h('a', { href: '#/deploy', class: 'button', text: 'Deploy a model' })),
      h('p', { class: 'muted' }, 'Live: refreshed every second. ', updated),
      err,
      h('div', { class: 'table-wrap', id: 'deployments-wrap' }, h('table', { class: 'stack', id: 'deployments' },
        h('thead', {}, h('tr', {}, ['Name', 'State', 'Runners', 'Queued', 'In flight', 'Idle timeout', 'Scales to zero', ''].map((c, i) =>
          h('th', { scope: 'col', class: i >= 3 && i <= 4 ? 'num' : null, text: c })))),
        tbody)),
      empty, pager);
    const rows = new Map();
    const cellNames = ['Name', 'State', 'Runners', 'Queued', 'In flight', 'Idle timeout', 'Scales to zero', ''];
    function rowFor(d) {
      let r = rows.get(d.name);
      if (!r) {
        const cells = cellNames.map((label, i) => h('td', { 'data-label': label, class: i >= 3 && i <= 4 ? 'num' : null }));
        cells[0].append(h('a', { href: `#/deployment/${encodeURIComponent(d.name)}`, text: d.name }));
        cells[7].append(h('a', { href: `#/playground/${encodeURIComponent(d.name)}`, text: 'Playground' }));
        r = { tr: h('tr', { 'data-deployment': d.name }, cells), cells };
        rows.set(d.name, r);
      }
      return r;
    }
    async function tick() {
      if (!ctx.alive()) return;
      try {
        const after = cursors[cursors.length - 1];
        const r = await api('GET', `/v1/deployments?limit=${DEP_PAGE}${after ? `&after=${encodeURIComponent(after)}` : ''}`);
        if (!ctx.alive()) return;
        if (after !== cursors[cursors.length - 1]) return; // another page was asked for meanwhile
        const deps = (r && r.data) || [];
        lastID = r && r.has_more ? r.last_id : null;
        prev.hidden = cursors.length === 1;
        next.hidden = !lastID;
        const seen = new Set();
        deps.forEach((d, i) => {
          const r = rowFor(d);
          seen.add(d.name);
          const st = depState(d);
          const old = r.cells[1].firstChild;
          if (!old || old.dataset.state !== st.state || old.textContent !== st.label) r.cells[1].replaceChildren(badge(st));
          r.cells[2].textContent = runnerSummary(d);
          r.cells[3].textContent = fmtInt(d.queued);
          r.cells[4].textContent = fmtInt(d.in_flight);
          r.cells[5].textContent = goDur(d.idle_timeout);
          r.cells[6].textContent = scaleToZero(d);
          if (tbody.children[i] !== r.tr) tbody.insertBefore(r.tr, tbody.children[i] || null);
        });
        for (const [name, r] of rows) if (!seen.has(name)) { r.tr.remove(); rows.delete(name); }
        empty.hidden = deps.length > 0 || cursors.length > 1;
        document.getElementById('deployments-wrap').hidden = deps.length === 0;
        err.textContent = '';
        updated.textContent = `Last update ${new Date().toLocaleTimeString()}.`;
      } catch (e) {
        err.textContent = `Could not load deployments: ${e.message}`;
      }
      poll(POLL_MS);
    }
    tick();
    return 'Deployments';
  }

  // ---- one deployment ------------------------------------------------------

  function facts(pairs) {
    return h('dl', { class: 'facts' }, pairs.map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)]));
  }

  function settingsFacts(d) {
    const p = d.prices || {}, r = d.resources || {};
    return facts([
      ['Weights (sha256)', h('code', { text: d.artifact_sha256 })],
      ['Runners', `${d.min_runners} to ${d.max_runners}`],
      ['Parallel requests per runner', String(d.parallel)],
      ['Context length', d.context_length ? fmtInt(d.context_length) : "the model's"],
      ['Idle timeout', goDur(d.idle_timeout)],
      ['Queue', `${fmtInt(d.queue_limit)} requests, ${goDur(d.queue_timeout)} timeout`],
      ['Chat template', d.chat_template || "the model's"],
      ['Prices', `$${p.prompt_per_mtok || 0}/M prompt, $${p.completion_per_mtok || 0}/M completion, $${p.runner_second || 0}/runner-second`],
      ['Resources', [r.cpu && `CPU ${r.cpu}`, r.memory && `memory ${r.memory}`, r.gpus && `${r.gpus} GPU`].filter(Boolean).join(', ') || 'driver defaults'],
      ['Created', fmtTime(d.created_at)],
      ['Updated', fmtTime(d.updated_at)],
    ]);
  }

  function pageDeployment(root, args, ctx) {
    const name = args[0] || '';
    const head = h('div', { class: 'row title' }, h('h1', { text: name }));
    const err = h('p', { class: 'error', role: 'alert' });
    const settings = h('div');
    const runners = h('div');
    const recent = h('div');
    root.append(head, err,
      h('p', {}, h('a', { href: `#/playground/${encodeURIComponent(name)}`, text: 'Open in the playground' })),
      h('div', { class: 'cols' },
        h('section', { class: 'panel', 'aria-labelledby': 'dep-settings' }, h('h2', { id: 'dep-settings', text: 'Settings' }), settings),
        h('section', { class: 'panel', 'aria-labelledby': 'dep-runners' }, h('h2', { id: 'dep-runners', text: 'Runners' }), runners)),
      h('section', { class: 'panel', 'aria-labelledby': 'dep-hour' },
        h('div', { class: 'row' }, h('h2', { id: 'dep-hour', text: 'The last hour' }),
          h('button', { type: 'button', class: 'secondary', text: 'Refresh', onclick: () => loadHour() })),
        recent),
      h('section', { class: 'panel', 'aria-labelledby': 'dep-logs-title' },
        h('h2', { id: 'dep-logs-title', text: 'Runner logs' }),
        isAdmin() ? logTail(name, ctx) : h('p', { class: 'muted', text: 'Runner logs are shown to admin keys: they name every key\'s requests.' })));
    let badgeEl = null, shownSettings = '';
    async function tick() {
      if (!ctx.alive()) return;
      try {
        const d = await api('GET', `/v1/deployments/${encodeURIComponent(name)}`);
        if (!ctx.alive()) return;
        const st = depState(d);
        const nb = badge(st);
        if (badgeEl) badgeEl.replaceWith(nb); else head.append(nb);
        badgeEl = nb;
        const sig = d.updated_at;
        if (sig !== shownSettings) {
          shownSettings = sig;
          settings.replaceChildren(...[settingsFacts(d), isAdmin() ? adminControls(d) : null].filter(Boolean));
        }
        runners.replaceChildren(runnersView(d));
        err.textContent = '';
      } catch (e) {
        err.textContent = e.status === 404 ? `There is no deployment ${name}.` : `Could not load ${name}: ${e.message}`;
        if (e.status === 404) return;
      }
      setTimeout(tick, POLL_MS);
    }
    function adminControls(d) {
      const form = settingsForm(d, false);
      const msg = h('p', { role: 'status' });
      const del = h('button', { type: 'button', class: 'danger', text: 'Delete deployment' });
      del.addEventListener('click', async () => {
        if (del.dataset.armed !== '1') { del.dataset.armed = '1'; del.textContent = `Really delete ${d.name}?`; return; }
        try {
          await api('DELETE', `/v1/deployments/${encodeURIComponent(d.name)}`);
          toast(`Deleted ${d.name}.`);
          location.hash = '#/deployments';
        } catch (e) { msg.textContent = e.message; msg.className = 'error'; }
      });
      form.el.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        try {
          await api('PUT', `/v1/deployments/${encodeURIComponent(d.name)}`, form.read());
          msg.textContent = 'Saved.'; msg.className = 'ok';
          shownSettings = '';
        } catch (e) { msg.textContent = e.message; msg.className = 'error'; }
      });
      return h('details', {}, h('summary', { text: 'Change settings' }), form.el, msg, h('p', {}, del));
    }
    async function loadHour() {
      const since = new Date(Date.now() - 3600e3).toISOString().replace(/\.\d+Z$/, 'Z');
      try {
        const r = await apiAll(`/v1/usage?deployment=${encodeURIComponent(name)}&since=${since}`);
        if (ctx.alive()) recent.replaceChildren(hourView(r.data || []));
      } catch (e) { recent.replaceChildren(h('p', { class: 'error', text: `Could not load usage: ${e.message}` })); }
    }
    tick();
    loadHour();
    return name;
  }

  // logTail follows the deployment's runner logs (GET .../logs, JSON
  // lines, follow=true): the last lines, then each new one as a runner
  // writes it. fetch, not EventSource, which cannot send the key. It stops
  // when the page is left and reconnects (from the last line's time) when
  // the stream ends, as it does when an activator restarts.
  const LOG_LINES = 300;
  function logTail(name, ctx) {
    const list = h('ol', { class: 'logs', id: 'dep-logs', tabindex: '0', 'aria-label': `Runner logs of ${name}` });
    const status = h('p', { class: 'muted', id: 'dep-logs-status', role: 'status', text: 'Connecting…' });
    let last = '', ctl = null;
    function line(l) {
      const attrs = (l.attrs || []).map((a) => ` ${a.k}=${/[\s"=]/.test(a.v) || a.v === '' ? JSON.stringify(a.v) : a.v}`).join('');
      return h('li', { class: `lvl-${(l.level || '').toLowerCase()}`, 'data-runner': l.runner },
        h('time', { datetime: l.time, text: fmtTime(l.time) }), ' ',
        h('span', { class: 'runner', text: l.runner }), ' ',
        h('span', { class: 'level', text: l.level }), ' ',
        h('span', { class: 'text', text: l.msg + attrs }));
    }
    function add(l) {
      const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 24;
      list.append(line(l));
      while (list.children.length > LOG_LINES) list.firstChild.remove();
      if (atEnd) list.scrollTop = list.scrollHeight;
      last = l.time;
    }
    async function follow() {
      if (!ctx.alive()) return;
      ctl = new AbortController();
      const q = last ? `since=${encodeURIComponent(last)}&tail=${LOG_LINES}` : 'tail=100';
      try {
        const r = await fetch(`/v1/deployments/${encodeURIComponent(name)}/logs?follow=true&${q}`,
          { headers: { Authorization: `Bearer ${state.key}` }, signal: ctl.signal });
        if (!r.ok) {
          const j = await r.json().catch(() => null);
          if (r.status === 401) { signOut('Your API key is no longer valid (revoked?). Sign in again.'); return; }
          throw new APIError(r.status, j);
        }
        status.textContent = 'Live: new lines appear as runners write them.';
        if (!list.children.length) status.textContent += ' No lines in the last 24 hours yet.';
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        const since = last;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const text = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (!text) continue; // a keep-alive
            const l = JSON.parse(text);
            if (since && l.time <= since) continue; // shown before the reconnect
            add(l);
            status.textContent = 'Live: new lines appear as runners write them.';
          }
        }
        status.textContent = 'The log stream ended; reconnecting…';
      } catch (e) {
        if (!ctx.alive() || e.name === 'AbortError') return;
        status.textContent = `Could not read the logs: ${e.message}. Retrying…`;
      }
      if (ctx.alive()) setTimeout(follow, 2000);
    }
    // Leaving the page ends the request.
    const watch = setInterval(() => { if (!ctx.alive()) { clearInterval(watch); if (ctl) ctl.abort(); } }, 500);
    follow();
    return h('div', {}, status, list);
  }

  function runnersView(d) {
    const rs = d.runners || [];
    if (!rs.length) return h('p', { class: 'muted', text: 'No runner: the deployment is at zero and costs nothing. The next request starts one.' });
    return h('div', {},
      h('div', { class: 'table-wrap' }, h('table', { class: 'stack' },
        h('thead', {}, h('tr', {}, ['Runner', 'Phase', 'Busy', 'Started', 'Fetch', 'Load', 'Ready after'].map((c) => h('th', { scope: 'col', text: c })))),
        h('tbody', {}, rs.map((r) => {
          const cs = r.cold_start || {};
          const t0 = Date.parse(r.started_at);
          const span = (a, b) => (isZeroTime(a) || isZeroTime(b) ? '—' : fmtMs(Date.parse(b) - Date.parse(a)));
          return h('tr', {},
            h('td', { 'data-label': 'Runner' }, h('code', { text: r.runner_id })),
            h('td', { 'data-label': 'Phase' }, `${r.phase}${r.detail ? ` (${r.detail})` : ''}`),
            h('td', { 'data-label': 'Busy', text: `${r.in_flight}/${r.slots}` }),
            h('td', { 'data-label': 'Started', text: fmtTime(r.started_at) }),
            h('td', { 'data-label': 'Fetch', text: cs.fetched_bytes ? `${span(cs.fetch_started, cs.fetch_done)} (${fmtBytes(cs.fetched_bytes)})` : span(cs.fetch_started, cs.fetch_done) }),
            h('td', { 'data-label': 'Load', text: span(cs.fetch_done, cs.load_done) }),
            h('td', { 'data-label': 'Ready after', text: isZeroTime(cs.ready) || isNaN(t0) ? '—' : fmtMs(Date.parse(cs.ready) - t0) }));
        })))),
      coldStartTimeline(rs));
  }

  // coldStartTimeline draws each live runner's start as bars: fetching the
  // weights, loading them, then ready.
  function coldStartTimeline(rs) {
    const rows = rs.map((r) => {
      const cs = r.cold_start || {};
      const t = (x) => (isZeroTime(x) ? NaN : Date.parse(x));
      return { id: r.runner_id, t0: t(r.started_at), fs: t(cs.fetch_started), fd: t(cs.fetch_done), ld: t(cs.load_done), rd: t(cs.ready) };
    }).filter((r) => !isNaN(r.t0) && !isNaN(r.rd));
    if (!rows.length) return null;
    const max = Math.max(...rows.map((r) => r.rd - r.t0), 1);
    const W = 400, L = 84, rowH = 22;
    const x = (ms) => L + (W - L - 10) * ms / max;
    const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${rows.length * rowH + 20}`, role: 'img',
      'aria-label': `Cold start of ${rows.length} runner(s): ${rows.map((r) => `${r.id} ready after ${fmtMs(r.rd - r.t0)}`).join('; ')}` });
    rows.forEach((r, i) => {
      const y = i * rowH + 4;
      svg.append(s('text', { x: 0, y: y + 13 }, r.id.slice(0, 14)));
      const seg = (a, b, cls) => { if (!isNaN(a) && !isNaN(b) && b >= a) svg.append(s('rect', { x: x(a - r.t0), y, width: Math.max(1, x(b - r.t0) - x(a - r.t0)), height: rowH - 6, class: cls })); };
      seg(r.t0, isNaN(r.fs) ? r.fd : r.fs, 'seg-wait');
      seg(r.fs, r.fd, 'seg-fetch');
      seg(isNaN(r.fd) ? r.t0 : r.fd, r.ld, 'seg-load');
      seg(r.ld, r.rd, 'seg-ready');
    });
    svg.append(s('text', { x: W - 10, y: rows.length * rowH + 16, 'text-anchor': 'end' }, fmtMs(max)));
    return h('figure', {}, svg, h('figcaption', { class: 'legend' },
      h('span', { class: 'kw', text: 'process start' }), h('span', { class: 'kf', text: 'fetch weights' }),
      h('span', { class: 'kl', text: 'load model' }), h('span', { class: 'kr', text: 'warm up' })));
  }

  function percentile(xs, p) {
    if (!xs.length) return NaN;
    const a = [...xs].sort((x, y) => x - y);
    return a[Math.min(a.length - 1, Math.ceil(p / 100 * a.length) - 1)];
  }

  // hourView charts the last hour from the deployment's usage records in
  // 5-minute buckets: TTFT p50/p99, tokens/s, requests; then lists the
  // recent requests and cold starts.
  function hourView(recs) {
    const B = 12, now = Date.now(), start = now - 3600e3, width = 3600e3 / B;
    const buckets = Array.from({ length: B }, () => []);
    for (const r of recs) {
      const t = Date.parse(r.created_at);
      const i = Math.floor((t - start) / width);
      if (i >= 0 && i < B) buckets[i].push(r);
    }
    const xs = buckets.map((_, i) => start + (i + 0.5) * width);
    const ok = (b) => b.filter((r) => r.status === 'ok');
    const p50 = buckets.map((b) => percentile(ok(b).map((r) => r.ttft_ms), 50));
    const p99 = buckets.map((b) => percentile(ok(b).map((r) => r.ttft_ms), 99));
    const tps = buckets.map((b) => {
      const rates = ok(b).filter((r) => r.completion_tokens > 1 && r.duration_ms > r.ttft_ms)
        .map((r) => (r.completion_tokens - 1) / ((r.duration_ms - r.ttft_ms) / 1000));
      return rates.length ? rates.reduce((a, c) => a + c, 0) / rates.length : NaN;
    });
    const counts = buckets.map((b) => b.length);
    const cold = recs.filter((r) => r.cold_start).slice(0, 10);
    return h('div', {},
      h('div', { class: 'charts' },
        h('figure', {}, h('figcaption', { text: 'Time to first token (ms), per 5 minutes' }),
          lineChart(xs, [{ ys: p50, cls: 'l1' }, { ys: p99, cls: 'l2' }], 'ms', `TTFT p50 latest ${fmtMs(lastNum(p50))}, p99 ${fmtMs(lastNum(p99))}`),
          h('div', { class: 'legend' }, h('span', { text: 'p50' }), h('span', { class: 'k2', text: 'p99' }))),
        h('figure', {}, h('figcaption', { text: 'Tokens per second per request, mean' }),
          lineChart(xs, [{ ys: tps, cls: 'l1' }], 'tok/s', `tokens per second, latest ${isNaN(lastNum(tps)) ? 'none' : lastNum(tps).toFixed(0)}`)),
        h('figure', {}, h('figcaption', { text: 'Requests per 5 minutes' }), barChart(xs, counts, `${recs.length} requests in the last hour`))),
      h('h3', { text: 'Recent cold starts' }),
      cold.length ? h('ul', {}, cold.map((r) => h('li', {},
        `${fmtTime(r.created_at)}: waited ${fmtMs(r.queue_wait_ms)} for a runner, first token after ${fmtMs(r.ttft_ms)}`)))
        : h('p', { class: 'muted', text: 'None in the last hour.' }),
      h('h3', { text: 'Recent requests' }),
      recordsTable(recs.slice(0, 20), { oneDeployment: true }));
  }
  function lastNum(a) { for (let i = a.length - 1; i >= 0; i--) if (!isNaN(a[i])) return a[i]; return NaN; }

  function axes(svg, W, H, L, max, unit) {
    svg.append(s('line', { x1: L, y1: H - 18, x2: W, y2: H - 18, class: 'axis' }), s('line', { x1: L, y1: 4, x2: L, y2: H - 18, class: 'axis' }),
      s('text', { x: L - 4, y: 12, 'text-anchor': 'end' }, `${Math.round(max)}`), s('text', { x: L - 4, y: H - 20, 'text-anchor': 'end' }, '0'),
      s('text', { x: L - 4, y: H / 2, 'text-anchor': 'end' }, unit),
      s('text', { x: L, y: H - 4 }, '−60 min'), s('text', { x: W, y: H - 4, 'text-anchor': 'end' }, 'now'));
  }
  function lineChart(xs, series, unit, label) {
    const W = 300, H = 140, L = 40;
    const all = series.flatMap((se) => se.ys.filter((y) => !isNaN(y)));
    const max = Math.max(1, ...all) * 1.1;
    const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label });
    axes(svg, W, H, L, max, unit);
    const x = (t) => L + (W - L - 4) * (t - xs[0]) / (xs[xs.length - 1] - xs[0]);
    const y = (v) => (H - 18) - (H - 24) * v / max;
    for (const se of series) {
      let d = '', pen = false;
      se.ys.forEach((v, i) => {
        if (isNaN(v)) { pen = false; return; }
        d += `${pen ? 'L' : 'M'}${x(xs[i]).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
        svg.append(s('circle', { cx: x(xs[i]), cy: y(v), r: 2.5, class: se.cls }));
      });
      if (d) svg.append(s('path', { d, class: se.cls }));
    }
    return svg;
  }
  function barChart(xs, ys, label) {
    const W = 300, H = 140, L = 40;
    const max = Math.max(1, ...ys);
    const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label });
    axes(svg, W, H, L, max, 'req');
    const bw = (W - L - 4) / ys.length;
    ys.forEach((v, i) => {
      const bh = (H - 24) * v / max;
      if (v > 0) svg.append(s('rect', { x: L + i * bw + 2, y: H - 18 - bh, width: bw - 4, height: bh, class: 'bar' }, s('title', {}, `${v} requests`)));
    });
    return svg;
  }

  // ---- settings form (deploy and change) -----------------------------------

  // settingsForm edits a deployment's settings. A new deployment sends only
  // what was filled in (the server's defaults apply); an existing one
  // starts from its values.
  function settingsForm(d, isNew, artifact) {
    const num = (name, v, min, hint) => {
      const i = h('input', { type: 'number', name, min, step: 'any', inputMode: 'numeric' });
      if (v != null) i.value = v;
      return { name, i, hint };
    };
    const txt = (name, v, hint, placeholder) => {
      const i = h('input', { type: 'text', name, placeholder });
      if (v != null) i.value = v;
      return { name, i, hint };
    };
    const p = (d && d.prices) || {};
    const tmpl = h('select', { name: 'chat_template' },
      h('option', { value: '', text: "the model's own" }),
      ['chatml', 'llama3', 'llama2', 'gemma', 'phi3', 'plain'].map((t) => h('option', { value: t, text: t })));
    if (d && d.chat_template) tmpl.value = d.chat_template;
    const ctxHint = artifact && artifact.context_length ? `trained on ${fmtInt(artifact.context_length)}` : "empty: the model's";
    const f = {
      idle: txt('idle_timeout', d ? goDur(d.idle_timeout) : null, 'e.g. 30s, 5m: how long an idle runner stays', '5m0s'),
      min: num('min_runners', d ? d.min_runners : null, 0, '0 scales to zero'),
      max: num('max_runners', d ? d.max_runners : null, 1, 'default 1'),
      par: num('parallel', d ? d.parallel : null, 1, 'requests at once per runner (default 4)'),
      ctxl: num('context_length', d && d.context_length ? d.context_length : null, 1, ctxHint),
      ql: num('queue_limit', d ? d.queue_limit : null, 1, 'default 1000'),
      qt: txt('queue_timeout', d ? goDur(d.queue_timeout) : null, 'longest wait in the queue', '5m0s'),
      pp: num('prompt_per_mtok', p.prompt_per_mtok, 0, 'USD per 1M prompt tokens'),
      cp: num('completion_per_mtok', p.completion_per_mtok, 0, 'USD per 1M completion tokens'),
      rs: num('runner_second', p.runner_second, 0, 'USD per second a runner exists'),
    };
    const labels = { idle: 'Idle timeout', min: 'Min runners', max: 'Max runners', par: 'Parallel', ctxl: 'Context length', ql: 'Queue limit',
      qt: 'Queue timeout', pp: 'Prompt price', cp: 'Completion price', rs: 'Runner price' };
    const el = h('form', { class: 'settings' },
      h('div', { class: 'grid' }, Object.entries(f).map(([k, x]) => field(labels[k], x.i, x.hint)), field('Chat template', tmpl)),
      h('p', {}, h('button', { type: 'submit', text: isNew ? 'Create deployment' : 'Save settings' })));
    function read() {
      const spec = {};
      const n = (x) => (x.i.value === '' ? undefined : Number(x.i.value));
      const t = (x) => (x.i.value.trim() === '' ? undefined : x.i.value.trim());
      const put = (k, v) => { if (v !== undefined) spec[k] = v; };
      put('idle_timeout', t(f.idle)); put('queue_timeout', t(f.qt));
      put('min_runners', n(f.min)); put('max_runners', n(f.max)); put('parallel', n(f.par));
      put('context_length', n(f.ctxl)); put('queue_limit', n(f.ql));
      if (tmpl.value || (d && d.chat_template)) spec.chat_template = tmpl.value;
      const prices = {};
      for (const x of [f.pp, f.cp, f.rs]) if (n(x) !== undefined) prices[x.name] = n(x);
      if (Object.keys(prices).length) spec.prices = prices;
      return spec;
    }
    return { el, read };
  }

  // ---- deploy --------------------------------------------------------------

  function pageDeploy(root, _args, ctx) {
    const input = h('input', { type: 'file', id: 'gguf-file', accept: '.gguf,application/octet-stream' });
    const drop = h('div', { class: 'drop', id: 'drop' },
      h('p', {}, h('strong', { text: 'Drop a GGUF file here' }), ' or choose one.'),
      field('GGUF weights file', input, 'Uploaded to this server and checked: architecture, size, quantisation.'));
    const progress = h('progress', { max: 1, value: 0, id: 'upload-progress', 'aria-label': 'Upload progress' });
    const progressText = h('p', { role: 'status', id: 'upload-status', class: 'muted' });
    const result = h('div', { id: 'validation' });
    const step2 = h('section', { class: 'panel', hidden: true, 'aria-labelledby': 'deploy-settings' });
    const done = h('div', { role: 'status', id: 'deploy-result' });
    root.append(h('h1', { text: 'Deploy a model' }),
      h('section', { class: 'panel', 'aria-labelledby': 'deploy-upload' }, h('h2', { id: 'deploy-upload', text: '1. Upload weights' }),
        drop, h('div', { hidden: true, id: 'upload-box' }, progress, progressText), result),
      step2, done);
    let existing = new Set();
    loadDeployments().then((ds) => { existing = new Set(ds.map((d) => d.name)); }).catch(() => {});

    drop.addEventListener('dragover', (ev) => { ev.preventDefault(); drop.classList.add('over'); });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (ev) => {
      ev.preventDefault();
      drop.classList.remove('over');
      const file = ev.dataTransfer && ev.dataTransfer.files[0];
      if (file) upload(file);
    });
    input.addEventListener('change', () => { if (input.files[0]) upload(input.files[0]); });

    let xhr = null;
    function upload(file) {
      if (xhr) xhr.abort();
      result.replaceChildren();
      step2.hidden = true;
      done.replaceChildren();
      document.getElementById('upload-box').hidden = false;
      progress.value = 0;
      progressText.textContent = `Uploading ${file.name} (${fmtBytes(file.size)})…`;
      xhr = new XMLHttpRequest();
      const t0 = performance.now();
      xhr.upload.addEventListener('progress', (ev) => {
        if (!ev.lengthComputable) return;
        progress.value = ev.loaded / ev.total;
        const rate = ev.loaded / Math.max(0.001, (performance.now() - t0) / 1000);
        progressText.textContent = `Uploading ${file.name}: ${fmtBytes(ev.loaded)} of ${fmtBytes(ev.total)} (${Math.floor(100 * ev.loaded / ev.total)}%, ${fmtBytes(rate)}/s)`;
      });
      xhr.upload.addEventListener('load', () => { progressText.textContent = `Uploaded ${fmtBytes(file.size)}; checking the weights…`; });
      xhr.addEventListener('load', () => {
        let j = null;
        try { j = JSON.parse(xhr.responseText); } catch (_) { /* reported below */ }
        if (xhr.status === 201 && j) { progress.value = 1; showArtifact(file, j); return; }
        const e = new APIError(xhr.status, j);
        if (xhr.status === 401) { signOut('Your API key is no longer valid. Sign in again.'); return; }
        progressText.textContent = '';
        result.replaceChildren(h('p', { class: 'error', role: 'alert', 'data-valid': 'false', text: `Refused: ${e.message}` }));
      });
      xhr.addEventListener('error', () => { result.replaceChildren(h('p', { class: 'error', role: 'alert', text: 'The upload failed: the connection was lost.' })); });
      xhr.open('POST', '/v1/artifacts');
      xhr.setRequestHeader('Authorization', `Bearer ${state.key}`);
      xhr.setRequestHeader('Content-Type', 'application/octet-stream');
      xhr.send(file);
    }

    function showArtifact(file, a) {
      progressText.textContent = `Uploaded and checked ${file.name}.`;
      result.replaceChildren(h('div', { 'data-valid': 'true' },
        h('p', { class: 'ok', text: 'Valid GGUF weights.' }),
        facts([
          ['Architecture', a.architecture || '—'],
          ['Parameters', fmtParams(a.parameter_count)],
          ['Quantisation', a.quantization || '—'],
          ['Trained context', a.context_length ? `${fmtInt(a.context_length)} tokens` : '—'],
          ['Size', fmtBytes(a.size)],
          ['SHA-256', h('code', { text: a.sha256 })],
        ])));
      const guess = file.name.replace(/\.gguf$/i, '').toLowerCase().replace(/[^a-z0-9_-]+/g, '-').replace(/^[-_]+|[-_]+$/g, '').slice(0, 63) || 'model';
      const name = h('input', { type: 'text', name: 'name', required: true, id: 'deploy-name', pattern: '[a-z0-9]([a-z0-9_\\-]*[a-z0-9])?', autocomplete: 'off' });
      name.value = guess;
      const mode = h('p', { class: 'hint' });
      const form = settingsForm(null, true, a);
      const submit = form.el.querySelector('button[type=submit]');
      const setMode = () => {
        const upd = existing.has(name.value);
        mode.textContent = upd ? `${name.value} exists: its weights and the settings you fill in will be updated.` : 'A new deployment; empty fields take the defaults.';
        submit.textContent = upd ? 'Update deployment' : 'Create deployment';
      };
      name.addEventListener('input', setMode);
      form.el.prepend(field('Deployment name', name, 'lowercase letters, digits, - and _; clients send it as "model"'), mode);
      setMode();
      const msg = h('p', { role: 'alert' });
      form.el.append(msg);
      form.el.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        msg.textContent = ''; msg.className = '';
        submit.disabled = true;
        try {
          const d = await api('PUT', `/v1/deployments/${encodeURIComponent(name.value)}`, { artifact: a.sha256, ...form.read() });
          if (!ctx.alive()) return;
          existing.add(d.name);
          done.replaceChildren(h('div', { class: 'panel' },
            h('p', { class: 'ok', text: `Deployed ${d.name}. It has no runner until a request comes.` }),
            h('p', {}, h('a', { href: `#/playground/${encodeURIComponent(d.name)}`, id: 'deployed-playground', text: `Try ${d.name} in the playground` }),
              ' · ', h('a', { href: `#/deployment/${encodeURIComponent(d.name)}`, text: 'Its page' }))));
          done.querySelector('a').focus();
        } catch (e) {
          msg.textContent = e.param ? `${e.param}: ${e.message}` : e.message;
          msg.className = 'error';
        } finally { submit.disabled = false; }
      });
      step2.replaceChildren(h('h2', { id: 'deploy-settings', text: '2. Settings' }), form.el);
      step2.hidden = false;
    }
    return 'Deploy';
  }

  // ---- playground ----------------------------------------------------------

  function shellQuote(x) { return `'${x.replace(/'/g, "'\\''")}'`; }
  function snippets(model, messages, maxTokens) {
    const base = `${location.origin}/v1`;
    const body = { model, messages, max_tokens: maxTokens, stream: true };
    const msgs = JSON.stringify(messages);
    return {
      curl: `curl -N ${base}/chat/completions \\\n  -H "Authorization: Bearer $INFER_API_KEY" \\\n  -H "Content-Type: application/json" \\\n  -d ${shellQuote(JSON.stringify(body))}`,
      Python: `# pip install openai\nimport os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url=${JSON.stringify(base)}, api_key=os.environ["INFER_API_KEY"])\n` +
        `stream = client.chat.completions.create(\n    model=${JSON.stringify(model)},\n    messages=${msgs},\n    max_tokens=${maxTokens},\n    stream=True,\n)\n` +
        `for chunk in stream:\n    if chunk.choices:\n        print(chunk.choices[0].delta.content or "", end="", flush=True)\n`,
      JavaScript: `// npm install openai\nimport OpenAI from "openai";\n\nconst client = new OpenAI({ baseURL: ${JSON.stringify(base)}, apiKey: process.env.INFER_API_KEY });\n` +
        `const stream = await client.chat.completions.create({\n  model: ${JSON.stringify(model)},\n  messages: ${msgs},\n  max_tokens: ${maxTokens},\n  stream: true,\n});\n` +
        `for await (const chunk of stream) process.stdout.write(chunk.choices[0]?.delta?.content ?? "");\n`,
    };
  }

  function pagePlayground(root, args, ctx) {
    const model = h('select', { name: 'model', id: 'pg-model', required: true });
    const maxTokens = h('input', { type: 'number', id: 'pg-max', min: 1, value: '64', inputMode: 'numeric' });
    const prompt = h('textarea', { id: 'pg-prompt', rows: 3, required: true, placeholder: 'Once upon a time' });
    const send = h('button', { type: 'submit', id: 'pg-send', text: 'Send' });
    const stop = h('button', { type: 'button', class: 'secondary', id: 'pg-stop', text: 'Stop', disabled: true });
    const clear = h('button', { type: 'button', class: 'secondary', text: 'New chat' });
    const live = h('span', { id: 'pg-state' });
    const chat = h('div', { class: 'chat', id: 'pg-chat', role: 'log', 'aria-live': 'polite', 'aria-label': 'Conversation' });
    const phases = h('ol', { class: 'phases', id: 'pg-phases', 'aria-label': 'Cold start' });
    const stats = h('p', { class: 'muted', id: 'pg-stats', role: 'status' });
    const err = h('p', { class: 'error', role: 'alert', id: 'pg-error' });
    const snipSel = h('select', { id: 'pg-lang' }, ['curl', 'Python', 'JavaScript'].map((l) => h('option', { value: l, text: l })));
    const snipPre = h('pre', { id: 'pg-snippet', tabindex: '0' });
    const copy = h('button', { type: 'button', class: 'secondary', text: 'Copy' });
    const form = h('form', { id: 'pg-form' },
      h('div', { class: 'row' }, field('Deployment', model), field('Max tokens', maxTokens)),
      h('p', {}, 'State: ', live),
      field('Message', prompt, 'Ctrl+Enter sends'),
      h('p', { class: 'row' }, send, stop, clear));
    root.append(h('h1', { text: 'Playground' }),
      h('div', { class: 'cols' },
        h('section', { class: 'panel', 'aria-labelledby': 'pg-h' }, h('h2', { id: 'pg-h', class: 'sr', text: 'Chat' }), form, phases, err, chat, stats),
        h('section', { class: 'panel', 'aria-labelledby': 'pg-code' }, h('h2', { id: 'pg-code', text: 'The same request in code' }),
          h('div', { class: 'row' }, field('Language', snipSel), copy), snipPre,
          h('p', { class: 'hint' }, 'Set ', h('code', { text: 'INFER_API_KEY' }), ' to a key; the snippets never contain yours.'))));

    let messages = [];
    const pending = () => (prompt.value.trim() ? [...messages, { role: 'user', content: prompt.value.trim() }] : messages.length ? messages : [{ role: 'user', content: 'Once upon a time' }]);
    const renderSnippet = () => { snipPre.textContent = snippets(model.value || 'MODEL', pending(), Number(maxTokens.value) || 64)[snipSel.value]; };
    for (const el of [model, maxTokens, prompt, snipSel]) el.addEventListener('input', renderSnippet);
    copy.addEventListener('click', () => copyText(snipPre.textContent, copy));
    clear.addEventListener('click', () => { messages = []; chat.replaceChildren(); phases.replaceChildren(); stats.textContent = ''; err.textContent = ''; renderSnippet(); prompt.focus(); });
    prompt.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); form.requestSubmit(); } });

    loadDeployments().then((ds) => {
      model.replaceChildren(...ds.map((d) => h('option', { value: d.name, text: d.name })));
      if (!ds.length) err.textContent = 'No deployment to talk to yet.';
      if (args[0] && ds.some((d) => d.name === args[0])) model.value = args[0];
      renderSnippet();
      watch();
    }).catch((e) => { err.textContent = `Could not list deployments: ${e.message}`; });

    // The selected deployment's live state, so a cold start is seen from
    // zero to ready.
    async function watch() {
      if (!ctx.alive()) return;
      if (model.value) {
        try {
          const d = await api('GET', `/v1/deployments/${encodeURIComponent(model.value)}`);
          const st = depState(d);
          const old = live.firstChild;
          if (!old || old.dataset.state !== st.state || old.textContent !== st.label) live.replaceChildren(badge(st));
        } catch (_) { live.replaceChildren(); }
      }
      setTimeout(watch, POLL_MS);
    }

    let abort = null;
    stop.addEventListener('click', () => { if (abort) abort.abort(); });
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (abort || !model.value) return;
      const text = prompt.value.trim();
      if (!text) { prompt.focus(); return; }
      messages.push({ role: 'user', content: text });
      chat.append(h('div', { class: 'msg user', text }));
      const out = h('div', { class: 'msg assistant pending', 'data-streaming': 'true', 'aria-busy': 'true' }, h('span', { class: 'muted', text: 'waiting for the first token…' }));
      chat.append(out);
      prompt.value = '';
      renderSnippet();
      phases.replaceChildren();
      err.textContent = ''; stats.textContent = '';
      send.disabled = true; stop.disabled = false;
      abort = new AbortController();
      const t0 = performance.now();
      let ttft = NaN, lastPhase = '', usage = null, reply = '';
      try {
        const r = await fetch('/v1/chat/completions', {
          method: 'POST', signal: abort.signal,
          headers: { Authorization: `Bearer ${state.key}`, 'Content-Type': 'application/json', Accept: 'text/event-stream' },
          body: JSON.stringify({ model: model.value, messages, max_tokens: Number(maxTokens.value) || 64, stream: true, stream_options: { include_usage: true } }),
        });
        if (!r.ok) {
          let j = null;
          try { j = await r.json(); } catch (_) { /* reported below */ }
          throw new APIError(r.status, j);
        }
        await readSSE(r.body, {
          comment(c) {
            // Keepalives repeat the phase every 2 s; show each phase once.
            if (!c || c === lastPhase) return;
            lastPhase = c;
            phases.append(h('li', { text: `${((performance.now() - t0) / 1000).toFixed(1)} s: ${c}` }));
          },
          data(j) {
            if (j.error) throw new APIError(500, j);
            const delta = j.choices && j.choices[0] && j.choices[0].delta;
            if (delta && delta.content) {
              if (isNaN(ttft)) ttft = performance.now() - t0;
              reply += delta.content;
              out.classList.remove('pending');
              out.textContent = reply;
              chat.scrollTop = chat.scrollHeight;
            }
            if (j.usage) usage = j.usage;
          },
        });
        messages.push({ role: 'assistant', content: reply });
        const total = performance.now() - t0;
        const toks = usage ? usage.completion_tokens : NaN;
        stats.textContent = `First token after ${fmtMs(ttft)}` + (usage ? ` · ${toks} tokens · ${(Math.max(0, toks - 1) / Math.max(0.001, (total - ttft) / 1000)).toFixed(0)} tokens/s · ${usage.prompt_tokens} prompt tokens` : '');
      } catch (e) {
        if (e.name === 'AbortError') stats.textContent = 'Stopped.';
        else err.textContent = e.message;
        if (reply) messages.push({ role: 'assistant', content: reply });
        else messages.pop();
      } finally {
        out.dataset.streaming = 'false';
        out.removeAttribute('aria-busy');
        if (!reply) out.remove();
        abort = null; send.disabled = false; stop.disabled = true;
        renderSnippet();
      }
    });
    return 'Playground';
  }

  // readSSE reads a server-sent event stream: comments (": starting
  // runner") and data lines, to [DONE]. An "event: error" carries an
  // OpenAI error body as its data.
  async function readSSE(body, on) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).replace(/\r$/, '');
          buf = buf.slice(i + 1);
          if (line.startsWith(':')) on.comment(line.slice(1).trim());
          else if (line === 'data: [DONE]') return;
          else if (line.startsWith('data:')) on.data(JSON.parse(line.slice(5)));
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  async function copyText(text, button) {
    try {
      await navigator.clipboard.writeText(text);
      toast('Copied.');
    } catch (_) {
      toast('Copying was not allowed: select the text and press Ctrl+C.');
    }
    button.focus();
  }

  // ---- usage ---------------------------------------------------------------

  function isoDay(d) { return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`; }
  // A date input's day as the RFC 3339 instant of its local midnight.
  function dayStart(v) { return v ? new Date(`${v}T00:00:00`).toISOString().replace(/\.\d+Z$/, 'Z') : ''; }

  function pageUsage(root, _args, ctx) {
    const since = h('input', { type: 'date', id: 'u-since' });
    since.value = isoDay(new Date(Date.now() - 6 * 864e5));
    const until = h('input', { type: 'date', id: 'u-until' });
    const dep = h('select', { id: 'u-deployment' }, h('option', { value: '', text: 'all' }));
    const key = h('select', { id: 'u-key' }, h('option', { value: '', text: 'all' }));
    const group = h('select', { id: 'u-group' },
      [['', 'each request'], ['day', 'day'], ['deployment', 'deployment'], ['key', 'key']].map(([v, t]) => h('option', { value: v, text: t })));
    const refresh = h('button', { type: 'submit', id: 'u-refresh', text: 'Show' });
    const csv = h('button', { type: 'button', class: 'secondary', id: 'u-csv', text: 'Export CSV' });
    const err = h('p', { class: 'error', role: 'alert' });
    const out = h('div', { id: 'u-table' });
    const budgets = h('section', { class: 'panel', 'aria-labelledby': 'u-budgets', id: 'u-budget-panel' });
    const form = h('form', { class: 'panel row', id: 'u-form' },
      field('Since', since), field('Until (inclusive)', until), field('Deployment', dep), isAdmin() && field('Key', key), field('Group by', group), refresh, csv);
    root.append(h('h1', { text: 'Usage and spend' }),
      h('p', { class: 'muted', text: isAdmin() ? 'Every request of this tenant.' : 'The requests made with this key only.' }),
      form, err, out, budgets);
    const keyNames = new Map();
    let keys = [];
    let current = { header: [], rows: [] };
    const keyLabel = (k) => keyNames.get(k) || k;

    async function load() {
      const q = new URLSearchParams();
      if (since.value) q.set('since', dayStart(since.value));
      if (until.value) {
        const d = new Date(`${until.value}T00:00:00`); d.setDate(d.getDate() + 1);
        q.set('until', d.toISOString().replace(/\.\d+Z$/, 'Z'));
      }
      if (dep.value) q.set('deployment', dep.value);
      if (key.value) q.set('key', key.value);
      if (group.value) q.set('group_by', group.value);
      try {
        const r = group.value ? await api('GET', `/v1/usage?${q}`) : await apiAll(`/v1/usage?${q}`);
        if (!ctx.alive()) return;
        err.textContent = '';
        out.replaceChildren(group.value ? groupsTable(r.data || [])
          : recordsTable(r.data || [], { keyLabel, onRows: (header, rows) => { current = { header, rows }; } }));
      } catch (e) { err.textContent = `Could not load usage: ${e.message}`; }
    }
    function groupsTable(gs) {
      const label = { day: 'Day', deployment: 'Deployment', key: 'Key' }[group.value];
      const cols = [label, 'Requests', 'Prompt tokens', 'Completion tokens', 'Cold starts', 'Runner seconds', 'Request cost', 'Runner cost', 'Total cost'];
      const sum = (f) => gs.reduce((a, g) => a + (g[f] || 0), 0);
      const name = (g) => (group.value === 'key' ? keyLabel(g.group) : group.value === 'day' ? g.group.slice(0, 10) : g.group);
      current = {
        header: cols,
        rows: gs.map((g) => [name(g), g.requests, g.prompt_tokens, g.completion_tokens, g.cold_starts, g.runner_seconds, g.request_cost_usd, g.runner_cost_usd, g.cost_usd]),
      };
      return table(cols,
        gs.map((g) => [name(g), fmtInt(g.requests), fmtInt(g.prompt_tokens), fmtInt(g.completion_tokens), fmtInt(g.cold_starts),
          (g.runner_seconds || 0).toFixed(1), fmtUSD(g.request_cost_usd), fmtUSD(g.runner_cost_usd), fmtUSD(g.cost_usd)]),
        ['Total', fmtInt(sum('requests')), fmtInt(sum('prompt_tokens')), fmtInt(sum('completion_tokens')), fmtInt(sum('cold_starts')),
          sum('runner_seconds').toFixed(1), fmtUSD(sum('request_cost_usd')), fmtUSD(sum('runner_cost_usd')), fmtUSD(sum('cost_usd'))],
        `${gs.length} ${label.toLowerCase()}${gs.length === 1 ? '' : 's'}`);
    }

    async function loadBudgets() {
      try {
        const r = await api('GET', '/v1/usage?group_by=key');
        const spent = new Map((r.data || []).map((g) => [g.group, g.cost_usd]));
        const list = isAdmin() ? keys.filter((k) => !k.revoked_at) : [state.me];
        budgets.replaceChildren(h('h2', { id: 'u-budgets', text: isAdmin() ? 'Spend against budgets (all time)' : 'Your spend (all time)' }),
          table(['Key', 'Spent', 'Budget', 'Used'], list.map((k) => {
            const used = spent.get(k.id) || 0;
            const b = k.budget_usd;
            return [`${keyLabel(k.id)} (${k.id})`, fmtUSD(used), b == null ? 'unlimited' : fmtUSD(b),
              b == null ? '—' : h('meter', { min: 0, max: b || 1, value: used, low: 0.7 * b, high: 0.9 * b, optimum: 0, 'aria-label': `${fmtUSD(used)} of ${fmtUSD(b)}` })];
          }), null, 'Spend per key'));
      } catch (e) { budgets.replaceChildren(h('p', { class: 'error', text: `Could not load budgets: ${e.message}` })); }
    }

    form.addEventListener('submit', (ev) => { ev.preventDefault(); load(); });
    for (const el of [since, until, dep, key, group]) el.addEventListener('change', load);
    csv.addEventListener('click', () => downloadCSV(`infer-usage-${group.value || 'requests'}-${isoDay(new Date())}.csv`, current.header, current.rows));

    const setup = [loadDeployments().then((ds) => dep.append(...ds.map((d) => h('option', { value: d.name, text: d.name }))))];
    if (isAdmin()) {
      setup.push(api('GET', '/v1/keys').then((r) => {
        keys = r.data || [];
        for (const k of keys) { keyNames.set(k.id, k.name); key.append(h('option', { value: k.id, text: `${k.name} (${k.id})` })); }
      }));
    } else keyNames.set(state.me.id, state.me.name);
    Promise.allSettled(setup).then(() => { if (ctx.alive()) { load(); loadBudgets(); } });
    return 'Usage';
  }

  // recordsTable lists usage records; opts.keyLabel names keys,
  // opts.onRows receives the raw rows (the usage page's CSV export), and
  // opts.oneDeployment leaves out the deployment column.
  function recordsTable(recs, opts = {}) {
    const cols = ['Time', 'Deployment', 'Key', 'Prompt tokens', 'Completion tokens', 'Queue wait', 'TTFT', 'Duration', 'Cold start', 'Status', 'Cost'];
    const label = opts.keyLabel || ((k) => k);
    if (opts.onRows) {
      opts.onRows(['time', 'request_id', 'deployment', 'key_id', 'prompt_tokens', 'completion_tokens', 'queue_wait_ms', 'ttft_ms', 'duration_ms', 'cold_start', 'status', 'finish_reason', 'cost_usd'],
        recs.map((r) => [r.created_at, r.request_id, r.deployment, r.key_id, r.prompt_tokens, r.completion_tokens, r.queue_wait_ms, r.ttft_ms, r.duration_ms, r.cold_start, r.status, r.finish_reason, r.cost_usd]));
    }
    const sum = (f) => recs.reduce((a, r) => a + (r[f] || 0), 0);
    const t = table(cols,
      recs.map((r) => [fmtTime(r.created_at), r.deployment, label(r.key_id), fmtInt(r.prompt_tokens), fmtInt(r.completion_tokens),
        fmtMs(r.queue_wait_ms), fmtMs(r.ttft_ms), fmtMs(r.duration_ms), r.cold_start ? 'yes' : 'no', r.status, fmtUSD(r.cost_usd)]),
      ['Total', '', '', fmtInt(sum('prompt_tokens')), fmtInt(sum('completion_tokens')), '', '', '', `${recs.filter((r) => r.cold_start).length}`, '', fmtUSD(sum('cost_usd'))],
      `${recs.length} request${recs.length === 1 ? '' : 's'}, newest first`);
    if (opts.oneDeployment) t.querySelectorAll('tr > :nth-child(2)').forEach((c) => c.remove());
    // Each row names its request and key, for people (title) and tests.
    t.querySelectorAll('tbody tr').forEach((tr, i) => {
      tr.dataset.keyId = recs[i].key_id;
      tr.title = `request ${recs[i].request_id}, key ${recs[i].key_id}`;
    });
    return t;
  }

  function table(cols, rows, foot, caption) {
    const numeric = (v) => typeof v === 'string' && /^[$\d.,\s-]+(ms| s)?$/.test(v) && v.trim() !== '';
    return h('div', { class: 'table-wrap' }, h('table', { class: 'stack' },
      caption && h('caption', { text: caption }),
      h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col', text: c })))),
      h('tbody', {}, rows.map((r) => h('tr', {}, r.map((v, i) => h('td', { 'data-label': cols[i], class: numeric(v) ? 'num' : null }, v))))),
      foot && h('tfoot', {}, h('tr', {}, foot.map((v, i) => h('td', { 'data-label': cols[i], class: numeric(v) ? 'num' : null }, v))))));
  }

  function csvCell(v) {
    const x = v == null ? '' : String(v);
    return /[",\n\r]/.test(x) ? `"${x.replace(/"/g, '""')}"` : x;
  }
  function downloadCSV(name, header, rows) {
    const text = [header, ...rows].map((r) => r.map(csvCell).join(',')).join('\r\n') + '\r\n';
    const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
    const a = h('a', { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
    toast(`Saved ${name} (${rows.length} rows).`);
  }

  // ---- keys ----------------------------------------------------------------

  function pageKeys(root, _args, ctx) {
    const name = h('input', { type: 'text', id: 'k-name', required: true, autocomplete: 'off', maxLength: 128 });
    const role = h('select', { id: 'k-role' }, h('option', { value: 'user', text: 'user' }), h('option', { value: 'admin', text: 'admin' }));
    const deps = h('select', { id: 'k-deployments', multiple: true, size: 3 });
    const rpm = h('input', { type: 'number', id: 'k-rpm', min: 0, inputMode: 'numeric' });
    const tpm = h('input', { type: 'number', id: 'k-tpm', min: 0, inputMode: 'numeric' });
    const budget = h('input', { type: 'number', id: 'k-budget', min: 0, step: 'any' });
    const msg = h('p', { role: 'alert' });
    const secret = h('div', { id: 'k-secret' });
    const form = h('form', { class: 'panel', id: 'k-form' },
      h('h2', { text: 'Create a key' }),
      h('div', { class: 'grid' }, field('Name', name), field('Role', role, 'user: calls models, reads its own usage; admin: also deploys and manages keys'),
        field('Deployments', deps, 'none selected: all of them'),
        field('Requests per minute', rpm, 'empty: unlimited'), field('Tokens per minute', tpm, 'empty: unlimited'),
        field('Budget (USD)', budget, 'total spend; empty: unlimited')),
      h('p', {}, h('button', { type: 'submit', id: 'k-create', text: 'Create key' })), msg);
    const list = h('div', { id: 'k-list' });
    root.append(h('h1', { text: 'API keys' }), secret, form, h('h2', { text: 'Keys' }), list);
    loadDeployments().then((ds) => deps.append(...ds.map((d) => h('option', { value: d.name, text: d.name })))).catch(() => {});

    async function refresh() {
      try {
        const r = await api('GET', '/v1/keys');
        if (!ctx.alive()) return;
        list.replaceChildren(keysTable(r.data || []));
      } catch (e) { list.replaceChildren(h('p', { class: 'error', text: `Could not list keys: ${e.message}` })); }
    }
    function keysTable(keys) {
      const cols = ['Name', 'ID', 'Role', 'Deployments', 'Limits', 'Created', 'Status', ''];
      return h('div', { class: 'table-wrap' }, h('table', { class: 'stack' },
        h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col', text: c })))),
        h('tbody', {}, keys.map((k) => {
          const limits = [k.requests_per_minute && `${k.requests_per_minute} req/min`, k.tokens_per_minute && `${k.tokens_per_minute} tok/min`,
            k.budget_usd != null && `budget ${fmtUSD(k.budget_usd)}`].filter(Boolean).join(', ') || 'none';
          let action = null;
          if (k.id === state.me.id) action = h('span', { class: 'muted', text: 'this key' });
          else if (!k.revoked_at) action = revokeButton(k);
          const cells = [k.name, h('code', { text: k.id }), k.role, (k.deployments || []).join(', ') || 'all', limits, fmtTime(k.created_at),
            k.revoked_at ? `revoked ${fmtTime(k.revoked_at)}` : 'active', action];
          return h('tr', { 'data-key': k.name, 'data-key-id': k.id, 'data-revoked': k.revoked_at ? 'true' : 'false' },
            cells.map((c, i) => h('td', { 'data-label': cols[i] }, c)));
        }))));
    }
    function revokeButton(k) {
      const b = h('button', { type: 'button', class: 'danger', text: 'Revoke', 'aria-label': `Revoke ${k.name}` });
      b.addEventListener('click', async () => {
        if (b.dataset.armed !== '1') {
          b.dataset.armed = '1';
          b.textContent = 'Confirm revoke';
          b.setAttribute('aria-label', `Confirm: revoke ${k.name}; clients using it stop working`);
          return;
        }
        try {
          await api('DELETE', `/v1/keys/${encodeURIComponent(k.id)}`);
          toast(`Revoked ${k.name}.`);
          refresh();
        } catch (e) { toast(`Could not revoke ${k.name}: ${e.message}`); }
      });
      return b;
    }
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      msg.textContent = ''; msg.className = '';
      const body = { name: name.value.trim(), role: role.value };
      const sel = [...deps.selectedOptions].map((o) => o.value);
      if (sel.length) body.deployments = sel;
      if (rpm.value !== '') body.requests_per_minute = Number(rpm.value);
      if (tpm.value !== '') body.tokens_per_minute = Number(tpm.value);
      if (budget.value !== '') body.budget_usd = Number(budget.value);
      try {
        const k = await api('POST', '/v1/keys', body);
        const code = h('code', { id: 'k-secret-value', text: k.key });
        const copy = h('button', { type: 'button', class: 'secondary', text: 'Copy' });
        copy.addEventListener('click', () => copyText(k.key, copy));
        const dismiss = h('button', { type: 'button', text: 'Done, I saved it' });
        dismiss.addEventListener('click', () => { secret.replaceChildren(); name.focus(); });
        secret.replaceChildren(h('section', { class: 'panel', role: 'alert', 'aria-labelledby': 'k-secret-h' },
          h('h2', { id: 'k-secret-h', text: `Key ${k.name} created` }),
          h('p', { text: 'Copy it now: it is shown only this once (the server keeps only its hash).' }),
          h('div', { class: 'secret' }, code, copy, dismiss)));
        copy.focus();
        form.reset();
        refresh();
      } catch (e) {
        msg.textContent = e.param ? `${e.param}: ${e.message}` : e.message;
        msg.className = 'error';
      }
    });
    refresh();
    return 'Keys';
  }

  // ---- start -----------------------------------------------------------------

  document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));
  window.addEventListener('hashchange', route);
  (async () => {
    const saved = sessionStorage.getItem(KEY);
    if (!saved) { route(); return; }
    try { await signIn(saved); } catch (_) { state.key = null; sessionStorage.removeItem(KEY); }
    route();
  })();
})();

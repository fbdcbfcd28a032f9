// Small helpers of the console: DOM building, the API client, toasts,
// confirmation dialogs, copy boxes and formatting. No dependencies.

export const state = { session: null, projects: [], orgs: [] };

// h builds an element: h('button', {class: 'primary', onclick}, 'Save').
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// APIError carries the envelope's code and the HTTP status.
export class APIError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

// api calls the JSON API with the session cookie and, on unsafe methods,
// the CSRF header; it returns the envelope's data or throws APIError.
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.session && state.session.csrf) headers['X-CSRF-Token'] = state.session.csrf;
  const res = await fetch('/api/v1' + path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let env = null;
  try { env = await res.json(); } catch { env = null; }
  if (!res.ok || !env || env.error) {
    const err = env && env.error ? env.error : { code: 'http_' + res.status, message: res.status === 404 ? 'not found' : res.statusText };
    if (res.status === 401 && path !== '/session') {
      state.session = null;
      if (!location.hash.startsWith('#/signin')) location.hash = '#/signin';
    }
    throw new APIError(res.status, err.code, err.message);
  }
  return env.data;
}

export function toast(msg, kind) {
  let box = document.querySelector('.toasts');
  if (!box) { box = h('div', { class: 'toasts', role: 'status', 'aria-live': 'polite' }); document.body.append(box); }
  const t = h('div', { class: 'toast ' + (kind || '') }, msg);
  box.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 7000 : 3500);
}

// confirmDialog asks a yes/no question in a modal <dialog>.
export function confirmDialog(title, text, action, danger = true) {
  return new Promise((resolve) => {
    const d = h('dialog', { 'aria-labelledby': 'dlg-title' },
      h('h2', { id: 'dlg-title' }, title), h('p', {}, text),
      h('div', { class: 'row' },
        h('button', { type: 'button', onclick: () => { d.close(); resolve(false); } }, 'Cancel'),
        h('button', { type: 'button', class: danger ? 'danger solid' : 'primary', onclick: () => { d.close(); resolve(true); } }, action)));
    d.addEventListener('close', () => { d.remove(); resolve(false); });
    document.body.append(d);
    d.showModal();
    d.querySelector('button:last-child').focus();
  });
}

// copyBox shows a value that copies on click (the box or its button).
export function copyBox(value, label, multiline) {
  const btn = h('button', { type: 'button', 'aria-label': 'Copy ' + (label || 'value') }, 'Copy');
  const text = multiline ? h('pre', { class: 'mono' }, value) : h('code', {}, value);
  const box = h('div', { class: 'copybox', title: 'Click to copy' }, text, btn);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(value);
    } catch {
      const range = document.createRange();
      range.selectNodeContents(text);
      const sel = getSelection(); sel.removeAllRanges(); sel.addRange(range);
      document.execCommand && document.execCommand('copy');
    }
    box.classList.add('copied'); btn.textContent = 'Copied';
    setTimeout(() => { box.classList.remove('copied'); btn.textContent = 'Copy'; }, 2000);
  };
  box.addEventListener('click', copy);
  return box;
}

export function field(label, input, hint, id) {
  input.id = input.id || id || ('f-' + Math.random().toString(36).slice(2, 9));
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input, hint ? h('span', { class: 'hint' }, hint) : null,
    h('span', { class: 'error', id: input.id + '-error', role: 'alert' }));
}

export function fieldError(input, msg) {
  const el = document.getElementById(input.id + '-error');
  if (el) el.textContent = msg || '';
  if (msg) { input.setAttribute('aria-invalid', 'true'); input.setAttribute('aria-describedby', input.id + '-error'); }
  else input.removeAttribute('aria-invalid');
}

export function badge(text, cls) { return h('span', { class: 'badge ' + (cls || String(text).toLowerCase()) }, text); }

export function fmtTime(v) {
  if (!v) return '—';
  const d = new Date(v);
  if (isNaN(d) || d.getFullYear() < 2000) return '—';
  return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function fmtAgo(v) {
  if (!v) return '—';
  const d = new Date(v);
  if (isNaN(d) || d.getFullYear() < 2000) return '—';
  let s = Math.round((Date.now() - d) / 1000);
  const future = s < 0; s = Math.abs(s);
  const t = s < 60 ? s + 's' : s < 3600 ? Math.round(s / 60) + 'm' : s < 86400 ? Math.round(s / 3600) + 'h' : Math.round(s / 86400) + 'd';
  return future ? 'in ' + t : t + ' ago';
}

export function fmtNum(n) { return Number(n || 0).toLocaleString(); }

export function labelsOf(obj) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h('span', { class: 'muted' }, '—');
  return entries.sort().map(([k, v]) => h('span', { class: 'chip' }, k + '=' + v));
}

// emptyRow is a table's empty state spanning all columns.
export function emptyRow(cols, title, text) {
  return h('tr', {}, h('td', { colspan: cols, class: 'empty' }, h('strong', {}, title), text || ''));
}

export function table(headers, rows, empty) {
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, headers.map((x) => (x instanceof Node ? x : h('th', { scope: 'col' }, x))))),
    h('tbody', {}, rows.length ? rows : empty)));
}

// events opens the project's live event stream; handlers maps topic →
// function(data). It returns a close function.
export function events(project, handlers, onState) {
  const es = new EventSource('/api/v1/projects/' + encodeURIComponent(project) + '/events');
  for (const [topic, f] of Object.entries(handlers)) {
    es.addEventListener(topic, (e) => { try { f(JSON.parse(e.data)); } catch (err) { console.error(err); } });
  }
  es.onopen = () => onState && onState(true);
  es.onerror = () => onState && onState(false);
  return () => es.close();
}

export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, v);
  const s = u.toString();
  return s ? '?' + s : '';
}

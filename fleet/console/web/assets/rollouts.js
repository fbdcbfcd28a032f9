// Configs and rollouts: edit a config with validation at the field, pick
// a selector with a live count of matching agents and stages, start a
// rollout, and follow its progress live (pause, resume, roll back).
import { h, api, state, toast, badge, fmtTime, fmtAgo, fmtNum, emptyRow, confirmDialog, field, events, APIError } from './lib.js';
import { canEdit, go } from './app.js';

export function hasRollouts() { return true; }

const TEMPLATE = `sampling:
  frequency_hz: 19
  duration: 10s
targets:
  systemd:
    units: ["*.service"]
external_labels:
  cluster: prod
`;

function stageName(i, r) { return r.canary > 0 && i === 0 ? 'canary' : 'wave ' + (r.canary > 0 ? i : i + 1); }

function progress(counts, total) {
  const c = counts || {};
  const applied = c.applied || 0, failed = c.failed || 0;
  const pending = (c.waiting || 0) + (c.assigned || 0);
  const t = Math.max(total || applied + failed + pending, 1);
  const bar = h('div', { class: 'progress', role: 'img', 'aria-label': `${applied} applied, ${pending} pending, ${failed} failed` },
    h('div', { class: 'applied' }), h('div', { class: 'failed' }), h('div', { class: 'pending' }));
  // Widths through the CSSOM (the page's CSP forbids style attributes).
  bar.children[0].style.width = (100 * applied) / t + '%';
  bar.children[1].style.width = (100 * failed) / t + '%';
  bar.children[2].style.width = (100 * pending) / t + '%';
  return bar;
}

// lineOf finds the line of a YAML path's last key, for errors at the field.
function lineOf(yaml, path) {
  const keys = (path || '').replace(/\[\d+\]/g, '').split('.').filter(Boolean);
  if (!keys.length) return 0;
  const lines = yaml.split('\n');
  let from = 0;
  for (const k of keys) {
    const re = new RegExp('^\\s*(- )?' + k.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '\\s*:');
    const i = lines.findIndex((l, n) => n >= from && re.test(l));
    if (i < 0) return from ? from + 1 : 0;
    from = i;
  }
  return from + 1;
}

async function notServed(e) {
  if (e instanceof APIError && e.status === 404 && e.code === 'http_404') {
    return { title: 'Rollouts', body: h('div', { class: 'panel empty' }, h('strong', {}, 'Rollouts are not served by this fleet'), 'Use `fleetprof config apply` meanwhile.') };
  }
  throw e;
}

export async function rolloutsPage({ project: pid }) {
  const p = state.projects.find((x) => x.id === pid);
  if (!p) throw new Error('Project not found');
  const edit = canEdit(pid);
  let list, configs;
  try {
    [list, configs] = await Promise.all([api('GET', `/projects/${pid}/rollouts`), api('GET', `/projects/${pid}/configs`)]);
  } catch (e) { return notServed(e); }

  const yaml = h('textarea', { id: 'cfg-yaml', spellcheck: 'false', rows: 14, 'aria-describedby': 'cfg-errors' });
  yaml.value = configs.length ? configs[configs.length - 1].yaml : TEMPLATE;
  const errs = h('ul', { id: 'cfg-errors', class: 'stack small', 'aria-live': 'polite' });
  const sel = h('input', { type: 'text', id: 'cfg-selector', placeholder: 'platform=systemd,cluster=east', size: 36 });
  const count = h('span', { id: 'cfg-count', class: 'hint', 'aria-live': 'polite' });
  const canary = h('input', { type: 'number', id: 'cfg-canary', min: 0, value: 1, class: 'narrow' });
  const wave = h('input', { type: 'number', id: 'cfg-wave', min: 1, max: 100, value: 50, class: 'narrow' });
  const pause = h('input', { type: 'text', id: 'cfg-pause', value: '0s', class: 'narrow' });
  const maxFail = h('input', { type: 'number', id: 'cfg-maxfail', min: 0, max: 100, value: 10, class: 'narrow' });
  const submit = h('button', { type: 'submit', class: 'primary', disabled: !edit }, 'Start rollout');
  let valid = false;

  let timer = null;
  async function check() {
    try {
      const res = await api('POST', `/projects/${pid}/configs/validate`, { yaml: yaml.value, selector: sel.value });
      valid = res.valid && !res.selectorError;
      errs.replaceChildren(...res.errors.map((e) => {
        const line = lineOf(yaml.value, e.path);
        return h('li', { class: 'error', dataset: { path: e.path } }, line ? `line ${line}: ` : '', e.path ? h('code', {}, e.path) : null, e.path ? ': ' : '', e.reason);
      }));
      if (res.errors.length) yaml.setAttribute('aria-invalid', 'true'); else yaml.removeAttribute('aria-invalid');
      if (res.selectorError) { sel.setAttribute('aria-invalid', 'true'); count.textContent = res.selectorError; }
      else { sel.removeAttribute('aria-invalid'); count.textContent = `matches ${fmtNum(res.matching)} agent${res.matching === 1 ? '' : 's'} now`; }
      submit.disabled = !edit || !valid;
    } catch (e) { count.textContent = e.message; }
  }
  const later = () => { clearTimeout(timer); timer = setTimeout(check, 300); };
  yaml.addEventListener('input', later);
  sel.addEventListener('input', later);

  const start = async (e) => {
    e.preventDefault();
    try {
      const res = await api('POST', `/projects/${pid}/rollouts`, {
        yaml: yaml.value, selector: sel.value, canary: Number(canary.value) || 0, wavePercent: Number(wave.value) || 0,
        wavePause: pause.value || undefined, maxFailurePercent: Number(maxFail.value) || 0,
      });
      toast(`Rollout of config v${res.config.version} started`);
      go(`/p/${pid}/rollouts/${res.rollout.id}`);
    } catch (ex) { toast(ex.message, 'error'); check(); }
  };

  const tbody = h('tbody', {});
  const versions = new Map(configs.map((c) => [c.id, c.version]));
  let summaries = new Map();
  function render(rs) {
    list = rs;
    tbody.replaceChildren(...(rs.length ? rs.map((r) => {
      const c = (summaries.get(r.id) || {}).counts || {};
      const total = Object.values(c).reduce((a, b) => a + b, 0);
      return h('tr', { dataset: { rollout: r.id } },
        h('td', {}, h('a', { href: `#/p/${pid}/rollouts/${r.id}` }, 'config v' + (versions.get(r.configId) || '?')), h('div', { class: 'small muted mono' }, r.id.slice(0, 8))),
        h('td', {}, h('code', {}, r.selector || '(all agents)')),
        h('td', {}, badge(r.status)),
        h('td', {}, r.stage >= 0 ? `${stageName(r.stage, r)} (${r.stage + 1}/${r.stages})` : '—'),
        h('td', {}, progress(c, total), h('div', { class: 'small muted' }, `${c.applied || 0}/${total} applied`)),
        h('td', { class: 'small' }, fmtAgo(r.createdAt)), h('td', {}, r.createdBy || '—'));
    }) : [emptyRow(7, 'No rollouts yet', 'Write a config above and roll it out to a selector.')]));
  }
  render(list);
  check();
  const close = events(pid, { rollouts: async (sums) => {
    summaries = new Map(sums.map((x) => [x.id, x]));
    try {
      const cs = await api('GET', `/projects/${pid}/configs`);
      for (const c of cs) versions.set(c.id, c.version);
      render(await api('GET', `/projects/${pid}/rollouts`));
    } catch { /* next event */ }
  } });
  return {
    title: 'Configs & rollouts',
    cleanup: () => { close(); clearTimeout(timer); },
    body: h('div', {},
      h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Configs & rollouts'), h('div', { class: 'sub' }, 'Roll a config out in stages: a canary, then waves; it halts by itself when a stage fails.'))),
      edit ? h('form', { class: 'panel stack', onsubmit: start, 'aria-labelledby': 'ro-new' },
        h('h2', { id: 'ro-new' }, 'New rollout'),
        h('div', { class: 'field' }, h('label', { for: 'cfg-yaml' }, 'Config (YAML)'), yaml, errs),
        h('div', { class: 'row' },
          h('div', { class: 'field' }, h('label', { for: 'cfg-selector' }, 'Agent selector'), sel, count),
          field('Canary agents', canary, null, 'cfg-canary'), field('Wave size (%)', wave, null, 'cfg-wave'),
          field('Pause between stages', pause, null, 'cfg-pause'), field('Halt above failures (%)', maxFail, null, 'cfg-maxfail'),
          submit)) : null,
      h('div', { class: 'table-wrap' }, h('table', { id: 'rollouts' },
        h('thead', {}, h('tr', {}, ['Config', 'Selector', 'Status', 'Stage', 'Progress', 'Started', 'By'].map((x) => h('th', { scope: 'col' }, x)))), tbody))),
  };
}

export async function rolloutPage({ project: pid, id }) {
  const edit = canEdit(pid);
  const body = h('div', {});
  let cfg = null;
  async function load() {
    const r = await api('GET', `/rollouts/${id}`);
    if (!cfg) { try { cfg = await api('GET', `/projects/${pid}/configs/${r.configId}`); } catch { cfg = null; } }
    const act = (verb, label, cls, confirmText) => h('button', { type: 'button', class: cls || '', disabled: !edit, onclick: async () => {
      if (confirmText && !(await confirmDialog(label + '?', confirmText, label))) return;
      try { await api('POST', `/rollouts/${id}/${verb}`); toast(label + ': done'); load(); } catch (e) { toast(e.message, 'error'); }
    } }, label);
    const moving = r.status === 'running' || r.status === 'pending';
    const stages = [];
    for (let i = 0; i < r.stages; i++) {
      const c = {};
      for (const a of r.agents) if (a.stage === i) c[a.state] = (c[a.state] || 0) + 1;
      const size = r.stageSizes[i] || 0;
      stages.push(h('tr', { dataset: { stage: i } },
        h('td', {}, stageName(i, r)), h('td', {}, fmtNum(size)),
        h('td', { class: 'applied-count' }, fmtNum(c.applied || 0)), h('td', {}, fmtNum((c.waiting || 0) + (c.assigned || 0))), h('td', {}, fmtNum(c.failed || 0)),
        h('td', {}, progress(c, size)),
        h('td', {}, i < r.stage || r.status === 'completed' ? badge('done', 'ok') : i === r.stage ? badge(r.status) : badge('waiting', 'disconnected'))));
    }
    body.replaceChildren(...[
      h('div', { class: 'page-head' },
        h('div', {}, h('h1', {}, `Rollout of config v${r.configVersion}`), h('div', { class: 'sub' }, 'to ', h('code', {}, r.selector || '(all agents)'), ` · ${r.targets} agents · started ${fmtTime(r.createdAt)} by ${r.createdBy || '—'}`)),
        h('div', { class: 'row' }, h('span', { id: 'rollout-status' }, badge(r.status)),
          edit && moving ? act('pause', 'Pause') : null,
          edit && (r.status === 'paused' || r.status === 'halted') ? act('resume', 'Resume', 'primary') : null,
          edit && r.status !== 'rolled_back' ? act('rollback', 'Roll back', 'danger', 'Every agent this rollout reached goes back to its previous config.') : null)),
      r.reason ? h('div', { class: r.status === 'halted' ? 'alert' : 'alert info', role: 'alert', id: 'rollout-reason' }, (r.status === 'halted' ? 'Halted: ' : '') + r.reason) : null,
      h('section', { class: 'panel', 'aria-labelledby': 'ro-stages' }, h('h2', { id: 'ro-stages' }, 'Stages'),
        h('div', { class: 'table-wrap' }, h('table', { id: 'rollout-stages' }, h('thead', {}, h('tr', {}, ['Stage', 'Agents', 'Applied', 'Pending', 'Failed', 'Progress', 'State'].map((x) => h('th', { scope: 'col' }, x)))), h('tbody', {}, stages)))),
      h('div', { class: 'grid2' },
        h('section', { class: 'panel', 'aria-labelledby': 'ro-agents' }, h('h2', { id: 'ro-agents' }, 'Agents'),
          h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, h('tr', {}, ['Agent', 'Stage', 'State', 'Error'].map((x) => h('th', { scope: 'col' }, x)))),
            h('tbody', {}, r.agents.length ? r.agents.slice(0, 200).map((a) => h('tr', {},
              h('td', {}, h('a', { href: `#/p/${pid}/agents/${a.agentId}`, class: 'mono small' }, a.agentId.slice(0, 12))), h('td', {}, stageName(a.stage, r)),
              h('td', {}, badge(a.state, a.state === 'applied' ? 'ok' : a.state === 'failed' ? 'failed' : 'pending')), h('td', { class: 'small' }, a.error || ''))) : emptyRow(4, 'No agents matched', ''))))),
        h('section', { class: 'panel', 'aria-labelledby': 'ro-config' }, h('h2', { id: 'ro-config' }, 'Config'),
          cfg ? h('pre', { class: 'block' }, cfg.yaml) : h('p', { class: 'muted' }, 'Config not available.'),
          h('p', { class: 'small muted mono' }, 'hash ' + r.configHash)))].filter(Boolean));
  }
  try { await load(); } catch (e) { return notServed(e); }
  const close = events(pid, { rollouts: (rs) => { if (rs.some((x) => x.id === id)) load().catch(() => {}); } });
  return { title: 'Rollout', body, cleanup: close };
}

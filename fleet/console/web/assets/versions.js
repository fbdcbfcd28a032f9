// Versions at a glance: agents per version and platform (Kubernetes
// agents are managed by their DaemonSet), the agent releases, release
// rollouts with their status, and for editors a form to roll a version out.
import { h, api, state, toast, badge, fmtTime, fmtAgo, fmtNum, emptyRow, confirmDialog, field, events, APIError } from './lib.js';
import { canEdit } from './app.js';

// semverDesc orders versions newest first where they parse (v1.10 > v1.9).
function semverDesc(a, b) {
  const parse = (v) => (v || '').replace(/^v/, '').split(/[.+-]/).map((x) => (/^\d+$/.test(x) ? Number(x) : x));
  const pa = parse(a), pb = parse(b);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i], y = pb[i];
    if (x === y) continue;
    if (x === undefined) return 1;
    if (y === undefined) return -1;
    if (typeof x === 'number' && typeof y === 'number') return y - x;
    return String(y).localeCompare(String(x));
  }
  return 0;
}

// optional runs an API call whose route this fleet may not serve (no
// release store): it resolves to null on a plain 404 of the route.
async function optional(path) {
  try {
    return await api('GET', path);
  } catch (e) {
    if (e instanceof APIError && e.status === 404 && e.code === 'http_404') return null;
    throw e;
  }
}

function matrix(inv) {
  const platforms = [...new Set(inv.versions.map((v) => v.platform || '(unknown)'))].sort();
  const versions = [...new Set(inv.versions.map((v) => v.version || ''))].sort(semverDesc);
  const cell = (ver, plat) => {
    const rows = inv.versions.filter((v) => (v.version || '') === ver && (v.platform || '(unknown)') === plat);
    const agents = rows.reduce((n, r) => n + r.agents, 0);
    const connected = rows.reduce((n, r) => n + r.connected, 0);
    if (!agents) return h('td', { class: 'count muted', dataset: { version: ver, platform: plat } }, '—');
    const k8s = rows.filter((r) => r.managedBy === 'DaemonSet');
    return h('td', { class: 'count', dataset: { version: ver, platform: plat, agents: String(agents) } },
      h('strong', {}, fmtNum(agents)), h('span', { class: 'small muted' }, ` (${fmtNum(connected)} connected)`),
      k8s.length ? h('div', { class: 'managed' }, badge('managed by DaemonSet', 'pending'),
        k8s.map((r) => h('div', { class: 'mono small' }, `${r.cluster || '(no cluster)'} · ${r.image || '(image unknown)'} · ${fmtNum(r.agents)}`))) : null);
  };
  const totals = platforms.map((p) => inv.versions.filter((v) => (v.platform || '(unknown)') === p).reduce((n, r) => n + r.agents, 0));
  return h('div', { class: 'table-wrap' }, h('table', { id: 'versions-matrix', class: 'matrix' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Version'), platforms.map((p) => h('th', { scope: 'col' }, p)))),
    h('tbody', {}, versions.length ? versions.map((ver) => h('tr', { dataset: { version: ver } },
      h('th', { scope: 'row', class: 'mono' }, ver || '(unknown)'), platforms.map((p) => cell(ver, p))))
      : emptyRow(2, 'No agents yet', ' Versions appear once agents enroll.')),
    versions.length ? h('tfoot', {}, h('tr', {}, h('th', { scope: 'row' }, 'Total'), totals.map((n) => h('td', { class: 'count' }, h('strong', {}, fmtNum(n)))))) : null));
}

export async function versionsPage({ project: pid }) {
  const p = state.projects.find((x) => x.id === pid);
  if (!p) throw new Error('Project ' + pid + ' not found, or you have no access to it.');
  const edit = canEdit(pid);
  const invArea = h('div', {});
  const relBody = h('tbody', {});
  const roBody = h('tbody', {});
  const sum = h('span', { class: 'sub' });
  let releases = [];
  let served = true;

  async function loadInventory() {
    const inv = await optional(`/projects/${pid}/versions`);
    if (!inv) { served = false; invArea.replaceChildren(h('div', { class: 'empty' }, h('strong', {}, 'Version counts are not served by this fleet'), '')); return; }
    sum.textContent = `${fmtNum(inv.total)} agent${inv.total === 1 ? '' : 's'} in ${p.name}`;
    invArea.replaceChildren(matrix(inv));
  }

  async function loadReleases() {
    releases = (await optional('/releases')) || [];
    relBody.replaceChildren(...(releases.length ? [...releases].sort((a, b) => semverDesc(a.version, b.version)).map((r) => h('tr', { dataset: { release: r.version } },
      h('td', { class: 'mono' }, r.version), h('td', {}, r.platform || '—'), h('td', {}, fmtNum(r.size) + ' B'),
      h('td', { class: 'mono small', title: r.sha256 }, (r.sha256 || '').slice(0, 16) + '…'),
      h('td', { class: 'small' }, r.url ? h('span', { title: r.url }, 'external URL') : 'served by the fleet'),
      h('td', { class: 'small' }, fmtTime(r.createdAt)), h('td', {}, r.createdBy || '—')))
      : [emptyRow(7, 'No releases yet', ' A fleet admin uploads one with `fleetprof release upload`.')]));
    if (verSel) {
      const keep = verSel.value;
      verSel.replaceChildren(...releases.map((r) => h('option', { value: r.version }, r.version + (r.platform ? ' (' + r.platform + ')' : ''))));
      if (keep) verSel.value = keep;
      submit.disabled = !releases.length;
    }
  }

  async function loadRollouts() {
    const rs = (await optional(`/projects/${pid}/release-rollouts`)) || [];
    rs.sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)));
    roBody.replaceChildren(...(rs.length ? rs.map((r) => {
      const act = (verb, label, cls, confirmText) => h('button', { type: 'button', class: cls || '', onclick: async () => {
        if (confirmText && !(await confirmDialog(label + '?', confirmText, label))) return;
        try { await api('POST', `/projects/${pid}/release-rollouts/${r.id}/${verb}`); toast(label + ': done'); loadRollouts(); } catch (e) { toast(e.message, 'error'); }
      } }, label);
      const moving = r.status === 'running' || r.status === 'pending';
      return h('tr', { dataset: { releaseRollout: r.id } },
        h('td', { class: 'mono' }, r.version), h('td', {}, h('code', {}, r.selector || '(all agents)')),
        h('td', {}, badge(r.status), r.reason ? h('div', { class: r.status === 'halted' ? 'small error-text' : 'small muted' }, (r.status === 'halted' ? 'Halted: ' : '') + r.reason) : null),
        h('td', {}, !r.stages ? h('span', { class: 'muted' }, 'no targets') : r.stage >= 0 ? `${r.stage + 1} of ${r.stages}` : `not started (${r.stages} stages)`),
        h('td', { class: 'small' }, fmtAgo(r.createdAt)), h('td', {}, r.createdBy || '—'),
        h('td', { class: 'actions' }, edit ? [
          moving ? act('pause', 'Pause') : null,
          r.status === 'paused' || r.status === 'halted' ? act('resume', 'Resume', 'primary') : null,
          r.status !== 'rolled_back' && r.status !== 'completed' ? act('rollback', 'Roll back', 'danger', 'Agents this rollout reached go back to the version they ran before.') : null] : null));
    }) : [emptyRow(7, 'No release rollouts yet', edit ? ' Roll a version out with the form above.' : '')]));
  }

  // The roll-out form (editors).
  let verSel = null, submit = null, form = null;
  if (edit) {
    verSel = h('select', { id: 'rel-version' });
    const sel = h('input', { type: 'text', id: 'rel-selector', placeholder: 'platform=systemd', size: 28 });
    const canary = h('input', { type: 'number', id: 'rel-canary', min: 0, value: 1, class: 'narrow' });
    const wave = h('input', { type: 'number', id: 'rel-wave', min: 1, max: 100, value: 50, class: 'narrow' });
    const maxFail = h('input', { type: 'number', id: 'rel-maxfail', min: 0, max: 100, value: 10, class: 'narrow' });
    const pause = h('input', { type: 'text', id: 'rel-pause', value: '0s', class: 'narrow' });
    const err = h('div', { class: 'alert', role: 'alert', hidden: true });
    submit = h('button', { type: 'submit', class: 'primary', disabled: true }, 'Roll out version');
    form = h('form', { class: 'panel stack', id: 'release-rollout-form', 'aria-labelledby': 'rel-new', onsubmit: async (e) => {
      e.preventDefault();
      err.hidden = true;
      try {
        const st = await api('POST', `/projects/${pid}/release-rollouts`, {
          version: verSel.value, selector: sel.value.trim(), canary: Number(canary.value) || 0, wavePercent: Number(wave.value) || 0,
          maxFailurePercent: Number(maxFail.value) || 0, wavePause: pause.value.trim() || undefined,
        });
        toast(`Rollout of ${st.version} started: ${st.targets} agent(s)` + (st.counts && st.counts.skipped ? `, ${st.counts.skipped} skipped (managed by DaemonSet)` : ''));
        loadRollouts();
      } catch (ex) { err.textContent = ex.message; err.hidden = false; }
    } },
    h('h2', { id: 'rel-new' }, 'Roll out a version'),
    h('p', { class: 'muted small' }, 'Agents on systemd hosts and plain hosts download and verify the signed release, then restart on it. Kubernetes agents are skipped: their DaemonSet owns the image.'),
    h('div', { class: 'row' },
      field('Version', verSel, null, 'rel-version'), field('Agent selector', sel, 'empty = every agent', 'rel-selector'),
      field('Canary agents', canary, null, 'rel-canary'), field('Wave size (%)', wave, null, 'rel-wave'),
      field('Halt above failures (%)', maxFail, null, 'rel-maxfail'), field('Pause between stages', pause, null, 'rel-pause'),
      submit),
    err);
  }

  await Promise.all([loadInventory(), loadReleases(), loadRollouts()]);
  let lastDigest = '';
  const close = events(pid, {
    agents: (s) => { if (lastDigest && s.digest !== lastDigest) loadInventory().catch(() => {}); lastDigest = s.digest; },
  });
  const timer = setInterval(() => { loadRollouts().catch(() => {}); }, 5000);
  return {
    title: 'Versions',
    cleanup: () => { close(); clearInterval(timer); },
    body: h('div', {},
      h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Versions'), sum)),
      h('section', { class: 'panel', 'aria-labelledby': 'ver-h' }, h('h2', { id: 'ver-h' }, 'Agents by version and platform'), invArea),
      served && form ? form : null,
      h('section', { class: 'panel', 'aria-labelledby': 'ro-h' }, h('h2', { id: 'ro-h' }, 'Release rollouts'),
        h('div', { class: 'table-wrap' }, h('table', { id: 'release-rollouts' },
          h('thead', {}, h('tr', {}, ['Version', 'Selector', 'Status', 'Stage', 'Started', 'By', ''].map((x) => h('th', { scope: 'col' }, x)))), roBody))),
      h('section', { class: 'panel', 'aria-labelledby': 'rel-h' }, h('h2', { id: 'rel-h' }, 'Agent releases'),
        h('div', { class: 'table-wrap' }, h('table', { id: 'releases' },
          h('thead', {}, h('tr', {}, ['Version', 'Platform', 'Size', 'SHA-256', 'Source', 'Uploaded', 'By'].map((x) => h('th', { scope: 'col' }, x)))), relBody)))),
  };
}

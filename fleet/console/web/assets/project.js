// Project pages: overview with onboarding, agents, one agent, API and
// bootstrap tokens, general settings.
import { h, api, state, toast, badge, fmtTime, fmtAgo, fmtNum, table, emptyRow, copyBox, confirmDialog, field, labelsOf, events, qs } from './lib.js';
import { canEdit, go, loadProjects } from './app.js';
import { flameGraph } from './flame.js';

const STATES = ['connected', 'disconnected', 'unhealthy', 'config-failed'];

function project(id) {
  const p = state.projects.find((x) => x.id === id);
  if (!p) throw new Error('Project ' + id + ' not found, or you have no access to it.');
  return p;
}

function head(title, sub, ...actions) {
  return h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, title), sub ? h('div', { class: 'sub' }, sub) : null), h('div', { class: 'row' }, actions));
}

function liveBadge() {
  const el = h('span', { class: 'live', role: 'status' }, 'live');
  return { el, set(on) { el.classList.toggle('on', on); el.textContent = on ? 'live' : 'reconnecting…'; } };
}

// Agent commands for a bootstrap token.
let installScript = null;
async function hasInstallScript() {
  if (installScript === null) {
    try { installScript = (await fetch('/install.sh', { method: 'HEAD' })).ok; } catch { installScript = false; }
  }
  return installScript;
}

export function systemdCommand(url, tok) {
  return `fleetprof-agent --fleet-address ${url} --bootstrap-token ${tok} --state-dir /var/lib/fleetprof-agent`;
}

export function kubernetesManifest(url, tok) {
  return `kubectl create namespace fleetprof
kubectl -n fleetprof create secret generic fleetprof-bootstrap --from-literal=token='${tok}'
kubectl apply -f - <<'EOF'
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: fleetprof-agent, namespace: fleetprof}
spec:
  selector: {matchLabels: {app: fleetprof-agent}}
  template:
    metadata: {labels: {app: fleetprof-agent}}
    spec:
      hostPID: true
      containers:
      - name: agent
        image: fleetprof/fleetprof-agent:latest
        args: ["--fleet-address=${url}", "--bootstrap-token-file=/etc/fleetprof/token",
               "--state-dir=/var/lib/fleetprof-agent", "--node=$(NODE_NAME)"]
        env: [{name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]
        securityContext: {privileged: true}
        volumeMounts:
        - {name: token, mountPath: /etc/fleetprof, readOnly: true}
        - {name: state, mountPath: /var/lib/fleetprof-agent}
      volumes:
      - {name: token, secret: {secretName: fleetprof-bootstrap}}
      - {name: state, hostPath: {path: /var/lib/fleetprof-agent, type: DirectoryOrCreate}}
EOF`;
}

async function commandTabs(tok) {
  const url = state.session.fleetUrl || location.origin;
  const tabs = [['systemd host', systemdCommand(url, tok)]];
  if (await hasInstallScript()) tabs.push(['install script', `curl -fsSL ${url}/install.sh | sudo sh -s -- --fleet-address ${url} --bootstrap-token ${tok}`]);
  tabs.push(['Kubernetes', kubernetesManifest(url, tok)]);
  const panel = h('div', { role: 'tabpanel' });
  const btns = tabs.map(([name, cmd], i) => h('button', { type: 'button', role: 'tab', 'aria-selected': i === 0 ? 'true' : 'false', onclick: (e) => {
    btns.forEach((b) => b.setAttribute('aria-selected', 'false'));
    e.currentTarget.setAttribute('aria-selected', 'true');
    panel.replaceChildren(copyBox(cmd, name + ' command', true));
  } }, name));
  panel.append(copyBox(tabs[0][1], tabs[0][0] + ' command', true));
  return h('div', { class: 'commands' }, h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'Install the agent on' }, btns), panel);
}

function tokenStatus(t) {
  if (t.revokedAt) return badge('revoked');
  if (t.expiresAt && new Date(t.expiresAt) < new Date()) return badge('expired');
  if (t.maxUses && t.uses >= t.maxUses) return badge('used up', 'expired');
  return badge('active');
}

// ---------- Overview with onboarding ----------

async function overview({ project: pid }) {
  const p = project(pid);
  const edit = canEdit(pid);
  const live = liveBadge();
  const page = await api('GET', `/projects/${pid}/agents?limit=5&sort=-created`);
  const counts = h('div', { class: 'counts' });
  const stat = h('div', { class: 'stat' }, fmtNum(page.total));
  const renderCounts = (c) => counts.replaceChildren(...STATES.map((s) => h('a', { href: `#/p/${pid}/agents?status=${s}`, class: 'badge ' + s }, `${s}: ${fmtNum(c[s] || 0)}`)));
  renderCounts(page.counts);

  // Onboarding steps.
  const step1 = h('li', { class: 'current' });
  const step2 = h('li', {});
  const step3 = h('li', {});
  const step4 = h('li', {});
  const tokenArea = h('div', {});
  const waitArea = h('div', { role: 'status', 'aria-live': 'polite' });
  const flameArea = h('div', {});
  let enrolled = page.total > 0;
  let haveToken = false;

  const boots = await api('GET', `/projects/${pid}/tokens?kind=bootstrap`);
  haveToken = boots.some((t) => !t.revokedAt);
  const genBtn = h('button', { type: 'button', class: 'primary', disabled: !edit, onclick: async () => {
    try {
      const res = await api('POST', `/projects/${pid}/tokens`, { name: 'first agents', scope: 'enroll', ttl: '30d' });
      tokenArea.replaceChildren(h('div', { class: 'secret' },
        h('div', { class: 'warn' }, 'This enrollment token is shown once: copy the command now.'),
        copyBox(res.token, 'bootstrap token')));
      haveToken = true;
      step2.replaceChildren(h('h3', {}, 'Install the agent'), h('p', { class: 'muted' }, 'Run this on a host (as root), or apply it to your cluster:'), await commandTabs(res.token));
      paint();
    } catch (e) { toast(e.message, 'error'); }
  } }, 'Generate enrollment token');
  step1.append(h('h3', {}, 'Generate an enrollment token'),
    h('p', { class: 'muted' }, 'Agents enroll with a bootstrap token, then get their own short-lived credential over OpAMP.'),
    edit ? genBtn : h('p', { class: 'muted' }, 'Your role cannot create tokens; ask an editor.'), tokenArea);
  step2.append(h('h3', {}, 'Install the agent'), h('p', { class: 'muted' }, 'The command appears here once a token exists. Existing tokens are on the ', h('a', { href: `#/p/${pid}/tokens` }, 'API tokens'), ' page.'));
  step3.append(h('h3', {}, 'Wait for the first agent'), waitArea);
  step4.append(h('h3', {}, 'See the first flame graph'), flameArea);

  function paint() {
    step1.className = haveToken ? 'done' : 'current';
    step2.className = haveToken ? (enrolled ? 'done' : 'current') : '';
    step3.className = enrolled ? 'done' : (haveToken ? 'current' : '');
    step4.className = enrolled ? 'current' : '';
    waitArea.replaceChildren(enrolled
      ? h('p', { id: 'first-agent' }, '✓ ', h('strong', {}, 'An agent is connected. '), h('a', { href: `#/p/${pid}/agents` }, 'See the agents'))
      : h('p', { class: 'muted' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Waiting for the first agent to connect… (this updates by itself)'));
  }
  paint();

  let flameShown = false;
  async function tryFlame() {
    if (flameShown || !enrolled) return;
    try {
      const root = await api('GET', `/projects/${pid}/profiles/merge${qs({ format: 'flamegraph', from: Date.now() - 3600e3, to: Date.now() })}`);
      if (root && root.value > 0) {
        flameShown = true;
        step4.className = 'done';
        const fg = flameGraph(root);
        flameArea.replaceChildren(fg.el, h('p', {}, h('a', { href: `#/p/${pid}/profiles` }, 'Open in the profile explorer →')));
      } else {
        flameArea.replaceChildren(h('p', { class: 'muted' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Waiting for the first profiles (one window of sampling)…'));
      }
    } catch (e) {
      flameArea.replaceChildren(h('p', { class: 'muted' }, e.status === 404 ? 'Profiles will show here once the fleet stores them.' : 'No profiles yet: ' + e.message));
    }
  }
  tryFlame();
  flameArea.append(h('p', { class: 'muted' }, 'Once an agent uploads its first window, the flame graph appears here.'));

  const timer = setInterval(tryFlame, 5000);
  const close = events(pid, {
    agents: (s) => {
      stat.textContent = fmtNum(s.total);
      renderCounts(s.counts);
      if (s.total > 0 && !enrolled) { enrolled = true; paint(); tryFlame(); }
    },
  }, live.set);

  const showOnboarding = !enrolled || !flameShown || location.hash.includes('onboarding');
  return {
    title: p.name,
    cleanup: () => { close(); clearInterval(timer); },
    body: h('div', {},
      head(p.name, 'Project ' + p.id, live.el),
      h('div', { class: 'grid2' },
        h('section', { class: 'panel', 'aria-labelledby': 'ov-agents' }, h('h2', { id: 'ov-agents' }, 'Agents'), stat, counts),
        h('section', { class: 'panel', 'aria-labelledby': 'ov-links' }, h('h2', { id: 'ov-links' }, 'Next'),
          h('ul', {}, h('li', {}, h('a', { href: `#/p/${pid}/agents` }, 'Browse agents')), h('li', {}, h('a', { href: `#/p/${pid}/tokens` }, 'Manage API and bootstrap tokens')),
            h('li', {}, h('a', { href: `#/p/${pid}/profiles` }, 'Explore profiles'))))),
      showOnboarding || true ? h('section', { class: 'panel', 'aria-labelledby': 'ob-h' }, h('h2', { id: 'ob-h' }, 'Get started'), h('ol', { class: 'steps' }, step1, step2, step3, step4)) : null),
  };
}

// ---------- Agents ----------

async function agents({ project: pid }) {
  project(pid);
  const edit = canEdit(pid);
  const q = new URLSearchParams(location.hash.split('?')[1] || '');
  const st = { selector: q.get('selector') || '', status: q.get('status') || '', sort: q.get('sort') || 'hostname', offset: 0, limit: 50 };
  const selected = new Set();
  const live = liveBadge();
  const selInput = h('input', { type: 'search', id: 'agents-selector', value: st.selector, placeholder: 'platform=systemd,cluster in (east)', size: 36 });
  const statusSel = h('select', { id: 'agents-status' });
  const tbody = h('tbody', {});
  const pager = h('div', { class: 'pager' });
  const err = h('div', { class: 'alert', role: 'alert', hidden: true });
  const bulkInfo = h('span', { class: 'muted' });
  const bulkBtn = h('button', { type: 'button', disabled: true, onclick: bulkRotate }, 'Rotate credentials');
  const labelBtn = h('button', { type: 'button', id: 'agents-assign-labels', disabled: true, onclick: bulkLabels }, 'Assign labels');
  const allBox = h('input', { type: 'checkbox', 'aria-label': 'Select all agents on this page', onchange: (e) => {
    for (const cb of tbody.querySelectorAll('input[type=checkbox]')) { cb.checked = e.target.checked; cb.dispatchEvent(new Event('change')); }
  } });
  let lastDigest = '';
  let current = null;

  const cols = [['hostname', 'Host'], ['state', 'Status'], ['platform', 'Platform'], ['version', 'Version'], [null, 'Labels'], ['lastSeen', 'Last seen']];
  const headRow = h('tr', {}, h('th', { scope: 'col' }, edit ? allBox : ''), cols.map(([k, label]) => h('th', { scope: 'col', 'aria-sort': k && st.sort.replace('-', '') === k ? (st.sort.startsWith('-') ? 'descending' : 'ascending') : null },
    k ? h('button', { type: 'button', class: 'sort', onclick: () => { st.sort = st.sort === k ? '-' + k : k; st.offset = 0; load(); } }, label, st.sort.replace('-', '') === k ? (st.sort.startsWith('-') ? ' ▼' : ' ▲') : '') : label)));

  function updateBulk() {
    bulkBtn.disabled = selected.size === 0;
    labelBtn.disabled = selected.size === 0;
    bulkInfo.textContent = selected.size ? `${selected.size} selected` : '';
  }

  async function bulkRotate() {
    if (!(await confirmDialog(`Rotate credentials of ${selected.size} agent(s)?`, 'Each gets a fresh credential over OpAMP; the old one stays valid until the agent proves the new one.', 'Rotate', false))) return;
    try {
      const r = await api('POST', `/projects/${pid}/agents/rotate-credentials`, { ids: [...selected] });
      toast(`Rotation started for ${r.started} of ${r.selected} agents` + (r.failed && r.failed.length ? ` (${r.failed.length} failed)` : ''));
      selected.clear(); updateBulk(); load();
    } catch (e) { toast(e.message, 'error'); }
  }

  async function bulkLabels() {
    const res = await labelsDialog(pid, [...selected]);
    if (!res) return;
    toast(`Labels updated on ${res.updated} agent(s)`);
    selected.clear(); updateBulk(); load();
  }

  async function load() {
    err.hidden = true;
    let page;
    try {
      page = await api('GET', `/projects/${pid}/agents${qs({ selector: st.selector, status: st.status, sort: st.sort, limit: st.limit, offset: st.offset })}`);
    } catch (e) {
      err.textContent = e.message; err.hidden = false;
      return;
    }
    current = page;
    const c = page.counts || {};
    const all = Object.values(c).reduce((a, b) => a + b, 0);
    statusSel.replaceChildren(h('option', { value: '' }, `All statuses (${fmtNum(all)})`), ...STATES.map((s) => h('option', { value: s, selected: s === st.status }, `${s} (${fmtNum(c[s] || 0)})`)));
    headRow.replaceWith(headRow); // keep
    tbody.replaceChildren(...(page.items.length ? page.items.map((a) => {
      const cb = edit ? h('input', { type: 'checkbox', 'aria-label': 'Select ' + (a.hostname || a.id), checked: selected.has(a.id), onchange: (e) => { e.target.checked ? selected.add(a.id) : selected.delete(a.id); updateBulk(); } }) : '';
      return h('tr', { dataset: { agent: a.id } },
        h('td', {}, cb),
        h('td', {}, h('a', { href: `#/p/${pid}/agents/${a.id}` }, a.hostname || a.id), h('div', { class: 'small muted mono' }, a.id.slice(0, 12))),
        h('td', {}, badge(a.state)),
        h('td', {}, a.platform || '—'), h('td', { class: 'small' }, a.version || '—'),
        h('td', {}, customLabelsOf(a)), h('td', { class: 'small' }, fmtAgo(a.lastSeen)));
    }) : [emptyRow(7, page.total === 0 && !st.selector && !st.status ? 'No agents yet' : 'No agents match',
      page.total === 0 && !st.selector && !st.status ? h('span', {}, ' Enroll one from the ', h('a', { href: `#/p/${pid}` }, 'overview'), '.') : ' Change the selector or status filter.')]));
    const from = page.total ? page.offset + 1 : 0, to = page.offset + page.items.length;
    pager.replaceChildren(h('span', {}, `${fmtNum(from)}–${fmtNum(to)} of ${fmtNum(page.total)}`),
      h('div', { class: 'row' },
        h('button', { type: 'button', disabled: page.offset === 0, onclick: () => { st.offset = Math.max(0, st.offset - st.limit); load(); } }, '← Previous'),
        h('button', { type: 'button', disabled: to >= page.total, onclick: () => { st.offset += st.limit; load(); } }, 'Next →')));
    allBox.checked = false;
  }

  const apply = (e) => { e && e.preventDefault(); st.selector = selInput.value.trim(); st.status = statusSel.value; st.offset = 0; load(); };
  statusSel.addEventListener('change', apply);
  await load();
  let pending = null;
  const close = events(pid, {
    agents: (s) => {
      if (s.digest === lastDigest) return;
      const first = lastDigest === '';
      lastDigest = s.digest;
      if (first && current) return;
      clearTimeout(pending);
      pending = setTimeout(load, 150); // coalesce bursts
    },
  }, live.set);
  return {
    title: 'Agents',
    cleanup: () => { close(); clearTimeout(pending); },
    body: h('div', {},
      head('Agents', 'Every agent enrolled into this project, updated live.', live.el),
      h('form', { class: 'toolbar', onsubmit: apply, role: 'search' },
        field('Label selector', selInput, null, 'agents-selector'),
        h('div', { class: 'field' }, h('label', { for: 'agents-status' }, 'Status'), statusSel),
        h('button', { type: 'submit' }, 'Filter'),
        h('span', { class: 'grow' }),
        edit ? h('div', { class: 'row' }, bulkInfo, labelBtn, bulkBtn) : null),
      err,
      h('div', { class: 'table-wrap' }, h('table', { id: 'agents-table' }, h('thead', {}, headRow), tbody)),
      pager),
  };
}

// customLabelsOf shows an agent's labels, marking those set in the console.
function customLabelsOf(a) {
  const custom = a.customLabels || {};
  const entries = Object.entries(a.labels || {});
  if (!entries.length) return h('span', { class: 'muted' }, '—');
  return entries.sort().map(([k, v]) => (custom[k] === v
    ? h('span', { class: 'chip custom', title: 'custom label, set in the console', dataset: { custom: k } }, k + '=' + v)
    : h('span', { class: 'chip' }, k + '=' + v)));
}

const WELL_KNOWN = ['platform', 'node', 'cluster', 'version', 'os', 'kernel', 'hostname', 'arch'];

// parseLabels reads "k=v, k2=v2" into an object; it throws on a bad pair.
function parseLabels(text) {
  const out = {};
  for (const kv of text.split(',').map((x) => x.trim()).filter(Boolean)) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new Error(`“${kv}” is not key=value`);
    out[kv.slice(0, i).trim()] = kv.slice(i + 1).trim();
  }
  return out;
}

// labelsDialog asks which custom labels to set and remove on agents and
// applies them; it resolves to the API's result, or null when cancelled.
function labelsDialog(pid, ids, one) {
  return new Promise((resolve) => {
    const set = h('input', { type: 'text', id: 'labels-set', autocomplete: 'off', placeholder: 'tier=gold, team=perf', size: 36 });
    const remove = h('input', { type: 'text', id: 'labels-remove', autocomplete: 'off', placeholder: 'tier', size: 36 });
    const custom = Object.keys((one && one.customLabels) || {});
    let done = false;
    const finish = (v) => { if (!done) { done = true; resolve(v); } };
    const submit = async (e) => {
      e.preventDefault();
      fieldError(set, ''); fieldError(remove, '');
      let body;
      try {
        body = { ids, set: parseLabels(set.value), remove: remove.value.split(',').map((x) => x.trim()).filter(Boolean) };
      } catch (ex) { fieldError(set, ex.message); return; }
      const known = [...Object.keys(body.set), ...body.remove].find((k) => WELL_KNOWN.includes(k));
      if (known) { fieldError(Object.keys(body.set).includes(known) ? set : remove, `“${known}” is reported by the agent and cannot be changed`); return; }
      if (!Object.keys(body.set).length && !body.remove.length) { fieldError(set, 'Give labels to set or remove'); return; }
      try {
        const res = await api('POST', `/projects/${pid}/agents/labels`, body);
        d.close(); finish(res);
      } catch (ex) { fieldError(ex.message.includes('"') && body.remove.some((k) => ex.message.includes(`"${k}"`)) ? remove : set, ex.message); }
    };
    const d = h('dialog', { 'aria-labelledby': 'labels-title', id: 'labels-dialog' },
      h('form', { class: 'stack', onsubmit: submit },
        h('h2', { id: 'labels-title' }, ids.length === 1 ? 'Labels of this agent' : `Assign labels to ${ids.length} agents`),
        h('p', { class: 'muted small' }, 'Custom labels are kept by the fleet and seen by selectors (rollouts, filters). They win over the agent\'s own labels, never over ',
          WELL_KNOWN.join(', '), '.'),
        field('Set labels', set, 'key=value, comma-separated', 'labels-set'),
        field('Remove labels', remove, custom.length ? 'custom now: ' + custom.join(', ') : 'label names, comma-separated', 'labels-remove'),
        h('div', { class: 'row' },
          h('button', { type: 'button', onclick: () => { d.close(); finish(null); } }, 'Cancel'),
          h('button', { type: 'submit', class: 'primary' }, 'Apply labels'))));
    d.addEventListener('close', () => { d.remove(); finish(null); });
    document.body.append(d);
    d.showModal();
    set.focus();
  });
}

// ---------- One agent ----------

async function agent({ project: pid, id }) {
  project(pid);
  const edit = canEdit(pid);
  const live = liveBadge();
  const body = h('div', {});
  async function load() {
    const a = await api('GET', `/projects/${pid}/agents/${id}`);
    const stateName = !a.connected ? 'disconnected' : a.configStatus === 'FAILED' ? 'config-failed' : !a.healthy ? 'unhealthy' : 'connected';
    const rotate = h('button', { type: 'button', class: 'primary', disabled: !edit, onclick: async () => {
      try { await api('POST', `/projects/${pid}/agents/${id}/rotate`); toast('Credential rotation started'); load(); } catch (e) { toast(e.message, 'error'); }
    } }, 'Rotate credentials');
    const revoke = h('button', { type: 'button', class: 'danger', disabled: !edit, onclick: async () => {
      if (!(await confirmDialog('Revoke this agent?', 'Its credentials stop working and its connection closes within seconds. It must enroll again to come back.', 'Revoke agent'))) return;
      try { await api('POST', `/projects/${pid}/agents/${id}/revoke`); toast('Agent revoked'); load(); } catch (e) { toast(e.message, 'error'); }
    } }, 'Revoke');
    const desc = Object.entries(a.description || {}).sort();
    body.replaceChildren(
      head(a.hostname || a.id, h('span', { class: 'mono' }, a.id), live.el, edit ? rotate : null, edit ? revoke : null),
      h('div', { class: 'grid2' },
        h('section', { class: 'panel', 'aria-labelledby': 'ag-desc' }, h('h2', { id: 'ag-desc' }, 'Description'),
          h('dl', { class: 'kv' },
            h('dt', {}, 'Status'), h('dd', { id: 'agent-state' }, badge(stateName)),
            h('dt', {}, 'Host'), h('dd', {}, a.hostname || '—'),
            h('dt', {}, 'Platform'), h('dd', {}, a.platform || '—'),
            h('dt', {}, 'Version'), h('dd', {}, a.version || '—'),
            h('dt', {}, 'Last seen'), h('dd', {}, fmtTime(a.lastSeen), ' (', fmtAgo(a.lastSeen), ')'),
            h('dt', {}, 'Enrolled'), h('dd', {}, fmtTime(a.createdAt)),
            h('dt', {}, 'Enrolled with'), h('dd', { class: 'mono small' }, a.enrolledWith || '—'),
            desc.map(([k, v]) => [h('dt', { class: 'mono small' }, k), h('dd', { class: 'small' }, v)]))),
        h('div', {},
          h('section', { class: 'panel', 'aria-labelledby': 'ag-labels', id: 'agent-labels' }, h('div', { class: 'page-head tight' }, h('h2', { id: 'ag-labels' }, 'Labels'),
            edit ? h('button', { type: 'button', onclick: async () => { if (await labelsDialog(pid, [a.id], a)) { toast('Labels updated'); load(); } } }, 'Edit labels') : null),
          customLabelsOf(a),
          Object.keys(a.customLabels || {}).length ? h('p', { class: 'small muted mt' }, h('span', { class: 'chip custom' }, 'custom'), ' labels were set in the console; the others come from the agent and its enrollment token.') : null),
          h('section', { class: 'panel', 'aria-labelledby': 'ag-health' }, h('h2', { id: 'ag-health' }, 'Health'),
            h('p', {}, a.healthy ? badge('healthy', 'ok') : badge('unhealthy'), ' ', a.health || '')),
          h('section', { class: 'panel', 'aria-labelledby': 'ag-cred' }, h('h2', { id: 'ag-cred' }, 'Credential'),
            h('dl', { class: 'kv' },
              h('dt', {}, 'Credential'), h('dd', { class: 'mono small', id: 'agent-credential' }, a.credentialId || '—'),
              h('dt', {}, 'Expires'), h('dd', {}, fmtTime(a.credentialExpiresAt), a.credentialExpiresAt ? ' (' + fmtAgo(a.credentialExpiresAt) + ')' : ''),
              h('dt', {}, 'Rotation'), h('dd', { id: 'agent-rotation' }, a.rotationStatus ? badge(a.rotationStatus, a.rotationStatus === 'rotated' ? 'ok' : a.rotationStatus) : '—',
                a.pendingCredentialId ? h('div', { class: 'small muted' }, 'pending ' + a.pendingCredentialId) : null,
                a.rotationError ? h('div', { class: 'alert' }, a.rotationError) : null))))),
      h('section', { class: 'panel', 'aria-labelledby': 'ag-config' }, h('h2', { id: 'ag-config' }, 'Configuration'),
        h('dl', { class: 'kv' },
          h('dt', {}, 'Status'), h('dd', {}, a.configStatus ? badge(a.configStatus, a.configStatus.toLowerCase()) : '—'),
          h('dt', {}, 'Hash'), h('dd', { class: 'mono small' }, a.configHash || '—')),
        a.configError ? h('div', { class: 'alert', role: 'alert' }, 'Config error: ' + a.configError) : null,
        h('h3', { class: 'mt' }, 'Effective config'),
        a.effectiveConfig ? h('pre', { class: 'block' }, a.effectiveConfig) : h('p', { class: 'muted' }, 'The agent has not reported one yet.')));
  }
  await load();
  let lastDigest = '';
  const close = events(pid, { agents: (s) => { if (lastDigest && s.digest !== lastDigest) load().catch(() => {}); lastDigest = s.digest; } }, live.set);
  return { title: 'Agent', body, cleanup: close };
}

// ---------- Tokens ----------

async function tokens({ project: pid }) {
  const p = project(pid);
  const edit = canEdit(pid);
  const apiBody = h('tbody', {});
  const bootBody = h('tbody', {});
  const apiResult = h('div', {});
  const bootResult = h('div', {});

  async function del(t) {
    if (!(await confirmDialog(`Delete token “${t.name}”?`, 'It stops working at once, everywhere: uploads or enrollments that use it are refused.', 'Delete token'))) return;
    try { await api('DELETE', `/projects/${pid}/tokens/${t.id}`); toast('Token deleted'); load(); } catch (e) { toast(e.message, 'error'); }
  }
  const delBtn = (t) => (edit && !t.revokedAt ? h('button', { type: 'button', class: 'danger', 'aria-label': 'Delete token ' + t.name, onclick: () => del(t) }, 'Delete') : '');

  async function load() {
    const [apis, boots] = await Promise.all([api('GET', `/projects/${pid}/tokens?kind=project`), api('GET', `/projects/${pid}/tokens?kind=bootstrap`)]);
    apiBody.replaceChildren(...(apis.length ? apis.map((t) => h('tr', { dataset: { token: t.id } },
      h('td', {}, t.name), h('td', {}, h('code', {}, 'write-profiles')), h('td', {}, tokenStatus(t)),
      h('td', { class: 'small' }, fmtTime(t.createdAt)), h('td', { class: 'small' }, fmtAgo(t.lastUsedAt)), h('td', {}, t.createdBy || '—'),
      h('td', { class: 'actions' }, delBtn(t)))) : [emptyRow(7, 'No API tokens', 'Create one for uploads from CI, another profiler, or curl.')]));
    bootBody.replaceChildren(...(boots.length ? boots.map((t) => h('tr', { dataset: { token: t.id } },
      h('td', {}, t.name), h('td', {}, labelsOf(t.labels)), h('td', {}, tokenStatus(t)),
      h('td', { class: 'small' }, fmtTime(t.createdAt)), h('td', { class: 'small' }, t.expiresAt ? fmtTime(t.expiresAt) : 'never'),
      h('td', {}, t.maxUses ? `${t.uses} / ${t.maxUses}` : `${t.uses}`), h('td', { class: 'small' }, fmtAgo(t.lastUsedAt)), h('td', {}, t.createdBy || '—'),
      h('td', { class: 'actions' }, delBtn(t)))) : [emptyRow(9, 'No bootstrap tokens', 'Agents enroll with one; create it here or from the overview.')]));
  }

  const apiName = h('input', { type: 'text', id: 'api-token-name', autocomplete: 'off', placeholder: 'ci-uploads' });
  const createApi = async (e) => {
    e.preventDefault();
    fieldError(apiName, '');
    try {
      const res = await api('POST', `/projects/${pid}/tokens`, { name: apiName.value, scope: 'write-profiles' });
      apiResult.replaceChildren(h('div', { class: 'secret', id: 'new-api-token', role: 'status' },
        h('div', { class: 'warn' }, '⚠ Copy this token now. It won\'t be shown again.'),
        copyBox(res.token, 'API token'),
        h('p', { class: 'small muted mt' }, 'Send it as ', h('code', {}, 'Authorization: Bearer <token>'), ' to the fleet\'s ingest, or use it as --bearer-token of an agent without a fleet.')));
      apiName.value = '';
      load();
    } catch (ex) { fieldError(apiName, ex.message); }
  };

  const bootName = h('input', { type: 'text', id: 'boot-token-name', autocomplete: 'off', placeholder: 'prod-hosts' });
  const bootLabels = h('input', { type: 'text', id: 'boot-token-labels', autocomplete: 'off', placeholder: 'cluster=east,team=perf' });
  const bootTTL = h('select', { id: 'boot-token-ttl' }, [['', 'never'], ['1h', '1 hour'], ['24h', '1 day'], ['7d', '7 days'], ['30d', '30 days'], ['90d', '90 days']].map(([v, l]) => h('option', { value: v }, l)));
  const bootUses = h('input', { type: 'number', id: 'boot-token-uses', min: 0, value: 0, class: 'narrow' });
  const createBoot = async (e) => {
    e.preventDefault();
    fieldError(bootName, ''); fieldError(bootLabels, '');
    const labels = {};
    for (const kv of bootLabels.value.split(',').map((x) => x.trim()).filter(Boolean)) {
      const i = kv.indexOf('=');
      if (i <= 0) { fieldError(bootLabels, `“${kv}” is not key=value`); return; }
      labels[kv.slice(0, i).trim()] = kv.slice(i + 1).trim();
    }
    try {
      const res = await api('POST', `/projects/${pid}/tokens`, { name: bootName.value, scope: 'enroll', ttl: bootTTL.value || undefined, labels, maxUses: Number(bootUses.value) || 0 });
      bootResult.replaceChildren(h('div', { class: 'secret', id: 'new-boot-token', role: 'status' },
        h('div', { class: 'warn' }, '⚠ Copy this token now. It won\'t be shown again.'),
        copyBox(res.token, 'bootstrap token'),
        h('h3', { class: 'mt' }, 'Install the agent'), await commandTabs(res.token)));
      bootName.value = '';
      load();
    } catch (ex) {
      (ex.message.includes('labels') ? fieldError(bootLabels, ex.message) : fieldError(bootName, ex.message));
    }
  };
  await load();
  return {
    title: 'API tokens',
    body: h('div', {},
      head('API tokens', `Project settings · ${p.name}`),
      h('section', { class: 'panel', 'aria-labelledby': 'tok-api' },
        h('h2', { id: 'tok-api' }, 'API tokens'),
        h('p', { class: 'muted' }, 'Project tokens write profiles. They are shown once; only their metadata is kept.'),
        edit ? h('form', { class: 'row', onsubmit: createApi }, field('Token name', apiName, null, 'api-token-name'), h('button', { type: 'submit', class: 'primary' }, 'Create token')) : h('p', { class: 'muted' }, 'Your role can see tokens but not create or delete them.'),
        apiResult,
        h('div', { class: 'table-wrap mt' }, h('table', { id: 'api-tokens' },
          h('thead', {}, h('tr', {}, ['Name', 'Scope', 'Status', 'Created', 'Last used', 'Creator', ''].map((x) => h('th', { scope: 'col' }, x)))), apiBody))),
      h('section', { class: 'panel', 'aria-labelledby': 'tok-boot' },
        h('h2', { id: 'tok-boot' }, 'Bootstrap tokens'),
        h('p', { class: 'muted' }, 'Agents enroll with these; their labels go onto every agent that uses them.'),
        edit ? h('form', { class: 'row', onsubmit: createBoot },
          field('Token name', bootName, null, 'boot-token-name'), field('Labels', bootLabels, 'key=value, comma-separated', 'boot-token-labels'),
          field('Expires after', bootTTL, null, 'boot-token-ttl'), field('Max uses', bootUses, '0 = unlimited', 'boot-token-uses'),
          h('button', { type: 'submit', class: 'primary' }, 'Create bootstrap token')) : null,
        bootResult,
        h('div', { class: 'table-wrap mt' }, h('table', { id: 'boot-tokens' },
          h('thead', {}, h('tr', {}, ['Name', 'Labels', 'Status', 'Created', 'Expires', 'Uses', 'Last used', 'Creator', ''].map((x) => h('th', { scope: 'col' }, x)))), bootBody)))),
  };
}

function fieldError(input, msg) {
  const el = document.getElementById(input.id + '-error');
  if (el) el.textContent = msg || '';
  if (msg) input.setAttribute('aria-invalid', 'true'); else input.removeAttribute('aria-invalid');
}

// ---------- Settings ----------

async function settings({ project: pid }) {
  const p = project(pid);
  const s = state.session;
  const org = state.orgs.find((o) => o.id === p.orgId);
  const sel = h('select', { id: 'project-move-org' }, state.orgs.map((o) => h('option', { value: o.id, selected: o.id === p.orgId }, o.name)));
  const move = async (e) => {
    e.preventDefault();
    try { await api('PUT', `/projects/${pid}/org`, { orgId: sel.value }); toast('Project moved'); await loadProjects(); go('/p/' + pid + '/settings'); } catch (ex) { toast(ex.message, 'error'); }
  };
  return {
    title: 'Settings',
    body: h('div', {},
      head('General', `Project settings · ${p.name}`),
      h('section', { class: 'panel' }, h('dl', { class: 'kv' },
        h('dt', {}, 'Name'), h('dd', {}, p.name), h('dt', {}, 'Project id'), h('dd', { class: 'mono' }, p.id),
        h('dt', {}, 'Organization'), h('dd', {}, org ? org.name : 'none'), h('dt', {}, 'Created'), h('dd', {}, fmtTime(p.createdAt)),
        h('dt', {}, 'Fleet URL'), h('dd', { class: 'mono' }, s.fleetUrl))),
      s.fleetAdmin && !s.readOnly && state.orgs.length ? h('form', { class: 'panel row', onsubmit: move },
        field('Move to organization', sel, null, 'project-move-org'), h('button', { type: 'submit' }, 'Move project')) : null),
  };
}

export const projectPages = { overview, agents, agent, tokens, settings };

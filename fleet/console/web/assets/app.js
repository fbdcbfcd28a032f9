// The fleetprof console: a hash-routed single page over the JSON API.
import { h, api, state, toast, badge, fmtTime, fmtAgo, table, emptyRow, APIError, copyBox, confirmDialog } from './lib.js';
import { projectPages } from './project.js';
import { profilesPage } from './profiles.js';
import { rolloutsPage, rolloutPage, hasRollouts } from './rollouts.js';
import { versionsPage } from './versions.js';

const app = document.getElementById('app');
let cleanup = null;

// Routes: pattern → page(params) returning {title, body, nav, cleanup?}.
const routes = [
  ['/signin', signInPage],
  ['/', homePage],
  ['/audit', auditPage],
  ['/admin', adminPage],
  ['/p/:project', (p) => projectPages.overview(p)],
  ['/p/:project/agents', (p) => projectPages.agents(p)],
  ['/p/:project/agents/:id', (p) => projectPages.agent(p)],
  ['/p/:project/tokens', (p) => projectPages.tokens(p)],
  ['/p/:project/profiles', (p) => profilesPage(p)],
  ['/p/:project/rollouts', (p) => rolloutsPage(p)],
  ['/p/:project/rollouts/:id', (p) => rolloutPage(p)],
  ['/p/:project/versions', (p) => versionsPage(p)],
  ['/p/:project/settings', (p) => projectPages.settings(p)],
];

function match(path) {
  const parts = path.split('/').filter(Boolean);
  for (const [pat, page] of routes) {
    const pp = pat.split('/').filter(Boolean);
    if (pp.length !== parts.length) continue;
    const params = {};
    let ok = true;
    pp.forEach((x, i) => {
      if (x.startsWith(':')) params[x.slice(1)] = decodeURIComponent(parts[i]);
      else if (x !== parts[i]) ok = false;
    });
    if (ok) return [page, params];
  }
  return [notFoundPage, {}];
}

export function go(path) { location.hash = '#' + path; }

export function canEdit(projectId) {
  const s = state.session;
  if (!s || s.readOnly) return false;
  if (s.fleetAdmin) return true;
  const p = state.projects.find((x) => x.id === projectId);
  const role = p && s.roles[p.orgId];
  return role === 'editor' || role === 'admin';
}

export async function loadProjects() {
  state.projects = await api('GET', '/projects');
  try { state.orgs = await api('GET', '/orgs'); } catch { state.orgs = []; }
}

async function route() {
  if (cleanup) { try { cleanup(); } catch (e) { console.error(e); } cleanup = null; }
  const path = (location.hash || '#/').slice(1).split('?')[0] || '/';
  if (path !== '/signin' && !state.session) {
    try {
      state.session = await api('GET', '/session');
      await loadProjects();
    } catch (e) {
      if (!(e instanceof APIError) || e.status !== 401) toast(e.message, 'error');
      go('/signin');
      return;
    }
  }
  const [page, params] = match(path);
  let view;
  try {
    view = await page(params);
  } catch (e) {
    if (e instanceof APIError && e.status === 401) return;
    view = { title: 'Error', body: h('div', { class: 'alert', role: 'alert' }, e.message) };
  }
  if (!view) return;
  cleanup = view.cleanup || null;
  document.title = (view.title ? view.title + ' · ' : '') + 'fleetprof';
  if (view.bare) {
    app.replaceChildren(view.body);
  } else {
    app.replaceChildren(h('div', { class: 'shell' }, nav(params.project, path), h('main', { id: 'main', tabindex: '-1' }, view.body)));
  }
  const focus = app.querySelector('[autofocus]');
  if (focus) focus.focus();
}

function nav(projectId, path) {
  const s = state.session;
  const link = (href, text) => h('a', { href: '#' + href, 'aria-current': path === href || (href !== '/' && href.split('/').length > 3 && path.startsWith(href + '/')) ? 'page' : null }, text);
  const project = state.projects.find((p) => p.id === projectId);
  const sel = h('select', { id: 'project-switch', onchange: (e) => go(e.target.value ? '/p/' + e.target.value : '/') },
    h('option', { value: '' }, 'All projects'),
    state.projects.map((p) => h('option', { value: p.id, selected: p.id === projectId }, projectLabel(p))));
  const items = [
    h('a', { class: 'brand', href: '#/' }, h('img', { src: '/assets/favicon.svg', alt: '' }), 'fleetprof'),
    h('label', { for: 'project-switch' }, 'Project'), sel,
  ];
  if (project) {
    const base = '/p/' + project.id;
    items.push(h('div', { class: 'section' }, project.name),
      link(base, 'Overview'), link(base + '/agents', 'Agents'));
    if (hasRollouts()) items.push(link(base + '/rollouts', 'Configs & rollouts'));
    items.push(link(base + '/versions', 'Versions'));
    items.push(link(base + '/profiles', 'Profiles'),
      h('div', { class: 'section' }, 'Project settings'),
      link(base + '/tokens', 'API tokens'), link(base + '/settings', 'General'));
  }
  items.push(h('div', { class: 'section' }, 'Fleet'), link('/', 'Projects'), link('/audit', 'Audit log'));
  if (s.fleetAdmin || Object.values(s.roles).includes('admin')) items.push(link('/admin', 'Users & organizations'));
  items.push(h('div', { class: 'spacer' }),
    h('div', { class: 'me' },
      h('div', { class: 'muted small' }, 'Signed in as'),
      h('div', { class: 'name' }, s.name),
      h('div', { class: 'small muted' }, s.fleetAdmin ? (s.readOnly ? 'fleet viewer' : 'fleet admin') : (s.readOnly ? 'read-only user' : 'user')),
      h('button', { type: 'button', onclick: signOut }, 'Sign out')));
  return h('nav', { class: 'nav', 'aria-label': 'Main' }, items);
}

export function projectLabel(p) {
  const org = state.orgs.find((o) => o.id === p.orgId);
  return org ? org.name + ' / ' + p.name : p.name;
}

async function signOut() {
  try { await api('DELETE', '/session'); } catch { /* signed out anyway */ }
  state.session = null;
  go('/signin');
}

function signInPage() {
  const input = h('input', { type: 'password', id: 'signin-token', name: 'token', autocomplete: 'off', required: true, autofocus: true, spellcheck: 'false' });
  const err = h('div', { class: 'alert', role: 'alert', hidden: true });
  const form = h('form', { class: 'stack', onsubmit: async (e) => {
    e.preventDefault();
    err.hidden = true;
    try {
      state.session = await api('POST', '/session', { token: input.value });
      await loadProjects();
      go('/');
    } catch (ex) {
      err.textContent = 'Sign-in failed: ' + ex.message;
      err.hidden = false;
      input.focus();
    }
  } },
  h('div', { class: 'field' }, h('label', { for: 'signin-token' }, 'Admin token or access key'), input,
    h('span', { class: 'hint' }, 'The fleet writes its first admin token to DATA_DIR/admin-token. Users get an access key (fpu_…) from an admin.')),
  err,
  h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  return {
    title: 'Sign in', bare: true,
    body: h('main', { class: 'signin' },
      h('div', { class: 'brand' }, h('img', { src: '/assets/favicon.svg', alt: '', width: 28, height: 28 }), 'fleetprof'),
      h('div', { class: 'panel' }, h('h1', {}, 'Sign in to the fleet console'), h('p', { class: 'muted' }, 'Always-on eBPF profiling, managed as a fleet.'), form)),
  };
}

async function homePage() {
  await loadProjects();
  const s = state.session;
  const canCreateOrg = !s.readOnly;
  const byOrg = new Map();
  for (const p of state.projects) {
    const k = p.orgId || '';
    if (!byOrg.has(k)) byOrg.set(k, []);
    byOrg.get(k).push(p);
  }
  for (const o of state.orgs) if (!byOrg.has(o.id)) byOrg.set(o.id, []);
  const groups = [...byOrg.entries()].map(([orgId, ps]) => {
    const org = state.orgs.find((o) => o.id === orgId);
    return h('section', { class: 'panel', 'aria-label': org ? org.name : 'Unassigned projects' },
      h('div', { class: 'page-head' }, h('h2', {}, org ? org.name : 'Projects without an organization'),
        org ? badge(org.role, 'role') : h('span', { class: 'muted small' }, 'visible to fleet admins only')),
      ps.length ? h('div', { class: 'cards' }, ps.map((p) => h('a', { class: 'card', href: '#/p/' + p.id },
        h('div', { class: 'title' }, p.name), h('div', { class: 'muted small' }, 'created ' + fmtAgo(p.createdAt)))))
        : h('div', { class: 'empty' }, h('strong', {}, 'No projects yet'), 'Create the first project of this organization below.'));
  });
  const orgName = h('input', { type: 'text', name: 'org-name', id: 'org-name', placeholder: 'acme' });
  const projName = h('input', { type: 'text', name: 'project-name', id: 'project-name', placeholder: 'production' });
  const orgSel = h('select', { id: 'project-org' },
    s.fleetAdmin ? h('option', { value: '' }, '(no organization)') : null,
    state.orgs.filter((o) => o.role === 'admin' || o.role === 'editor').map((o) => h('option', { value: o.id }, o.name)));
  if (!s.fleetAdmin && state.orgs.length) orgSel.value = state.orgs[0].id;
  if (s.fleetAdmin && state.orgs.length) orgSel.value = state.orgs[state.orgs.length - 1].id;
  const createProject = async (e) => {
    e.preventDefault();
    try {
      const body = { name: projName.value };
      if (orgSel.value) body.orgId = orgSel.value;
      const p = await api('POST', '/projects', body);
      toast('Project ' + p.name + ' created');
      await loadProjects();
      go('/p/' + p.id + '?onboarding=1');
    } catch (ex) { toast(ex.message, 'error'); }
  };
  const createOrg = async (e) => {
    e.preventDefault();
    try {
      const o = await api('POST', '/orgs', { name: orgName.value });
      toast('Organization ' + o.name + ' created: now create its first project');
      await loadProjects();
      route();
      setTimeout(() => { const sel = document.getElementById('project-org'); if (sel) sel.value = o.id; const n = document.getElementById('project-name'); if (n) n.focus(); }, 0);
    } catch (ex) { toast(ex.message, 'error'); }
  };
  const forms = s.readOnly ? [] : [h('div', { class: 'grid2' },
    h('form', { class: 'panel stack', onsubmit: createProject, 'aria-labelledby': 'np-h' },
      h('h2', { id: 'np-h' }, 'New project'),
      h('p', { class: 'muted' }, 'A project holds agents, tokens, configs and profiles. You will be walked through enrolling the first agent.'),
      h('div', { class: 'row' },
        h('div', { class: 'field' }, h('label', { for: 'project-name' }, 'Project name'), projName),
        h('div', { class: 'field' }, h('label', { for: 'project-org' }, 'Organization'), orgSel),
        h('button', { type: 'submit', class: 'primary' }, 'Create project'))),
    canCreateOrg ? h('form', { class: 'panel stack', onsubmit: createOrg, 'aria-labelledby': 'no-h' },
      h('h2', { id: 'no-h' }, 'New organization'),
      h('p', { class: 'muted' }, 'Organizations hold projects; their members are admins, editors or viewers.'),
      h('div', { class: 'row' },
        h('div', { class: 'field' }, h('label', { for: 'org-name' }, 'Organization name'), orgName),
        h('button', { type: 'submit', class: 'primary' }, 'Create organization'))) : null)];
  return {
    title: 'Projects',
    body: h('div', {},
      h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Projects'), h('div', { class: 'sub' }, 'Pick a project, or start a new one.'))),
      state.projects.length || state.orgs.length ? groups : h('div', { class: 'panel empty' }, h('strong', {}, 'Welcome to fleetprof'), 'Create an organization and a project to enroll your first agents.'),
      forms),
  };
}

async function auditPage() {
  const q = new URLSearchParams((location.hash.split('?')[1]) || '');
  const project = q.get('project') || '';
  const entries = await api('GET', '/audit?limit=500' + (project ? '&project=' + encodeURIComponent(project) : ''));
  const sel = h('select', { id: 'audit-project', onchange: (e) => go('/audit' + (e.target.value ? '?project=' + e.target.value : '')) },
    h('option', { value: '' }, 'All projects'), state.projects.map((p) => h('option', { value: p.id, selected: p.id === project }, projectLabel(p))));
  const pname = (id) => { const p = state.projects.find((x) => x.id === id); return p ? p.name : id || '—'; };
  const rows = entries.map((e) => h('tr', {},
    h('td', { class: 'small' }, fmtTime(e.time)), h('td', {}, e.actor), h('td', {}, pname(e.projectId)),
    h('td', {}, h('code', {}, e.action)), h('td', { class: 'small mono' }, e.target || ''),
    h('td', {}, e.result === 'ok' ? badge('ok') : h('span', { class: 'badge error', title: e.result }, e.result))));
  return {
    title: 'Audit log',
    body: h('div', {},
      h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Audit log'), h('div', { class: 'sub' }, 'Every admin action, who did it and how it ended.'))),
      h('div', { class: 'toolbar' }, h('div', { class: 'field' }, h('label', { for: 'audit-project' }, 'Project'), sel)),
      table(['Time', 'Actor', 'Project', 'Action', 'Target', 'Result'], rows, emptyRow(6, 'No entries yet', 'Actions such as creating tokens or rotating credentials appear here.'))),
  };
}

async function adminPage() {
  const s = state.session;
  const [users] = await Promise.all([api('GET', '/users'), loadProjects()]);
  const adminOrgs = state.orgs.filter((o) => o.role === 'admin');
  const orgName = (id) => { const o = state.orgs.find((x) => x.id === id); return o ? o.name : id; };
  const created = h('div', {});
  const name = h('input', { type: 'text', id: 'user-name', autocomplete: 'off' });
  const org = h('select', { id: 'user-org' }, s.fleetAdmin ? h('option', { value: '' }, '(none: fleet admin only)') : null, adminOrgs.map((o) => h('option', { value: o.id }, o.name)));
  if (adminOrgs.length) org.value = adminOrgs[0].id;
  const role = h('select', { id: 'user-role' }, ['viewer', 'editor', 'admin'].map((r) => h('option', { value: r }, r)));
  const ro = h('input', { type: 'checkbox', id: 'user-readonly' });
  const fa = h('input', { type: 'checkbox', id: 'user-fleetadmin', disabled: !s.fleetAdmin });
  const submit = async (e) => {
    e.preventDefault();
    try {
      const body = { name: name.value, readOnly: ro.checked, fleetAdmin: fa.checked };
      if (org.value) { body.orgId = org.value; body.role = role.value; }
      const res = await api('POST', '/users', body);
      created.replaceChildren(h('div', { class: 'secret', role: 'status' },
        h('div', { class: 'warn' }, 'Copy the access key of ' + res.user.name + ' now: it will not be shown again.'),
        copyBox(res.key, 'access key'),
        h('p', { class: 'small muted' }, 'They sign in with it on this page\'s sign-in screen.')));
      name.value = '';
      refresh();
    } catch (ex) { toast(ex.message, 'error'); }
  };
  const tbody = h('tbody', {});
  function render(list) {
    tbody.replaceChildren(...(list.length ? list.map((u) => h('tr', {},
      h('td', {}, u.name), h('td', {}, u.memberships.length ? u.memberships.map((m) => h('span', { class: 'chip' }, orgName(m.orgId) + ': ' + m.role)) : h('span', { class: 'muted' }, '—')),
      h('td', {}, u.fleetAdmin ? badge('fleet admin', 'active') : '—', u.readOnly ? badge('read-only', 'pending') : ''),
      h('td', { class: 'small' }, fmtTime(u.createdAt)), h('td', { class: 'small' }, fmtAgo(u.lastLoginAt)), h('td', {}, u.createdBy),
      h('td', { class: 'actions' }, s.fleetAdmin && !s.readOnly ? h('button', { type: 'button', class: 'danger', 'aria-label': 'Delete user ' + u.name, onclick: async () => {
        if (!(await confirmDialog('Delete user ' + u.name + '?', 'Their access key stops working and their sessions end at once.', 'Delete user'))) return;
        try { await api('DELETE', '/users/' + u.id); toast('User deleted'); refresh(); } catch (ex) { toast(ex.message, 'error'); }
      } }, 'Delete') : null))) : [emptyRow(7, 'No users yet', 'Create users for your team: each gets an access key to sign in with.')]));
  }
  async function refresh() { render(await api('GET', '/users')); }
  render(users);
  return {
    title: 'Users & organizations',
    body: h('div', {},
      h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Users & organizations'), h('div', { class: 'sub' }, 'Admins manage members; editors create tokens, roll out and rotate; viewers see.'))),
      s.readOnly ? null : h('form', { class: 'panel stack', onsubmit: submit, 'aria-labelledby': 'nu-h' },
        h('h2', { id: 'nu-h' }, 'New user'),
        h('div', { class: 'row' },
          h('div', { class: 'field' }, h('label', { for: 'user-name' }, 'Name'), name),
          h('div', { class: 'field' }, h('label', { for: 'user-org' }, 'Organization'), org),
          h('div', { class: 'field' }, h('label', { for: 'user-role' }, 'Role'), role),
          h('label', { class: 'check' }, ro, 'Read-only'),
          h('label', { class: 'check' }, fa, 'Fleet admin'),
          h('button', { type: 'submit', class: 'primary' }, 'Create user')),
        created),
      h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, h('tr', {}, ['Name', 'Organizations', 'Flags', 'Created', 'Last sign-in', 'Created by', ''].map((x) => h('th', { scope: 'col' }, x)))), tbody))),
  };
}

function notFoundPage() {
  return { title: 'Not found', body: h('div', { class: 'panel empty' }, h('strong', {}, 'Page not found'), h('a', { href: '#/' }, 'Back to projects')) };
}

window.addEventListener('hashchange', route);
route();

// The profile explorer: profile type, label matchers and a time range;
// totals over time as a sparkline and the merged range as a flame graph.
import { h, api, state, fmtNum, qs, field } from './lib.js';
import { flameGraph, sparkline } from './flame.js';

const RANGES = [['15m', 15], ['1h', 60], ['6h', 360], ['24h', 1440], ['7d', 10080]];

export async function profilesPage({ project: pid }) {
  const p = state.projects.find((x) => x.id === pid);
  if (!p) throw new Error('Project not found');
  const q = new URLSearchParams(location.hash.split('?')[1] || '');
  const typeSel = h('select', { id: 'prof-type' });
  const matchers = h('input', { type: 'text', id: 'prof-query', value: q.get('query') || '', placeholder: '{unit="api.service"}', size: 40, list: 'prof-labels' });
  const labelList = h('datalist', { id: 'prof-labels' });
  const range = h('select', { id: 'prof-range' }, RANGES.map(([l, m]) => h('option', { value: m, selected: l === (q.get('range') || '1h') }, 'Last ' + l)));
  const search = h('input', { type: 'search', id: 'prof-search', placeholder: 'function name', autocomplete: 'off' });
  const out = h('div', { role: 'region', 'aria-label': 'Query result', 'aria-live': 'polite' });
  const download = h('a', { class: 'button', id: 'prof-download', href: '#', download: 'profile.pb.gz' }, 'Download pprof');
  const searchInfo = h('span', { class: 'muted small', id: 'prof-search-info' });
  let fg = null;

  function window() {
    const to = Date.now();
    return { from: to - Number(range.value) * 60e3, to };
  }
  function queryString() {
    let sel = matchers.value.trim();
    const t = typeSel.value;
    if (t) {
      // The type goes into the selector as Parca does: name{matchers}.
      const name = t.split(':')[0];
      sel = name + (sel || '{}');
      if (!sel.endsWith('}')) sel += '{}';
    }
    return sel || '{}';
  }

  async function loadTypes() {
    const { from, to } = window();
    let types = [];
    try {
      types = await api('GET', `/projects/${pid}/profiles/types${qs({ from, to })}`);
    } catch (e) {
      out.replaceChildren(h('div', { class: 'alert info' }, e.status === 404 ? 'This fleet does not serve profiles yet.' : e.message));
      return false;
    }
    typeSel.replaceChildren(...(types.length ? types.map((t) => h('option', { value: t.id }, `${t.name} (${t.sample_type}/${t.sample_unit})`)) : [h('option', { value: '' }, 'no profiles in range')]));
    try {
      const names = await api('GET', `/projects/${pid}/profiles/labels${qs({ from, to })}`);
      labelList.replaceChildren(...names.map((n) => h('option', { value: `{${n}=""}` })));
    } catch { /* suggestions only */ }
    return true;
  }

  async function run(e) {
    if (e) e.preventDefault();
    const { from, to } = window();
    const query = queryString();
    const params = { query, from, to };
    download.href = `/api/v1/projects/${pid}/profiles/merge${qs({ ...params, format: 'pprof' })}`;
    out.replaceChildren(h('p', { class: 'muted' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Querying…'));
    if (fg) { fg.destroy(); fg = null; }
    try {
      const [series, root] = await Promise.all([
        api('GET', `/projects/${pid}/profiles/series${qs(params)}`),
        api('GET', `/projects/${pid}/profiles/merge${qs({ ...params, format: 'flamegraph' })}`),
      ]);
      const buckets = new Map();
      for (const s of series || []) for (const pt of s.points || []) {
        const t = Math.floor(new Date(pt.time).getTime() / 10000) * 10000;
        buckets.set(t, (buckets.get(t) || 0) + pt.total);
      }
      const pts = [...buckets.entries()].sort((a, b) => a[0] - b[0]).map(([t, v]) => ({ t, v }));
      if (!root || !root.value) {
        out.replaceChildren(h('div', { class: 'panel empty' }, h('strong', {}, 'No samples in this range'), 'Widen the time range or loosen the matchers.'));
        return;
      }
      const unit = (typeSel.value.split(':')[2]) || 'samples';
      fg = flameGraph(root, { unit });
      out.replaceChildren(
        h('section', { class: 'panel', 'aria-labelledby': 'spark-h' }, h('h2', { id: 'spark-h' }, 'Total over time'),
          sparkline(pts, `Totals of ${series.length} series over the range`), h('div', { class: 'small muted' }, `${series.length} series · ${unit === 'nanoseconds' ? (root.value / 1e9).toFixed(1) + ' s of CPU' : fmtNum(root.value) + ' ' + unit} merged`)),
        h('section', { class: 'panel', 'aria-labelledby': 'flame-h' },
          h('div', { class: 'page-head' }, h('h2', { id: 'flame-h' }, 'Flame graph'),
            h('div', { class: 'row' }, field('Search', search, null, 'prof-search'), searchInfo,
              h('button', { type: 'button', onclick: () => fg && fg.reset() }, 'Reset zoom'), download)),
          h('p', { class: 'small muted' }, 'Click a frame (or focus it and press Enter) to zoom; Escape resets. Hover for its share of the total.'),
          fg.el));
      if (search.value) doSearch();
    } catch (ex) {
      out.replaceChildren(h('div', { class: 'alert', role: 'alert' }, ex.message));
    }
  }
  function doSearch() {
    if (!fg) return;
    const n = fg.search(search.value);
    searchInfo.textContent = search.value ? `${n} frames · ${fg.find(search.value).toFixed(1)}% of total` : '';
  }
  search.addEventListener('input', doSearch);
  range.addEventListener('change', async () => { await loadTypes(); run(); });
  typeSel.addEventListener('change', () => run());

  const ok = await loadTypes();
  if (ok) run();
  return {
    title: 'Profiles',
    cleanup: () => { if (fg) fg.destroy(); },
    body: h('div', {},
      h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Profiles'), h('div', { class: 'sub' }, 'CPU profiles of ' + p.name + ', merged over a time range.'))),
      h('form', { class: 'toolbar panel', onsubmit: run, role: 'search' },
        field('Profile type', typeSel, null, 'prof-type'),
        field('Label matchers', matchers, 'e.g. {comm="nginx", node="a"}', 'prof-query'), labelList,
        field('Time range', range, null, 'prof-range'),
        h('button', { type: 'submit', class: 'primary' }, 'Run query')),
      out),
  };
}

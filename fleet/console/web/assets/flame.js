// A small flame graph renderer (icicle layout, root on top) over the
// fleet's FlameNode tree {name, value, self, children}. Frames are DOM
// elements: click or Enter zooms, search highlights, hovering shows the
// share of the total.
import { h } from './lib.js';

const ROW = 20;
const MIN_SHARE = 0.0015; // frames narrower than this share of the view are not drawn

function hue(name) {
  let x = 0;
  for (let i = 0; i < name.length; i++) x = (x * 31 + name.charCodeAt(i)) | 0;
  const r = Math.abs(x);
  return `hsl(${14 + (r % 36)}, ${72 + (r % 18)}%, ${62 + (r % 14)}%)`;
}

function fmtValue(v, unit) {
  if (unit === 'nanoseconds') return (v / 1e9).toFixed(v < 1e9 ? 3 : 1) + ' s';
  return v.toLocaleString() + ' ' + unit;
}

function annotate(node, parent, depth) {
  node.parent = parent;
  node.depth = depth;
  let maxDepth = depth;
  for (const c of node.children || []) maxDepth = Math.max(maxDepth, annotate(c, node, depth + 1));
  return maxDepth;
}

export function flameGraph(root, { unit = 'samples', onZoom } = {}) {
  const maxDepth = annotate(root, null, 0);
  const box = h('div', { class: 'flame', role: 'group', 'aria-label': 'Flame graph' });
  box.style.height = (maxDepth + 1) * ROW + 'px';
  const tip = h('div', { class: 'tooltip', hidden: true });
  document.body.append(tip);
  let focus = root;
  let term = '';

  function share(n) { return root.value ? (100 * n.value) / root.value : 0; }

  function render() {
    box.replaceChildren();
    const total = focus.value || 1;
    // Ancestors of the focus fill the width.
    for (let a = focus.parent; a; a = a.parent) draw(a, 0, 1);
    walk(focus, 0);
    function walk(n, x) {
      const w = n.value / total;
      if (w < MIN_SHARE) return;
      draw(n, x, w);
      let cx = x;
      for (const c of n.children || []) { walk(c, cx); cx += c.value / total; }
    }
    applySearch();
  }

  function draw(n, x, w) {
    const el = h('div', {
      class: 'frame', role: 'button', tabindex: w >= 0.01 ? '0' : '-1',
      'aria-label': `${n.name}: ${share(n).toFixed(2)}% of total`,
      title: '',
    }, n.name);
    el.style.left = x * 100 + '%';
    el.style.width = w * 100 + '%';
    el.style.top = n.depth * ROW + 'px';
    el.style.background = n === root ? '#d1d5db' : hue(n.name);
    el.frame = n;
    box.append(el);
  }

  function applySearch() {
    let matched = 0;
    for (const el of box.children) {
      const hit = term && el.frame.name.toLowerCase().includes(term);
      el.classList.toggle('match', !!hit);
      el.classList.toggle('dim', !!term && !hit);
      if (hit) matched++;
    }
    return matched;
  }

  function zoom(n) {
    focus = n || root;
    render();
    if (onZoom) onZoom(focus);
  }

  box.addEventListener('click', (e) => { const el = e.target.closest('.frame'); if (el) zoom(el.frame === focus ? focus.parent || root : el.frame); });
  box.addEventListener('keydown', (e) => {
    const el = e.target.closest('.frame');
    if (el && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); zoom(el.frame); }
    if (e.key === 'Escape') zoom(root);
  });
  box.addEventListener('mousemove', (e) => {
    const el = e.target.closest('.frame');
    if (!el) { tip.hidden = true; return; }
    const n = el.frame;
    tip.replaceChildren(h('strong', {}, n.name), h('br'),
      `${share(n).toFixed(2)}% of total · ${fmtValue(n.value, unit)}` + (n.self ? ` · self ${fmtValue(n.self, unit)}` : ''));
    tip.hidden = false;
    tip.style.left = Math.min(e.clientX + 14, innerWidth - 340) + 'px';
    tip.style.top = e.clientY + 16 + 'px';
  });
  box.addEventListener('mouseleave', () => { tip.hidden = true; });

  render();
  return {
    el: box,
    search(s) { term = (s || '').toLowerCase(); return applySearch(); },
    reset() { zoom(root); },
    destroy() { tip.remove(); },
    // find returns the total share (%) of frames whose name contains s.
    find(s) {
      let sum = 0;
      const seen = new Set();
      (function visit(n) {
        if (n.name.toLowerCase().includes(s.toLowerCase()) && !seen.has(n)) { sum += n.value; return; }
        for (const c of n.children || []) visit(c);
      })(root);
      return root.value ? (100 * sum) / root.value : 0;
    },
  };
}

// sparkline draws totals over time as an SVG area.
export function sparkline(points, label) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'sparkline');
  svg.setAttribute('viewBox', '0 0 1000 64');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label || 'Totals over time');
  if (!points.length) return svg;
  const t0 = points[0].t, t1 = points[points.length - 1].t || t0 + 1;
  const max = Math.max(...points.map((p) => p.v), 1);
  const xy = points.map((p) => [((p.t - t0) / Math.max(t1 - t0, 1)) * 1000, 62 - (p.v / max) * 58]);
  const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ');
  const area = document.createElementNS(ns, 'polygon');
  area.setAttribute('points', `0,64 ${line} 1000,64`);
  const pl = document.createElementNS(ns, 'polyline');
  pl.setAttribute('points', line);
  pl.setAttribute('vector-effect', 'non-scaling-stroke');
  svg.append(area, pl);
  return svg;
}

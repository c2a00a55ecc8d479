// tlc view: places the boxes and frames laid out by tlc (data in #tlc-data), opens and closes
// blocks in place, pans, zooms, searches and shows node details. No network, no libraries.
(function () {
  'use strict';
  const D = JSON.parse(document.getElementById('tlc-data').textContent);
  const M = D.m;
  const LR = D.lr;
  const $ = (id) => document.getElementById(id);
  const SVGNS = 'http://www.w3.org/2000/svg';
  const open = D.scopes.map((s) => s.level < D.depth);
  // Bends of all trunks of an instance in one array, and where each trunk starts in it.
  for (const sc of D.scopes) {
    sc.bends = [].concat(...sc.trunks);
    sc.base = [];
    let at = 0;
    for (const t of sc.trunks) { sc.base.push(at); at += t.length; }
  }
  let placed = [];
  let view = { x: 20, y: 20, k: 1 };

  // Abstract (across, along) to screen (x, y).
  const pt = (a, l) => (LR ? [l, a] : [a, l]);

  // Positions closest to `want` keeping x[i+1] - x[i] >= sep[i] (pool-adjacent-violators),
  // as layout::least_squares_spread in tlc.
  function spread(want, sep) {
    const off = [0];
    for (let i = 1; i < want.length; i++) off.push(off[i - 1] + sep[i - 1]);
    const blocks = [];
    want.forEach((w, i) => {
      blocks.push([1, w - off[i], 1]);
      while (blocks.length > 1) {
        const b2 = blocks[blocks.length - 1];
        const b1 = blocks[blocks.length - 2];
        if (b1[1] / b1[0] <= b2[1] / b2[0]) break;
        blocks.pop();
        blocks[blocks.length - 1] = [b1[0] + b2[0], b1[1] + b2[1], b1[2] + b2[2]];
      }
    });
    const out = [];
    for (const [w, s, c] of blocks) for (let j = 0; j < c; j++) out.push(s / w + off[out.length]);
    return out;
  }

  const foot = (f) => ({ b: f[0], a: f[1], l: f[2], exit: f[3], entry: f[4] });

  function feetOf(s) {
    return D.scopes[s].items.map(([k, ref, f]) => {
      if (k === 'c' && open[ref]) {
        const p = placed[ref];
        return { b: p.size[0] / 2, a: p.size[0] / 2, l: p.size[1], exit: p.size[1], entry: 0 };
      }
      return foot(k === 'c' ? D.blockFeet[ref] : f);
    });
  }

  // One open instance with its children at their current sizes: ranks keep tlc's order and
  // extents grow to the tallest item; items move as little as possible to stop overlapping.
  function place(s) {
    const sc = D.scopes[s];
    const feet = feetOf(s);
    const x = sc.items.map((it) => it[3]);
    const bx = sc.bends.slice();
    const solid = (f) => f.b + f.a > 0;
    for (const rank of sc.ranks) {
      const ext = rank.map((v) => (v >= 0 ? feet[v] : { b: 0, a: 0 }));
      const want = rank.map((v) => (v >= 0 ? x[v] : bx[-1 - v]));
      const sep = [];
      for (let i = 1; i < rank.length; i++) sep.push(ext[i - 1].a + ext[i].b + (solid(ext[i - 1]) && solid(ext[i]) ? M.item_gap : M.point_gap));
      const got = spread(want, sep);
      rank.forEach((v, i) => { if (v >= 0) x[v] = got[i]; else bx[-1 - v] = got[i]; });
    }
    let min = Infinity;
    x.forEach((v, i) => { min = Math.min(min, v - feet[i].b); });
    bx.forEach((v) => { min = Math.min(min, v); });
    if (!isFinite(min)) min = 0;
    let max = 0;
    x.forEach((v, i) => { x[i] = v - min; max = Math.max(max, x[i] + feet[i].a); });
    bx.forEach((v, i) => { bx[i] = v - min; max = Math.max(max, bx[i]); });
    const bands = [];
    let at = 0;
    for (const rank of sc.ranks) {
      let e = 0;
      for (const v of rank) if (v >= 0) e = Math.max(e, feet[v].l);
      bands.push([at, e]);
      at += e + M.rank_gap;
    }
    const last = bands[bands.length - 1];
    const size = [max + sc.inset[0] + M.cluster_pad, (last ? last[0] + last[1] : 0) + sc.inset[1] + M.cluster_pad];
    if (sc.titleInset && LR) size[1] = Math.max(size[1], sc.titleW + 2 * M.cluster_pad);
    if (sc.titleInset && !LR) size[0] = Math.max(size[0], sc.titleW + 2 * M.cluster_pad);
    const inPorts = {};
    const outPorts = {};
    sc.items.forEach(([k, ref, , , rank], i) => {
      const off = sc.inset[0] + x[i] - size[0] / 2;
      if (k === 'i') { inPorts[ref] = off; feet[i].exit = -sc.inset[1]; }
      if (k === 'o') { outPorts[ref] = off; feet[i].entry = size[1] - sc.inset[1] - bands[rank][0]; }
    });
    return { feet, x, bx, bands, size, inPorts, outPorts };
  }

  function portOf(item, value, exit) {
    const [k, ref] = item;
    if (k !== 'c' || !open[ref]) return 0;
    const ports = exit ? placed[ref].outPorts : placed[ref].inPorts;
    return ports[value] || 0;
  }

  function pathD(pts) {
    let d = '';
    pts.forEach(([a, l, curve], i) => {
      const [x, y] = pt(a, l);
      if (i === 0) d += `M${x},${y}`;
      else if (curve) {
        const [pa, pl] = pts[i - 1];
        const mid = (pl + l) / 2;
        const c1 = pt(pa, mid);
        const c2 = pt(a, mid);
        d += `C${c1[0]},${c1[1]} ${c2[0]},${c2[1]} ${x},${y}`;
      } else d += `L${x},${y}`;
    });
    return d;
  }

  // The path of an edge, as tlc routes it: out of the upper end, through the bends, into the lower end.
  function route(s, e, origin) {
    const sc = D.scopes[s];
    const p = placed[s];
    const [from, to, value, rev, trunk, nb] = sc.edges[e];
    const base = sc.base[trunk];
    const pf = portOf(sc.items[from], value, true);
    const pl = portOf(sc.items[to], value, false);
    const [up, low, pu, pw] = rev ? [to, from, pl, pf] : [from, to, pf, pl];
    const band = (r) => { const t = origin[1] + sc.inset[1] + p.bands[r][0]; return [t, t + p.bands[r][1]]; };
    const across = (v) => origin[0] + sc.inset[0] + v;
    const pts = [];
    const x0 = across(p.x[up] + pu);
    const [top, bottom] = band(sc.items[up][4]);
    pts.push([x0, top + p.feet[up].exit, false]);
    if (bottom > top + p.feet[up].exit) pts.push([x0, bottom, false]);
    for (let k = 0; k < nb; k++) {
      const [t, b] = band(sc.items[up][4] + 1 + k);
      const bxv = across(p.bx[base + k]);
      pts.push([bxv, t, true], [bxv, b, false]);
    }
    const xl = across(p.x[low] + pw);
    const t = band(sc.items[low][4])[0];
    pts.push([xl, t, true]);
    if (p.feet[low].entry > 0) pts.push([xl, t + p.feet[low].entry, false]);
    if (rev) {
      pts.reverse();
      const flags = pts.map((q) => q[2]);
      pts.forEach((q, i) => { q[2] = i > 0 && flags[i - 1]; });
    }
    return pathD(pts);
  }

  function show(el, x, y) {
    el.setAttribute('transform', `translate(${x},${y})`);
    el.style.display = '';
  }

  function titleCorner(s, origin) {
    if (D.scopes[s].titleInset) return pt(origin[0] + M.cluster_pad, origin[1] + M.cluster_pad);
    const p = placed[s];
    const sc = D.scopes[s];
    return pt(origin[0] + sc.inset[0] + p.x[0], origin[1] + sc.inset[1] + p.bands[0][0]);
  }

  function draw(s, origin, edges) {
    const sc = D.scopes[s];
    const p = placed[s];
    sc.items.forEach(([k, ref, , , rank], i) => {
      const a = origin[0] + sc.inset[0] + p.x[i];
      const l = origin[1] + sc.inset[1] + p.bands[rank][0];
      if (k === 'n' || (k === 'c' && !open[ref])) {
        const el = $((k === 'n' ? 'n' : 's') + ref);
        const across = LR ? +el.dataset.h : +el.dataset.w;
        const [x, y] = pt(a - across / 2, l);
        show(el, x, y);
      } else if (k === 'c') {
        const cp = placed[ref];
        const corner = [a - cp.size[0] / 2, l];
        const frame = $('c' + ref);
        const [x, y] = pt(corner[0], corner[1]);
        const [w, h] = pt(cp.size[0], cp.size[1]);
        const rect = frame.querySelector('rect');
        rect.setAttribute('x', x); rect.setAttribute('y', y);
        rect.setAttribute('width', w); rect.setAttribute('height', h);
        const [tx, ty] = titleCorner(ref, corner);
        const text = frame.querySelector('text');
        text.setAttribute('x', tx); text.setAttribute('y', ty + M.name_size);
        frame.style.display = '';
        draw(ref, corner, edges);
      }
    });
    sc.edges.forEach((edge, e) => {
      const target = sc.items[edge[1]];
      const arrow = target[0] === 'n' || (target[0] === 'c' && !open[target[1]]);
      edges.push(`<path class="edge" d="${route(s, e, origin)}"${arrow ? ' marker-end="url(#arrow)"' : ''}/>`);
    });
  }

  const visible = (s) => { for (let c = s; c !== null; c = D.scopes[c].parent) if (!open[c]) return false; return true; };

  function render() {
    open[0] = true;
    placed = [];
    for (let s = D.scopes.length - 1; s >= 0; s--) if (visible(s)) placed[s] = place(s);
    for (const el of document.querySelectorAll('#boxes > g, #frames > g')) el.style.display = 'none';
    const edges = [];
    draw(0, [0, 0], edges);
    $('edges').innerHTML = edges.join('');
    const [tx, ty] = titleCorner(0, [0, 0]);
    $('title').setAttribute('x', tx);
    $('title').setAttribute('y', ty + M.name_size);
    const [w, h] = pt(placed[0].size[0], placed[0].size[1]);
    $('canvas').dataset.w = w;
    $('canvas').dataset.h = h;
  }

  // Pan and zoom.
  const viewport = $('viewport');
  const applyView = () => viewport.setAttribute('transform', `translate(${view.x},${view.y}) scale(${view.k})`);
  function fit() {
    const c = $('canvas').getBoundingClientRect();
    const w = +$('canvas').dataset.w;
    const h = +$('canvas').dataset.h;
    const k = Math.min(1.5, (c.width - 40) / w, (c.height - 40) / h);
    view = { k, x: (c.width - w * k) / 2, y: 20 };
    applyView();
  }
  function screenOf(el) {
    const r = el.getBoundingClientRect();
    return [r.left, r.top];
  }
  // Re-renders keeping `el` (or `keepId`'s new element) where it was on screen.
  function rerender(el, keepId) {
    const before = el && el.style.display !== 'none' ? screenOf(el) : null;
    render();
    const after = keepId ? $(keepId) : el;
    if (before && after && after.style.display !== 'none') {
      const now = screenOf(after.tagName === 'g' && after.classList.contains('cluster') ? after.querySelector('rect') : after);
      view.x += before[0] - now[0];
      view.y += before[1] - now[1];
      applyView();
    }
  }
  let drag = null;
  const canvas = $('canvas');
  canvas.addEventListener('pointerdown', (ev) => {
    drag = { x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y, moved: false };
  });
  window.addEventListener('pointermove', (ev) => {
    if (!drag) return;
    const dx = ev.clientX - drag.x;
    const dy = ev.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    view.x = drag.vx + dx;
    view.y = drag.vy + dy;
    applyView();
  });
  window.addEventListener('pointerup', () => { setTimeout(() => { drag = null; }, 0); });
  canvas.addEventListener('wheel', (ev) => {
    ev.preventDefault();
    const r = canvas.getBoundingClientRect();
    const mx = ev.clientX - r.left;
    const my = ev.clientY - r.top;
    const f = Math.exp(-ev.deltaY * 0.0015);
    const k = Math.min(8, Math.max(0.02, view.k * f));
    view.x = mx - (mx - view.x) * (k / view.k);
    view.y = my - (my - view.y) * (k / view.k);
    view.k = k;
    applyView();
  }, { passive: false });

  // Details.
  const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const human = (n) => (n >= 1e9 ? (n / 1e9).toFixed(2) + 'G' : n >= 1e6 ? (n / 1e6).toFixed(2) + 'M' : n >= 1e3 ? (n / 1e3).toFixed(1) + 'K' : String(n));
  function attrsHtml(attrs) {
    if (attrs === null || typeof attrs !== 'object') return '';
    const inner = Object.values(attrs)[0];
    if (inner === null || typeof inner !== 'object' || Array.isArray(inner)) return `<tr><th>attrs</th><td>${esc(JSON.stringify(inner))}</td></tr>`;
    return Object.entries(inner).map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(JSON.stringify(v))}</td></tr>`).join('');
  }
  function source(at, src) {
    return at ? `<p class="src"><span>${esc(at)}</span><code>${esc(src)}</code></p>` : '';
  }
  function sourceLine(i) {
    return i >= 0 ? source(D.lines[i][0], D.lines[i][1]) : '';
  }
  function showNode(i) {
    const n = D.nodes[i];
    const total = n.params.reduce((t, p) => t + p[1].reduce((a, b) => a * b, 1), 0);
    const params = n.params.map((p) => `<li><code>${esc(p[0][0] === '.' ? n.name + p[0] : p[0])}</code> [${p[1].join(', ')}]</li>`).join('');
    $('details').innerHTML = `<h2>${esc(n.name)}</h2><table><tr><th>op</th><td>${esc(n.op)}</td></tr>${attrsHtml(n.attrs)}` +
      `<tr><th>output</th><td>${esc(n.shape)}</td></tr><tr><th>params</th><td>${total.toLocaleString('en')}</td></tr>` +
      `<tr><th>MACs</th><td>${n.macs.toLocaleString('en')} (${human(n.macs)})</td></tr></table>` +
      (params ? `<ul class="params">${params}</ul>` : '') + sourceLine(n.line);
  }
  function showScope(s) {
    const sc = D.scopes[s];
    $('details').innerHTML = `<h2>${esc(sc.path)}</h2><table><tr><th>block</th><td>${esc(sc.block)}</td></tr>` +
      `<tr><th>params</th><td>${sc.params.toLocaleString('en')} (${human(sc.params)})</td></tr>` +
      `<tr><th>MACs</th><td>${sc.macs.toLocaleString('en')} (${human(sc.macs)})</td></tr></table>` +
      `<button id="toggle">${open[s] ? 'close' : 'open'} this block</button>` + sourceLine(sc.line);
    $('toggle').addEventListener('click', () => { setOpen(s, !open[s]); showScope(s); });
  }
  function setOpen(s, value) {
    const el = $((open[s] ? 'c' : 's') + s);
    open[s] = value;
    rerender(el.tagName === 'g' && el.classList.contains('cluster') ? el.querySelector('rect') : el, value ? 'c' + s : 's' + s);
  }
  let selected = null;
  function select(el) {
    if (selected) selected.classList.remove('sel');
    selected = el;
    if (el) el.classList.add('sel');
  }
  $('boxes').addEventListener('click', (ev) => {
    if (drag && drag.moved) return;
    const g = ev.target.closest('g.box');
    if (!g) return;
    const id = +g.id.slice(1);
    if (g.id[0] === 'n') { select(g); showNode(id); } else { showScope(id); setOpen(id, true); }
  });
  $('frames').addEventListener('click', (ev) => {
    if (drag && drag.moved) return;
    const t = ev.target.closest('text.ctitle');
    if (!t) return;
    const s = +t.parentNode.id.slice(1);
    setOpen(s, false);
    showScope(s);
  });

  // Search.
  let hits = [];
  let hitAt = -1;
  function reveal(s) {
    for (let c = s; c !== null; c = D.scopes[c].parent) open[c] = true;
  }
  function centerOn(el) {
    const c = canvas.getBoundingClientRect();
    const r = el.getBoundingClientRect();
    view.x += c.left + c.width / 2 - (r.left + r.width / 2);
    view.y += c.top + c.height / 2 - (r.top + r.height / 2);
    applyView();
  }
  function search(q) {
    q = q.trim().toLowerCase();
    hits = [];
    if (q) {
      D.nodes.forEach((n, i) => { if (n.name.toLowerCase().includes(q)) hits.push(['n', i]); });
      D.scopes.forEach((s, i) => { if (i > 0 && s.path.toLowerCase().includes(q)) hits.push(['s', i]); });
    }
    hitAt = -1;
    $('hits').textContent = q ? `${hits.length} found` : '';
  }
  function nextHit() {
    if (!hits.length) return null;
    hitAt = (hitAt + 1) % hits.length;
    const [k, i] = hits[hitAt];
    if (k === 'n') reveal(D.nodes[i].scope); else { reveal(D.scopes[i].parent); open[i] = false; }
    render();
    const el = $(k + i);
    select(el);
    view.k = Math.max(view.k, 1);
    applyView();
    centerOn(el);
    if (k === 'n') showNode(i); else showScope(i);
    $('hits').textContent = `${hitAt + 1} of ${hits.length}`;
    return el;
  }
  $('search').addEventListener('input', (ev) => search(ev.target.value));
  $('search').addEventListener('keydown', (ev) => { if (ev.key === 'Enter') nextHit(); });
  $('fit').addEventListener('click', () => fit());
  function setDepth(d) {
    D.depth = Math.max(1, d);
    D.scopes.forEach((s, i) => { open[i] = s.level < D.depth; });
    render();
    fit();
  }
  $('more').addEventListener('click', () => setDepth(D.depth + 1));
  $('less').addEventListener('click', () => setDepth(D.depth - 1));

  render();
  fit();
  // For scripts and tests: open or close a block by path, find a node box by name.
  window.tlcView = {
    open: (path, value = true) => {
      const s = D.scopes.findIndex((sc, i) => i > 0 && sc.path === path);
      if (s < 0) return false;
      if (value) reveal(s); else open[s] = false;
      render();
      return true;
    },
    box: (name) => { const i = D.nodes.findIndex((n) => n.name === name); return i < 0 ? null : $('n' + i); },
    search: (q) => { search(q); return nextHit(); },
    fit,
  };
})();

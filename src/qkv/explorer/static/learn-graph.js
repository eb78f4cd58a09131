/* qkv learn: the architecture graph, drawn from the server's layout (an SVG user space of
   width × height; a node is a concept at x, y, its centre). Every node is focusable and
   labelled; Enter (or a click) on an open or mastered node opens its lesson; arrow keys
   move between nodes. A plain list beside it says the same in text. */

import { el } from "./learn-markup.js";

const SVG = "http://www.w3.org/2000/svg";
const STATE_TEXT = { locked: "locked", open: "open", mastered: "mastered" };
const NODE_H = 38;

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function describe(node, lessons) {
  const lesson = lessons.get(node.lesson);
  const where = lesson ? `, lesson ${lesson.order}: ${lesson.title}` : "";
  const due = (node.due ? ", due for review" : "") + (node.practised ? ", exercise passed" : "");
  const how = node.state === "locked" ? "" : ". Press Enter to open the lesson";
  return `${node.title}: ${STATE_TEXT[node.state] || node.state}${due}${where}${how}`;
}

/* Where the segment from the centre (cx, cy) towards (tx, ty) leaves a w × h box. */
function edgePoint(cx, cy, w, h, tx, ty) {
  const dx = tx - cx, dy = ty - cy;
  if (!dx && !dy) return [cx, cy];
  const s = Math.min(Math.abs(w / 2 / (dx || 1e-9)), Math.abs(h / 2 / (dy || 1e-9)));
  return [cx + dx * s, cy + dy * s];
}

/* A title in at most two lines of about `room` characters. */
function wrapTitle(title, room) {
  if (title.length <= room) return [title];
  const words = title.split(" ");
  let first = "";
  while (words.length && (first + " " + words[0]).trim().length <= room) first = (first + " " + words.shift()).trim();
  if (!first) first = words.shift();
  return [first, words.join(" ")].filter(Boolean);
}

/* Draws `graph` into `host`; `open(lessonId)` opens a lesson; `unlocked` ids get a highlight;
   `current` is the lesson on screen. A node's x, y is its box's top-left corner, w × h its size
   (without w/h, x, y is its centre). The drawing is cropped to the nodes. Returns the svg. */
export function drawGraph(host, graph, lessonsList, { open, unlocked = [], current = null } = {}) {
  const lessons = new Map(lessonsList.map(l => [l.id, l]));
  const nodes = (graph.nodes || []).map(n => {
    const w = n.w || 150, h = n.h || NODE_H;
    const cx = n.w ? n.x + w / 2 : n.x, cy = n.h ? n.y + h / 2 : n.y;
    return Object.assign({}, n, { cx, cy, w, h });
  });
  const pad = 8;
  const x0 = Math.min(...nodes.map(n => n.cx - n.w / 2)) - pad, x1 = Math.max(...nodes.map(n => n.cx + n.w / 2)) + pad;
  const y0 = Math.min(...nodes.map(n => n.cy - n.h / 2)) - pad, y1 = Math.max(...nodes.map(n => n.cy + n.h / 2)) + pad;
  const VW = nodes.length ? x1 - x0 : graph.width || 400, VH = nodes.length ? y1 - y0 : graph.height || 300;
  const s = svg("svg", {
    viewBox: `${nodes.length ? x0 : 0} ${nodes.length ? y0 : 0} ${VW} ${VH}`,
    class: "graph", role: "list", "aria-label": "Architecture graph: the course's concepts and what each needs",
  });
  s.dataset.testid = "learn-graph";
  s.style.aspectRatio = `${VW} / ${VH}`;
  s.style.minWidth = Math.round(VW * 0.78) + "px";  // text stays readable; the host scrolls sideways
  s.style.maxWidth = Math.round(VW * 1.1) + "px";
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow-head" }));
  defs.append(marker);
  s.append(defs);
  const byId = new Map(nodes.map(n => [n.id, n]));
  const edges = svg("g", { class: "edges", "aria-hidden": "true" });
  for (const [from, to] of graph.edges || []) {
    const a = byId.get(from), b = byId.get(to);
    if (!a || !b) continue;
    const [x1, y1] = edgePoint(a.cx, a.cy, a.w, a.h, b.cx, b.cy);
    const [x2, y2] = edgePoint(b.cx, b.cy, b.w + 4, b.h + 4, a.cx, a.cy);
    edges.append(svg("line", { x1, y1, x2, y2, class: "edge" + (b.state === "locked" ? " to-locked" : ""),
      "marker-end": "url(#arrow)" }));
  }
  s.append(edges);
  const groups = [];
  const fresh = new Set(unlocked);
  for (const n of nodes) {
    const g = svg("g", { class: `node ${n.state}`, transform: `translate(${n.cx} ${n.cy})`, role: "listitem",
      tabindex: 0, "aria-label": describe(n, lessons) });
    g.dataset.testid = "graph-node-" + n.id;
    g.dataset.state = n.state;
    g.dataset.lesson = n.lesson;
    if (n.due) g.dataset.due = "true";
    if (n.practised) g.dataset.practised = "true";
    if (fresh.has(n.id)) { g.classList.add("unlocked"); g.dataset.unlocked = "true"; }
    if (current && n.lesson === current) g.classList.add("current");
    const nodeW = n.w, nodeH = n.h;
    g.append(svg("rect", { x: -nodeW / 2, y: -nodeH / 2, width: nodeW, height: nodeH, rx: 9, class: "box" }));
    const icon = n.state === "mastered" || n.state === "locked";
    const lines = wrapTitle(n.title, Math.floor((nodeW - (icon ? 32 : 14)) / 7.4));
    const title = svg("text", { x: icon ? 10 : 0, y: 0, "text-anchor": "middle", class: "title" });
    lines.forEach((line, k) => {
      const y = (k - (lines.length - 1) / 2) * 14;
      title.append(svg("tspan", { x: icon ? 10 : 0, y, "dominant-baseline": "middle" }, line));
    });
    g.append(title);
    const ix = -nodeW / 2 + 13;
    if (n.state === "mastered") {
      g.append(svg("path", { d: `M${ix - 5},1 l3.5,4 l7,-9`, class: "icon check" }));
    } else if (n.state === "locked") {
      g.append(svg("path", { d: `M${ix - 3},-2 v-3 a3,3 0 0 1 6,0 v3`, class: "icon shackle" }));
      g.append(svg("rect", { x: ix - 5, y: -2, width: 10, height: 8, rx: 1.5, class: "icon lock" }));
    }
    if (n.due) {
      g.append(svg("circle", { cx: nodeW / 2 - 3, cy: -nodeH / 2 + 3, r: 8, class: "due-badge" }));
      g.append(svg("text", { x: nodeW / 2 - 3, y: -nodeH / 2 + 3.5, "text-anchor": "middle",
        "dominant-baseline": "middle", class: "due-text" }, "↻"));
    }
    if (n.practised) {
      g.append(svg("circle", { cx: -nodeW / 2 + 3, cy: -nodeH / 2 + 3, r: 8, class: "practised-badge" }));
      g.append(svg("text", { x: -nodeW / 2 + 3, y: -nodeH / 2 + 3.5, "text-anchor": "middle",
        "dominant-baseline": "middle", class: "practised-text" }, "✎"));
    }
    const tip = svg("title", {}, describe(n, lessons));
    g.append(tip);
    const go = () => { if (n.state !== "locked") open(n.lesson); };
    g.addEventListener("click", go);
    g.addEventListener("keydown", e => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); return; }
      const dir = { ArrowRight: [1, 0], ArrowLeft: [-1, 0], ArrowDown: [0, 1], ArrowUp: [0, -1] }[e.key];
      if (!dir) return;
      e.preventDefault();
      let best = null, bestScore = Infinity;
      for (const m of groups) {
        if (m.node === n) continue;
        const dx = m.node.cx - n.cx, dy = m.node.cy - n.cy;
        const along = dx * dir[0] + dy * dir[1];
        if (along <= 0) continue;
        const score = along + 2 * Math.abs(dx * dir[1] + dy * dir[0]);
        if (score < bestScore) { best = m; bestScore = score; }
      }
      if (best) best.g.focus();
    });
    s.append(g);
    groups.push({ node: n, g });
  }
  host.replaceChildren(s);
  return s;
}

/* The graph as text: every concept, its state, and what it needs. */
export function graphText(graph) {
  const byId = new Map((graph.nodes || []).map(n => [n.id, n]));
  const needs = new Map();
  for (const [from, to] of graph.edges || []) {
    if (!needs.has(to)) needs.set(to, []);
    if (byId.has(from)) needs.get(to).push(byId.get(from).title);
  }
  const ul = el("ul", "graph-text");
  for (const n of graph.nodes || []) {
    const li = el("li", "state-" + n.state);
    li.append(el("b", null, n.title), document.createTextNode(
      ` — ${STATE_TEXT[n.state] || n.state}${n.due ? ", due for review" : ""}${n.practised ? ", exercise passed" : ""}`
      + (needs.get(n.id) ? `; needs ${needs.get(n.id).join(", ")}` : "; needs nothing")));
    ul.append(li);
  }
  return ul;
}

/* qkv learn: drawing a widget's views (matrix, bars, lines, tokens, table, text) and the
   live widget itself (its controls, a debounced recompute, "computing…", errors).
   SVG and HTML only; colours from a colour-blind-safe palette. */

import { el, markup, markupEl } from "./learn-markup.js";
import { api } from "./learn-api.js";

const SVG = "http://www.w3.org/2000/svg";

/* Okabe–Ito: distinguishable with every common colour-vision deficiency. */
export const SERIES = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000"];
const DASHES = ["", "6 3", "2 3", "8 3 2 3", "1 2", "10 4"];

/* A sequential scale from white through yellow-green to viridis' dark purple: 0 = blank. */
const SEQ = [
  [255, 255, 255], [253, 231, 37], [122, 209, 81], [34, 168, 132], [42, 120, 142], [65, 68, 135], [68, 1, 84],
];
/* Diverging: orange (negative) - white - blue (positive). */
const DIV = [
  [179, 88, 6], [241, 163, 64], [254, 224, 182], [247, 247, 247], [209, 229, 240], [103, 169, 207], [33, 102, 172],
];

function interp(stops, t) {
  t = Math.max(0, Math.min(1, Number.isFinite(t) ? t : 0));
  const x = t * (stops.length - 1), k = Math.min(Math.floor(x), stops.length - 2), f = x - k;
  return stops[k].map((c, i) => Math.round(c * (1 - f) + stops[k + 1][i] * f));
}

function rgb(c) { return "rgb(" + c.join(",") + ")"; }
function dark(c) { return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2] < 140; }

export function shade(node, t, stops = SEQ) {
  const c = interp(stops, t);
  node.style.backgroundColor = rgb(c);
  node.style.color = dark(c) ? "#fff" : "#111";
}

export function fmt(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a < 0.001 || a >= 1e5) return v.toExponential(1).replace("e+", "e");
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  return v.toFixed(3);
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function figure(view, kind) {
  const f = el("figure", "view view-" + kind);
  f.dataset.kind = kind;
  if (view.title) f.append(el("figcaption", "view-title", view.title));
  return f;
}

function caption(f, view) {
  if (view.caption) f.append(markupEl("div", "view-caption", view.caption));
  return f;
}

/* ── matrix ── */
function drawMatrix(view, onToggle) {
  const f = figure(view, "matrix");
  const values = view.values || [];
  const flat = values.flat().filter(v => typeof v === "number" && Number.isFinite(v));
  const lo = Math.min(0, ...flat), hi = Math.max(0, ...flat);
  const absMax = Math.max(Math.abs(lo), Math.abs(hi), 1e-12);
  const weights = !view.diverging && lo >= 0 && hi <= 1;
  const scale = v => view.diverging ? 0.5 + v / (2 * absMax) : weights ? v : (v - lo) / Math.max(hi - lo, 1e-12);
  const editable = view.editable && onToggle ? view.editable : null;
  const wrap = el("div", "matrix-scroll");
  const table = el("table", "matrix");
  if (editable) {
    table.setAttribute("role", "grid");
    table.setAttribute("aria-label", (view.title || "mask") + ": Enter or Space toggles a cell, arrows move");
  }
  const head = el("tr");
  head.append(el("th", "corner"));
  for (const c of view.cols || []) {
    const th = el("th", "col-label", c);
    th.scope = "col";
    head.append(th);
  }
  const thead = el("thead");
  thead.append(head);
  table.append(thead);
  const body = el("tbody");
  const cells = [];
  values.forEach((row, i) => {
    const tr = el("tr");
    const th = el("th", "row-label", (view.rows || [])[i] ?? i);
    th.scope = "row";
    tr.append(th);
    cells.push([]);
    row.forEach((v, j) => {
      const td = el("td", "cell");
      if (v === null || v === undefined) {
        td.classList.add("masked");
        td.textContent = "×";
        td.title = "masked";
        td.setAttribute("aria-label", "masked");
      } else {
        td.textContent = fmt(v);
        shade(td, scale(v), view.diverging ? DIV : SEQ);
      }
      if (editable) {
        td.setAttribute("role", "gridcell");
        td.tabIndex = i === 0 && j === 0 ? 0 : -1;
        td.setAttribute("aria-label", `row ${(view.rows || [])[i] ?? i}, column ${(view.cols || [])[j] ?? j}: `
          + (v === null || v === undefined ? "masked" : "allowed " + fmt(v)));
        td.classList.add("toggle");
        td.addEventListener("click", () => onToggle(editable, i, j, values));
        td.addEventListener("keydown", e => {
          const moves = { ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0] };
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onToggle(editable, i, j, values); }
          else if (moves[e.key]) {
            e.preventDefault();
            const [di, dj] = moves[e.key];
            const next = (cells[i + di] || [])[j + dj];
            if (next) { td.tabIndex = -1; next.tabIndex = 0; next.focus(); }
          }
        });
      }
      cells[i].push(td);
      tr.append(td);
    });
    body.append(tr);
  });
  table.append(body);
  wrap.append(table);
  f.append(wrap);
  if (editable) f.append(el("div", "view-hint", "Click a cell (or focus it and press Enter) to allow or mask it."));
  return caption(f, view);
}

/* ── bars: horizontal, one row per label; `compare` adds a second series ── */
function drawBars(view) {
  const f = figure(view, "bars");
  const labels = view.labels || [], a = view.values || [], b = view.compare || null;
  const all = [...a, ...(b || [])].filter(Number.isFinite);
  const lo = Math.min(0, ...all), hi = Math.max(0, ...all, 1e-12);
  const labelW = Math.min(170, 12 + 7 * Math.max(1, ...labels.map(l => String(l).length)));
  const W = 460, plotW = W - labelW - 60, barH = b ? 11 : 16, rowH = b ? 28 : 22;
  const H = labels.length * rowH + 8;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
    "aria-label": (view.title || "bars") + ": "
      + labels.map((l, i) => `${l} ${fmt(a[i])}` + (b ? ` / ${fmt(b[i])}` : "")).join(", ") });
  s.style.maxWidth = W + "px";
  const x = v => labelW + (v - lo) / (hi - lo) * plotW;
  s.append(svg("line", { x1: x(0), x2: x(0), y1: 0, y2: H, class: "axis" }));
  labels.forEach((label, i) => {
    const y = 4 + i * rowH;
    s.append(svg("text", { x: labelW - 6, y: y + rowH / 2, "text-anchor": "end", "dominant-baseline": "middle",
      class: "lbl" }, label));
    const series = b ? [a[i], b[i]] : [a[i]];
    series.forEach((v, k) => {
      if (!Number.isFinite(v)) return;
      const yy = y + (b ? 2 + k * (barH + 1) : 3);
      const x0 = Math.min(x(0), x(v)), w = Math.max(1, Math.abs(x(v) - x(0)));
      s.append(svg("rect", { x: x0, y: yy, width: w, height: barH, fill: SERIES[k], class: k ? "bar bar-b" : "bar" }));
      s.append(svg("text", { x: v >= 0 ? x0 + w + 4 : x0 - 4, y: yy + barH / 2, "dominant-baseline": "middle",
        "text-anchor": v >= 0 ? "start" : "end", class: "val" }, fmt(v)));
    });
  });
  f.append(s);
  if (b) f.append(legend((view.series || ["first", "second"]).map((n, k) => [n, k, "bar"])));
  return caption(f, view);
}

function legend(items) {
  const d = el("div", "legend");
  for (const [name, k, kind] of items) {
    const item = el("span", "legend-item");
    const sw = el("i", "swatch " + (kind === "line" ? "swatch-line swatch-dash-" + (k % DASHES.length) : "swatch-bar"));
    sw.style.setProperty("--swatch", SERIES[k % SERIES.length]);
    item.append(sw, document.createTextNode(name));
    d.append(item);
  }
  return d;
}

/* ── lines ── */
function niceTicks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const step0 = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= step0);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function drawLines(view) {
  const f = figure(view, "lines");
  const xs = view.x || [], series = view.series || [];
  const logX = !!view.log_x && xs.every(v => v > 0);
  const tx = v => logX ? Math.log10(v) : v;
  const ys = series.flatMap(s => s.values).filter(Number.isFinite);
  let ylo = Math.min(...ys), yhi = Math.max(...ys);
  if (!Number.isFinite(ylo)) { ylo = 0; yhi = 1; }
  if (ylo === yhi) { ylo -= 0.5; yhi += 0.5; }
  const pad = (yhi - ylo) * 0.06; ylo -= ylo >= 0 && ylo - pad < 0 ? ylo : pad; yhi += pad;
  const xlo = Math.min(...xs.map(tx)), xhi = Math.max(...xs.map(tx));
  const W = 460, H = 220, L = 48, R = 12, T = 10, B = 38;
  const X = v => L + (xhi > xlo ? (tx(v) - xlo) / (xhi - xlo) : 0.5) * (W - L - R);
  const Y = v => T + (1 - (v - ylo) / (yhi - ylo)) * (H - T - B);
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
    "aria-label": (view.title || "chart") + ": "
      + series.map(se => se.name + " " + se.values.map(fmt).join(" ")).join("; ") });
  s.style.maxWidth = W + "px";
  s.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  s.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  for (const t of niceTicks(ylo, yhi, 4)) {
    s.append(svg("line", { x1: L, x2: W - R, y1: Y(t), y2: Y(t), class: "grid" }));
    s.append(svg("text", { x: L - 5, y: Y(t), "text-anchor": "end", "dominant-baseline": "middle", class: "tick" }, fmt(t)));
  }
  const xt = xs.length <= 8 ? xs : niceTicks(Math.min(...xs), Math.max(...xs), 6);
  const xticks = logX ? xs.filter((_, i) => xs.length <= 8 || i % Math.ceil(xs.length / 8) === 0) : xt;
  for (const t of xticks) {
    s.append(svg("text", { x: X(t), y: H - B + 14, "text-anchor": "middle", class: "tick" }, fmt(t)));
  }
  if (view.x_label) s.append(svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "lbl" }, view.x_label + (logX ? " (log scale)" : "")));
  series.forEach((se, k) => {
    const pts = xs.map((x, i) => [x, se.values[i]]).filter(p => Number.isFinite(p[1]));
    const color = SERIES[k % SERIES.length];
    s.append(svg("polyline", { points: pts.map(p => X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1)).join(" "),
      fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": DASHES[k % DASHES.length], class: "series" }));
    for (const p of pts) s.append(svg(k % 2 ? "rect" : "circle", k % 2
      ? { x: X(p[0]) - 3, y: Y(p[1]) - 3, width: 6, height: 6, fill: color }
      : { cx: X(p[0]), cy: Y(p[1]), r: 3, fill: color }));
  });
  f.append(s);
  if (series.length > 1 || (series[0] && series[0].name)) f.append(legend(series.map((se, k) => [se.name, k, "line"])));
  return caption(f, view);
}

/* ── tokens: each shaded by its weight, the focus (query) outlined ── */
function drawTokens(view) {
  const f = figure(view, "tokens");
  const strip = el("div", "token-strip");
  (view.tokens || []).forEach((t, i) => {
    const w = (view.weights || [])[i];
    const span = el("span", "tok");
    span.append(el("span", "tok-text", t));
    if (Number.isFinite(w)) {
      span.append(el("span", "tok-w", fmt(w)));
      shade(span, w);
    }
    if (i === view.focus) { span.classList.add("focus"); span.title = "the query"; }
    span.setAttribute("aria-label", `${t}${i === view.focus ? " (query)" : ""}: weight ${fmt(w)}`);
    strip.append(span);
  });
  f.append(strip);
  return caption(f, view);
}

/* ── table ── */
function drawTable(view) {
  const f = figure(view, "table");
  const wrap = el("div", "table-scroll");
  const t = el("table", "data");
  const tr = el("tr");
  for (const c of view.columns || []) { const th = el("th", null, c); th.scope = "col"; tr.append(th); }
  const thead = el("thead");
  thead.append(tr);
  t.append(thead);
  const body = el("tbody");
  for (const row of view.rows || []) {
    const r = el("tr");
    for (const c of row) r.append(el("td", typeof c === "number" ? "num" : null, fmt(c)));
    body.append(r);
  }
  t.append(body);
  wrap.append(t);
  f.append(wrap);
  return caption(f, view);
}

export function drawView(view, onToggle) {
  switch (view.kind) {
    case "matrix": return drawMatrix(view, onToggle);
    case "bars": return drawBars(view);
    case "lines": return drawLines(view);
    case "tokens": return drawTokens(view);
    case "table": return drawTable(view);
    case "text": { const f = figure(view, "text"); f.append(markup(view.text)); return f; }
    default: return el("div", "alert", "This page cannot draw a view of kind " + JSON.stringify(view.kind) + ".");
  }
}

/* ───────────────────── the live widget ───────────────────── */

let widgetCount = 0;
const DEBOUNCE_MS = 250;

/* A widget on the page: controls from its spec, views recomputed on the server.
   `opts.gated`: the views stay hidden until `unveil()` (a step's predict question).
   `opts.step` ({lesson, step}): a build-up step's widget; each result also carries that step's reveal.
   `onResult(fn)`: fn(result) after each successful compute (facts for token questions, the reveal). */
export class LiveWidget {
  constructor(spec, args, opts = {}) {
    this.spec = spec;
    this.name = spec.name;
    this.args = {};
    for (const c of spec.controls || []) this.args[c.name] = structuredClone(c.default);
    Object.assign(this.args, structuredClone(args || {}));
    this.opts = opts;
    this.gated = !!opts.gated;
    this.result = null;
    this.seq = 0;
    this.timer = null;
    this.listeners = [];
    this.root = el("section", "widget");
    this.root.dataset.testid = "widget-" + this.name;
    this.root.dataset.state = "idle";
    const id = "w" + (++widgetCount);
    const head = el("div", "widget-head");
    const title = el("h4", "widget-title", spec.title || spec.name);
    title.id = id + "-title";
    this.root.setAttribute("aria-labelledby", title.id);
    this.status = el("span", "widget-status");
    this.status.setAttribute("aria-live", "polite");
    head.append(title, this.status);
    this.controls = el("div", "controls");
    this.error = el("div", "alert");
    this.error.setAttribute("role", "alert");
    this.error.hidden = true;
    this.views = el("div", "views");
    this.gate = el("div", "gate", "Commit to your answer to see the computation.");
    this.gate.hidden = !this.gated;
    this.views.hidden = this.gated;
    this.root.append(head, this.controls, this.error, this.gate, this.views);
    this.buildControls(id);
    this.compute(0);
  }

  onResult(fn) { this.listeners.push(fn); if (this.result) fn(this.result); }

  buildControls(id) {
    for (const c of this.spec.controls || []) {
      if (c.kind === "mask") continue;
      const box = el("div", "control control-" + c.kind);
      const inputId = id + "-" + c.name;
      let input;
      const label = el("label", null, c.label || c.name);
      label.htmlFor = inputId;
      if (c.kind === "slider" || c.kind === "number") {
        input = el("input");
        input.type = "range";
        input.min = c.low ?? 0; input.max = c.high ?? 100; input.step = c.step ?? (Number.isInteger(c.default) ? 1 : "any");
        input.value = this.args[c.name];
        const out = el("output", "value", fmt(+this.args[c.name]));
        out.htmlFor = inputId;
        label.append(out);
        input.addEventListener("input", () => { out.textContent = fmt(+input.value); this.set(c.name, +input.value, DEBOUNCE_MS); });
        box.append(label, input);
      } else if (c.kind === "select") {
        input = el("select");
        for (const choice of c.choices || []) {
          const o = el("option", null, choice);
          o.value = String(choice);
          input.append(o);
        }
        input.value = String(this.args[c.name]);
        input.addEventListener("change", () => {
          const choice = (c.choices || []).find(x => String(x) === input.value);
          this.set(c.name, choice === undefined ? input.value : choice, 0);
        });
        box.append(label, input);
      } else if (c.kind === "toggle") {
        input = el("input");
        input.type = "checkbox";
        input.checked = !!this.args[c.name];
        input.addEventListener("change", () => this.set(c.name, input.checked, 0));
        label.classList.add("switch");
        label.prepend(input);
        box.append(label);
      } else {
        input = el("input");
        input.type = "text";
        input.value = String(this.args[c.name] ?? "");
        input.spellcheck = false;
        if (c.high) input.maxLength = c.high;
        const commit = () => { if (input.value !== this.args[c.name]) this.set(c.name, input.value, 0); };
        input.addEventListener("keydown", e => { if (e.key === "Enter") { e.preventDefault(); commit(); } });
        input.addEventListener("blur", commit);
        box.append(label, input);
      }
      input.id = inputId;
      input.dataset.control = c.name;
      if (c.help) {
        const help = el("small", "help", c.help);
        help.id = inputId + "-help";
        input.setAttribute("aria-describedby", help.id);
        box.append(help);
      }
      this.controls.append(box);
    }
    if (!this.controls.childElementCount) this.controls.hidden = true;
  }

  set(name, value, delay) {
    this.args[name] = value;
    this.compute(delay);
  }

  toggleMask(name, i, j, values) {
    let mask = this.args[name];
    const n = values.length;
    if (!Array.isArray(mask) || mask.length !== n) {
      mask = values.map(row => row.map(v => v !== null && v !== undefined));
    } else {
      mask = mask.map(row => row.slice());
    }
    mask[i][j] = !mask[i][j];
    this.focusCell = [i, j];
    this.set(name, mask, 0);
  }

  compute(delay) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.run(), delay);
  }

  async run() {
    const seq = ++this.seq;
    if (this.abort) this.abort.abort();
    this.abort = new AbortController();
    this.root.dataset.state = "loading";
    this.root.setAttribute("aria-busy", "true");
    const started = performance.now();
    const slow = this.spec.models && this.spec.models.length ? " (the first run loads a model)" : "";
    this.status.textContent = "computing…";
    this.status.classList.add("busy");
    const tick = setInterval(() => {
      const s = Math.round((performance.now() - started) / 1000);
      if (seq === this.seq) this.status.textContent = `computing… ${s} s${s >= 3 ? slow || " (training or loading; this can take a while the first time)" : ""}`;
    }, 1000);
    try {
      const body = { widget: this.name, args: this.args };
      if (this.opts.step) Object.assign(body, this.opts.step);
      const result = await api("/api/learn/widget", body, this.abort.signal);
      if (seq !== this.seq) return;
      this.result = result;
      this.error.hidden = true;
      try {
        this.render();
      } catch (e) {
        this.error.textContent = "Could not draw the result: " + e.message;
        this.error.hidden = false;
        this.root.dataset.state = "error";
        return;
      }
      this.status.textContent = Number.isFinite(result.seconds) ? `computed in ${fmt(result.seconds)} s` : "computed";
      this.root.dataset.state = "ready";
      for (const fn of this.listeners) fn(result);
    } catch (e) {
      if (seq !== this.seq || e.name === "AbortError") return;
      this.error.textContent = (e.status === 503 ? "Unavailable: " : "Could not compute: ") + e.message;
      this.error.hidden = false;
      this.status.textContent = "";
      this.root.dataset.state = "error";
    } finally {
      clearInterval(tick);
      if (seq === this.seq) { this.status.classList.remove("busy"); this.root.removeAttribute("aria-busy"); }
    }
  }

  render() {
    const views = (this.result && this.result.views) || [];
    this.views.replaceChildren(...views.map(v => drawView(v, (n, i, j, vals) => this.toggleMask(n, i, j, vals))));
    if (this.focusCell) {
      const [i, j] = this.focusCell;
      this.focusCell = null;
      const grid = this.views.querySelector("table[role=grid]");
      const cell = grid && grid.tBodies[0].rows[i] && grid.tBodies[0].rows[i].cells[j + 1];
      if (cell) {
        for (const c of grid.querySelectorAll("td[tabindex='0']")) c.tabIndex = -1;
        cell.tabIndex = 0;
        cell.focus();
      }
    }
  }

  unveil() {
    this.gated = false;
    this.gate.hidden = true;
    this.views.hidden = false;
  }
}

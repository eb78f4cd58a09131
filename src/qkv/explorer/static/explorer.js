/* qkv explorer: the real-model panel and the mechanism lab.
   No framework and no network beyond this page's own server (/api/...). */
(function () {
  "use strict";

  const $ = id => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /* ───────────────────────── colours ───────────────────────── */

  const PALETTE = ["#1f77b4", "#e6550d", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a"];
  const MEAN_COLOR = "#27407a";

  function headColor(h) {
    if (h === "mean") return MEAN_COLOR;
    if (h < PALETTE.length) return PALETTE[h];
    const hue = (h * 137.508) % 360, s = 0.62, l = 0.42;
    const a = s * Math.min(l, 1 - l);
    const f = n => { const k = (n + hue / 30) % 12; return l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1)); };
    return "#" + [f(0), f(8), f(4)].map(x => Math.round(x * 255).toString(16).padStart(2, "0")).join("");
  }

  function rgbOf(hex) { return [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16)); }

  function ramp(stops) {
    const lut = new Uint8ClampedArray(256 * 3);
    for (let v = 0; v < 256; v++) {
      const t = v / 255 * (stops.length - 1), k = Math.min(Math.floor(t), stops.length - 2), f = t - k;
      for (let c = 0; c < 3; c++) lut[v * 3 + c] = Math.round(stops[k][c] * (1 - f) + stops[k + 1][c] * f);
    }
    return lut;
  }
  /* white -> blue (weights), white -> red and white -> blue (signed numbers) */
  const BLUES = ramp([[255, 255, 255], [222, 235, 247], [158, 202, 225], [66, 146, 198], [8, 81, 156], [8, 48, 107]]);
  const REDS = ramp([[255, 255, 255], [254, 224, 210], [252, 146, 114], [222, 45, 38], [165, 15, 21]]);
  const COOL = ramp([[255, 255, 255], [222, 235, 247], [140, 180, 220], [49, 110, 180], [20, 60, 130]]);

  function lutColor(lut, t) {
    const v = Math.max(0, Math.min(255, Math.round(t * 255)));
    return "rgb(" + lut[v * 3] + "," + lut[v * 3 + 1] + "," + lut[v * 3 + 2] + ")";
  }

  function setupCanvas(canvas, width, height) {
    const dpr = Math.max(1, Math.min(window.devicePixelRatio || 1, 3, 16000 / Math.max(width, height, 1)));
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    return ctx;
  }

  /* a short, stable fingerprint of numbers (for tests and for skipping redundant redraws) */
  function digest(values) {
    let h = 2166136261;
    for (let i = 0; i < values.length; i++) {
      h ^= Math.round(values[i] * 1e4) & 0xffffffff;
      h = Math.imul(h, 16777619) >>> 0;
    }
    return h.toString(16);
  }

  function fmt(v) {
    if (v === null || v === undefined) return "−∞";
    const a = Math.abs(v);
    if (a < 0.005) return "0.00";
    if (a >= 1000) return v.toExponential(1).replace("e+", "e");
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }

  /* ───────────────────────── API ───────────────────────── */

  class ApiError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  /* The server answers changes only with the per-launch token it wrote into this page. */
  const TOKEN = (document.querySelector('meta[name="qkv-token"]') || {}).content || "";

  async function api(path, body, signal) {
    const init = { method: body === undefined ? "GET" : "POST", signal, headers: {} };
    if (body !== undefined) {
      init.headers["X-QKV-Token"] = TOKEN;
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) throw new ApiError((data && data.error) || "HTTP " + response.status, response.status);
    return data;
  }

  let health = null;

  function setServer(ok, text) {
    const s = $("server-status");
    s.textContent = text;
    s.classList.toggle("ok", ok);
    s.classList.toggle("bad", !ok);
  }

  async function loadHealth() {
    try {
      health = await api("/api/health");
      setServer(true, "qkv " + health.version + " · local server");
    } catch (e) {
      setServer(false, "server unreachable");
      throw e;
    }
    return health;
  }

  function modelInfo(name) {
    return health ? health.models.find(m => m.name === name) : undefined;
  }

  /* ───────────────────────── tabs ───────────────────────── */

  let labStarted = false;

  function showTab(name) {
    for (const tab of document.querySelectorAll(".tab[data-tab]")) {
      const on = tab.dataset.tab === name;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      $("panel-" + tab.dataset.tab).hidden = !on;
    }
    if (name === "lab" && !labStarted) { labStarted = true; runLab(); }
    if (name === "model") drawModel();
    if (name === "lab") renderLab();
  }

  /* ═════════════════════════ real model ═════════════════════════ */

  const M = {
    data: null,         // the last /api/attention answer (its all-layer metrics; weights are in M.layers)
    layers: new Map(),  // layer -> its H×N×N weights, for M.data's text: the layers fetched so far
    partial: {},        // model name -> true when its last answer held one layer only (then ask one at a time)
    layerController: null,
    layerPending: null, // the layer being fetched, or null
    shown: [],          // tokens as displayed
    layer: 0,
    head: 0,            // a head index or "mean"
    focus: null,        // {side: "q"|"k", index} or null
    pinned: false,
    cell: null,         // heatmap cell under the mouse {i, j}
    timer: null,
    controller: null,
    lastRequest: "",
  };

  function showToken(tok, kind) {
    let t = tok;
    if (kind === "llama" && t.startsWith(" ") && t.trim() !== "") t = t.slice(1);
    t = t.replace(/\r/g, "\\r").replace(/\n/g, "⏎").replace(/\t/g, "⇥");
    if (t === "") return "∅";
    return t.trim() === "" ? "␣".repeat(Math.min(t.length, 4)) : t;
  }

  /* the N×N matrix on show: one head, or the mean of the layer's heads (null while that layer is being fetched) */
  function currentMatrix() {
    const d = M.data, n = d.tokens.length, layer = M.layers.get(M.layer);
    if (!layer) return null;
    const out = new Float64Array(n * n);
    if (M.head === "mean") {
      const H = layer.length;
      for (let h = 0; h < H; h++) for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[i * n + j] += layer[h][i][j] / H;
    } else {
      const w = layer[M.head];
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[i * n + j] = w[i][j];
    }
    return out;
  }

  function shade(w) { return $("contrast").checked ? Math.sqrt(Math.max(w, 0)) : w; }

  function selectionName() {
    const d = M.data;
    return "layer " + M.layer + (M.head === "mean" ? ", mean of " + d.num_heads + " heads" : ", head " + M.head);
  }

  function renderModelControls() {
    const d = M.data;
    const layerSelect = $("layer");
    if (layerSelect.options.length !== d.num_layers) {
      layerSelect.textContent = "";
      for (let l = 0; l < d.num_layers; l++) {
        const o = el("option", "", String(l) + (l === 0 ? " (first)" : l === d.num_layers - 1 ? " (last)" : ""));
        o.value = String(l);
        layerSelect.appendChild(o);
      }
    }
    layerSelect.value = String(M.layer);
    $("layer-prev").disabled = M.layer === 0;
    $("layer-next").disabled = M.layer === d.num_layers - 1;
    const box = $("heads");
    box.textContent = "";
    const choices = ["mean"].concat([...Array(d.num_heads).keys()]);
    for (const h of choices) {
      const b = el("button", h === "mean" ? "mean" : "", h === "mean" ? "mean" : String(h));
      b.type = "button";
      b.dataset.head = String(h);
      b.style.setProperty("--head", headColor(h));
      b.setAttribute("aria-pressed", M.head === h ? "true" : "false");
      b.title = h === "mean" ? "the average of the layer's " + d.num_heads + " heads" :
        "head " + h + ": entropy " + d.entropy[M.layer][h].toFixed(2) + " nats, distance " + d.distance[M.layer][h].toFixed(1) + " tokens";
      b.addEventListener("click", () => { M.head = h; drawModel(); });
      box.appendChild(b);
    }
  }

  function buildTokens() {
    const d = M.data, n = d.tokens.length;
    const row = n > 60 ? 18 : 22;
    for (const [side, colId] of [["q", "col-q"], ["k", "col-k"]]) {
      const col = $(colId);
      col.textContent = "";
      col.style.setProperty("--row", row + "px");
      d.tokens.forEach((tok, i) => {
        const e = el("div", "tok" + (d.special[i] ? " special" : ""));
        e.dataset.side = side;
        e.dataset.index = String(i);
        e.title = (side === "q" ? "query " : "key ") + i + ": " + JSON.stringify(tok);
        const text = el("span", "txt", M.shown[i]);
        const pos = el("span", "pos", String(i));
        if (side === "q") { e.appendChild(text); e.appendChild(pos); } else { e.appendChild(pos); e.appendChild(text); }
        e.addEventListener("mouseenter", () => { if (!M.pinned) { M.focus = { side, index: i }; drawFocus(); } });
        e.addEventListener("mouseleave", () => { if (!M.pinned) { M.focus = null; drawFocus(); } });
        e.addEventListener("click", () => {
          const same = M.focus && M.focus.side === side && M.focus.index === i;
          M.pinned = !(M.pinned && same);
          M.focus = M.pinned || !same ? { side, index: i } : M.focus;
          drawFocus();
        });
        col.appendChild(e);
      });
    }
  }

  function drawLines(w) {
    const d = M.data, n = d.tokens.length;
    const row = n > 60 ? 18 : 22, width = n > 60 ? 280 : 230, height = n * row;
    const canvas = $("lines-canvas");
    const ctx = setupCanvas(canvas, width, height);
    const [r, g, b] = rgbOf(headColor(M.head));
    const y = i => i * row + row / 2, x0 = 2, x1 = width - 2;
    const f = M.focus;
    if (!f) {
      /* every line, grouped into 20 opacity levels so each level is one stroke */
      const levels = Array.from({ length: 20 }, () => []);
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
        const v = shade(w[i * n + j]);
        if (v >= 0.02) levels[Math.min(19, Math.floor(v * 20))].push(i, j);
      }
      ctx.lineWidth = n > 60 ? 1 : 1.6;
      levels.forEach((pairs, level) => {
        if (!pairs.length) return;
        ctx.strokeStyle = "rgba(" + r + "," + g + "," + b + "," + ((level + 0.5) / 20 * 0.85).toFixed(3) + ")";
        ctx.beginPath();
        for (let p = 0; p < pairs.length; p += 2) { ctx.moveTo(x0, y(pairs[p])); ctx.lineTo(x1, y(pairs[p + 1])); }
        ctx.stroke();
      });
    } else {
      ctx.lineWidth = 2.5;
      for (let o = 0; o < n; o++) {
        const i = f.side === "q" ? f.index : o, j = f.side === "q" ? o : f.index;
        const v = w[i * n + j];
        if (v < 0.005) continue;
        ctx.strokeStyle = "rgba(" + r + "," + g + "," + b + "," + Math.min(1, 0.08 + Math.sqrt(v)).toFixed(3) + ")";
        ctx.beginPath(); ctx.moveTo(x0, y(i)); ctx.lineTo(x1, y(j)); ctx.stroke();
      }
    }
    /* token backgrounds: the focused token and, on the other side, how much weight each gets */
    const qEls = $("col-q").children, kEls = $("col-k").children;
    for (let i = 0; i < n; i++) {
      for (const e of [qEls[i], kEls[i]]) { e.classList.remove("active", "pinned"); e.style.background = ""; }
    }
    if (f) {
      const mine = (f.side === "q" ? qEls : kEls)[f.index];
      mine.classList.add("active");
      if (M.pinned) mine.classList.add("pinned");
      const others = f.side === "q" ? kEls : qEls;
      for (let o = 0; o < n; o++) {
        const v = f.side === "q" ? w[f.index * n + o] : w[o * n + f.index];
        if (v >= 0.01) others[o].style.background = "rgba(" + r + "," + g + "," + b + "," + (0.1 + 0.75 * Math.sqrt(v)).toFixed(3) + ")";
      }
    }
  }

  /* a labelled heatmap on a canvas; returns its geometry for hit-testing */
  function drawHeatmap(canvas, opts) {
    const n = opts.n, labels = opts.labels;
    const probe = canvas.getContext("2d");
    probe.font = "12px " + getComputedStyle(document.body).getPropertyValue("--mono");
    let cell = Math.floor((opts.maxWidth - 20) / (n + 4));
    cell = Math.max(3, Math.min(opts.maxCell || 36, cell));
    const showLabels = cell >= 10;
    const fontSize = Math.min(12, Math.max(9, cell - 2));
    const font = fontSize + "px " + getComputedStyle(document.body).getPropertyValue("--mono");
    probe.font = font;
    let labelW = 0;
    if (showLabels) for (const t of labels) labelW = Math.max(labelW, probe.measureText(t).width);
    labelW = showLabels ? Math.min(110, Math.ceil(labelW) + 10) : 4;
    const left = labelW, top = labelW;
    const width = left + n * cell + 2, height = top + n * cell + 2;
    const ctx = setupCanvas(canvas, width, height);
    ctx.font = font;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      if (opts.masked && opts.masked(i, j)) {
        ctx.fillStyle = "#eef0f4";
      } else {
        ctx.fillStyle = lutColor(BLUES, opts.shade(opts.value(i, j)));
      }
      ctx.fillRect(left + j * cell, top + i * cell, cell, cell);
    }
    if (cell >= 6) { /* a hairline grid keeps cells apart */
      ctx.strokeStyle = "rgba(255,255,255,0.6)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let k = 1; k < n; k++) {
        ctx.moveTo(left + k * cell + 0.5, top); ctx.lineTo(left + k * cell + 0.5, top + n * cell);
        ctx.moveTo(left, top + k * cell + 0.5); ctx.lineTo(left + n * cell, top + k * cell + 0.5);
      }
      ctx.stroke();
    }
    if (opts.numbers && cell >= 30) {
      ctx.font = "10px " + getComputedStyle(document.body).getPropertyValue("--mono");
      ctx.textAlign = "center"; ctx.textBaseline = "middle";
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
        if (opts.masked && opts.masked(i, j)) continue;
        const v = opts.value(i, j);
        if (v < 0.005) continue;
        ctx.fillStyle = opts.shade(v) > 0.55 ? "#fff" : "#1b2533";
        ctx.fillText(v.toFixed(2).replace(/^0/, ""), left + j * cell + cell / 2, top + i * cell + cell / 2 + 0.5);
      }
      ctx.font = font;
    }
    if (showLabels) {
      ctx.fillStyle = "#18202e";
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      for (let i = 0; i < n; i++) {
        ctx.fillStyle = opts.special && opts.special[i] ? "#8a94a3" : (opts.hiRow === i ? "#b54708" : "#18202e");
        ctx.fillText(clip(ctx, labels[i], labelW - 6), left - 4, top + i * cell + cell / 2);
      }
      ctx.save();
      ctx.translate(left, top);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      for (let j = 0; j < n; j++) {
        ctx.fillStyle = opts.special && opts.special[j] ? "#8a94a3" : (opts.hiCol === j ? "#b54708" : "#18202e");
        ctx.fillText(clip(ctx, labels[j], labelW - 6), 4, j * cell + cell / 2);
      }
      ctx.restore();
    }
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#e8a400";
    if (opts.hiRow !== undefined && opts.hiRow !== null) ctx.strokeRect(left + 1, top + opts.hiRow * cell + 1, n * cell - 2, cell - 2);
    if (opts.hiCol !== undefined && opts.hiCol !== null) ctx.strokeRect(left + opts.hiCol * cell + 1, top + 1, cell - 2, n * cell - 2);
    if (opts.hiCell) {
      ctx.strokeStyle = "#18202e";
      ctx.strokeRect(left + opts.hiCell.j * cell + 1, top + opts.hiCell.i * cell + 1, cell - 2, cell - 2);
    }
    return { left, top, cell, n };
  }

  function clip(ctx, text, width) {
    if (ctx.measureText(text).width <= width) return text;
    let t = text;
    while (t.length > 1 && ctx.measureText(t + "…").width > width) t = t.slice(0, -1);
    return t + "…";
  }

  function hit(geom, event) {
    if (!geom) return null;
    const rect = event.target.getBoundingClientRect();
    const x = event.clientX - rect.left - geom.left, y = event.clientY - rect.top - geom.top;
    const i = Math.floor(y / geom.cell), j = Math.floor(x / geom.cell);
    if (x < 0 || y < 0 || i >= geom.n || j >= geom.n) return null;
    return { i, j };
  }

  let heatGeom = null, rollGeom = null, gridGeom = {};

  function drawHeat(w) {
    const d = M.data, n = d.tokens.length, f = M.focus;
    const pane = document.querySelector(".heat-pane");
    heatGeom = drawHeatmap($("heatmap"), {
      n, labels: M.shown, special: d.special, maxWidth: Math.max(260, pane.clientWidth), maxCell: 40, numbers: true,
      value: (i, j) => w[i * n + j], shade,
      masked: d.causal ? (i, j) => j > i : null,
      hiRow: f && f.side === "q" ? f.index : null,
      hiCol: f && f.side === "k" ? f.index : null,
      hiCell: M.cell,
    });
    const legend = $("legend");
    if (!legend.firstChild) {
      legend.appendChild(el("span", "", "0"));
      const c = document.createElement("canvas");
      c.width = 140; c.height = 1;
      legend.appendChild(c);
      legend.appendChild(el("span", "", "1"));
      legend.appendChild(el("span", "legend-note", ""));
    }
    const c = legend.querySelector("canvas"), ctx = c.getContext("2d"), img = ctx.createImageData(140, 1);
    for (let x = 0; x < 140; x++) {
      const v = Math.round(shade(x / 139) * 255);
      img.data.set([BLUES[v * 3], BLUES[v * 3 + 1], BLUES[v * 3 + 2], 255], x * 4);
    }
    ctx.putImageData(img, 0, 0);
    legend.querySelector(".legend-note").textContent = d.causal ? "grey: not visible to a causal model (key after query)" : "";
  }

  function drawFocus() {
    if (!M.data) return;
    const w = currentMatrix();
    if (!w) return; /* its layer is on the way; the drawing follows when it arrives */
    drawLines(w);
    drawHeat(w);
    renderFocusLine(w);
  }

  function renderFocusLine(w) {
    const d = M.data, n = d.tokens.length, line = $("focus-line");
    line.textContent = "";
    if (M.cell) {
      const { i, j } = M.cell;
      line.appendChild(el("b", "", M.shown[i]));
      line.appendChild(document.createTextNode(" → "));
      line.appendChild(el("b", "", M.shown[j]));
      line.appendChild(document.createTextNode(": " + w[i * n + j].toFixed(4) + " (query " + i + ", key " + j + ", " + selectionName() + ")"));
      return;
    }
    const f = M.focus;
    if (!f) {
      line.appendChild(document.createTextNode("Showing " + selectionName() + " of " + d.model + ". Hover a token to see what it attends to; click to pin."));
      return;
    }
    const weights = [];
    for (let o = 0; o < n; o++) weights.push([o, f.side === "q" ? w[f.index * n + o] : w[o * n + f.index]]);
    weights.sort((a, b) => b[1] - a[1]);
    line.appendChild(el("b", "", M.shown[f.index]));
    line.appendChild(document.createTextNode(f.side === "q" ? " attends to  " : " is attended by  "));
    weights.slice(0, 6).filter(x => x[1] >= 0.005).forEach(([o, v], rank) => {
      if (rank) line.appendChild(document.createTextNode("  ·  "));
      line.appendChild(el("span", "t", M.shown[o]));
      line.appendChild(el("span", "w", " " + v.toFixed(2)));
    });
  }

  function drawGrid(canvas, key, values, maxValue, fmtValue) {
    const d = M.data, L = d.num_layers, H = d.num_heads;
    const cw = H > 16 ? 16 : 24, ch = L > 12 ? 14 : 22, left = 28, top = 18;
    const ctx = setupCanvas(canvas, left + H * cw + 2, top + L * ch + 2);
    ctx.font = "10px " + getComputedStyle(document.body).getPropertyValue("--mono");
    ctx.fillStyle = "#5d6878";
    ctx.textAlign = "center"; ctx.textBaseline = "middle";
    for (let h = 0; h < H; h++) if (H <= 16 || h % 2 === 0) ctx.fillText(String(h), left + h * cw + cw / 2, top / 2);
    ctx.textAlign = "right";
    for (let l = 0; l < L; l++) if (L <= 16 || l % 2 === 0) ctx.fillText(String(l), left - 5, top + l * ch + ch / 2);
    for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
      ctx.fillStyle = lutColor(COOL, values[l][h] / maxValue);
      ctx.fillRect(left + h * cw + 0.5, top + l * ch + 0.5, cw - 1, ch - 1);
    }
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#e8a400";
    if (M.head === "mean") ctx.strokeRect(left + 1, top + M.layer * ch + 1, H * cw - 2, ch - 2);
    else ctx.strokeRect(left + M.head * cw + 1, top + M.layer * ch + 1, cw - 2, ch - 2);
    gridGeom[key] = { left, top, cw, ch, L, H, values, fmtValue };
  }

  function drawGrids() {
    const d = M.data;
    drawGrid($("grid-entropy"), "entropy", d.entropy, d.entropy_max || 1, v => v.toFixed(2) + " nats (max " + d.entropy_max.toFixed(2) + ")");
    let maxDistance = 1e-9;
    for (const row of d.distance) for (const v of row) maxDistance = Math.max(maxDistance, v);
    drawGrid($("grid-distance"), "distance", d.distance, maxDistance, v => v.toFixed(2) + " tokens");
  }

  function gridHit(key, event) {
    const g = gridGeom[key];
    if (!g) return null;
    const rect = event.target.getBoundingClientRect();
    const h = Math.floor((event.clientX - rect.left - g.left) / g.cw), l = Math.floor((event.clientY - rect.top - g.top) / g.ch);
    if (h < 0 || l < 0 || h >= g.H || l >= g.L) return null;
    return { l, h };
  }

  function drawRollout() {
    const d = M.data, n = d.tokens.length;
    let peak = 1e-9;
    for (const row of d.rollout) for (const v of row) peak = Math.max(peak, v);
    const card = $("rollout").closest(".card");
    rollGeom = drawHeatmap($("rollout"), {
      n, labels: M.shown, special: d.special, maxWidth: Math.max(240, card.clientWidth - 32), maxCell: 28, numbers: false,
      value: (i, j) => d.rollout[i][j], shade: v => Math.sqrt(v / peak),
      masked: null,
    });
    /* a column that feeds most positions: the "attention sink" many models have */
    let sink = 0, share = 0;
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let i = 0; i < n; i++) s += d.rollout[i][j] / n;
      if (s > share) { share = s; sink = j; }
    }
    $("rollout-note").textContent = share > 0.4 ?
      Math.round(100 * share) + "% of what reaches the average position comes from “" + M.shown[sink] + "” (token " + sink +
      "): an attention sink, where heads park weight when nothing else is worth reading." : "";
  }

  function drawModel() {
    const d = M.data;
    if (!d || $("panel-model").hidden) return;
    renderModelControls();
    drawGrids();
    drawRollout();
    const view = $("attention-view");
    const w = currentMatrix();
    if (!w) { fetchLayer(M.layer); return; } /* the old drawing stays, dimmed, until this layer arrives */
    drawFocus();
    view.dataset.layer = String(M.layer);
    view.dataset.layersHeld = String(M.layers.size);
    view.dataset.head = String(M.head);
    view.dataset.tokens = String(d.tokens.length);
    view.dataset.digest = digest(w);
    view.dataset.model = d.model;
  }

  /* one layer's weights for the text on show: a long text's answer carries one layer at a time */
  async function fetchLayer(layer) {
    const d = M.data;
    if (!d || M.layers.has(layer) || M.layerPending === layer) return;
    if (M.layerController) M.layerController.abort();
    const controller = new AbortController();
    M.layerController = controller;
    M.layerPending = layer;
    $("attention-view").dataset.state = "loading";
    setRunStatus("fetching layer " + layer + "…", true);
    try {
      const got = await api("/api/attention", { text: d.text, model: d.model, layer }, controller.signal);
      if (controller !== M.layerController || M.data !== d) return;
      got.layers_sent.forEach((l, k) => M.layers.set(l, got.weights[k]));
      showModelError("");
      setRunStatus(d.tokens.length + " tokens · layer " + layer + " fetched", false);
    } catch (e) {
      if (e.name === "AbortError" || controller !== M.layerController) return;
      setRunStatus("", false);
      showModelError("Layer " + layer + " could not be fetched: " + e.message);
    } finally {
      if (controller === M.layerController) { M.layerController = null; M.layerPending = null; }
    }
    if (M.data !== d) return;
    if (M.layers.has(M.layer)) {
      $("attention-view").dataset.state = "ready";
      drawModel();
    } else if (M.layers.has(layer)) {
      fetchLayer(M.layer); /* the learner moved on while this one came */
    } else {
      $("attention-view").dataset.state = "ready";
    }
  }

  function modelNote() {
    const d = M.data, notes = [];
    if (M.pick) notes.push(M.pick.reason + " Try the other heads and layers.");
    if (d.causal) notes.push(d.model + " is a decoder: each token sees only itself and the tokens before it, so the upper triangle is empty.");
    else notes.push(d.model + " is an encoder: every token sees every token in both directions.");
    const specials = d.tokens.filter((t, i) => d.special[i]);
    if (specials.length) notes.push("Grey tokens (" + [...new Set(specials)].join(", ") + ") are special tokens the tokenizer adds; many heads park spare weight on them.");
    notes.push(d.tokens.length + " tokens · " + d.num_layers + " layers × " + d.num_heads + " heads · weights rounded to " + d.decimals + " decimals" +
      (d.layers_sent.length < d.num_layers ? "; a text this long comes one layer at a time, fetched when you show it." : "."));
    $("model-note").textContent = notes.join(" ");
  }

  function setRunStatus(text, busy) {
    const s = $("run-status");
    s.textContent = text;
    s.classList.toggle("busy", !!busy);
  }

  function showModelError(message) {
    const box = $("model-error");
    box.hidden = !message;
    box.textContent = message || "";
  }

  function scheduleModel(delay) {
    clearTimeout(M.timer);
    M.timer = setTimeout(runModel, delay);
  }

  async function runModel() {
    clearTimeout(M.timer);
    const text = $("text").value, model = $("model").value;
    if (!model) return;
    const key = model + "\u0000" + text;
    if (key === M.lastRequest && M.data) return;
    if (!text.trim()) { showModelError("Type a sentence to look at."); return; }
    if (health && text.length > health.limits.max_text_chars) {
      showModelError("The text is " + text.length + " characters; the explorer takes at most " + health.limits.max_text_chars + ".");
      return;
    }
    if (M.controller) M.controller.abort();
    if (M.layerController) { M.layerController.abort(); M.layerController = null; M.layerPending = null; }
    const controller = new AbortController();
    M.controller = controller;
    M.lastRequest = key;
    const body = { text, model };
    if (M.partial[model] && M.data && M.data.model === model) body.layer = M.layer; /* long texts: the layer on show */
    const info = modelInfo(model);
    setRunStatus(info && !info.loaded ? "loading " + model + " (first use takes a few seconds)…" : "computing…", true);
    $("attention-view").dataset.state = "loading";
    const started = performance.now();
    try {
      const data = await api("/api/attention", body, controller.signal);
      if (controller !== M.controller) return;
      const newModel = !M.data || M.data.model !== data.model;
      M.data = data;
      M.layers = new Map(data.layers_sent.map((l, k) => [l, data.weights[k]]));
      M.partial[model] = data.layers_sent.length < data.num_layers;
      M.shown = data.tokens.map(t => showToken(t, data.kind));
      M.pick = null;
      if (newModel) { /* the server's pick, made from all layers: a head that clearly reads a neighbour */
        M.pick = data.start;
        M.layer = data.start.layer;
        M.head = data.start.head;
      }
      M.layer = Math.min(M.layer, data.num_layers - 1);
      if (M.head !== "mean" && M.head >= data.num_heads) M.head = 0;
      if (M.focus && M.focus.index >= data.tokens.length) { M.focus = null; M.pinned = false; }
      M.cell = null;
      showModelError("");
      buildTokens();
      modelNote();
      if (info && !info.loaded) { info.loaded = true; info.num_layers = data.num_layers; info.num_heads = data.num_heads; }
      setRunStatus(data.tokens.length + " tokens · " + Math.round(performance.now() - started) + " ms", false);
      if (M.layers.has(M.layer)) $("attention-view").dataset.state = "ready";
      drawModel(); /* or, when the layer on show was not sent, fetches it first */
    } catch (e) {
      if (e.name === "AbortError") return;
      if (controller !== M.controller) return;
      M.lastRequest = "";
      setRunStatus("", false);
      showModelError(e.message);
      $("attention-view").dataset.state = M.data ? "ready" : "error";
    }
  }

  function setupModel() {
    const select = $("model");
    select.textContent = "";
    for (const m of health.models) {
      const o = el("option", "", m.name + (m.installed ? "" : " (not installed)"));
      o.value = m.name;
      o.disabled = !m.installed;
      select.appendChild(o);
    }
    const first = health.models.find(m => m.name === health.default_model && m.installed) || health.models.find(m => m.installed);
    if (first) select.value = first.name;
    const help = () => {
      const m = modelInfo(select.value);
      $("model-help").textContent = m ? m.description + "." : "";
    };
    help();
    select.addEventListener("change", () => { help(); runModel(); });
    const text = $("text");
    const grow = () => { text.style.height = "auto"; text.style.height = Math.min(240, text.scrollHeight + 2) + "px"; };
    text.addEventListener("input", () => { grow(); scheduleModel(300); });
    grow();
    text.addEventListener("keydown", e => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); M.lastRequest = ""; runModel(); }
    });
    $("layer").addEventListener("change", () => { M.layer = +$("layer").value; drawModel(); });
    $("layer-prev").addEventListener("click", () => { if (M.layer > 0) { M.layer--; drawModel(); } });
    $("layer-next").addEventListener("click", () => { if (M.data && M.layer < M.data.num_layers - 1) { M.layer++; drawModel(); } });
    $("contrast").addEventListener("change", drawModel);

    const heat = $("heatmap");
    heat.addEventListener("mousemove", e => {
      const c = hit(heatGeom, e);
      if ((c && M.cell && c.i === M.cell.i && c.j === M.cell.j) || (!c && !M.cell)) return;
      M.cell = c;
      drawFocus();
    });
    heat.addEventListener("mouseleave", () => { if (M.cell) { M.cell = null; drawFocus(); } });
    heat.addEventListener("click", e => {
      const c = hit(heatGeom, e);
      if (!c) return;
      M.pinned = true; M.focus = { side: "q", index: c.i }; drawFocus();
    });
    for (const key of ["entropy", "distance"]) {
      const canvas = $("grid-" + key);
      canvas.addEventListener("mousemove", e => {
        const c = gridHit(key, e), status = $("grid-status");
        if (!c) { status.textContent = ""; return; }
        const d = M.data;
        status.textContent = "layer " + c.l + ", head " + c.h + ": entropy " + gridGeom.entropy.fmtValue(d.entropy[c.l][c.h]) +
          " · distance " + gridGeom.distance.fmtValue(d.distance[c.l][c.h]);
      });
      canvas.addEventListener("click", e => {
        const c = gridHit(key, e);
        if (!c) return;
        M.layer = c.l; M.head = c.h; drawModel();
      });
    }
    $("rollout").addEventListener("mousemove", e => {
      const c = hit(rollGeom, e), status = $("rollout-status");
      if (!c || !M.data) return;
      status.textContent = "rollout: position " + c.i + " (" + M.shown[c.i] + ") takes " + (100 * M.data.rollout[c.i][c.j]).toFixed(1) +
        "% from token " + c.j + " (" + M.shown[c.j] + ")";
    });
    window.addEventListener("resize", () => { if (M.data) drawModel(); });
  }

  /* ═════════════════════════ mechanism lab ═════════════════════════ */

  const STEPS = [
    { id: "x", label: "x" },
    { id: "qkv", label: "Q K V" },
    { id: "scores", label: "QKᵀ" },
    { id: "scale", label: "scale" },
    { id: "mask", label: "mask" },
    { id: "softmax", label: "softmax" },
    { id: "out", label: "×V" },
  ];
  const LAB = { data: null, step: "softmax", head: 0, inflight: false, dirty: false, error: null };

  const MASK_HELP = {
    none: "No mask: every token may attend to every token, as in an encoder (BERT).",
    causal: "Causal: token i sees tokens 0…i only, as in a decoder (GPT, Llama): no peeking at what comes next.",
    sliding_window: "Sliding window: token i sees only its last w tokens, itself included (Mistral, Longformer): cost grows with N·w, not N².",
    block_sparse: "Block-sparse: tokens form blocks of b; each block sees itself and the first block (BigBird-style), so whole tiles of work are skipped.",
  };
  const POSITIONAL_HELP = {
    none: "No positions: attention alone ignores word order. A repeated word gets exactly the same row.",
    sinusoidal: "Sinusoidal: adds sine and cosine waves of the position to each embedding (Vaswani et al., 2017).",
    rotary: "Rotary (RoPE): turns each pair of q and k dimensions by an angle proportional to the position, so q·k depends on the distance i − j (Llama).",
  };

  function dk() { return 2 ** +$("lab-dk").value; }
  function temperature() { return +(10 ** +$("lab-temperature").value).toFixed(3); }

  function labConfig() {
    return {
      text: $("lab-text").value,
      d_k: dk(),
      heads: +$("lab-heads").value,
      temperature: temperature(),
      scaled: $("lab-scaled").checked,
      mask: $("lab-mask").value,
      window: +$("lab-window").value,
      block_size: +$("lab-block").value,
      positional: $("lab-positional").value,
      seed: Math.max(0, Math.min(2147483647, Math.floor(+$("lab-seed").value || 0))),
    };
  }

  function updateKnobs() {
    const c = labConfig();
    const words = Math.max(1, c.text.split(/\s+/).filter(Boolean).length);
    $("lab-window").max = String(Math.max(1, Math.min(12, words)));
    $("lab-block").max = String(Math.max(1, Math.min(6, words)));
    $("lab-dk-value").textContent = String(c.d_k);
    $("lab-scale-value").textContent = c.scaled ? "×" + (1 / Math.sqrt(c.d_k)).toFixed(3) : "off";
    $("lab-temperature-value").textContent = c.temperature.toFixed(2);
    $("lab-heads-value").textContent = String(c.heads);
    $("lab-window-value").textContent = $("lab-window").value;
    $("lab-block-value").textContent = $("lab-block").value;
    $("lab-window-box").hidden = c.mask !== "sliding_window";
    $("lab-block-box").hidden = c.mask !== "block_sparse";
    $("lab-mask-help").textContent = MASK_HELP[c.mask];
    $("lab-positional-help").textContent = POSITIONAL_HELP[c.positional];
    const sh = $("lab-scaled-help");
    sh.textContent = c.scaled ?
      "Divides every score by √d_k = " + Math.sqrt(c.d_k).toFixed(2) + ", so their spread stays near 1 whatever d_k is." :
      "Off: scores keep their √d_k spread (" + Math.sqrt(c.d_k).toFixed(1) + " here). Raise d_k and watch softmax pile all weight on one key.";
    sh.classList.toggle("warn", !c.scaled);
  }

  async function runLab() {
    updateKnobs();
    if (LAB.inflight) { LAB.dirty = true; return; }
    LAB.inflight = true;
    LAB.dirty = false;
    $("lab-view").dataset.state = "loading";
    const config = labConfig();
    try {
      const data = await api("/api/lab", config);
      LAB.data = data;
      LAB.error = null;
      /* a new head count shows its newest head, so turning the knob changes what is on screen */
      if (LAB.heads !== undefined && data.heads.length !== LAB.heads) LAB.head = data.heads.length - 1;
      LAB.heads = data.heads.length;
      if (LAB.head >= data.heads.length) LAB.head = 0;
    } catch (e) {
      LAB.error = e.message;
    } finally {
      LAB.inflight = false;
    }
    $("lab-view").dataset.state = LAB.dirty ? "loading" : LAB.error ? "error" : "ready";
    renderLab();
    if (LAB.dirty) runLab();
  }

  function renderStepper() {
    const ol = $("stepper");
    if (!ol.firstChild) {
      for (const s of STEPS) {
        const li = el("li"), b = el("button", "", s.label);
        b.type = "button";
        b.dataset.step = s.id;
        b.setAttribute("data-testid", "step-" + s.id);
        b.addEventListener("click", () => { LAB.step = s.id; renderLab(); });
        li.appendChild(b);
        ol.appendChild(li);
      }
    }
    for (const b of ol.querySelectorAll("button")) {
      if (b.dataset.step === LAB.step) b.setAttribute("aria-current", "step"); else b.removeAttribute("aria-current");
    }
    const index = STEPS.findIndex(s => s.id === LAB.step);
    $("step-prev").disabled = index === 0;
    $("step-next").disabled = index === STEPS.length - 1;
  }

  function renderLabHeads() {
    const box = $("lab-head-buttons"), H = LAB.data ? LAB.data.heads.length : 0;
    box.textContent = "";
    for (let h = 0; h < H; h++) {
      const b = el("button", "", String(h));
      b.type = "button";
      b.style.setProperty("--head", headColor(h));
      b.setAttribute("aria-pressed", h === LAB.head ? "true" : "false");
      b.title = "show head " + h;
      b.addEventListener("click", () => { LAB.head = h; renderLab(); });
      box.appendChild(b);
    }
  }

  /* one matrix as a grid of numbered, coloured cells */
  function matrixEl(title, rows, opts) {
    const fig = el("figure", "mat");
    const cap = el("figcaption");
    cap.appendChild(el("b", "", title));
    if (opts.caption) cap.appendChild(document.createTextNode("  " + opts.caption));
    fig.appendChild(cap);
    const nr = rows.length, nc = rows[0].length;
    const narrow = nc > 12;
    const grid = el("div", "mgrid");
    const cellW = narrow ? 18 : 46;
    grid.style.gridTemplateColumns = "auto repeat(" + nc + ", " + cellW + "px)";
    grid.style.setProperty("--cell-w", cellW + "px");
    grid.style.setProperty("--cell-h", (narrow ? 24 : 28) + "px");
    let maxAbs = 1e-12;
    for (const row of rows) for (const v of row) if (v !== null) maxAbs = Math.max(maxAbs, Math.abs(v));
    grid.appendChild(el("div", "h"));
    const colLabels = opts.colLabels || [...Array(nc).keys()].map(String);
    colLabels.forEach((label, j) => {
      const h = el("div", "h" + (opts.colLabels ? " rot" : ""), narrow && !opts.colLabels && j % 4 ? "" : label);
      grid.appendChild(h);
    });
    rows.forEach((row, i) => {
      grid.appendChild(el("div", "r", opts.rowLabels[i]));
      row.forEach((v, j) => {
        const c = el("div", "c");
        if (v === null) {
          c.classList.add("neg-inf");
          c.textContent = narrow ? "" : "−∞";
        } else {
          let t;
          if (opts.kind === "prob") {
            t = Math.max(0, Math.min(1, v));
            c.style.background = lutColor(BLUES, t);
          } else {
            t = Math.abs(v) / maxAbs;
            c.style.background = lutColor(v >= 0 ? REDS : COOL, t * 0.85);
          }
          if (t > 0.6) c.classList.add("dark");
          if (!narrow) c.textContent = fmt(v);
        }
        c.title = opts.rowLabels[i] + " · " + colLabels[j] + ": " + (v === null ? "−∞ (masked)" : String(v));
        grid.appendChild(c);
      });
    });
    fig.appendChild(grid);
    return fig;
  }

  function transpose(m) { return m[0].map((_, j) => m.map(row => row[j])); }

  function mean(xs) { return xs.reduce((a, b) => a + b, 0) / Math.max(xs.length, 1); }

  function renderStep() {
    const d = LAB.data, view = $("lab-view");
    view.textContent = "";
    if (!d) return;
    const c = d.config, h = d.heads[LAB.head], tokens = d.tokens;
    const dims = d.shown_dims < c.d_k ? " (first " + d.shown_dims + " of " + c.d_k + " dims)" : "";
    const sqrt = Math.sqrt(c.d_k);
    const dup = tokens.find((t, i) => tokens.indexOf(t) !== i);
    const explain = $("step-explain");
    let title = "", text = "";
    const rowLabels = tokens;
    switch (LAB.step) {
      case "x": {
        title = "1 · Token embeddings x";
        text = "Each word becomes a vector of d_model = " + d.d_model + " numbers (random here; learned in a real model).";
        if (d.positional) {
          text += " Sinusoidal encoding adds a position vector: x = embedding + position, so equal words now differ.";
          view.appendChild(matrixEl("x", d.x, { rowLabels, caption: "(embedding + position)" }));
          view.appendChild(matrixEl("position", d.positional, { rowLabels, caption: "(sin, cos pairs)" }));
        } else {
          if (dup && c.positional === "none") text += " “" + dup + "” appears twice with the same vector: nothing yet tells the two apart.";
          view.appendChild(matrixEl("x", d.x, { rowLabels }));
        }
        break;
      }
      case "qkv": {
        title = "2 · Queries, keys and values (head " + LAB.head + ")";
        text = "Three learned matrices turn each x into a query q = x·W_q (what the token looks for), a key k = x·W_k (what it offers) and a value v = x·W_v (what it passes on), d_k = " + c.d_k + " numbers each" + dims + ".";
        if (c.positional === "rotary") text += " Rotary then turns q and k by angles that grow with the position.";
        view.appendChild(matrixEl("Q", h.q, { rowLabels }));
        view.appendChild(matrixEl("K", h.k, { rowLabels }));
        view.appendChild(matrixEl("V", h.v, { rowLabels }));
        break;
      }
      case "scores": {
        title = "3 · Scores QKᵀ";
        text = "Every query against every key: score[i][j] = q_i · k_j, a sum of d_k products. Their spread grows with d_k: std " +
          h.score_std.toFixed(2) + " here, about √d_k = " + sqrt.toFixed(2) + ".";
        if (c.d_k <= 8) {
          view.appendChild(matrixEl("Q", h.q, { rowLabels }));
          view.appendChild(matrixEl("· Kᵀ", transpose(h.k), { rowLabels: [...Array(c.d_k).keys()].map(String), colLabels: tokens }));
        }
        view.appendChild(matrixEl(c.d_k <= 8 ? "= QKᵀ" : "QKᵀ", h.scores, { rowLabels, colLabels: tokens }));
        break;
      }
      case "scale": {
        title = "4 · Scale" + (c.temperature !== 1 ? " and temperature" : "");
        const factor = c.scaled ? "× 1/√d_k = " + (1 / sqrt).toFixed(3) : "× 1 (scaling off)";
        text = c.scaled ?
          "Multiply every score by 1/√" + c.d_k + " = " + (1 / sqrt).toFixed(3) + " so their spread is back near 1: std " + h.logit_std.toFixed(2) + "." :
          "Scaling is off: scores go into softmax as they are, std " + h.logit_std.toFixed(2) + ". Softmax of numbers this far apart is nearly one-hot.";
        if (c.temperature !== 1) text += " Then divide by the temperature T = " + c.temperature.toFixed(2) + ".";
        view.appendChild(matrixEl("scaled", h.scaled, { rowLabels, colLabels: tokens, caption: "= QKᵀ " + factor + (c.temperature !== 1 ? " ÷ " + c.temperature.toFixed(2) : "") }));
        break;
      }
      case "mask": {
        title = "5 · Mask";
        text = MASK_HELP[c.mask] + (c.mask === "none" ? "" : " Forbidden scores become −∞, so softmax gives them exactly 0.");
        view.appendChild(matrixEl("masked", h.masked, { rowLabels, colLabels: tokens, caption: d.mask ? "qkv.masks." + d.mask : "" }));
        break;
      }
      case "softmax": {
        title = "6 · Softmax: attention weights";
        const peak = mean(h.peak), ent = mean(h.entropy), maxEnt = mean(d.entropy_max);
        text = "Each row becomes probabilities, exp(score) / Σ exp(score), summing to 1 (qkv.attention_weights). Mean largest weight per row " +
          peak.toFixed(2) + ", entropy " + ent.toFixed(2) + " of at most " + maxEnt.toFixed(2) + " nats.";
        if (dup) {
          /* say it only where the computed rows really agree: a mask or positions make them differ */
          const [a, b] = tokens.reduce((at, t, i) => (t === dup ? at.concat(i) : at), []);
          const same = h.weights[a].every((w, j) => w === h.weights[b][j]);
          text += same
            ? " The two “" + dup + "” rows are identical: without positions, attention cannot tell them apart."
            : " The two “" + dup + "” rows differ here" + (c.mask !== "none" ? ": the mask lets them see different keys." :
              c.positional !== "none" ? ": positions tell them apart." : ".");
        }
        if (peak > 0.9) text += " Saturated: nearly every row is one-hot, and softmax's gradient is small (" + mean(h.gradient).toFixed(3) + ").";
        view.appendChild(matrixEl("weights", h.weights, { rowLabels, colLabels: tokens, kind: "prob" }));
        break;
      }
      case "out": {
        title = "7 · Output: weights × V";
        text = "Each output row is a weighted average of the value rows, out_i = Σ_j w_ij v_j (qkv.attention): what this head passes on" + dims + "." +
          (d.heads.length > 1 ? " The " + d.heads.length + " heads' outputs are then placed side by side (" + d.heads.length + " × " + c.d_k +
            " numbers per token) and mixed by one more matrix, W_o." : "");
        view.appendChild(matrixEl("weights", h.weights, { rowLabels, colLabels: tokens, kind: "prob" }));
        view.appendChild(matrixEl("· V", h.v, { rowLabels }));
        view.appendChild(matrixEl("= out", h.out, { rowLabels }));
        break;
      }
    }
    $("step-title").textContent = title;
    explain.textContent = text;
    const flat = [].concat(...h.weights);
    view.dataset.step = LAB.step;
    view.dataset.head = String(LAB.head);
    view.dataset.digest = digest(flat);
    view.dataset.peak = mean(h.peak).toFixed(4);
  }

  /* a small line chart (SVG) of a metric against log2 d_k, scaled vs unscaled */
  function chart(title, sat, key, yMax, current) {
    const NS = "http://www.w3.org/2000/svg";
    const W = 270, Hh = 172, l = 38, r = 10, t = 24, b = 30;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("width", W); svg.setAttribute("height", Hh); svg.setAttribute("viewBox", "0 0 " + W + " " + Hh);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", title);
    const add = (tag, attrs, text) => {
      const e = document.createElementNS(NS, tag);
      for (const k in attrs) e.setAttribute(k, attrs[k]);
      if (text !== undefined) e.textContent = text;
      svg.appendChild(e);
      return e;
    };
    const x = v => l + (Math.log2(v) - 1) / 9 * (W - l - r);
    const y = v => t + (1 - v / yMax) * (Hh - t - b);
    add("text", { x: l, y: 13, "font-weight": "600", fill: "#18202e" }, title);
    for (const g of [0, 0.5, 1]) {
      add("line", { x1: l, x2: W - r, y1: y(g * yMax), y2: y(g * yMax), stroke: "#e6eaf0" });
      add("text", { x: l - 5, y: y(g * yMax) + 4, "text-anchor": "end" }, (g * yMax).toFixed(yMax < 1 ? 2 : 1));
    }
    for (const v of [2, 8, 32, 128, 512]) add("text", { x: x(v), y: Hh - b + 15, "text-anchor": "middle" }, String(v));
    add("text", { x: (l + W - r) / 2, y: Hh - 3, "text-anchor": "middle" }, "d_k");
    const cx = x(current.d_k);
    add("line", { x1: cx, x2: cx, y1: t, y2: Hh - b, stroke: "#c9d2df", "stroke-dasharray": "3 3" });
    const series = [["scaled", "#2f5fd0"], ["unscaled", "#e8590c"]];
    for (const [name, color] of series) {
      const pts = sat.d_k.map((v, i) => x(v).toFixed(1) + "," + y(sat[name][key][i]).toFixed(1)).join(" ");
      add("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": name === (current.scaled ? "scaled" : "unscaled") ? 2.5 : 1.5 });
      const k = sat.d_k.indexOf(current.d_k);
      if (k >= 0 && name === (current.scaled ? "scaled" : "unscaled")) {
        add("circle", { cx, cy: y(sat[name][key][k]), r: 4.5, fill: color, stroke: "#fff", "stroke-width": 1.5 });
      }
    }
    return svg;
  }

  function renderSaturation() {
    const d = LAB.data, box = $("saturation");
    box.textContent = "";
    if (!d) return;
    const sat = d.saturation, c = d.config;
    let gMax = 0;
    for (const name of ["scaled", "unscaled"]) for (const v of sat[name].gradient) gMax = Math.max(gMax, v);
    box.appendChild(chart("largest weight per row", sat, "peak", 1, c));
    box.appendChild(chart("softmax gradient ‖J‖", sat, "gradient", Math.max(0.05, Math.ceil(gMax * 10) / 10), c));
    const legend = el("div", "chart-legend");
    for (const [name, color] of [["with 1/√d_k", "#2f5fd0"], ["without scaling", "#e8590c"]]) {
      const item = el("span"), swatch = el("i");
      swatch.style.setProperty("--swatch", color);
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(name));
      legend.appendChild(item);
    }
    legend.appendChild(el("span", "", "dot: the current set-up"));
    box.appendChild(legend);
    $("saturation-help").textContent = "Measured on these words over " + sat.heads + " random heads, everything else as set; only d_k and scaling change. " +
      "Without scaling the largest weight climbs toward 1 and the gradient that would train W_q and W_k fades toward 0; with it both stay level.";
  }

  function stat(k, v, s) {
    const e = el("div", "stat");
    e.appendChild(el("div", "k", k));
    e.appendChild(el("div", "v", v));
    if (s) e.appendChild(el("div", "s", s));
    return e;
  }

  function renderStats() {
    const d = LAB.data, box = $("lab-stats");
    box.textContent = "";
    if (!d) return;
    const h = d.heads[LAB.head], c = d.config;
    box.appendChild(stat("spread of QKᵀ (std)", h.score_std.toFixed(2), "√d_k = " + Math.sqrt(c.d_k).toFixed(2)));
    box.appendChild(stat("spread into softmax", h.logit_std.toFixed(2), c.scaled ? "after × 1/√d_k" + (c.temperature !== 1 ? " ÷ T" : "") : "unscaled"));
    box.appendChild(stat("largest weight per row", mean(h.peak).toFixed(2), "1 = all on one key"));
    box.appendChild(stat("entropy (nats)", mean(h.entropy).toFixed(2), "of at most " + mean(d.entropy_max).toFixed(2)));
    box.appendChild(stat("softmax gradient ‖J‖", mean(h.gradient).toFixed(3), "→ 0 when saturated"));
    box.appendChild(stat("scale used", d.scale.toFixed(4), c.scaled ? "1/√" + c.d_k : "scaling off"));
    $("lab-check").textContent = "Honesty check: qkv.attention_weights differs from the softmax of the masked scores above by " +
      d.check.weights.toExponential(1) + "; qkv.attention from weights × V by " + d.check.out.toExponential(1) + ".";
  }

  function renderLab() {
    if ($("panel-lab").hidden) return;
    renderStepper();
    const err = $("lab-error");
    err.hidden = !LAB.error;
    err.textContent = LAB.error || "";
    if (!LAB.data) return;
    renderLabHeads();
    renderStep();
    renderSaturation();
    renderStats();
  }

  function setupLab() {
    const knobs = ["lab-text", "lab-dk", "lab-scaled", "lab-temperature", "lab-heads", "lab-mask", "lab-window", "lab-block", "lab-positional", "lab-seed"];
    for (const id of knobs) {
      $(id).addEventListener("input", runLab);
      $(id).addEventListener("change", runLab);
    }
    $("lab-reroll").addEventListener("click", () => {
      $("lab-seed").value = String(Math.floor(Math.random() * 100000));
      runLab();
    });
    $("step-prev").addEventListener("click", () => {
      const i = STEPS.findIndex(s => s.id === LAB.step);
      if (i > 0) { LAB.step = STEPS[i - 1].id; renderLab(); }
    });
    $("step-next").addEventListener("click", () => {
      const i = STEPS.findIndex(s => s.id === LAB.step);
      if (i < STEPS.length - 1) { LAB.step = STEPS[i + 1].id; renderLab(); }
    });
    updateKnobs();
  }

  /* ───────────────────────── start ───────────────────────── */

  async function start() {
    for (const tab of document.querySelectorAll(".tab[data-tab]")) {
      tab.addEventListener("click", () => {
        history.replaceState(null, "", tab.dataset.tab === "lab" ? "#lab" : "#");
        showTab(tab.dataset.tab);
      });
    }
    setupLab();
    try {
      await loadHealth();
    } catch (e) {
      showModelError("Cannot reach the qkv server: " + e.message);
      $("attention-view").dataset.state = "error";
      return;
    }
    setupModel();
    showTab(location.hash === "#lab" ? "lab" : "model");
    runModel();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();

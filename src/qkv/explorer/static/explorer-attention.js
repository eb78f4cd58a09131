/* qkv explorer: the attention view of one layer and head: query -> key lines between two token
   columns, the heatmap beside them, and the focus line that says in words what is under the mouse. */

import { $, el } from "./explorer-dom.js";
import { BLUES, headColor, rgbOf } from "./explorer-colors.js";
import { drawHeatmap, hit, setupCanvas } from "./explorer-canvas.js";
import { M, currentMatrix, selectionName, shade } from "./explorer-model-state.js";

let heatGeom = null;  // the heatmap's geometry, for hit-testing the mouse

/* the query and key columns of tokens; hovering one focuses it, clicking pins it */
export function buildTokens() {
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

/* query -> key lines, darker for more weight; with a focused token, its lines only */
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
      if (v >= 0.01) {
        const alpha = (0.1 + 0.75 * Math.sqrt(v)).toFixed(3);
        others[o].style.background = "rgba(" + r + "," + g + "," + b + "," + alpha + ")";
      }
    }
  }
}

/* the heatmap of the matrix on show, and its colour legend */
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
  legend.querySelector(".legend-note").textContent =
    d.causal ? "grey: not visible to a causal model (key after query)" : "";
}

/* redraws lines, heatmap and focus line for the current focus (nothing while the layer is on its way) */
export function drawFocus() {
  if (!M.data) return;
  const w = currentMatrix();
  if (!w) return; /* its layer is on the way; the drawing follows when it arrives */
  drawLines(w);
  drawHeat(w);
  renderFocusLine(w);
}

/* one sentence on what is under the mouse: a cell's weight, a token's top keys, or how to start */
function renderFocusLine(w) {
  const d = M.data, n = d.tokens.length, line = $("focus-line");
  line.textContent = "";
  if (M.cell) {
    const { i, j } = M.cell;
    line.appendChild(el("b", "", M.shown[i]));
    line.appendChild(document.createTextNode(" → "));
    line.appendChild(el("b", "", M.shown[j]));
    line.appendChild(document.createTextNode(
      ": " + w[i * n + j].toFixed(4) + " (query " + i + ", key " + j + ", " + selectionName() + ")"));
    return;
  }
  const f = M.focus;
  if (!f) {
    line.appendChild(document.createTextNode(
      "Showing " + selectionName() + " of " + d.model + ". Hover a token to see what it attends to; click to pin."));
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

/* the heatmap's mouse: hovering a cell names its weight, clicking pins its query row */
export function setupAttentionView() {
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
}

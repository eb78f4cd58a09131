/* qkv explorer: every head at a glance (entropy and distance grids over layers × heads) and the
   attention rollout over all layers. */

import { $ } from "./explorer-dom.js";
import { COOL, lutColor } from "./explorer-colors.js";
import { drawHeatmap, hit, setupCanvas } from "./explorer-canvas.js";
import { M } from "./explorer-model-state.js";

let rollGeom = null;  // the rollout heatmap's geometry
const gridGeom = {};  // "entropy" | "distance" -> that grid's geometry and formatter

/* one L×H grid of a per-head metric; the head on show is outlined */
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

/* the entropy and distance grids of every layer and head */
export function drawGrids() {
  const d = M.data;
  const nats = v => v.toFixed(2) + " nats (max " + d.entropy_max.toFixed(2) + ")";
  drawGrid($("grid-entropy"), "entropy", d.entropy, d.entropy_max || 1, nats);
  let maxDistance = 1e-9;
  for (const row of d.distance) for (const v of row) maxDistance = Math.max(maxDistance, v);
  drawGrid($("grid-distance"), "distance", d.distance, maxDistance, v => v.toFixed(2) + " tokens");
}

/* the {l, h} cell under a mouse event on grid `key`, or null */
function gridHit(key, event) {
  const g = gridGeom[key];
  if (!g) return null;
  const rect = event.target.getBoundingClientRect();
  const h = Math.floor((event.clientX - rect.left - g.left) / g.cw);
  const l = Math.floor((event.clientY - rect.top - g.top) / g.ch);
  if (h < 0 || l < 0 || h >= g.H || l >= g.L) return null;
  return { l, h };
}

/* the rollout heatmap, and a note when one token is an attention sink */
export function drawRollout() {
  const d = M.data, n = d.tokens.length;
  let peak = 1e-9;
  for (const row of d.rollout) for (const v of row) peak = Math.max(peak, v);
  const card = $("rollout").closest(".card");
  rollGeom = drawHeatmap($("rollout"), {
    n, labels: M.shown, special: d.special, maxWidth: Math.max(240, card.clientWidth - 32), maxCell: 28,
    numbers: false,
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
    Math.round(100 * share) + "% of what reaches the average position comes from “" + M.shown[sink] + "” (token " +
    sink + "): an attention sink, where heads park weight when nothing else is worth reading." : "";
}

/* the grids' and rollout's mouse: hovering says the numbers, clicking a grid cell calls onPick(layer, head) */
export function setupOverview(onPick) {
  for (const key of ["entropy", "distance"]) {
    const canvas = $("grid-" + key);
    canvas.addEventListener("mousemove", e => {
      const c = gridHit(key, e), status = $("grid-status");
      if (!c) { status.textContent = ""; return; }
      const d = M.data;
      status.textContent = "layer " + c.l + ", head " + c.h +
        ": entropy " + gridGeom.entropy.fmtValue(d.entropy[c.l][c.h]) +
        " · distance " + gridGeom.distance.fmtValue(d.distance[c.l][c.h]);
    });
    canvas.addEventListener("click", e => {
      const c = gridHit(key, e);
      if (c) onPick(c.l, c.h);
    });
  }
  $("rollout").addEventListener("mousemove", e => {
    const c = hit(rollGeom, e), status = $("rollout-status");
    if (!c || !M.data) return;
    status.textContent = "rollout: position " + c.i + " (" + M.shown[c.i] + ") takes " +
      (100 * M.data.rollout[c.i][c.j]).toFixed(1) + "% from token " + c.j + " (" + M.shown[c.j] + ")";
  });
}

/* qkv explorer: canvas drawing shared by the views: a sharp canvas at any pixel ratio, a labelled
   heatmap, and which of its cells the mouse is over. */

import { BLUES, lutColor } from "./explorer-colors.js";

/* sizes `canvas` to width × height CSS pixels, sharp on high-density screens; returns its cleared 2D context */
export function setupCanvas(canvas, width, height) {
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

/* a labelled n×n heatmap on a canvas; returns its geometry for `hit`.
   opts: n, labels, value(i, j), shade(v) -> [0, 1], maxWidth, maxCell?, numbers?, masked?(i, j),
   special? (grey labels), hiRow?, hiCol?, hiCell? ({i, j}) */
export function drawHeatmap(canvas, opts) {
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
  if (opts.hiRow !== undefined && opts.hiRow !== null) {
    ctx.strokeRect(left + 1, top + opts.hiRow * cell + 1, n * cell - 2, cell - 2);
  }
  if (opts.hiCol !== undefined && opts.hiCol !== null) {
    ctx.strokeRect(left + opts.hiCol * cell + 1, top + 1, cell - 2, n * cell - 2);
  }
  if (opts.hiCell) {
    ctx.strokeStyle = "#18202e";
    ctx.strokeRect(left + opts.hiCell.j * cell + 1, top + opts.hiCell.i * cell + 1, cell - 2, cell - 2);
  }
  return { left, top, cell, n };
}

/* text cut with an ellipsis to fit `width` pixels */
function clip(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let t = text;
  while (t.length > 1 && ctx.measureText(t + "…").width > width) t = t.slice(0, -1);
  return t + "…";
}

/* the cell {i, j} under a mouse event on a heatmap drawn with geometry `geom`, or null */
export function hit(geom, event) {
  if (!geom) return null;
  const rect = event.target.getBoundingClientRect();
  const x = event.clientX - rect.left - geom.left, y = event.clientY - rect.top - geom.top;
  const i = Math.floor(y / geom.cell), j = Math.floor(x / geom.cell);
  if (x < 0 || y < 0 || i >= geom.n || j >= geom.n) return null;
  return { i, j };
}

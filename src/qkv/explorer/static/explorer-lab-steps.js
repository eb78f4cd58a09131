/* qkv explorer: the mechanism lab's seven steps, x -> Q K V -> QKᵀ -> scale -> mask -> softmax -> ×V,
   each drawn from the server's real matrices (/api/lab) with a sentence on what it does. */

import { $, el } from "./explorer-dom.js";
import { BLUES, COOL, REDS, lutColor } from "./explorer-colors.js";
import { digest, fmt, mean, transpose } from "./explorer-numbers.js";

export const STEPS = [
  { id: "x", label: "x" },
  { id: "qkv", label: "Q K V" },
  { id: "scores", label: "QKᵀ" },
  { id: "scale", label: "scale" },
  { id: "mask", label: "mask" },
  { id: "softmax", label: "softmax" },
  { id: "out", label: "×V" },
];

export const MASK_HELP = {
  none: "No mask: every token may attend to every token, as in an encoder (BERT).",
  causal: "Causal: token i sees tokens 0…i only, as in a decoder (GPT, Llama): no peeking at what comes next.",
  sliding_window: "Sliding window: token i sees only its last w tokens, itself included (Mistral, Longformer): " +
    "cost grows with N·w, not N².",
  block_sparse: "Block-sparse: tokens form blocks of b; each block sees itself and the first block (BigBird-style), " +
    "so whole tiles of work are skipped.",
};

/* one matrix as a grid of numbered, coloured cells; a null cell is a masked −∞.
   opts: rowLabels, colLabels?, caption?, kind? ("prob": weights in [0, 1]; else signed numbers) */
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

/* step `step` ("x" … "out") of head `head` of the lab's answer `d`, into #lab-view with its title and text */
export function renderStep(d, step, head) {
  const view = $("lab-view");
  view.textContent = "";
  if (!d) return;
  const c = d.config, h = d.heads[head], tokens = d.tokens;
  const dims = d.shown_dims < c.d_k ? " (first " + d.shown_dims + " of " + c.d_k + " dims)" : "";
  const sqrt = Math.sqrt(c.d_k);
  const dup = tokens.find((t, i) => tokens.indexOf(t) !== i);
  const explain = $("step-explain");
  let title = "", text = "";
  const rowLabels = tokens;
  switch (step) {
    case "x": {
      title = "1 · Token embeddings x";
      text = "Each word becomes a vector of d_model = " + d.d_model +
        " numbers (random here; learned in a real model).";
      if (d.positional) {
        text += " Sinusoidal encoding adds a position vector: x = embedding + position, so equal words now differ.";
        view.appendChild(matrixEl("x", d.x, { rowLabels, caption: "(embedding + position)" }));
        view.appendChild(matrixEl("position", d.positional, { rowLabels, caption: "(sin, cos pairs)" }));
      } else {
        if (dup && c.positional === "none") {
          text += " “" + dup + "” appears twice with the same vector: nothing yet tells the two apart.";
        }
        view.appendChild(matrixEl("x", d.x, { rowLabels }));
      }
      break;
    }
    case "qkv": {
      title = "2 · Queries, keys and values (head " + head + ")";
      text = "Three learned matrices turn each x into a query q = x·W_q (what the token looks for), " +
        "a key k = x·W_k (what it offers) and a value v = x·W_v (what it passes on), d_k = " + c.d_k +
        " numbers each" + dims + ".";
      if (c.positional === "rotary") text += " Rotary then turns q and k by angles that grow with the position.";
      view.appendChild(matrixEl("Q", h.q, { rowLabels }));
      view.appendChild(matrixEl("K", h.k, { rowLabels }));
      view.appendChild(matrixEl("V", h.v, { rowLabels }));
      break;
    }
    case "scores": {
      title = "3 · Scores QKᵀ";
      text = "Every query against every key: score[i][j] = q_i · k_j, a sum of d_k products. " +
        "Their spread grows with d_k: std " + h.score_std.toFixed(2) + " here, about √d_k = " + sqrt.toFixed(2) + ".";
      if (c.d_k <= 8) {
        const dimLabels = [...Array(c.d_k).keys()].map(String);
        view.appendChild(matrixEl("Q", h.q, { rowLabels }));
        view.appendChild(matrixEl("· Kᵀ", transpose(h.k), { rowLabels: dimLabels, colLabels: tokens }));
      }
      view.appendChild(matrixEl(c.d_k <= 8 ? "= QKᵀ" : "QKᵀ", h.scores, { rowLabels, colLabels: tokens }));
      break;
    }
    case "scale": {
      title = "4 · Scale" + (c.temperature !== 1 ? " and temperature" : "");
      const factor = c.scaled ? "× 1/√d_k = " + (1 / sqrt).toFixed(3) : "× 1 (scaling off)";
      text = c.scaled ?
        "Multiply every score by 1/√" + c.d_k + " = " + (1 / sqrt).toFixed(3) +
          " so their spread is back near 1: std " + h.logit_std.toFixed(2) + "." :
        "Scaling is off: scores go into softmax as they are, std " + h.logit_std.toFixed(2) +
          ". Softmax of numbers this far apart is nearly one-hot.";
      if (c.temperature !== 1) text += " Then divide by the temperature T = " + c.temperature.toFixed(2) + ".";
      const caption = "= QKᵀ " + factor + (c.temperature !== 1 ? " ÷ " + c.temperature.toFixed(2) : "");
      view.appendChild(matrixEl("scaled", h.scaled, { rowLabels, colLabels: tokens, caption }));
      break;
    }
    case "mask": {
      title = "5 · Mask";
      text = MASK_HELP[c.mask] +
        (c.mask === "none" ? "" : " Forbidden scores become −∞, so softmax gives them exactly 0.");
      const caption = d.mask ? "qkv.masks." + d.mask : "";
      view.appendChild(matrixEl("masked", h.masked, { rowLabels, colLabels: tokens, caption }));
      break;
    }
    case "softmax": {
      title = "6 · Softmax: attention weights";
      const peak = mean(h.peak), ent = mean(h.entropy), maxEnt = mean(d.entropy_max);
      text = "Each row becomes probabilities, exp(score) / Σ exp(score), summing to 1 (qkv.attention_weights). " +
        "Mean largest weight per row " + peak.toFixed(2) + ", entropy " + ent.toFixed(2) +
        " of at most " + maxEnt.toFixed(2) + " nats.";
      if (dup) {
        /* say it only where the computed rows really agree: a mask or positions make them differ */
        const [a, b] = tokens.reduce((at, t, i) => (t === dup ? at.concat(i) : at), []);
        const same = h.weights[a].every((w, j) => w === h.weights[b][j]);
        text += same
          ? " The two “" + dup + "” rows are identical: without positions, attention cannot tell them apart."
          : " The two “" + dup + "” rows differ here" +
            (c.mask !== "none" ? ": the mask lets them see different keys." :
              c.positional !== "none" ? ": positions tell them apart." : ".");
      }
      if (peak > 0.9) {
        text += " Saturated: nearly every row is one-hot, and softmax's gradient is small (" +
          mean(h.gradient).toFixed(3) + ").";
      }
      view.appendChild(matrixEl("weights", h.weights, { rowLabels, colLabels: tokens, kind: "prob" }));
      break;
    }
    case "out": {
      title = "7 · Output: weights × V";
      text = "Each output row is a weighted average of the value rows, out_i = Σ_j w_ij v_j (qkv.attention): " +
        "what this head passes on" + dims + "." +
        (d.heads.length > 1 ? " The " + d.heads.length + " heads' outputs are then placed side by side (" +
          d.heads.length + " × " + c.d_k + " numbers per token) and mixed by one more matrix, W_o." : "");
      view.appendChild(matrixEl("weights", h.weights, { rowLabels, colLabels: tokens, kind: "prob" }));
      view.appendChild(matrixEl("· V", h.v, { rowLabels }));
      view.appendChild(matrixEl("= out", h.out, { rowLabels }));
      break;
    }
  }
  $("step-title").textContent = title;
  explain.textContent = text;
  const flat = [].concat(...h.weights);
  view.dataset.step = step;
  view.dataset.head = String(head);
  view.dataset.digest = digest(flat);
  view.dataset.peak = mean(h.peak).toFixed(4);
}

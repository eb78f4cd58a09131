/* qkv explorer: what the real-model panel shows: the server's last answer, the layers fetched
   for it, and the learner's choice of layer, head and focus. */

import { $ } from "./explorer-dom.js";

export const M = {
  data: null,         // the last /api/attention answer (its all-layer metrics; weights are in M.layers)
  layers: new Map(),  // layer -> its H×N×N weights, for M.data's text: the layers fetched so far
  partial: {},        // model name -> true when its last answer held one layer only (then ask one at a time)
  layerController: null,
  layerPending: null, // the layer being fetched, or null
  shown: [],          // tokens as displayed
  pick: null,         // the server's start head ({layer, head, reason}) when the model changed, else null
  layer: 0,
  head: 0,            // a head index or "mean"
  focus: null,        // {side: "q"|"k", index} or null
  pinned: false,
  cell: null,         // heatmap cell under the mouse {i, j}
  timer: null,
  controller: null,
  lastRequest: "",
};

/* a token as the page prints it: Llama's leading space dropped, whitespace made visible */
export function showToken(tok, kind) {
  let t = tok;
  if (kind === "llama" && t.startsWith(" ") && t.trim() !== "") t = t.slice(1);
  t = t.replace(/\r/g, "\\r").replace(/\n/g, "⏎").replace(/\t/g, "⇥");
  if (t === "") return "∅";
  return t.trim() === "" ? "␣".repeat(Math.min(t.length, 4)) : t;
}

/* the N×N matrix on show, row-major: one head, or the mean of the layer's heads
   (null while that layer is being fetched) */
export function currentMatrix() {
  const d = M.data, n = d.tokens.length, layer = M.layers.get(M.layer);  // layer: (H, N, N)
  if (!layer) return null;
  const out = new Float64Array(n * n);
  if (M.head === "mean") {
    const H = layer.length;
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[i * n + j] += layer[h][i][j] / H;
    }
  } else {
    const w = layer[M.head];
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[i * n + j] = w[i][j];
  }
  return out;
}

/* a weight's shade in [0, 1]: √w when "boost faint weights" is on */
export function shade(w) { return $("contrast").checked ? Math.sqrt(Math.max(w, 0)) : w; }

export function selectionName() {
  const d = M.data;
  return "layer " + M.layer + (M.head === "mean" ? ", mean of " + d.num_heads + " heads" : ", head " + M.head);
}

/* qkv explorer: the lab's measurements: softmax saturation as d_k grows (two SVG charts) and the
   shown head in numbers. */

import { $, el } from "./explorer-dom.js";
import { mean } from "./explorer-numbers.js";

/* a small line chart (SVG) of a metric against log2 d_k, scaled vs unscaled; the current set-up is a dot */
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
  for (const v of [2, 8, 32, 128, 512]) {
    add("text", { x: x(v), y: Hh - b + 15, "text-anchor": "middle" }, String(v));
  }
  add("text", { x: (l + W - r) / 2, y: Hh - 3, "text-anchor": "middle" }, "d_k");
  const cx = x(current.d_k);
  add("line", { x1: cx, x2: cx, y1: t, y2: Hh - b, stroke: "#c9d2df", "stroke-dasharray": "3 3" });
  const series = [["scaled", "#2f5fd0"], ["unscaled", "#e8590c"]];
  const now = current.scaled ? "scaled" : "unscaled";
  for (const [name, color] of series) {
    const pts = sat.d_k.map((v, i) => x(v).toFixed(1) + "," + y(sat[name][key][i]).toFixed(1)).join(" ");
    add("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": name === now ? 2.5 : 1.5 });
    const k = sat.d_k.indexOf(current.d_k);
    if (k >= 0 && name === now) {
      add("circle", { cx, cy: y(sat[name][key][k]), r: 4.5, fill: color, stroke: "#fff", "stroke-width": 1.5 });
    }
  }
  return svg;
}

/* the two saturation charts of the lab's answer `d` */
export function renderSaturation(d) {
  const box = $("saturation");
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
  $("saturation-help").textContent = "Measured on these words over " + sat.heads + " random heads, " +
    "everything else as set; only d_k and scaling change. " +
    "Without scaling the largest weight climbs toward 1 and the gradient that would train W_q and W_k " +
    "fades toward 0; with it both stay level.";
}

function stat(k, v, s) {
  const e = el("div", "stat");
  e.appendChild(el("div", "k", k));
  e.appendChild(el("div", "v", v));
  if (s) e.appendChild(el("div", "s", s));
  return e;
}

/* head `head` of the lab's answer `d` in numbers, and the check against qkv's own functions */
export function renderStats(d, head) {
  const box = $("lab-stats");
  box.textContent = "";
  if (!d) return;
  const h = d.heads[head], c = d.config;
  box.appendChild(stat("spread of QKᵀ (std)", h.score_std.toFixed(2), "√d_k = " + Math.sqrt(c.d_k).toFixed(2)));
  const into = c.scaled ? "after × 1/√d_k" + (c.temperature !== 1 ? " ÷ T" : "") : "unscaled";
  box.appendChild(stat("spread into softmax", h.logit_std.toFixed(2), into));
  box.appendChild(stat("largest weight per row", mean(h.peak).toFixed(2), "1 = all on one key"));
  box.appendChild(stat("entropy (nats)", mean(h.entropy).toFixed(2), "of at most " + mean(d.entropy_max).toFixed(2)));
  box.appendChild(stat("softmax gradient ‖J‖", mean(h.gradient).toFixed(3), "→ 0 when saturated"));
  box.appendChild(stat("scale used", d.scale.toFixed(4), c.scaled ? "1/√" + c.d_k : "scaling off"));
  $("lab-check").textContent = "Honesty check: qkv.attention_weights differs from the softmax of the masked scores " +
    "above by " + d.check.weights.toExponential(1) + "; qkv.attention from weights × V by " +
    d.check.out.toExponential(1) + ".";
}

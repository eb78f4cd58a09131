/* Shared by the qkv HTML views. No network, no globals: this text is pasted inside each view's closure. */
"use strict";

/* weights arrive as base64 of uint8 (round(255 * w)), one block per layer, laid out (H, Nq, Nk) */
function qkvDecode(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

const QKV_PALETTE = ["#1f77b4", "#e6550d", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a"];

function qkvHeadColor(h) {
  if (h < QKV_PALETTE.length) return QKV_PALETTE[h];
  return "hsl(" + ((h * 137.508) % 360).toFixed(1) + ", 62%, 42%)";
}

function qkvRgb(color) {
  /* "#rrggbb" or "hsl(h, s%, l%)" -> [r, g, b] */
  if (color[0] === "#") return [1, 3, 5].map(i => parseInt(color.slice(i, i + 2), 16));
  const m = color.match(/hsl\(([\d.]+), ([\d.]+)%, ([\d.]+)%\)/);
  const h = +m[1] / 360, s = +m[2] / 100, l = +m[3] / 100;
  const q = l < 0.5 ? l * (1 + s) : l + s - l * s, p = 2 * l - q;
  const f = t => { t = (t + 1) % 1; return t < 1 / 6 ? p + (q - p) * 6 * t : t < 1 / 2 ? q : t < 2 / 3 ? p + (q - p) * (2 / 3 - t) * 6 : p; };
  return [f(h + 1 / 3), f(h), f(h - 1 / 3)].map(x => Math.round(x * 255));
}

/* white -> blue ramp (like matplotlib's "Blues"), for weight 0 .. 1 */
const QKV_RAMP = [[255, 255, 255], [222, 235, 247], [158, 202, 225], [66, 146, 198], [8, 81, 156], [8, 48, 107]];
const QKV_LUT = (function () {
  const lut = new Uint8Array(256 * 3);
  for (let v = 0; v < 256; v++) {
    const t = v / 255 * (QKV_RAMP.length - 1), k = Math.min(Math.floor(t), QKV_RAMP.length - 2), f = t - k;
    for (let c = 0; c < 3; c++) lut[v * 3 + c] = Math.round(QKV_RAMP[k][c] * (1 - f) + QKV_RAMP[k + 1][c] * f);
  }
  return lut;
})();

/* the colour index of a stored weight (0..255) under a contrast mode */
function qkvShade(v, boost) {
  return boost ? Math.round(Math.sqrt(v / 255) * 255) : v;
}

function qkvEl(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/* a token as shown: blanks made visible */
function qkvShow(tok) {
  if (tok === "") return "∅";
  return tok.trim() === "" ? tok.replace(/ /g, "␣").replace(/\n/g, "⏎").replace(/\t/g, "⇥") : tok;
}

function qkvFmt(v) { return (v / 255).toFixed(2); }

function qkvLegend(boost) {
  const wrap = qkvEl("span", "qkv-legend");
  wrap.appendChild(qkvEl("span", "", "0"));
  const c = document.createElement("canvas");
  c.width = 120; c.height = 1;
  const ctx = c.getContext("2d"), img = ctx.createImageData(120, 1);
  for (let x = 0; x < 120; x++) {
    const v = qkvShade(Math.round(x / 119 * 255), boost);
    img.data.set([QKV_LUT[v * 3], QKV_LUT[v * 3 + 1], QKV_LUT[v * 3 + 2], 255], x * 4);
  }
  ctx.putImageData(img, 0, 0);
  wrap.appendChild(c);
  wrap.appendChild(qkvEl("span", "", "1"));
  return wrap;
}

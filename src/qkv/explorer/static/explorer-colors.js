/* qkv explorer: the colours: one per head, and the ramps that shade weights and signed numbers. */

const PALETTE = ["#1f77b4", "#e6550d", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a"];
const MEAN_COLOR = "#27407a";

/* head h's colour ("mean": the layer's average); beyond the palette, hues spread by the golden angle */
export function headColor(h) {
  if (h === "mean") return MEAN_COLOR;
  if (h < PALETTE.length) return PALETTE[h];
  const hue = (h * 137.508) % 360, s = 0.62, l = 0.42;
  const a = s * Math.min(l, 1 - l);
  const f = n => { const k = (n + hue / 30) % 12; return l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1)); };
  return "#" + [f(0), f(8), f(4)].map(x => Math.round(x * 255).toString(16).padStart(2, "0")).join("");
}

export function rgbOf(hex) { return [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16)); }

/* a 256-entry RGB lookup table through `stops` */
function ramp(stops) {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let v = 0; v < 256; v++) {
    const t = v / 255 * (stops.length - 1), k = Math.min(Math.floor(t), stops.length - 2), f = t - k;
    for (let c = 0; c < 3; c++) lut[v * 3 + c] = Math.round(stops[k][c] * (1 - f) + stops[k + 1][c] * f);
  }
  return lut;
}

/* white -> blue (weights), white -> red and white -> blue (signed numbers) */
export const BLUES = ramp([
  [255, 255, 255], [222, 235, 247], [158, 202, 225], [66, 146, 198], [8, 81, 156], [8, 48, 107]]);
export const REDS = ramp([[255, 255, 255], [254, 224, 210], [252, 146, 114], [222, 45, 38], [165, 15, 21]]);
export const COOL = ramp([[255, 255, 255], [222, 235, 247], [140, 180, 220], [49, 110, 180], [20, 60, 130]]);

/* the CSS colour at t in [0, 1] of a ramp */
export function lutColor(lut, t) {
  const v = Math.max(0, Math.min(255, Math.round(t * 255)));
  return "rgb(" + lut[v * 3] + "," + lut[v * 3 + 1] + "," + lut[v * 3 + 2] + ")";
}

/* qkv explorer: numbers as the page shows them, and small array helpers. */

/* a short, stable fingerprint of numbers (for tests and for skipping redundant redraws) */
export function digest(values) {
  let h = 2166136261;
  for (let i = 0; i < values.length; i++) {
    h ^= Math.round(values[i] * 1e4) & 0xffffffff;
    h = Math.imul(h, 16777619) >>> 0;
  }
  return h.toString(16);
}

/* a matrix cell's number in at most four characters; null (a masked score) is −∞ */
export function fmt(v) {
  if (v === null || v === undefined) return "−∞";
  const a = Math.abs(v);
  if (a < 0.005) return "0.00";
  if (a >= 1000) return v.toExponential(1).replace("e+", "e");
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

export function transpose(m) { return m[0].map((_, j) => m.map(row => row[j])); }

export function mean(xs) { return xs.reduce((a, b) => a + b, 0) / Math.max(xs.length, 1); }

/* qkv model view: a layers × heads grid of attention thumbnails; click one to enlarge it,
   with every token labelled and each weight shown on hover. */

function qkvModelView(root, D) {
  const nq = D.tokens.length, nk = D.keyTokens.length, n = Math.max(nq, nk);
  const layers = D.layers.map(l => ({ name: l.name, heads: l.heads, w: qkvDecode(l.data) }));
  const maxHeads = Math.max(1, ...layers.map(l => l.heads));
  let boost = false, current = null;

  const THUMB = maxHeads > 16 ? 56 : maxHeads > 8 ? 72 : 88;
  root.style.setProperty("--qkv-thumb", THUMB + "px");

  if (D.title) root.appendChild(qkvEl("h2", "qkv-title", D.title));
  const controls = root.appendChild(qkvEl("div", "qkv-controls"));
  const legendSlot = controls.appendChild(qkvEl("span", ""));
  const boostLabel = controls.appendChild(qkvEl("label", ""));
  const boostBox = boostLabel.appendChild(document.createElement("input"));
  boostBox.type = "checkbox";
  boostBox.className = "qkv-boost";
  boostLabel.appendChild(document.createTextNode(" √ contrast (shows small weights)"));
  controls.appendChild(qkvEl("span", "qkv-hint",
    "Click a thumbnail to enlarge it. " + layers.length + " layers × " + maxHeads + " heads, " +
    nq + " queries × " + nk + " keys" + (n > THUMB ? " (thumbnails show the largest weight of each block of tokens)." : ".")));

  const grid = root.appendChild(qkvEl("div", "qkv-grid"));
  grid.style.gridTemplateColumns = "auto repeat(" + maxHeads + ", " + (THUMB + 2) + "px)";
  grid.appendChild(qkvEl("span", ""));
  for (let h = 0; h < maxHeads; h++) grid.appendChild(qkvEl("span", "qkv-collabel", "head " + h));

  /* thumbnails: at most one canvas pixel per screen pixel, each the max of its block of weights,
     so thin patterns (previous token, first token) stay visible on long inputs */
  const tq = Math.min(nq, THUMB), tk = Math.min(nk, THUMB);
  const thumbs = [];
  layers.forEach((l, li) => {
    grid.appendChild(qkvEl("span", "qkv-rowlabel", l.name));
    for (let h = 0; h < maxHeads; h++) {
      if (h >= l.heads) { grid.appendChild(qkvEl("span", "")); continue; }
      const b = grid.appendChild(qkvEl("button", "qkv-thumb"));
      b.type = "button";
      b.dataset.layer = String(li);
      b.dataset.head = String(h);
      b.title = l.name + ", head " + h + ": click to enlarge";
      b.setAttribute("aria-label", b.title);
      const c = b.appendChild(document.createElement("canvas"));
      c.width = tk;
      c.height = tq;
      b.addEventListener("click", () => open(li, h, true));
      thumbs.push({ canvas: c, layer: li, head: h, button: b });
    }
  });

  function paintThumb(t) {
    const w = layers[t.layer].w, ctx = t.canvas.getContext("2d"), img = ctx.createImageData(tk, tq);
    for (let a = 0; a < tq; a++) {
      const i0 = Math.floor(a * nq / tq), i1 = Math.max(i0 + 1, Math.floor((a + 1) * nq / tq));
      for (let b = 0; b < tk; b++) {
        const j0 = Math.floor(b * nk / tk), j1 = Math.max(j0 + 1, Math.floor((b + 1) * nk / tk));
        let v = 0;
        for (let i = i0; i < i1; i++) {
          const base = (t.head * nq + i) * nk;
          for (let j = j0; j < j1; j++) if (w[base + j] > v) v = w[base + j];
        }
        const s = qkvShade(v, boost) * 3, p = (a * tk + b) * 4;
        img.data[p] = QKV_LUT[s]; img.data[p + 1] = QKV_LUT[s + 1]; img.data[p + 2] = QKV_LUT[s + 2]; img.data[p + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  /* the enlarged head */
  const detail = root.appendChild(qkvEl("div", "qkv-detail"));
  detail.hidden = true;
  const dhead = detail.appendChild(qkvEl("div", "qkv-detail-head"));
  const dtitle = dhead.appendChild(qkvEl("h3", ""));
  const prev = dhead.appendChild(qkvEl("button", "qkv-plain", "← prev"));
  const next = dhead.appendChild(qkvEl("button", "qkv-plain", "next →"));
  const close = dhead.appendChild(qkvEl("button", "qkv-plain qkv-close", "close ✕"));
  [prev, next, close].forEach(b => { b.type = "button"; });
  const status = detail.appendChild(qkvEl("div", "qkv-status", "Hover a cell to read its weight."));
  const mscroll = detail.appendChild(qkvEl("div", "qkv-matrix-scroll"));
  const matrix = mscroll.appendChild(qkvEl("div", "qkv-matrix"));
  const corner = matrix.appendChild(qkvEl("div", "qkv-corner"));
  const klabels = matrix.appendChild(qkvEl("div", "qkv-klabels"));
  const qlabels = matrix.appendChild(qkvEl("div", "qkv-qlabels"));
  const cellBox = matrix.appendChild(qkvEl("div", "qkv-cells"));
  const big = cellBox.appendChild(document.createElement("canvas"));
  big.className = "qkv-big";
  const cursor = cellBox.appendChild(qkvEl("div", "qkv-cursor"));
  cursor.hidden = true;
  /* cells stay at least 12 px (10 px text) up to 600 tokens: long inputs scroll, labels stay readable */
  const CELL = Math.max(n > 600 ? 7 : 12, Math.min(24, Math.floor(760 / Math.max(n, 1))));
  root.style.setProperty("--qkv-cell", CELL + "px");
  root.style.setProperty("--qkv-font", Math.max(6, Math.min(12, CELL - 2)) + "px");
  matrix.style.gridTemplateColumns = "auto " + nk * CELL + "px";
  corner.appendChild(qkvEl("span", "qkv-colhead", "query ↓  key →"));
  const kEls = D.keyTokens.map((t, j) => { const s = klabels.appendChild(qkvEl("span", "", qkvShow(t))); s.title = "key " + j; return s; });
  const qEls = D.tokens.map((t, i) => { const s = qlabels.appendChild(qkvEl("span", "", qkvShow(t))); s.title = "query " + i; return s; });
  big.width = nk;
  big.height = nq;
  big.style.width = nk * CELL + "px";
  big.style.height = nq * CELL + "px";

  function paintBig() {
    if (current === null) return;
    const [li, h] = current, w = layers[li].w, ctx = big.getContext("2d"), img = ctx.createImageData(nk, nq);
    for (let i = 0; i < nq; i++) {
      for (let j = 0; j < nk; j++) {
        const s = qkvShade(w[(h * nq + i) * nk + j], boost) * 3, p = (i * nk + j) * 4;
        img.data[p] = QKV_LUT[s]; img.data[p + 1] = QKV_LUT[s + 1]; img.data[p + 2] = QKV_LUT[s + 2]; img.data[p + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  function open(li, h, scroll) {
    current = [li, h];
    thumbs.forEach(t => t.button.classList.toggle("qkv-selected", t.layer === li && t.head === h));
    root.dataset.open = li + ":" + h;
    dtitle.textContent = layers[li].name + " · head " + h;
    detail.hidden = false;
    paintBig();
    if (scroll) detail.scrollIntoView({ block: "nearest" });
  }
  function step(delta) {
    if (current === null) return;
    const k = thumbs.findIndex(t => t.layer === current[0] && t.head === current[1]);
    const t = thumbs[(k + delta + thumbs.length) % thumbs.length];
    open(t.layer, t.head, false);
  }
  prev.addEventListener("click", () => step(-1));
  next.addEventListener("click", () => step(1));
  close.addEventListener("click", () => {
    detail.hidden = true;
    current = null;
    root.dataset.open = "";
    thumbs.forEach(t => t.button.classList.remove("qkv-selected"));
  });
  root.addEventListener("keydown", e => { if (e.key === "Escape" && current !== null) close.click(); });

  let lastCell = null;
  big.addEventListener("mousemove", e => {
    const r = big.getBoundingClientRect();
    const i = Math.min(nq - 1, Math.floor((e.clientY - r.top) / CELL)), j = Math.min(nk - 1, Math.floor((e.clientX - r.left) / CELL));
    if (current === null || i < 0 || j < 0) return;
    if (lastCell) { qEls[lastCell[0]].classList.remove("qkv-active"); kEls[lastCell[1]].classList.remove("qkv-active"); }
    qEls[i].classList.add("qkv-active");
    kEls[j].classList.add("qkv-active");
    lastCell = [i, j];
    cursor.hidden = false;
    cursor.style.left = j * CELL + "px";
    cursor.style.top = i * CELL + "px";
    const v = layers[current[0]].w[(current[1] * nq + i) * nk + j];
    status.textContent = "query " + i + " " + JSON.stringify(D.tokens[i]) + " → key " + j + " " +
      JSON.stringify(D.keyTokens[j]) + ": " + qkvFmt(v);
  });
  big.addEventListener("mouseleave", () => {
    if (lastCell) { qEls[lastCell[0]].classList.remove("qkv-active"); kEls[lastCell[1]].classList.remove("qkv-active"); }
    lastCell = null;
    cursor.hidden = true;
  });

  function repaint() {
    legendSlot.textContent = "";
    legendSlot.appendChild(qkvLegend(boost));
    thumbs.forEach(paintThumb);
    paintBig();
  }
  boostBox.addEventListener("change", () => { boost = boostBox.checked; repaint(); });
  repaint();
  if (D.open !== null) open(D.open[0], D.open[1], false);
}

/* qkv head view: queries on the left, keys on the right, one line per (query, key) per head,
   drawn with opacity = attention weight. Hover a token to focus it; click to pin the focus. */

function qkvHeadView(root, D) {
  const nq = D.tokens.length, nk = D.keyTokens.length, n = Math.max(nq, nk);
  const layers = D.layers.map(l => ({ name: l.name, heads: l.heads, w: qkvDecode(l.data) }));
  let layer = D.layer;
  let selected = new Set(D.heads !== null ? D.heads : [...Array(layers[layer].heads).keys()]);
  let focus = null, pinned = false;

  /* rows stay readable on long inputs: the column scrolls instead of shrinking below 16 px */
  const ROW = n > 400 ? 16 : n > 80 ? 18 : 22;
  const FONT = ROW >= 22 ? "13px" : "12px";
  const WIDTH = n > 80 ? 360 : 300;
  root.style.setProperty("--qkv-row", ROW + "px");
  root.style.setProperty("--qkv-font", FONT);

  if (D.title) root.appendChild(qkvEl("h2", "qkv-title", D.title));
  const controls = root.appendChild(qkvEl("div", "qkv-controls"));
  const layerLabel = controls.appendChild(qkvEl("label", "", "Layer "));
  const layerSelect = layerLabel.appendChild(qkvEl("select", "qkv-layer"));
  layers.forEach((l, i) => {
    const o = layerSelect.appendChild(qkvEl("option", "", l.name));
    o.value = String(i);
  });
  layerSelect.value = String(layer);
  controls.appendChild(qkvEl("label", "", "Heads"));
  const headBox = controls.appendChild(qkvEl("div", "qkv-heads"));
  const allButton = controls.appendChild(qkvEl("button", "qkv-plain", "all heads"));
  allButton.type = "button";
  root.appendChild(qkvEl("div", "qkv-hint",
    "Hover a token: on the left, what it attends to; on the right, what attends to it. " +
    "Click a token to pin it. Click a head to toggle it, double-click to see it alone. " +
    nq + " queries × " + nk + " keys."));
  const status = root.appendChild(qkvEl("div", "qkv-status"));

  const scroll = root.appendChild(qkvEl("div", "qkv-scroll"));
  const columns = scroll.appendChild(qkvEl("div", "qkv-columns"));
  const left = columns.appendChild(qkvEl("div", "qkv-side qkv-left"));
  const canvas = columns.appendChild(document.createElement("canvas"));
  const right = columns.appendChild(qkvEl("div", "qkv-side qkv-right"));
  canvas.className = "qkv-lines";
  [left, right].forEach((side, s) => {
    const head = side.appendChild(qkvEl("div", "qkv-tok qkv-colhead", s === 0 ? "query" : "key"));
    head.style.cursor = "default";
  });

  function tokenEl(side, tok, i) {
    const e = qkvEl("div", "qkv-tok");
    e.dataset.side = side;
    e.dataset.index = String(i);
    e.title = (side === "q" ? "query " : "key ") + i + ": " + JSON.stringify(tok);
    const text = qkvEl("span", "", qkvShow(tok));
    const pos = qkvEl("span", "qkv-pos", String(i));
    if (side === "q") { e.appendChild(text); e.appendChild(pos); } else { e.appendChild(pos); e.appendChild(text); }
    return e;
  }
  const qEls = D.tokens.map((t, i) => left.appendChild(tokenEl("q", t, i)));
  const kEls = D.keyTokens.map((t, j) => right.appendChild(tokenEl("k", t, j)));

  const height = n * ROW;
  const dpr = Math.max(1, Math.min(window.devicePixelRatio || 1, 30000 / Math.max(height, 1)));
  canvas.width = Math.round(WIDTH * dpr);
  canvas.height = Math.round(height * dpr);
  canvas.style.width = WIDTH + "px";
  canvas.style.height = height + "px";
  canvas.style.marginTop = ROW + "px"; /* below the column headers */
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  const X0 = 2, X1 = WIDTH - 2, y = i => i * ROW + ROW / 2;

  function heads() {
    const H = layers[layer].heads;
    return [...selected].filter(h => h < H).sort((a, b) => a - b);
  }
  function weight(h, i, j) { return layers[layer].w[(h * nq + i) * nk + j]; }

  function renderHeads() {
    headBox.textContent = "";
    for (let h = 0; h < layers[layer].heads; h++) {
      const b = headBox.appendChild(qkvEl("button", "qkv-head" + (selected.has(h) ? "" : " qkv-off"), String(h)));
      b.type = "button";
      b.style.setProperty("--qkv-head", qkvHeadColor(h));
      b.title = "head " + h + ": click to toggle, double-click to show it alone";
      b.setAttribute("aria-pressed", selected.has(h) ? "true" : "false");
      b.addEventListener("click", () => {
        if (selected.has(h)) selected.delete(h); else selected.add(h);
        update();
      });
      b.addEventListener("dblclick", () => { selected = new Set([h]); update(); });
    }
  }

  function draw() {
    ctx.clearRect(0, 0, WIDTH, height);
    const hs = heads();
    for (const h of hs) {
      const [r, g, b] = qkvRgb(qkvHeadColor(h));
      if (focus === null) {
        /* every line, grouped into 16 opacity levels so each level is one stroke */
        const levels = Array.from({ length: 16 }, () => []);
        for (let i = 0; i < nq; i++) {
          for (let j = 0; j < nk; j++) {
            const v = weight(h, i, j);
            if (v >= 3) levels[v >> 4].push(i, j);
          }
        }
        ctx.lineWidth = n > 80 ? 1 : 1.5;
        const damp = hs.length > 1 ? 0.55 : 0.8;
        levels.forEach((pairs, level) => {
          if (!pairs.length) return;
          ctx.strokeStyle = "rgba(" + r + "," + g + "," + b + "," + ((level + 0.5) / 16 * damp).toFixed(3) + ")";
          ctx.beginPath();
          for (let p = 0; p < pairs.length; p += 2) { ctx.moveTo(X0, y(pairs[p])); ctx.lineTo(X1, y(pairs[p + 1])); }
          ctx.stroke();
        });
      } else {
        /* lines fan out from the focused token; each head lands at its own height in the other
           token's row, so heads stay apart. Opacity sqrt(w): weak links faint but visible. */
        ctx.lineWidth = 2.5;
        const k = hs.indexOf(h), spread = hs.length > 1 ? Math.min(3, (ROW - 8) / (hs.length - 1)) : 0;
        const dy = (k - (hs.length - 1) / 2) * spread;
        const count = focus.side === "q" ? nk : nq;
        for (let o = 0; o < count; o++) {
          const i = focus.side === "q" ? focus.index : o, j = focus.side === "q" ? o : focus.index;
          const v = weight(h, i, j);
          if (v < 2) continue;
          ctx.strokeStyle = "rgba(" + r + "," + g + "," + b + "," + Math.sqrt(v / 255).toFixed(3) + ")";
          ctx.beginPath();
          ctx.moveTo(X0, y(i) + (focus.side === "k" ? dy : 0));
          ctx.lineTo(X1, y(j) + (focus.side === "q" ? dy : 0));
          ctx.stroke();
        }
      }
    }
  }

  function highlight() {
    qEls.forEach(e => { e.classList.remove("qkv-active", "qkv-pinned"); e.style.background = ""; });
    kEls.forEach(e => { e.classList.remove("qkv-active", "qkv-pinned"); e.style.background = ""; });
    root.dataset.focus = focus === null ? "" : focus.side + focus.index;
    const hs = heads();
    if (focus === null) {
      status.innerHTML = "";
      status.appendChild(document.createTextNode(
        layers[layer].name + ": " + hs.length + " of " + layers[layer].heads + " heads shown. Hover a token to focus it."));
      return;
    }
    const mine = (focus.side === "q" ? qEls : kEls)[focus.index];
    mine.classList.add("qkv-active");
    if (pinned) mine.classList.add("qkv-pinned");
    const others = focus.side === "q" ? kEls : qEls;
    const mean = new Float64Array(others.length);
    others.forEach((e, o) => {
      let best = 0, bestHead = -1;
      for (const h of hs) {
        const v = focus.side === "q" ? weight(h, focus.index, o) : weight(h, o, focus.index);
        mean[o] += v / Math.max(hs.length, 1);
        if (v > best) { best = v; bestHead = h; }
      }
      if (bestHead >= 0 && best >= 3) {
        const [r, g, b] = qkvRgb(qkvHeadColor(bestHead));
        e.style.background = "rgba(" + r + "," + g + "," + b + "," + (0.12 + 0.75 * best / 255).toFixed(3) + ")";
      }
    });
    const order = [...mean.keys()].sort((a, b) => mean[b] - mean[a]).slice(0, 6).filter(o => mean[o] > 0);
    const tokens = focus.side === "q" ? D.tokens : D.keyTokens, otherTokens = focus.side === "q" ? D.keyTokens : D.tokens;
    status.textContent = "";
    const b = qkvEl("b", "", JSON.stringify(tokens[focus.index]));
    status.appendChild(b);
    const verb = focus.side === "q" ? " attends to " : " is attended by ";
    const scope = hs.length === 1 ? " (head " + hs[0] + "): " : " (mean of " + hs.length + " heads): ";
    status.appendChild(document.createTextNode(verb.trimEnd() + scope +
      (order.length ? order.map(o => JSON.stringify(otherTokens[o]) + " " + qkvFmt(mean[o])).join(" · ") : "nothing")));
  }

  function setFocus(next) { focus = next; highlight(); draw(); }
  function update() { renderHeads(); highlight(); draw(); }

  function bind(els, side) {
    els.forEach((e, i) => {
      e.addEventListener("mouseenter", () => { if (!pinned) setFocus({ side, index: i }); });
      e.addEventListener("mouseleave", () => { if (!pinned) setFocus(null); });
      e.addEventListener("click", () => {
        const same = focus !== null && focus.side === side && focus.index === i;
        pinned = !(pinned && same);
        setFocus(pinned || !same ? { side, index: i } : focus);
      });
    });
  }
  bind(qEls, "q");
  bind(kEls, "k");
  layerSelect.addEventListener("change", () => {
    layer = +layerSelect.value;
    if (!heads().length) selected = new Set([...Array(layers[layer].heads).keys()]);
    update();
  });
  allButton.addEventListener("click", () => { selected = new Set([...Array(layers[layer].heads).keys()]); update(); });
  update();
}

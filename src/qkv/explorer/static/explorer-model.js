/* qkv explorer: the real-model panel: asks the server for a text's attention (/api/attention),
   fetches a long text's layers one at a time as they are shown, and wires the panel's controls. */

import { api } from "./learn-api.js";
import { $, el } from "./explorer-dom.js";
import { digest } from "./explorer-numbers.js";
import { headColor } from "./explorer-colors.js";
import { health, modelInfo } from "./explorer-health.js";
import { M, currentMatrix, showToken } from "./explorer-model-state.js";
import { buildTokens, drawFocus, setupAttentionView } from "./explorer-attention.js";
import { drawGrids, drawRollout, setupOverview } from "./explorer-overview.js";

/* the layer select and the head buttons, for the answer on show */
function renderModelControls() {
  const d = M.data;
  const layerSelect = $("layer");
  if (layerSelect.options.length !== d.num_layers) {
    layerSelect.textContent = "";
    for (let l = 0; l < d.num_layers; l++) {
      const o = el("option", "", String(l) + (l === 0 ? " (first)" : l === d.num_layers - 1 ? " (last)" : ""));
      o.value = String(l);
      layerSelect.appendChild(o);
    }
  }
  layerSelect.value = String(M.layer);
  $("layer-prev").disabled = M.layer === 0;
  $("layer-next").disabled = M.layer === d.num_layers - 1;
  const box = $("heads");
  box.textContent = "";
  const choices = ["mean"].concat([...Array(d.num_heads).keys()]);
  for (const h of choices) {
    const b = el("button", h === "mean" ? "mean" : "", h === "mean" ? "mean" : String(h));
    b.type = "button";
    b.dataset.head = String(h);
    b.style.setProperty("--head", headColor(h));
    b.setAttribute("aria-pressed", M.head === h ? "true" : "false");
    b.title = h === "mean" ? "the average of the layer's " + d.num_heads + " heads" :
      "head " + h + ": entropy " + d.entropy[M.layer][h].toFixed(2) + " nats, distance " +
      d.distance[M.layer][h].toFixed(1) + " tokens";
    b.addEventListener("click", () => { M.head = h; drawModel(); });
    box.appendChild(b);
  }
}

/* the whole panel for the layer and head on show; fetches the layer first when it is not here yet */
export function drawModel() {
  const d = M.data;
  if (!d || $("panel-model").hidden) return;
  renderModelControls();
  drawGrids();
  drawRollout();
  const view = $("attention-view");
  const w = currentMatrix();
  if (!w) { fetchLayer(M.layer); return; } /* the old drawing stays, dimmed, until this layer arrives */
  drawFocus();
  view.dataset.layer = String(M.layer);
  view.dataset.layersHeld = String(M.layers.size);
  view.dataset.head = String(M.head);
  view.dataset.tokens = String(d.tokens.length);
  view.dataset.digest = digest(w);
  view.dataset.model = d.model;
}

/* one layer's weights for the text on show: a long text's answer carries one layer at a time */
async function fetchLayer(layer) {
  const d = M.data;
  if (!d || M.layers.has(layer) || M.layerPending === layer) return;
  if (M.layerController) M.layerController.abort();
  const controller = new AbortController();
  M.layerController = controller;
  M.layerPending = layer;
  $("attention-view").dataset.state = "loading";
  setRunStatus("fetching layer " + layer + "…", true);
  try {
    const got = await api("/api/attention", { text: d.text, model: d.model, layer }, controller.signal);
    if (controller !== M.layerController || M.data !== d) return;
    got.layers_sent.forEach((l, k) => M.layers.set(l, got.weights[k]));
    showModelError("");
    setRunStatus(d.tokens.length + " tokens · layer " + layer + " fetched", false);
  } catch (e) {
    if (e.name === "AbortError" || controller !== M.layerController) return;
    setRunStatus("", false);
    showModelError("Layer " + layer + " could not be fetched: " + e.message);
  } finally {
    if (controller === M.layerController) { M.layerController = null; M.layerPending = null; }
  }
  if (M.data !== d) return;
  if (M.layers.has(M.layer)) {
    $("attention-view").dataset.state = "ready";
    drawModel();
  } else if (M.layers.has(layer)) {
    fetchLayer(M.layer); /* the learner moved on while this one came */
  } else {
    $("attention-view").dataset.state = "ready";
  }
}

/* the note under the view: the start head's reason, encoder or decoder, special tokens, sizes */
function modelNote() {
  const d = M.data, notes = [];
  if (M.pick) notes.push(M.pick.reason + " Try the other heads and layers.");
  if (d.causal) {
    notes.push(d.model + " is a decoder: each token sees only itself and the tokens before it, " +
      "so the upper triangle is empty.");
  } else {
    notes.push(d.model + " is an encoder: every token sees every token in both directions.");
  }
  const specials = d.tokens.filter((t, i) => d.special[i]);
  if (specials.length) {
    notes.push("Grey tokens (" + [...new Set(specials)].join(", ") +
      ") are special tokens the tokenizer adds; many heads park spare weight on them.");
  }
  const oneAtATime = d.layers_sent.length < d.num_layers;
  notes.push(d.tokens.length + " tokens · " + d.num_layers + " layers × " + d.num_heads + " heads · " +
    "weights rounded to " + d.decimals + " decimals" +
    (oneAtATime ? "; a text this long comes one layer at a time, fetched when you show it." : "."));
  $("model-note").textContent = notes.join(" ");
}

function setRunStatus(text, busy) {
  const s = $("run-status");
  s.textContent = text;
  s.classList.toggle("busy", !!busy);
}

/* the panel's error box: hidden for an empty message */
export function showModelError(message) {
  const box = $("model-error");
  box.hidden = !message;
  box.textContent = message || "";
}

function scheduleModel(delay) {
  clearTimeout(M.timer);
  M.timer = setTimeout(runModel, delay);
}

/* asks the server for the text and model in the inputs (once per change) and draws the answer */
export async function runModel() {
  clearTimeout(M.timer);
  const text = $("text").value, model = $("model").value;
  if (!model) return;
  const key = model + "\u0000" + text;
  if (key === M.lastRequest && M.data) return;
  if (!text.trim()) { showModelError("Type a sentence to look at."); return; }
  if (health && text.length > health.limits.max_text_chars) {
    showModelError("The text is " + text.length + " characters; the explorer takes at most " +
      health.limits.max_text_chars + ".");
    return;
  }
  if (M.controller) M.controller.abort();
  if (M.layerController) { M.layerController.abort(); M.layerController = null; M.layerPending = null; }
  const controller = new AbortController();
  M.controller = controller;
  M.lastRequest = key;
  const body = { text, model };
  if (M.partial[model] && M.data && M.data.model === model) body.layer = M.layer; /* long texts: the layer on show */
  const info = modelInfo(model);
  const loading = info && !info.loaded;
  setRunStatus(loading ? "loading " + model + " (first use takes a few seconds)…" : "computing…", true);
  $("attention-view").dataset.state = "loading";
  const started = performance.now();
  try {
    const data = await api("/api/attention", body, controller.signal);
    if (controller !== M.controller) return;
    const newModel = !M.data || M.data.model !== data.model;
    M.data = data;
    M.layers = new Map(data.layers_sent.map((l, k) => [l, data.weights[k]]));
    M.partial[model] = data.layers_sent.length < data.num_layers;
    M.shown = data.tokens.map(t => showToken(t, data.kind));
    M.pick = null;
    if (newModel) { /* the server's pick, made from all layers: a head that clearly reads a neighbour */
      M.pick = data.start;
      M.layer = data.start.layer;
      M.head = data.start.head;
    }
    M.layer = Math.min(M.layer, data.num_layers - 1);
    if (M.head !== "mean" && M.head >= data.num_heads) M.head = 0;
    if (M.focus && M.focus.index >= data.tokens.length) { M.focus = null; M.pinned = false; }
    M.cell = null;
    showModelError("");
    buildTokens();
    modelNote();
    if (info && !info.loaded) {
      info.loaded = true; info.num_layers = data.num_layers; info.num_heads = data.num_heads;
    }
    setRunStatus(data.tokens.length + " tokens · " + Math.round(performance.now() - started) + " ms", false);
    if (M.layers.has(M.layer)) $("attention-view").dataset.state = "ready";
    drawModel(); /* or, when the layer on show was not sent, fetches it first */
  } catch (e) {
    if (e.name === "AbortError") return;
    if (controller !== M.controller) return;
    M.lastRequest = "";
    setRunStatus("", false);
    showModelError(e.message);
    $("attention-view").dataset.state = M.data ? "ready" : "error";
  }
}

/* the model list from the server's health, and every control of the panel */
export function setupModel() {
  const select = $("model");
  select.textContent = "";
  for (const m of health.models) {
    const o = el("option", "", m.name + (m.installed ? "" : " (not installed)"));
    o.value = m.name;
    o.disabled = !m.installed;
    select.appendChild(o);
  }
  const first = health.models.find(m => m.name === health.default_model && m.installed) ||
    health.models.find(m => m.installed);
  if (first) select.value = first.name;
  const help = () => {
    const m = modelInfo(select.value);
    $("model-help").textContent = m ? m.description + "." : "";
  };
  help();
  select.addEventListener("change", () => { help(); runModel(); });
  const text = $("text");
  const grow = () => { text.style.height = "auto"; text.style.height = Math.min(240, text.scrollHeight + 2) + "px"; };
  text.addEventListener("input", () => { grow(); scheduleModel(300); });
  grow();
  text.addEventListener("keydown", e => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); M.lastRequest = ""; runModel(); }
  });
  $("layer").addEventListener("change", () => { M.layer = +$("layer").value; drawModel(); });
  $("layer-prev").addEventListener("click", () => { if (M.layer > 0) { M.layer--; drawModel(); } });
  $("layer-next").addEventListener("click", () => {
    if (M.data && M.layer < M.data.num_layers - 1) { M.layer++; drawModel(); }
  });
  $("contrast").addEventListener("change", drawModel);

  setupAttentionView();
  setupOverview((layer, head) => { M.layer = layer; M.head = head; drawModel(); });
  window.addEventListener("resize", () => { if (M.data) drawModel(); });
}

/* qkv explorer: the mechanism lab: its knobs, one request per change to /api/lab, and the
   stepper that walks through the answer's seven steps. */

import { api } from "./learn-api.js";
import { $, el } from "./explorer-dom.js";
import { headColor } from "./explorer-colors.js";
import { MASK_HELP, STEPS, renderStep } from "./explorer-lab-steps.js";
import { renderSaturation, renderStats } from "./explorer-lab-charts.js";

/* data: the last answer; heads: its head count (a new count shows its newest head) */
const LAB = { data: null, heads: undefined, step: "softmax", head: 0, inflight: false, dirty: false, error: null };

const POSITIONAL_HELP = {
  none: "No positions: attention alone ignores word order. A repeated word gets exactly the same row.",
  sinusoidal: "Sinusoidal: adds sine and cosine waves of the position to each embedding (Vaswani et al., 2017).",
  rotary: "Rotary (RoPE): turns each pair of q and k dimensions by an angle proportional to the position, " +
    "so q·k depends on the distance i − j (Llama).",
};

/* the knobs' values: d_k = 2^slider, T = 10^slider */
function dk() { return 2 ** +$("lab-dk").value; }
function temperature() { return +(10 ** +$("lab-temperature").value).toFixed(3); }

/* the request /api/lab answers: every knob */
function labConfig() {
  return {
    text: $("lab-text").value,
    d_k: dk(),
    heads: +$("lab-heads").value,
    temperature: temperature(),
    scaled: $("lab-scaled").checked,
    mask: $("lab-mask").value,
    window: +$("lab-window").value,
    block_size: +$("lab-block").value,
    positional: $("lab-positional").value,
    seed: Math.max(0, Math.min(2147483647, Math.floor(+$("lab-seed").value || 0))),
  };
}

/* the knobs' printed values, limits and help, for the current settings */
function updateKnobs() {
  const c = labConfig();
  const words = Math.max(1, c.text.split(/\s+/).filter(Boolean).length);
  $("lab-window").max = String(Math.max(1, Math.min(12, words)));
  $("lab-block").max = String(Math.max(1, Math.min(6, words)));
  $("lab-dk-value").textContent = String(c.d_k);
  $("lab-scale-value").textContent = c.scaled ? "×" + (1 / Math.sqrt(c.d_k)).toFixed(3) : "off";
  $("lab-temperature-value").textContent = c.temperature.toFixed(2);
  $("lab-heads-value").textContent = String(c.heads);
  $("lab-window-value").textContent = $("lab-window").value;
  $("lab-block-value").textContent = $("lab-block").value;
  $("lab-window-box").hidden = c.mask !== "sliding_window";
  $("lab-block-box").hidden = c.mask !== "block_sparse";
  $("lab-mask-help").textContent = MASK_HELP[c.mask];
  $("lab-positional-help").textContent = POSITIONAL_HELP[c.positional];
  const sh = $("lab-scaled-help");
  sh.textContent = c.scaled ?
    "Divides every score by √d_k = " + Math.sqrt(c.d_k).toFixed(2) +
      ", so their spread stays near 1 whatever d_k is." :
    "Off: scores keep their √d_k spread (" + Math.sqrt(c.d_k).toFixed(1) +
      " here). Raise d_k and watch softmax pile all weight on one key.";
  sh.classList.toggle("warn", !c.scaled);
}

/* asks the server for the knobs' matrices; a change while a request is out is sent when it returns */
export async function runLab() {
  updateKnobs();
  if (LAB.inflight) { LAB.dirty = true; return; }
  LAB.inflight = true;
  LAB.dirty = false;
  $("lab-view").dataset.state = "loading";
  const config = labConfig();
  try {
    const data = await api("/api/lab", config);
    LAB.data = data;
    LAB.error = null;
    /* a new head count shows its newest head, so turning the knob changes what is on screen */
    if (LAB.heads !== undefined && data.heads.length !== LAB.heads) LAB.head = data.heads.length - 1;
    LAB.heads = data.heads.length;
    if (LAB.head >= data.heads.length) LAB.head = 0;
  } catch (e) {
    LAB.error = e.message;
  } finally {
    LAB.inflight = false;
  }
  $("lab-view").dataset.state = LAB.dirty ? "loading" : LAB.error ? "error" : "ready";
  renderLab();
  if (LAB.dirty) runLab();
}

function renderStepper() {
  const ol = $("stepper");
  if (!ol.firstChild) {
    for (const s of STEPS) {
      const li = el("li"), b = el("button", "", s.label);
      b.type = "button";
      b.dataset.step = s.id;
      b.setAttribute("data-testid", "step-" + s.id);
      b.addEventListener("click", () => { LAB.step = s.id; renderLab(); });
      li.appendChild(b);
      ol.appendChild(li);
    }
  }
  for (const b of ol.querySelectorAll("button")) {
    if (b.dataset.step === LAB.step) b.setAttribute("aria-current", "step"); else b.removeAttribute("aria-current");
  }
  const index = STEPS.findIndex(s => s.id === LAB.step);
  $("step-prev").disabled = index === 0;
  $("step-next").disabled = index === STEPS.length - 1;
}

function renderLabHeads() {
  const box = $("lab-head-buttons"), H = LAB.data ? LAB.data.heads.length : 0;
  box.textContent = "";
  for (let h = 0; h < H; h++) {
    const b = el("button", "", String(h));
    b.type = "button";
    b.style.setProperty("--head", headColor(h));
    b.setAttribute("aria-pressed", h === LAB.head ? "true" : "false");
    b.title = "show head " + h;
    b.addEventListener("click", () => { LAB.head = h; renderLab(); });
    box.appendChild(b);
  }
}

/* the lab panel for the last answer (nothing while the panel is hidden) */
export function renderLab() {
  if ($("panel-lab").hidden) return;
  renderStepper();
  const err = $("lab-error");
  err.hidden = !LAB.error;
  err.textContent = LAB.error || "";
  if (!LAB.data) return;
  renderLabHeads();
  renderStep(LAB.data, LAB.step, LAB.head);
  renderSaturation(LAB.data);
  renderStats(LAB.data, LAB.head);
}

/* wires the knobs and the step arrows */
export function setupLab() {
  const knobs = ["lab-text", "lab-dk", "lab-scaled", "lab-temperature", "lab-heads", "lab-mask", "lab-window",
    "lab-block", "lab-positional", "lab-seed"];
  for (const id of knobs) {
    $(id).addEventListener("input", runLab);
    $(id).addEventListener("change", runLab);
  }
  $("lab-reroll").addEventListener("click", () => {
    $("lab-seed").value = String(Math.floor(Math.random() * 100000));
    runLab();
  });
  $("step-prev").addEventListener("click", () => {
    const i = STEPS.findIndex(s => s.id === LAB.step);
    if (i > 0) { LAB.step = STEPS[i - 1].id; renderLab(); }
  });
  $("step-next").addEventListener("click", () => {
    const i = STEPS.findIndex(s => s.id === LAB.step);
    if (i < STEPS.length - 1) { LAB.step = STEPS[i + 1].id; renderLab(); }
  });
  updateKnobs();
}

/* qkv explorer: the page: two tabs, the real-model panel and the mechanism lab.
   No framework and no network beyond this page's own server (/api/...).

   Modules (each imported where it is used):
     explorer-health.js       the server's /api/health (version, models, limits)
     explorer-model.js        the real-model panel: requests, layers fetched as shown, its controls
     explorer-model-state.js  what that panel shows (answer, layer, head, focus)
     explorer-attention.js    one layer and head: token lines, heatmap, focus line
     explorer-overview.js     every head's entropy and distance, and the rollout
     explorer-lab.js          the mechanism lab: knobs, requests, stepper
     explorer-lab-steps.js    the lab's seven steps drawn from the server's matrices
     explorer-lab-charts.js   softmax saturation charts and the head in numbers
     explorer-canvas.js, explorer-colors.js, explorer-numbers.js, explorer-dom.js: drawing and small helpers
   Requests go through learn-api.js's `api`, shared with the Learn page: JSON in and out, and the
   per-launch token from <meta name="qkv-token"> sent as X-QKV-Token on every POST. */

import { $ } from "./explorer-dom.js";
import { loadHealth } from "./explorer-health.js";
import { drawModel, runModel, setupModel, showModelError } from "./explorer-model.js";
import { renderLab, runLab, setupLab } from "./explorer-lab.js";

let labStarted = false;

/* shows the panel of tab `name` ("model" or "lab"); the lab asks the server the first time it is shown */
function showTab(name) {
  for (const tab of document.querySelectorAll(".tab[data-tab]")) {
    const on = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", on ? "true" : "false");
    $("panel-" + tab.dataset.tab).hidden = !on;
  }
  if (name === "lab" && !labStarted) { labStarted = true; runLab(); }
  if (name === "model") drawModel();
  if (name === "lab") renderLab();
}

async function start() {
  for (const tab of document.querySelectorAll(".tab[data-tab]")) {
    tab.addEventListener("click", () => {
      history.replaceState(null, "", tab.dataset.tab === "lab" ? "#lab" : "#");
      showTab(tab.dataset.tab);
    });
  }
  setupLab();
  try {
    await loadHealth();
  } catch (e) {
    showModelError("Cannot reach the qkv server: " + e.message);
    $("attention-view").dataset.state = "error";
    return;
  }
  setupModel();
  showTab(location.hash === "#lab" ? "lab" : "model");
  runModel();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();

/* qkv explorer: what the server says about itself (/api/health): its version, models and limits. */

import { api } from "./learn-api.js";
import { $ } from "./explorer-dom.js";

/* the last /api/health answer, or null before it came */
export let health = null;

function setServer(ok, text) {
  const s = $("server-status");
  s.textContent = text;
  s.classList.toggle("ok", ok);
  s.classList.toggle("bad", !ok);
}

/* asks the server for its health and shows the answer in the header; throws when it cannot be reached */
export async function loadHealth() {
  try {
    health = await api("/api/health");
    setServer(true, "qkv " + health.version + " · local server");
  } catch (e) {
    setServer(false, "server unreachable");
    throw e;
  }
  return health;
}

/* the server's description of model `name` ({name, installed, loaded, description, ...}), if any */
export function modelInfo(name) {
  return health ? health.models.find(m => m.name === name) : undefined;
}

/* qkv explorer and learn pages: the one way to the server (their own origin; JSON in, JSON out). */

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

/* GET when `body` is undefined, else POST it as JSON; `method` overrides (DELETE).
   A 4xx/5xx answer throws an ApiError carrying the server's {"error": message}. */
/* The server answers changes only with the per-launch token it wrote into the page. */
const TOKEN = (document.querySelector('meta[name="qkv-token"]') || {}).content || "";

export async function api(path, body, signal, method) {
  const init = { method: method || (body === undefined ? "GET" : "POST"), signal, headers: {} };
  if (init.method !== "GET") init.headers["X-QKV-Token"] = TOKEN;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError("the server did not answer (is qkv explore still running?)", 0);
  }
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) throw new ApiError((data && data.error) || "HTTP " + response.status, response.status);
  if (data === null) throw new ApiError("the server sent something that is not JSON", response.status);
  return data;
}

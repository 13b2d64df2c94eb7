// The public JSON API, as the dashboard reads it; and what it learns on the way: whether the
// server answers (connection) and the server's clock (ranges end at the server's "now").

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** Connection state: "up", "down" (no answer) or "unavailable" (the database is down). */
class Connection extends EventTarget {
  constructor() {
    super();
    this.state = "unknown";
    this.since = null;
  }

  set(state, detail = "") {
    if (state === this.state) return;
    this.state = state;
    this.since = Date.now();
    this.dispatchEvent(new CustomEvent("change", {detail: {state, detail}}));
  }
}

export const connection = new Connection();

let clockOffsetMs = 0; // server time − browser time, from the newest answer that says "now"

/** The server's idea of now, in epoch ms (the browser's clock may be off, or the server's). */
export const serverNow = () => Date.now() + clockOffsetMs;

/** Note the server's current time (the `timestamp` of /api/gpu/status/all). */
export function noteServerTime(iso) {
  const ms = Date.parse(iso);
  if (!Number.isNaN(ms)) clockOffsetMs = ms - Date.now();
}

/** "/api/x?a=1&b=2", leaving out null and undefined parameters. */
export function url(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** GET a JSON document; network failures mark the connection down, answers mark it up. */
export async function getJSON(path, params = {}, {signal} = {}) {
  let response;
  try {
    response = await fetch(url(path, params), {
      headers: {Accept: "application/json"}, cache: "no-store", signal,
    });
  } catch (error) {
    if (error.name !== "AbortError") connection.set("down", error.message);
    throw error;
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 503 && body?.error?.code === "database_unavailable") {
    connection.set("unavailable", body.error.message);
  } else {
    connection.set("up");
  }
  if (!response.ok) {
    const error = body?.error || {};
    throw new ApiError(response.status, error.code || "http_error",
                       error.message || `${response.status} ${response.statusText}`,
                       error.details || {});
  }
  return body;
}

/** ISO-8601 UTC for API time arguments. */
export const iso = (ms) => new Date(ms).toISOString();

// Talking to the dashboard: JSON calls (with the CSRF header on POST) and SSE streams that
// resume where they stopped. Paths are relative, so the dashboard works mounted anywhere.

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.kind = error.type || "Error";
    this.errors = error.errors || [];
  }
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

async function handle(response) {
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("asyncjobs:login"));
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export async function getJSON(path) {
  return handle(await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" }));
}

export async function postJSON(path, body) {
  return handle(await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: {
      Accept: "application/json",
      "Content-Type": "application/json",
      "X-CSRF-Token": cookie("asyncjobs_csrf"),
    },
    body: JSON.stringify(body || {}),
  }));
}

// Diagnostics: how long each event took from its database row to this page (ms).
const lags = [];
window.asyncjobs = { lags };

function recordLag(data, parseTime) {
  const now = performance.timeOrigin + performance.now();
  for (const event of data.events || []) {
    const at = parseTime(event.at);
    if (at !== null) lags.push(now - at);
  }
  if (lags.length > 20000) lags.splice(0, lags.length - 20000);
}

// An EventSource that resumes with no gap: the browser sends Last-Event-ID on its own
// reconnects; after a hard failure (e.g. 503) we reconnect with ?after=<last cursor>.
export function openStream(path, { onMessage, onState, parseTime }) {
  let source = null;
  let cursor = null;
  let closed = false;
  let timer = null;
  const connect = () => {
    const url = cursor ? `${path}${path.includes("?") ? "&" : "?"}after=${encodeURIComponent(cursor)}` : path;
    source = new EventSource(url, { withCredentials: true });
    for (const kind of ["snapshot", "events", "end"]) {
      source.addEventListener(kind, (message) => {
        cursor = message.lastEventId || cursor;
        const data = JSON.parse(message.data);
        if (parseTime && kind === "events") recordLag(data, parseTime);
        onMessage(kind, data);
        if (kind === "end") {
          stop();
          onState("ended");
        }
      });
    }
    source.onopen = () => onState("live");
    source.onerror = () => {
      if (closed) return;
      if (source.readyState === EventSource.CLOSED) {
        onState("offline");
        timer = setTimeout(connect, 2000);
      } else {
        onState("reconnecting");
      }
    };
  };
  const stop = () => {
    closed = true;
    clearTimeout(timer);
    if (source) source.close();
  };
  connect();
  return { close: stop };
}

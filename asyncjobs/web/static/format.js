// Times, durations and statuses as the viewer shows them.

// Date.parse keeps milliseconds only; PostgreSQL sends microseconds.
export function parseTime(text) {
  if (!text) return null;
  const match = /^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$/.exec(text);
  if (!match) return Date.parse(text);
  const fraction = match[2] ? match[2].slice(0, 4).padEnd(4, "0") : "";
  return Date.parse(match[1] + fraction + match[3]);
}

export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const seconds = Math.round(ms / 1000);
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
  return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
}

export function clock(ms) {
  if (ms === null || ms === undefined) return "";
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

// Local date and time to the second: tables show the day too (runs outlive midnight).
export function dateTime(ms) {
  if (ms === null || ms === undefined) return "";
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// "12 s ago" / "in 3m 4s": how far a time is from now, in words.
export function relative(ms, now = Date.now()) {
  if (ms === null || ms === undefined) return "";
  const delta = ms - now;
  const text = ago(Math.abs(delta));
  return delta < 0 ? `${text} ago` : `in ${text}`;
}

// A span of time to the second ("now" under one second): heartbeats and fire times.
export function ago(ms) {
  if (ms < 1000) return "<1 s";
  if (ms < 60000) return `${Math.round(ms / 1000)} s`;
  return duration(Math.round(ms / 1000) * 1000);
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "expired"]);

// The status to show: a pending run that already had an attempt waits for a retry.
export function shownStatus(run) {
  if (run.status === "pending" && run.attempt > 0) return "retrying";
  if (run.status === "running" && run.cancel_requested) return "cancelling";
  return run.status;
}

export function runDuration(run, now) {
  const started = parseTime(run.started_at);
  if (started === null) return null;
  const finished = parseTime(run.finished_at);
  return (finished ?? now) - started;
}

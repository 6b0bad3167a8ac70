// Queues and jobs: what waits and runs now against each limit, and the last hour's
// throughput and failure rate per minute (plain SVG), with p50/p95 durations per job.

import { getJSON } from "./api.js";
import { every, h, replace, svg } from "./dom.js";
import { ago, duration, parseTime } from "./format.js";
import { meter } from "./workers.js";

const MINUTE = 60000;

export function renderQueues(view) {
  const body = h("div", {}, h("div", { class: "panel empty", dataset: { state: "loading" } }, "Loading queues…"));
  const summary = h("span", { class: "muted" });
  replace(view, h("div", { class: "toolbar" }, h("h1", {}, "Queues and jobs"), summary, h("span", { class: "grow" }),
    h("a", { href: "#/jobs" }, "Switches and trigger forms →")), body);
  const load = async () => {
    try {
      const data = await getJSON("api/activity?window=3600");
      const buckets = perMinute(data, () => true);
      const done = buckets.reduce((n, b) => n + b.succeeded + b.failed + b.cancelled, 0);
      const failed = buckets.reduce((n, b) => n + b.failed, 0);
      summary.textContent = `last hour: ${done} finished, ${failed} failed (${rate(failed, done)})`;
      replace(body,
        h("div", { class: "panel chart-panel" }, h("h2", {}, "Finished per minute, last hour"),
          chart(buckets), legend()),
        h("div", { class: "queues-layout" }, queueTable(data), jobTable(data)));
    } catch (exc) {
      replace(body, h("div", { class: "error-box" }, exc.message));
    }
  };
  return every(5000, load);
}

function rate(failed, total) {
  return total ? `${((failed / total) * 100).toFixed(failed && failed < total / 100 ? 2 : 1)}%` : "—";
}

// One bucket per minute of the window, oldest first, filled from the rows that match.
function perMinute(data, match) {
  const end = Math.floor(parseTime(data.at) / MINUTE) * MINUTE;
  const count = Math.round(data.window / 60);
  const buckets = Array.from({ length: count }, (_, i) => ({ at: end - (count - 1 - i) * MINUTE, succeeded: 0, failed: 0, cancelled: 0 }));
  for (const row of data.minutes) {
    if (!match(row)) continue;
    const index = count - 1 - Math.round((end - parseTime(row.minute)) / MINUTE);
    const bucket = buckets[index];
    if (!bucket) continue;
    bucket.succeeded += row.succeeded;
    bucket.failed += row.failed;
    bucket.cancelled += row.cancelled;
  }
  return buckets;
}

// A nice round top for the y axis.
function niceMax(value) {
  if (value <= 4) return 4;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

function chart(buckets) {
  const W = 1200, H = 190, left = 44, right = 44, top = 10, bottom = 24;
  const plotW = W - left - right, plotH = H - top - bottom;
  const max = niceMax(Math.max(...buckets.map((b) => b.succeeded + b.failed + b.cancelled)));
  const slot = plotW / buckets.length;
  const y = (v) => top + plotH - (v / max) * plotH;
  const parts = [];
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(svg("line", { x1: left, x2: W - right, y1: y(max * f), y2: y(max * f), class: "gridline" }));
    parts.push(svg("text", { x: left - 6, y: y(max * f) + 4, class: "tick", "text-anchor": "end" }, String(Math.round(max * f))));
    parts.push(svg("text", { x: W - right + 6, y: top + plotH - f * plotH + 4, class: "tick rate" }, `${f * 100}%`));
  }
  const line = [];
  buckets.forEach((b, i) => {
    const x = left + i * slot + 1;
    const w = Math.max(slot - 2, 1);
    let base = 0;
    for (const kind of ["succeeded", "cancelled", "failed"]) {
      if (!b[kind]) continue;
      parts.push(svg("rect", { x, y: y(base + b[kind]), width: w, height: y(base) - y(base + b[kind]), class: `bar-${kind}` },
        svg("title", {}, `${new Date(b.at).toTimeString().slice(0, 5)}: ${b.succeeded} succeeded, ${b.failed} failed, ${b.cancelled} cancelled`)));
      base += b[kind];
    }
    const total = b.succeeded + b.failed;
    if (total) line.push(`${x + w / 2},${top + plotH - (b.failed / total) * plotH}`);
  });
  if (line.length > 1) parts.push(svg("polyline", { points: line.join(" "), class: "rate-line" }));
  for (let i = 0; i < buckets.length; i += 15) {
    parts.push(svg("text", { x: left + i * slot, y: H - 6, class: "tick" }, i === 0 ? "−60 min" : `−${buckets.length - i} min`));
  }
  parts.push(svg("text", { x: W - right, y: H - 6, class: "tick", "text-anchor": "end" }, "now"));
  return svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", id: "throughput", role: "img", "aria-label": "runs finished per minute over the last hour" }, parts);
}

function legend() {
  const item = (cls, text) => h("span", { class: "legend-item" }, h("span", { class: `swatch ${cls}` }), text);
  return h("div", { class: "legend" }, item("sw-succeeded", "succeeded"), item("sw-failed", "failed"),
    item("sw-cancelled", "cancelled / expired"), item("sw-rate", "failure rate (right axis)"));
}

function sparkline(buckets) {
  const W = 120, H = 22;
  const max = Math.max(1, ...buckets.map((b) => b.succeeded + b.failed));
  const slot = W / buckets.length;
  return svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "spark", "aria-hidden": "true" },
    buckets.flatMap((b, i) => {
      const ok = (b.succeeded / max) * H, bad = (b.failed / max) * H;
      return [ok ? svg("rect", { x: i * slot, y: H - ok - bad, width: Math.max(slot - 0.4, 0.6), height: ok, class: "bar-succeeded" }) : null,
        bad ? svg("rect", { x: i * slot, y: H - bad, width: Math.max(slot - 0.4, 0.6), height: bad, class: "bar-failed" }) : null];
    }).filter(Boolean));
}

function queueTable(data) {
  return h("div", { class: "panel" }, h("h2", {}, "Queues now"),
    h("table", { class: "grid", id: "queue-load" },
      h("thead", {}, h("tr", {}, h("th", {}, "Queue"), h("th", { class: "num" }, "Pending"), h("th", { class: "num" }, "Ready"),
        h("th", {}, "Oldest ready"), h("th", { class: "num" }, "Running"), h("th", {}, "Limit"))),
      h("tbody", {}, data.queues.map((q) => h("tr", { dataset: { queue: q.name } },
        h("td", {}, h("strong", {}, q.name), q.enabled === false ? h("span", { class: "badge", dataset: { status: "cancelled" } }, "disabled") : null),
        h("td", { class: "num" }, h("a", { href: "#/?status=pending&children=1" }, String(q.pending))),
        h("td", { class: "num" }, String(q.ready)),
        h("td", { class: q.oldest_age > 60 ? "bad" : "", title: "how long the oldest ready run has waited" },
          q.ready ? `waiting ${ago(q.oldest_age * 1000)}` : "—"),
        h("td", { class: "num" }, q.max_concurrency === null ? String(q.running) : `${q.running} / ${q.max_concurrency}`),
        h("td", {}, meter(q.running, q.max_concurrency)))))));
}

// Every job with active runs or runs finished in the window, the most failing first.
function jobTable(data) {
  const rows = new Map();
  for (const j of data.jobs) rows.set(j.job, { ...j, load: null });
  for (const load of data.job_loads) {
    if (!load.pending && !load.running) continue; // idle now: listed only with finished runs
    const row = rows.get(load.name) || { job: load.name, queue: null, succeeded: 0, failed: 0, cancelled: 0, p50: null, p95: null };
    rows.set(load.name, { ...row, load });
  }
  const jobs = [...rows.values()].sort((a, b) => (b.failed - a.failed) || ((b.load ? 1 : 0) - (a.load ? 1 : 0))
    || (b.succeeded + b.failed - a.succeeded - a.failed) || a.job.localeCompare(b.job));
  return h("div", { class: "panel" }, h("h2", {}, "Jobs: now and the last hour"),
    jobs.length ? h("table", { class: "grid", id: "job-stats" },
      h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", {}, "Now"), h("th", {}, "Per minute"), h("th", { class: "num" }, "Done"),
        h("th", { class: "num" }, "Failed"), h("th", { class: "num" }, "Fail %"), h("th", { class: "num" }, "p50"), h("th", { class: "num" }, "p95"))),
      h("tbody", {}, jobs.map((j) => {
        const total = j.succeeded + j.failed + j.cancelled;
        return h("tr", { dataset: { job: j.job } },
          h("td", {}, h("a", { href: `#/?job=${encodeURIComponent(j.job)}` }, j.job), j.queue ? h("div", { class: "muted small" }, j.queue) : null),
          h("td", { class: "now" }, j.load ? loadCell(j.load) : h("span", { class: "muted" }, "idle")),
          h("td", {}, sparkline(perMinute(data, (row) => row.job === j.job))),
          h("td", { class: "num" }, String(total)),
          h("td", { class: j.failed ? "num bad" : "num" }, String(j.failed)),
          h("td", { class: j.failed ? "num bad" : "num" }, rate(j.failed, j.succeeded + j.failed)),
          h("td", { class: "num" }, j.p50 === null ? "—" : duration(j.p50 * 1000)),
          h("td", { class: "num" }, j.p95 === null ? "—" : duration(j.p95 * 1000)));
      }))) : h("div", { class: "empty" }, "No run is active and none finished in the last hour."));
}

// "1 / 1 running, 3 waiting": running against the job's limit, and what waits.
function loadCell(load) {
  const limit = load.max_concurrency;
  const running = limit === null ? `${load.running} running` : `${load.running} / ${limit} running`;
  return h("div", {},
    limit !== null ? meter(load.running, limit) : null,
    h("div", { class: "small" }, running, load.pending ? `, ${load.pending} pending` : "",
      load.enabled === false ? h("span", { class: "bad" }, " · disabled") : null));
}

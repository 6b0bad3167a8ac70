// The run table: the first page comes as the stream's snapshot, then every change of every
// run arrives live; older pages load on demand.

import { getJSON, openStream } from "./api.js";
import { h, replace, throttled } from "./dom.js";
import { dateTime, duration, parseTime, runDuration, shownStatus, TERMINAL } from "./format.js";

const STATUSES = ["pending", "running", "succeeded", "failed", "cancelled", "expired"];
const TRIGGERS = ["user", "api", "schedule", "retry", "restart", "child"];
const PAGE = 50;
const MAX_ROWS = 1000;

export function badge(run) {
  const status = shownStatus(run);
  return h("span", { class: "badge", dataset: { status } }, status);
}

export function progressBar(run) {
  if (run.progress === null || run.progress === undefined) return null;
  const pct = Math.round(run.progress * 100);
  return h("span", { class: "progress", title: `${pct}%`, dataset: { status: run.status } },
    h("span", { style: { width: `${pct}%` } }));
}

export function renderRuns(view, setLive) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const filters = {
    job: params.get("job") || "",
    status: params.get("status") || "",
    trigger: params.get("trigger") || "",
  };
  const runs = new Map();
  let nextCursor = null;
  let stream = null;
  const tbody = h("tbody");
  const more = h("button", { onclick: () => loadMore() }, "Load older runs");
  const error = h("div");

  const jobSelect = h("select", { "aria-label": "job", onchange: apply }, h("option", { value: "" }, "all jobs"));
  const statusSelect = h("select", { "aria-label": "status", onchange: apply },
    h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s }, s)));
  const triggerSelect = h("select", { "aria-label": "trigger", onchange: apply },
    h("option", { value: "" }, "any trigger"), TRIGGERS.map((t) => h("option", { value: t }, t)));
  statusSelect.value = filters.status;
  triggerSelect.value = filters.trigger;
  getJSON("api/jobs").then((data) => {
    for (const job of data.jobs) jobSelect.append(h("option", { value: job.name }, job.name));
    jobSelect.value = filters.job;
  }).catch(() => {});

  function apply() {
    const query = new URLSearchParams();
    if (jobSelect.value) query.set("job", jobSelect.value);
    if (statusSelect.value) query.set("status", statusSelect.value);
    if (triggerSelect.value) query.set("trigger", triggerSelect.value);
    location.hash = `#/${query.toString() ? `?${query}` : ""}`;
  }

  function query(extra) {
    const q = new URLSearchParams(extra);
    for (const [key, value] of Object.entries(filters)) if (value) q.set(key, value);
    return q.toString();
  }

  const matches = (run) => (!filters.job || run.job === filters.job)
    && (!filters.status || run.status === filters.status)
    && (!filters.trigger || run.trigger === filters.trigger);

  const render = throttled(() => {
    const now = Date.now();
    const sorted = [...runs.values()].sort((a, b) => b.id - a.id).slice(0, MAX_ROWS);
    if (!sorted.length) {
      replace(tbody, h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No runs yet. Trigger a job from the Jobs page.")));
    } else {
      replace(tbody, sorted.map((run) => row(run, now)));
    }
    more.hidden = nextCursor === null;
  });

  function row(run, now) {
    return h("tr", {
      class: "clickable", dataset: { runId: run.id, status: shownStatus(run) },
      onclick: () => { location.hash = `#/runs/${run.id}`; },
    },
    h("td", { class: "num" }, h("a", { href: `#/runs/${run.id}` }, `#${run.id}`)),
    h("td", {}, run.job),
    h("td", {}, badge(run)),
    h("td", {}, run.trigger),
    h("td", { class: "num" }, `${run.attempt}/${run.max_attempts}`),
    h("td", {}, dateTime(parseTime(run.created_at))),
    h("td", { class: "num" }, duration(runDuration(run, now))),
    h("td", {}, progressBar(run) || (TERMINAL.has(run.status) ? "" : run.status_message || "")));
  }

  function upsert(run) {
    if (matches(run)) runs.set(run.id, run);
    else runs.delete(run.id);
  }

  async function loadMore() {
    if (nextCursor === null) return;
    try {
      const page = await getJSON(`api/runs?${query({ limit: PAGE, cursor: nextCursor })}`);
      for (const run of page.runs) if (!runs.has(run.id)) runs.set(run.id, run);
      nextCursor = page.next_cursor;
      render();
    } catch (exc) {
      replace(error, h("div", { class: "error-box" }, exc.message));
    }
  }

  stream = openStream(`api/events?${query({ limit: PAGE })}`, {
    parseTime,
    onState: setLive,
    onMessage(kind, data) {
      if (kind === "snapshot") {
        runs.clear();
        for (const run of data.runs) runs.set(run.id, run);
        nextCursor = data.runs.length === PAGE ? data.runs[data.runs.length - 1].id : null;
      } else {
        for (const run of data.runs) upsert(run);
      }
      render();
    },
  });
  const ticker = setInterval(() => {
    if ([...runs.values()].some((r) => r.status === "running")) render();
  }, 500);

  replace(view,
    h("div", { class: "toolbar" }, h("h1", {}, "Runs"), h("span", { class: "grow" }),
      jobSelect, statusSelect, triggerSelect),
    error,
    h("div", { class: "panel" },
      h("table", { class: "grid", id: "runs" },
        h("thead", {}, h("tr", {},
          h("th", { class: "num" }, "Run"), h("th", {}, "Job"), h("th", {}, "Status"),
          h("th", {}, "Trigger"), h("th", { class: "num" }, "Attempt"), h("th", {}, "Created"),
          h("th", { class: "num" }, "Duration"), h("th", {}, "Progress"))),
        tbody),
      h("div", { class: "toolbar" }, more)));
  render();
  return () => { clearInterval(ticker); if (stream) stream.close(); };
}

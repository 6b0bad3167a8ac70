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
    since: params.get("since") || "",
    until: params.get("until") || "",
  };
  // root runs only unless asked: children are in their trace, and would flood the list
  const showChildren = params.get("children") === "1";
  const runs = new Map();
  let nextCursor = null;
  let loaded = false;
  let stream = null;
  const tbody = h("tbody");
  const more = h("button", { onclick: () => loadMore() }, "Load older runs");
  const error = h("div");

  const jobSelect = h("select", { "aria-label": "job", onchange: apply }, h("option", { value: "" }, "all jobs"));
  const statusSelect = h("select", { "aria-label": "status", onchange: apply },
    h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s }, s)));
  const triggerSelect = h("select", { "aria-label": "trigger", onchange: apply },
    h("option", { value: "" }, "any trigger"), TRIGGERS.map((t) => h("option", { value: t }, t)));
  const children = h("input", { type: "checkbox", id: "show-children", checked: showChildren, onchange: apply });
  const since = h("input", { type: "datetime-local", "aria-label": "created after", id: "since", step: "1", value: localInput(filters.since), onchange: apply });
  const until = h("input", { type: "datetime-local", "aria-label": "created before", id: "until", step: "1", value: localInput(filters.until), onchange: apply });
  const search = h("input", {
    type: "search", id: "search", placeholder: "run id or job name", "aria-label": "search",
    onkeydown: (event) => {
      if (event.key !== "Enter") return;
      const text = search.value.trim().replace(/^#/, "");
      if (/^\d+$/.test(text)) location.hash = `#/runs/${text}`;
      else { jobSelect.value = ""; apply(text); }
    },
  });
  statusSelect.value = filters.status;
  triggerSelect.value = filters.trigger;
  getJSON("api/jobs").then((data) => {
    for (const job of data.jobs) jobSelect.append(h("option", { value: job.name }, job.name));
    if (filters.job && !data.jobs.some((j) => j.name === filters.job)) jobSelect.append(h("option", { value: filters.job }, filters.job));
    jobSelect.value = filters.job;
  }).catch(() => {});

  function apply(jobName) {
    const query = new URLSearchParams();
    const job = typeof jobName === "string" ? jobName : jobSelect.value;
    if (job) query.set("job", job);
    if (statusSelect.value) query.set("status", statusSelect.value);
    if (triggerSelect.value) query.set("trigger", triggerSelect.value);
    if (children.checked) query.set("children", "1");
    if (since.value) query.set("since", new Date(since.value).toISOString());
    if (until.value) query.set("until", new Date(until.value).toISOString());
    location.hash = `#/${query.toString() ? `?${query}` : ""}`;
  }

  function query(extra) {
    const q = new URLSearchParams(extra);
    for (const [key, value] of Object.entries(filters)) if (value) q.set(key, value);
    if (!showChildren) q.set("roots", "1");
    return q.toString();
  }

  const created = (run) => parseTime(run.created_at);
  const matches = (run) => (!filters.job || run.job === filters.job)
    && (!filters.status || run.status === filters.status)
    && (!filters.trigger || run.trigger === filters.trigger)
    && (showChildren || run.parent_run_id === null)
    && (!filters.since || created(run) >= Date.parse(filters.since))
    && (!filters.until || created(run) < Date.parse(filters.until));

  const render = throttled(() => {
    const now = Date.now();
    const sorted = [...runs.values()].sort((a, b) => b.id - a.id).slice(0, MAX_ROWS);
    if (!loaded) {
      replace(tbody, h("tr", {}, h("td", { colspan: 8, class: "empty", dataset: { state: "loading" } }, "Loading runs…")));
    } else if (!sorted.length) {
      const filtered = Object.values(filters).some(Boolean);
      replace(tbody, h("tr", {}, h("td", { colspan: 8, class: "empty" },
        filtered ? "No run matches these filters." : "No runs yet. Trigger a job from the Jobs page.")));
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
    h("td", {}, run.job, run.parent_run_id !== null ? h("span", { class: "children" }, `child of #${run.parent_run_id}`) : null),
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
        loaded = true;
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
    h("div", { class: "toolbar" }, h("h1", {}, "Runs"), search, h("span", { class: "grow" }),
      h("label", { class: "check", for: "show-children" }, children, "child runs"),
      jobSelect, statusSelect, triggerSelect,
      h("label", { class: "check", for: "since" }, "from", since), h("label", { class: "check", for: "until" }, "to", until)),
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

// An ISO time from the URL as a datetime-local input's value (local time, to the second).
function localInput(iso) {
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) return "";
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 19);
}

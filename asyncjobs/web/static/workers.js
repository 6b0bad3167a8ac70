// Workers: who is alive, what each serves, how full it is and when it last said so.

import { getJSON } from "./api.js";
import { every, h, replace } from "./dom.js";
import { ago, dateTime, parseTime, relative } from "./format.js";

export function renderWorkers(view) {
  const body = h("div", { class: "panel" }, h("div", { class: "empty", dataset: { state: "loading" } }, "Loading workers…"));
  const summary = h("span", { class: "muted" });
  replace(view, h("div", { class: "toolbar" }, h("h1", {}, "Workers"), summary), body);
  const load = async () => {
    try {
      const data = await getJSON("api/workers");
      const alive = data.workers.filter((w) => w.alive);
      const slots = alive.reduce((n, w) => n + w.concurrency, 0);
      const busy = alive.reduce((n, w) => n + w.running, 0);
      summary.textContent = `${alive.length} alive of ${data.workers.length} · ${busy} of ${slots} slots busy · silent after ${data.worker_ttl} s`;
      replace(body, data.workers.length ? table(data.workers) : h("div", { class: "empty" }, "No worker is registered. Start one with `asyncjobs worker <module:app>`."));
    } catch (exc) {
      replace(body, h("div", { class: "error-box" }, exc.message));
    }
  };
  return every(5000, load);
}

function table(workers) {
  const now = Date.now();
  return h("table", { class: "grid", id: "workers" },
    h("thead", {}, h("tr", {}, h("th", {}, "State"), h("th", {}, "Worker"), h("th", {}, "Host / pid"),
      h("th", {}, "Queues"), h("th", {}, "Busy"), h("th", { class: "num" }, "Running"), h("th", {}, "Runs"),
      h("th", {}, "Last heartbeat"), h("th", {}, "Up since"))),
    h("tbody", {}, workers.map((w) => h("tr", { dataset: { worker: w.id, alive: String(w.alive) } },
      h("td", {}, h("span", { class: "badge", dataset: { status: w.alive ? "succeeded" : "failed" } }, w.alive ? "alive" : "silent")),
      h("td", { class: "mono" }, w.id),
      h("td", {}, `${w.host} / ${w.pid}`),
      h("td", {}, w.queues.join(", "), h("div", { class: "muted small", title: w.jobs.join(", ") }, `${w.jobs.length} job${w.jobs.length === 1 ? "" : "s"}`)),
      h("td", {}, meter(w.running, w.concurrency)),
      h("td", { class: "num" }, `${w.running} / ${w.concurrency}`),
      h("td", { class: "runs" }, w.runs.map((r) => h("a", { href: `#/runs/${r.id}`, title: r.job }, `#${r.id} ${r.job}`)),
        w.running > w.runs.length ? h("span", { class: "muted" }, `+${w.running - w.runs.length} more`) : null),
      h("td", { class: w.alive ? "" : "bad" }, `${ago(w.silent_for * 1000)} ago`),
      h("td", {}, dateTime(parseTime(w.started_at)), h("div", { class: "muted small" }, relative(parseTime(w.started_at), now)))))));
}

// A bar "used of limit"; full is amber, over (a limit lowered under running runs) is red.
export function meter(used, limit) {
  if (limit === null || limit === undefined) return h("span", { class: "muted" }, "no limit");
  const pct = limit > 0 ? Math.min(100, Math.round((used / limit) * 100)) : 100;
  const level = used > limit ? "over" : used >= limit ? "full" : "ok";
  return h("span", { class: "meter", dataset: { level }, title: `${used} of ${limit}` }, h("span", { style: { width: `${pct}%` } }));
}

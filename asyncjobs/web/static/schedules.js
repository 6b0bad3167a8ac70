// Schedules: timing, next and last fire, misfire policy, and the cluster-wide switch.

import { getJSON, postJSON } from "./api.js";
import { every, h, replace } from "./dom.js";
import { dateTime, duration, parseTime, relative } from "./format.js";

export function renderSchedules(view) {
  const body = h("div", { class: "panel" }, h("div", { class: "empty", dataset: { state: "loading" } }, "Loading schedules…"));
  const notice = h("div");
  replace(view, h("div", { class: "toolbar" }, h("h1", {}, "Schedules")), notice, body);
  const load = async () => {
    try {
      const data = await getJSON("api/schedules");
      replace(body, data.schedules.length ? table(data.schedules, load, notice) : h("div", { class: "empty" }, "No schedule is stored. Declare one with @app.job(cron=...) or every=..."));
    } catch (exc) {
      replace(body, h("div", { class: "error-box" }, exc.message));
    }
  };
  return every(5000, load);
}

function timing(s) {
  if (s.cron) return `cron ${s.cron}${s.timezone && s.timezone !== "UTC" ? ` (${s.timezone})` : ""}`;
  return `every ${interval(s.every)}`;
}

// 21600 → "6 h", 90 → "90 s": intervals are usually round.
function interval(seconds) {
  if (seconds >= 3600 && seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds >= 60 && seconds % 60 === 0) return `${seconds / 60} min`;
  return seconds < 60 ? `${seconds} s` : duration(seconds * 1000);
}

function state(s) {
  if (!s.enabled) return h("span", { class: "badge", dataset: { status: "cancelled" } }, "disabled");
  if (s.paused) return h("span", { class: "badge", dataset: { status: "expired" }, title: "its job or queue is disabled" }, "paused");
  return h("span", { class: "badge", dataset: { status: "succeeded" } }, "active");
}

function table(schedules, reload, notice) {
  const now = Date.now();
  return h("table", { class: "grid", id: "schedules" },
    h("thead", {}, h("tr", {}, h("th", {}, "Schedule"), h("th", {}, "Job"), h("th", {}, "Timing"),
      h("th", {}, "Next fire"), h("th", {}, "Last fire"), h("th", {}, "Misfire"), h("th", {}, "Arguments"), h("th", {}, "State"), h("th", {}, ""))),
    h("tbody", {}, schedules.map((s) => {
      const next = parseTime(s.next_fire_at);
      const last = parseTime(s.last_fire_at);
      return h("tr", { dataset: { schedule: s.name, enabled: String(s.enabled) } },
        h("td", {}, h("strong", {}, s.name), s.all_nodes ? h("div", { class: "muted small" }, "on every worker") : null),
        h("td", {}, h("a", { href: `#/?job=${encodeURIComponent(s.job)}` }, s.job)),
        h("td", { class: "mono" }, timing(s)),
        h("td", {}, s.enabled && !s.paused ? relative(next, now) || "not computed yet" : "—", next ? h("div", { class: "muted small" }, dateTime(next)) : null),
        h("td", {}, last ? relative(last, now) : "never", last ? h("div", { class: "muted small" }, dateTime(last)) : null),
        h("td", {}, s.misfire),
        h("td", { class: "mono small args" }, Object.entries(s.args).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ") || "—"),
        h("td", {}, state(s)),
        h("td", {}, h("button", {
          class: s.enabled ? "danger" : "", dataset: { action: "toggle-schedule", name: s.name },
          onclick: async (event) => {
            event.target.disabled = true;
            try {
              await postJSON(`api/schedules/${encodeURIComponent(s.name)}/enabled`, { enabled: !s.enabled });
              replace(notice);
            } catch (exc) {
              replace(notice, h("div", { class: "error-box" }, exc.message));
            }
            reload();
          },
        }, s.enabled ? "Disable" : "Enable")));
    })));
}

// The viewer's entry point: a hash router (#/, #/runs/<id>, #/queues, #/workers, #/schedules,
// #/jobs, #/jobs/<name>), so the page works wherever the dashboard is mounted, and a login
// form when a token is required.

import { getJSON } from "./api.js";
import { h, replace } from "./dom.js";
import { renderJobs, renderTriggerForm } from "./jobs.js";
import { renderRuns } from "./runs.js";
import { renderQueues } from "./queues.js";
import { renderSchedules } from "./schedules.js";
import { renderTrace } from "./trace.js";
import { renderWorkers } from "./workers.js";

// The cluster views: each renders into the page and returns its cleanup.
const VIEWS = new Map([["queues", renderQueues], ["workers", renderWorkers], ["schedules", renderSchedules]]);

const view = document.getElementById("view");
const live = document.getElementById("live");
let cleanup = () => {};

function setLive(state) {
  live.dataset.state = state;
  live.textContent = state;
}

function route() {
  cleanup();
  setLive("idle");
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/";
  let match;
  const section = path.split("/")[1];
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === (VIEWS.has(section) || section === "jobs" ? section : "runs"));
  }
  if ((match = /^\/runs\/(\d+)$/.exec(path))) cleanup = renderTrace(view, Number(match[1]), setLive);
  else if (VIEWS.has(path.slice(1))) cleanup = VIEWS.get(path.slice(1))(view);
  else if (path === "/jobs") cleanup = renderJobs(view);
  else if ((match = /^\/jobs\/(.+)$/.exec(path))) cleanup = renderTriggerForm(view, decodeURIComponent(match[1]));
  else cleanup = renderRuns(view, setLive);
}

function login() {
  cleanup();
  cleanup = () => {};
  const input = h("input", { type: "password", placeholder: "token", autocomplete: "current-password", id: "token" });
  replace(view, h("form", {
    class: "panel login",
    onsubmit: (event) => {
      event.preventDefault();
      // the server checks it, sets an HttpOnly session cookie and drops it from the URL
      location.href = `?token=${encodeURIComponent(input.value)}${location.hash}`;
    },
  }, h("h1", {}, "Sign in"), h("p", { class: "muted" }, "This dashboard needs its access token."),
  input, h("button", { class: "primary", type: "submit" }, "Open dashboard")));
}

window.addEventListener("hashchange", route);
window.addEventListener("asyncjobs:login", login);
getJSON("api/jobs").then((data) => {
  document.getElementById("title").textContent = data.title || "asyncjobs";
  document.title = data.title || "asyncjobs";
}).catch(() => {});
route();

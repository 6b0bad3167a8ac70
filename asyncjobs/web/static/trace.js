// The trace page: the tree of runs under one root, live, with a waterfall of when each ran,
// and the details (arguments, result, error with traceback, logs) of the selected run.

import { ApiError, getJSON, postJSON, openStream } from "./api.js";
import { h, json, replace, throttled } from "./dom.js";
import { clock, dateTime, duration, parseTime, runDuration, shownStatus, TERMINAL } from "./format.js";
import { badge, progressBar } from "./runs.js";

// State events that end an attempt ("pending" after "running": handed back or rescued).
const ENDS_ATTEMPT = new Set(["succeeded", "failed", "cancelled", "expired", "retrying", "pending"]);

export function renderTrace(view, runId, setLive) {
  const runs = new Map();
  const events = new Map(); // run id -> events, in feed order
  const collapsed = new Set();
  let selected = runId;
  let rootId = null;
  let ended = false;
  let truncated = false;
  // "why pending": fetched for the selected run when it changes state, and every few
  // seconds while it is not finished (limits and workers change without run events)
  let why = { key: null, at: 0, data: null };

  const tbody = h("tbody");
  const axis = h("div", { class: "axis" });
  const details = h("div", { class: "details panel", id: "details" });
  const heading = h("div", { class: "trace-head" });
  const notice = h("div");

  function addEvents(list) {
    for (const event of list) {
      if (!events.has(event.run_id)) events.set(event.run_id, []);
      events.get(event.run_id).push(event);
    }
  }

  function setRuns(list) {
    for (const run of list) {
      const known = runs.get(run.id);
      if (!known || run.version >= known.version) runs.set(run.id, run);
      if (rootId === null) rootId = run.root_run_id;
    }
  }

  const render = throttled(() => {
    const now = Date.now();
    renderHeading();
    renderTree(now);
    renderDetails(now);
  });

  function renderHeading() {
    const root = runs.get(rootId);
    if (!root) return;
    const active = [...runs.values()].some((r) => !TERMINAL.has(r.status));
    replace(heading,
      h("a", { href: "#/" }, "← Runs"),
      h("h1", {}, `Trace #${root.id} `, h("span", { class: "muted" }, root.job)),
      badge(root),
      h("span", { class: "muted" }, `${runs.size} run${runs.size === 1 ? "" : "s"}`),
      truncated ? h("span", { class: "muted" }, "(tree cut at 5000 runs)") : null,
      h("span", { class: "grow" }),
      active ? h("button", {
        class: "danger", dataset: { action: "cancel-tree" },
        onclick: () => cancel(root.id, true),
      }, "Cancel tree") : null);
  }

  function childrenOf() {
    const children = new Map();
    for (const run of [...runs.values()].sort((a, b) => a.id - b.id)) {
      const parent = runs.has(run.parent_run_id) ? run.parent_run_id : null;
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(run);
    }
    return children;
  }

  function renderTree(now) {
    const list = [...runs.values()];
    if (!list.length) return;
    const start = Math.min(...list.map((r) => parseTime(r.created_at)));
    const end = Math.max(...list.map((r) => parseTime(r.finished_at) ?? (TERMINAL.has(r.status) ? start : now)));
    const span = Math.max(end - start, 1);
    const children = childrenOf();
    const rows = [];
    const walk = (run, depth) => {
      rows.push(treeRow(run, depth, children.has(run.id), start, span, now));
      if (collapsed.has(run.id)) return;
      for (const child of children.get(run.id) || []) walk(child, depth + 1);
    };
    for (const top of children.get(null) || []) walk(top, 0);
    replace(tbody, rows);
    replace(axis, [0, 0.25, 0.5, 0.75, 1].map((f) => h("span", {}, duration(span * f))));
  }

  // One bar per attempt, from the run's state events: a retried run shows its failed
  // attempts too. Without events (a cut tree) the run's own start and finish are used.
  function attempts(run, now) {
    const bars = [];
    let open = null;
    for (const event of events.get(run.id) || []) {
      const at = parseTime(event.at);
      if (event.kind === "running") {
        open = at;
      } else if (open !== null && ENDS_ATTEMPT.has(event.kind)) {
        bars.push({ from: open, to: at, status: event.kind === "retrying" ? "failed" : event.kind === "pending" ? "retrying" : event.kind });
        open = null;
      }
    }
    if (open !== null) bars.push({ from: open, to: parseTime(run.finished_at) ?? now, status: shownStatus(run) });
    if (!bars.length && run.started_at) {
      bars.push({ from: parseTime(run.started_at), to: parseTime(run.finished_at) ?? now, status: shownStatus(run) });
    }
    return bars;
  }

  function treeRow(run, depth, hasChildren, start, span, now) {
    const status = shownStatus(run);
    const created = parseTime(run.created_at);
    const pct = (t) => `${(((t - start) / span) * 100).toFixed(2)}%`;
    const width = (a, b) => `${Math.max(((b - a) / span) * 100, 0.3).toFixed(2)}%`;
    const bars = attempts(run, now);
    const waitEnd = bars.length ? bars[0].from : parseTime(run.finished_at) ?? (TERMINAL.has(run.status) ? created : now);
    const timeline = h("div", { class: "timeline" },
      h("div", { class: "wait", style: { left: pct(created), width: width(created, waitEnd) } }),
      bars.map((bar, i) => h("div", {
        class: "bar", dataset: { status: bar.status },
        style: { left: pct(bar.from), width: width(bar.from, bar.to) },
        title: `${run.job} attempt ${i + 1}: ${bar.status}, ${duration(bar.to - bar.from)}`,
      })));
    const toggle = h("span", {
      class: "toggle",
      onclick: (e) => {
        e.stopPropagation();
        if (collapsed.has(run.id)) collapsed.delete(run.id); else collapsed.add(run.id);
        render();
      },
    }, hasChildren ? (collapsed.has(run.id) ? "▸" : "▾") : "");
    return h("tr", {
      class: run.id === selected ? "selected" : "",
      dataset: { runId: run.id, status, job: run.job },
      onclick: () => { selected = run.id; render(); },
    },
    h("td", {}, h("div", { class: "name", style: { "padding-left": `${depth * 18}px` } },
      toggle, h("span", { class: "job" }, run.job), h("span", { class: "rid" }, `#${run.id}`),
      run.attempt > 1 ? h("span", { class: "rid" }, `attempt ${run.attempt}`) : null,
      run.status_message && !TERMINAL.has(run.status) ? h("span", { class: "msg" }, run.status_message) : null)),
    h("td", {}, badge(run)),
    h("td", { class: "num" }, duration(runDuration(run, now))),
    h("td", {}, progressBar(run)),
    h("td", {}, timeline));
  }

  function renderDetails(now) {
    const run = runs.get(selected) || runs.get(rootId);
    if (!run) return;
    const active = !TERMINAL.has(run.status);
    const logs = (events.get(run.id) || []).filter((e) => e.kind === "log");
    const history = (events.get(run.id) || []).filter((e) => e.kind !== "log" && e.kind !== "progress");
    const error = run.error;
    refreshWhy(run, now);
    replace(details,
      h("div", { class: "title" }, h("h1", {}, run.job), h("span", { class: "muted" }, `#${run.id}`),
        badge(run), h("span", { class: "grow" }),
        active ? h("button", {
          class: "danger", dataset: { action: "cancel", runId: run.id },
          onclick: () => cancel(run.id, false),
        }, "Cancel") : h("button", {
          dataset: { action: "rerun", runId: run.id },
          title: "a new run with the same arguments, linked to this one (trigger: retry)",
          onclick: () => rerun(run.id),
        }, "Run again")),
      whyPanel(run),
      h("dl", {},
        h("dt", {}, "Queue"), h("dd", {}, run.queue),
        h("dt", {}, "Trigger"), h("dd", {}, run.trigger),
        h("dt", {}, "Attempt"), h("dd", {}, `${run.attempt} of ${run.max_attempts}`),
        h("dt", {}, "Created"), h("dd", {}, dateTime(parseTime(run.created_at))),
        h("dt", {}, "Started"), h("dd", {}, clock(parseTime(run.started_at)) || "—"),
        h("dt", {}, "Finished"), h("dd", {}, clock(parseTime(run.finished_at)) || "—"),
        run.parent_run_id !== null ? [h("dt", {}, "Parent"), h("dd", {}, h("a", {
          href: `#/runs/${run.parent_run_id}`, onclick: (e) => { e.preventDefault(); selected = run.parent_run_id; render(); },
        }, `#${run.parent_run_id}`))] : null,
        h("dt", {}, "Duration"), h("dd", {}, duration(runDuration(run, now)) || "—"),
        run.worker_id ? [h("dt", {}, "Worker"), h("dd", { class: "mono" }, run.worker_id)] : null,
        run.progress !== null ? [h("dt", {}, "Progress"), h("dd", {}, progressBar(run), " ",
          `${Math.round(run.progress * 100)}%`, run.status_message ? ` — ${run.status_message}` : "")] : null),
      h("section", {}, h("h2", {}, "Arguments"), h("pre", { class: "args" }, json(run.args))),
      run.status === "succeeded" ? h("section", {}, h("h2", {}, "Result"), h("pre", { class: "result" }, json(run.result))) : null,
      error ? h("section", { class: "error" }, h("h2", {}, "Error"),
        h("div", { class: "err-title" }, `${error.type}: ${error.message}`),
        error.traceback ? h("pre", { class: "traceback" }, error.traceback) : null) : null,
      (run.errors || []).length > 1 ? h("section", {}, h("h2", {}, "Earlier attempts"),
        run.errors.slice(0, -1).map((e) => h("div", { class: "err-title" }, `attempt ${e.attempt}: ${e.type}: ${e.message}`))) : null,
      h("section", {}, h("h2", {}, `Logs (${logs.length})`),
        logs.length ? h("div", { class: "logs" }, logs.map((e) => h("div", { class: `lvl-${e.data.level}` },
          h("span", {}, clock(parseTime(e.at))), h("span", {}, e.data.level || ""),
          h("span", { class: "text" }, e.data.message ?? json(e.data))))) : h("div", { class: "muted" }, "No log lines.")),
      h("section", {}, h("h2", {}, "Events"),
        history.length ? h("div", { class: "logs events" }, history.map((e) => h("div", { dataset: { kind: e.kind } },
          h("span", {}, clock(parseTime(e.at))), h("span", {}, e.kind),
          h("span", { class: "text" }, eventText(e.data))))) : h("div", { class: "muted" }, "No state change streamed yet.")));
  }

  function refreshWhy(run, now) {
    const key = `${run.id}:${run.status}`;
    if (TERMINAL.has(run.status) || (why.key === key && now - why.at < 3000)) return;
    why = { key, at: now, data: why.data && why.data.run_id === run.id ? why.data : null };
    getJSON(`api/runs/${run.id}/explain`).then((data) => {
      if (why.key !== key) return;
      why.data = data;
      why.fetched = Date.now(); // the countdowns count from here (the database's clock may differ)
      render();
    }).catch(() => {});
  }

  function whyPanel(run) {
    const data = why.data;
    if (!data || data.run_id !== run.id || TERMINAL.has(run.status)) return null;
    const title = run.status === "pending" ? "Why pending" : "Now";
    return h("section", { class: "why", id: "why", dataset: { blocked: String(data.blocked) } },
      h("h2", {}, title),
      data.reasons.map((r) => h("div", { class: "reason", dataset: { code: r.code } },
        h("span", { class: "code" }, r.code),
        h("span", {}, r.message, reasonFacts(r)))));
  }

  // What a reason names, as links and times a person acts on.
  function reasonFacts(r) {
    const d = r.data || {};
    if (r.code === "key_limit_full") {
      return [h("div", { class: "facts" }, "key ", h("b", { class: "mono key" }, String(d.key)),
        ` — ${d.running} of ${d.limit} running`), holders(d.holders)];
    }
    if (r.code === "rate_limited") return nextStart(d);
    if (r.code === "reused_children") return runLinks("reused at their steps: ", d.children);
    if (r.code === "waiting_on_children") return runLinks("waits on ", d.children);
    return holders(d.holders);
  }

  // The next start a rate limit allows: the local time and a countdown. The countdown counts
  // from the server's "seconds from now" at fetch time, so a skewed browser clock cannot
  // shift it; the panel re-renders every 500 ms while the trace is live.
  function nextStart(d) {
    const at = parseTime(d.next_start_at);
    if (at === null) return null;
    const left = (why.fetched ?? Date.now()) + d.seconds * 1000 - Date.now();
    const what = d.kind === "key" ? `key ${d.name} of job ${d.job}` : `${d.kind} ${d.name}`;
    return h("div", { class: "facts next-start" }, `${what}: next start allowed at `,
      h("b", { title: dateTime(at) }, clock(at)), " ",
      h("span", { class: "countdown" }, left > 0 ? `(in ${duration(left)})` : "(now: waits for a worker's next claim)"));
  }

  function runLinks(label, ids) {
    if (!Array.isArray(ids) || !ids.length) return null;
    return h("div", { class: "facts children" }, label, ids.slice(0, 20).map((id, i) => [i ? ", " : "",
      h("a", { href: `#/runs/${id}` }, `#${id}`)]), ids.length > 20 ? ` and ${ids.length - 20} more` : "");
  }

  // The runs holding a full limit's slots, as links into their traces.
  function holders(list) {
    if (!Array.isArray(list) || !list.length) return null;
    return h("div", { class: "holders" }, "held by ", list.slice(0, 10).map((x, i) => [i ? ", " : "",
      h("a", { href: `#/runs/${x.run_id}` }, `#${x.run_id} ${x.job}`),
      x.started_at ? h("span", { class: "muted" }, ` (running ${duration(Date.now() - parseTime(x.started_at))})`) : null]));
  }

  async function rerun(id) {
    try {
      const made = await postJSON(`api/runs/${id}/retry`, {});
      location.hash = `#/runs/${made.id}`;
    } catch (exc) {
      replace(notice, h("div", { class: "error-box" }, exc instanceof ApiError ? exc.message : String(exc)));
    }
  }

  async function cancel(id, cascade) {
    try {
      await postJSON(`api/runs/${id}/cancel`, { cascade });
    } catch (exc) {
      replace(notice, h("div", { class: "error-box" }, exc instanceof ApiError ? exc.message : String(exc)));
    }
  }

  const stream = openStream(`api/runs/${runId}/events`, {
    parseTime,
    onState(state) {
      if (state === "ended") {
        // after the final render (queued for this frame by the "end" message), so that the
        // badge never says "ended" over the state before the end
        requestAnimationFrame(() => setLive(state));
        return;
      }
      setLive(state);
      if (state === "offline") {
        getJSON(`api/runs/${runId}`).catch((exc) => {
          if (!(exc instanceof ApiError) || exc.status !== 404) return;
          stream.close();
          setLive("idle");
          replace(view, h("div", { class: "error-box" }, `There is no run #${runId}.`));
        });
      }
    },
    onMessage(kind, data) {
      if (kind === "snapshot") {
        runs.clear();
        events.clear();
        truncated = data.truncated;
      }
      setRuns(data.runs);
      addEvents(data.events);
      if (kind === "end") ended = true;
      render();
    },
  });
  const ticker = setInterval(() => { if (!ended) render(); }, 500);

  replace(view, heading, notice,
    h("div", { class: "trace-layout" },
      h("div", { class: "panel" },
        h("table", { class: "tree", id: "tree" },
          h("colgroup", {}, h("col", { class: "c-name" }), h("col", { class: "c-status" }),
            h("col", { class: "c-dur" }), h("col", { class: "c-prog" }), h("col", {})),
          h("thead", {}, h("tr", {}, h("th", {}, "Run"), h("th", {}, "Status"), h("th", {}, "Duration"),
            h("th", {}, "Progress"), h("th", {}, axis))),
          tbody)),
      details));
  replace(tbody, h("tr", {}, h("td", { colspan: 5, class: "empty" }, "Loading…")));
  return () => { clearInterval(ticker); stream.close(); };
}

// An event's data as "key: value" pairs people read: errors as "Type: message", times as
// clock times, nested values as short JSON.
export function eventText(data) {
  const parts = [];
  for (const [key, value] of Object.entries(data || {})) {
    if (value === null || value === undefined || key === "traceback") continue;
    let text;
    if (value && typeof value === "object" && "type" in value && "message" in value) text = `${value.type}: ${value.message}`;
    else if (typeof value === "string" && /^\d{4}-\d\d-\d\dT/.test(value)) text = clock(parseTime(value));
    else if (typeof value === "object") text = JSON.stringify(value);
    else text = String(value);
    if (text.length > 160) text = `${text.slice(0, 159)}…`;
    parts.push(h("span", { class: "kv" }, `${key.replace(/_/g, " ")} `, h("b", {}, text)), "  ");
  }
  return parts;
}

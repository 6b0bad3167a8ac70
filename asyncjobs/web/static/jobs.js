// Jobs and queues: enable/disable switches, and a trigger form built from each job's
// argument JSON schema (pydantic's, with $defs and anyOf).

import { ApiError, getJSON, postJSON } from "./api.js";
import { h, json, replace } from "./dom.js";

export function renderJobs(view) {
  const body = h("div", {}, h("div", { class: "empty" }, "Loading…"));
  replace(view, h("div", { class: "toolbar" }, h("h1", {}, "Jobs and queues")), body);
  const load = async () => {
    try {
      const data = await getJSON("api/jobs");
      replace(body, h("div", { class: "jobs-layout" }, jobTable(data.jobs, load), queueTable(data.queues, load)));
    } catch (exc) {
      replace(body, h("div", { class: "error-box" }, exc.message));
    }
  };
  load();
  return () => {};
}

function switchButton(kind, name, enabled, reload) {
  if (enabled === null) {
    return h("span", { class: "muted", title: "no worker has registered it yet" }, "not registered");
  }
  return h("button", {
    class: "switch", dataset: { enabled: String(enabled), action: `toggle-${kind}`, name },
    onclick: async (event) => {
      event.target.disabled = true;
      try {
        await postJSON(`api/${kind}s/${encodeURIComponent(name)}/enabled`, { enabled: !enabled });
      } catch (exc) {
        alert(exc.message);
      }
      reload();
    },
  }, enabled ? "enabled" : "disabled");
}

function jobTable(jobs, reload) {
  return h("div", { class: "panel" }, h("h2", {}, "Jobs"),
    h("table", { class: "grid", id: "jobs" },
      h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", {}, "Queue"), h("th", {}, "Limit"),
        h("th", {}, "State"), h("th", {}, ""))),
      h("tbody", {}, jobs.map((job) => h("tr", { dataset: { job: job.name } },
        h("td", {}, h("strong", {}, job.name), job.doc ? h("div", { class: "muted" }, job.doc.split("\n")[0]) : null),
        h("td", {}, job.queue),
        h("td", {}, job.max_concurrency ?? "—"),
        h("td", {}, switchButton("job", job.name, job.enabled, reload)),
        h("td", {}, job.known ? h("a", { href: `#/jobs/${encodeURIComponent(job.name)}`, dataset: { action: "open-trigger" } }, "Trigger…") : h("span", { class: "muted" }, "other app")))))));
}

function queueTable(queues, reload) {
  return h("div", { class: "panel" }, h("h2", {}, "Queues"),
    h("table", { class: "grid", id: "queues" },
      h("thead", {}, h("tr", {}, h("th", {}, "Queue"), h("th", {}, "Limit"), h("th", {}, "State"))),
      h("tbody", {}, queues.map((queue) => h("tr", { dataset: { queue: queue.name } },
        h("td", {}, queue.name),
        h("td", {}, queue.max_concurrency ?? "—"),
        h("td", {}, switchButton("queue", queue.name, queue.enabled, reload)))))));
}

// ------------------------------------------------------------------ trigger form

export function renderTriggerForm(view, name) {
  const body = h("div", {}, h("div", { class: "empty" }, "Loading…"));
  replace(view, h("div", { class: "toolbar" }, h("a", { href: "#/jobs" }, "← Jobs"),
    h("h1", {}, `Trigger ${name}`)), body);
  getJSON("api/jobs").then((data) => {
    const job = data.jobs.find((j) => j.name === name);
    if (!job || !job.args_schema) {
      replace(body, h("div", { class: "error-box" }, `No job named ${name} in this app.`));
      return;
    }
    replace(body, triggerForm(job));
  }).catch((exc) => replace(body, h("div", { class: "error-box" }, exc.message)));
  return () => {};
}

function resolve(schema, root) {
  let current = schema || {};
  for (let i = 0; i < 10 && current.$ref; i++) {
    const name = current.$ref.split("/").pop();
    current = { ...((root.$defs || {})[name] || {}), ...current, $ref: undefined };
  }
  const options = current.anyOf || current.oneOf;
  if (options) {
    const real = options.filter((o) => o.type !== "null");
    const nullable = real.length < options.length;
    if (real.length === 1) return { ...resolve(real[0], root), nullable, default: current.default, title: current.title };
    return { ...current, nullable, kind: "json" };
  }
  return current;
}

function fieldFor(name, raw, root, required) {
  const schema = resolve(raw, root);
  const type = schema.kind === "json" ? "json" : schema.type;
  const label = name;
  const id = `arg-${name}`;
  const hint = [type === "json" || !type ? "JSON" : type, required ? "required" : "optional", schema.nullable ? "nullable" : null]
    .filter(Boolean).join(", ");
  const has = schema.default !== undefined;
  let input;
  let read;
  if (Array.isArray(schema.enum)) {
    input = h("select", { id, name }, required ? null : h("option", { value: "" }, "—"),
      schema.enum.map((v, i) => h("option", { value: String(i) }, String(v))));
    if (has) input.value = String(schema.enum.indexOf(schema.default));
    read = () => (input.value === "" ? undefined : schema.enum[Number(input.value)]);
  } else if (type === "boolean") {
    input = h("input", { id, name, type: "checkbox", checked: has ? schema.default : false });
    read = () => input.checked;
  } else if (type === "integer" || type === "number") {
    input = h("input", { id, name, type: "number", step: type === "integer" ? "1" : "any", value: has && schema.default !== null ? String(schema.default) : "" });
    read = () => (input.value === "" ? undefined : Number(input.value));
  } else if (type === "string") {
    const secret = schema.format === "password" || schema.writeOnly;
    input = h("input", { id, name, type: secret ? "password" : "text", autocomplete: secret ? "off" : null, value: has && schema.default !== null ? schema.default : "", placeholder: schema.format || "" });
    read = () => (input.value === "" && !required ? undefined : input.value);
  } else {
    const example = has ? json(schema.default) : type === "array" ? "[]" : type === "object" ? "{}" : "";
    input = h("textarea", { id, name, spellcheck: "false", placeholder: "JSON" }, example);
    read = () => {
      if (input.value.trim() === "") return undefined;
      try { return JSON.parse(input.value); } catch (exc) { throw new Error(`${name}: not valid JSON (${exc.message})`); }
    };
  }
  const problem = h("div", { class: "field-error", id: `${id}-error`, hidden: true });
  const field = h("div", { class: "field" },
    h("label", { for: id }, label, h("span", { class: "hint" }, hint)),
    input,
    problem,
    schema.description ? h("div", { class: "muted" }, schema.description) : null);
  const showError = (messages) => {
    field.classList.toggle("invalid", messages.length > 0);
    problem.hidden = messages.length === 0;
    problem.textContent = messages.join("; ");
  };
  return { name, field, read, showError };
}

// The server's validation errors: each under its field, once; the rest in the form's box.
function placeErrors(fields, errors) {
  const byField = new Map(fields.map((f) => [f.name, []]));
  const other = [];
  for (const e of errors) {
    const loc = (e.loc || []).map(String);
    const messages = byField.get(loc[0]);
    const text = loc.length > 1 ? `${loc.slice(1).join(".")}: ${e.msg}` : e.msg;
    if (messages) { if (!messages.includes(text)) messages.push(text); } else other.push(`${loc.join(".") || "arguments"}: ${e.msg}`);
  }
  for (const f of fields) f.showError(byField.get(f.name));
  return other;
}

function triggerForm(job) {
  const schema = job.args_schema;
  const required = new Set(schema.required || []);
  const fields = Object.entries(schema.properties || {}).map(([name, prop]) => fieldFor(name, prop, schema, required.has(name)));
  const errors = h("div");
  const submit = h("button", { class: "primary", type: "submit" }, "Trigger run");
  const form = h("form", {
    class: "trigger panel", id: "trigger-form", novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      replace(errors);
      for (const f of fields) f.showError([]);
      const args = {};
      try {
        for (const f of fields) {
          const value = f.read();
          if (value !== undefined) args[f.name] = value;
        }
      } catch (exc) {
        replace(errors, h("div", { class: "error-box" }, exc.message));
        return;
      }
      submit.disabled = true;
      try {
        const run = await postJSON(`api/jobs/${encodeURIComponent(job.name)}/trigger`, { args });
        location.hash = `#/runs/${run.id}`;
      } catch (exc) {
        submit.disabled = false;
        if (!(exc instanceof ApiError) || !exc.errors.length) {
          replace(errors, h("div", { class: "error-box" }, exc.message));
          return;
        }
        // the message repeats the list: show the list only, each error by its field
        const other = placeErrors(fields, exc.errors);
        replace(errors, h("div", { class: "error-box", id: "form-errors" },
          `The arguments do not fit ${job.name}: ${exc.errors.length - other.length ? "see the marked fields" : "see below"}.`,
          other.length ? h("ul", {}, [...new Set(other)].map((t) => h("li", {}, t))) : null));
      }
    },
  },
  job.doc ? h("p", { class: "muted" }, job.doc) : null,
  fields.length ? fields.map((f) => f.field) : h("p", { class: "muted" }, "This job takes no arguments."),
  errors, submit);
  return form;
}

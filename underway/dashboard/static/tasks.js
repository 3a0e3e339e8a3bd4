/* The tasks page: a form per task, built from its parameter JSON Schema. */
import { ApiError, View, append, client, formatDuration, h } from "./core.js";

/* -- tasks page: forms from JSON Schema ---------------------------------------------- */

/* A docstring's paragraphs, without the line breaks of its source layout. */
function prose(text) {
  return (text || "")
    .trim()
    .split(/\n\s*\n/)
    .map((p) => p.replace(/\s+/g, " ").trim())
    .join("\n\n");
}

/* Text with `code` spans as nodes: backticks become <code>, never markup from the text. */
function withCode(text) {
  return (text || "").split(/`([^`\n]+)`/).map((part, i) => (i % 2 ? h("code", { text: part }) : part));
}

let fieldCounter = 0;

function resolveRef(schema, root) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    const target = (root.$defs || root.definitions || {})[name] || {};
    const { $ref, ...rest } = schema;
    return { ...target, ...rest };
  }
  return schema || {};
}

/* One property's form field: {node, read() -> {value} | {missing} | {error}, mark(msg)}. */
function buildField(name, raw, root, required) {
  let schema = resolveRef(raw, root);
  let nullable = false;
  const variants = schema.anyOf || schema.oneOf;
  if (variants) {
    const concrete = variants.map((v) => resolveRef(v, root)).filter((v) => v.type !== "null");
    nullable = concrete.length < variants.length;
    if (concrete.length === 1) schema = { ...concrete[0], title: schema.title, description: schema.description, default: schema.default };
  }
  const id = `field-${++fieldCounter}`;
  const title = schema.title || name;
  const hasDefault = Object.prototype.hasOwnProperty.call(schema, "default") && schema.default !== null;
  const hint = h("div", { class: "hint", id: `${id}-hint` });
  const problem = h("div", { class: "problem", id: `${id}-problem`, role: "alert", hidden: true });
  const described = `${id}-hint ${id}-problem`;
  const hints = [];
  if (schema.description) hints.push(schema.description);
  let control;
  let read;
  let wide = false;
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;

  if (schema.enum) {
    control = h("select", { id, name, "aria-describedby": described });
    if (!required && !hasDefault) control.append(h("option", { value: "", text: "—" }));
    schema.enum.forEach((v, i) => control.append(h("option", { value: String(i), text: String(v), selected: hasDefault && v === schema.default })));
    read = () => (control.value === "" ? { missing: true } : { value: schema.enum[Number(control.value)] });
  } else if (type === "boolean") {
    control = h("input", { type: "checkbox", id, name, checked: schema.default === true, "aria-describedby": described });
    const box = control;
    read = () => ({ value: box.checked });
    control = h("label", { class: "check" }, box, title);
  } else if (type === "integer" || type === "number") {
    const min = schema.minimum ?? (schema.exclusiveMinimum !== undefined ? schema.exclusiveMinimum : null);
    const max = schema.maximum ?? (schema.exclusiveMaximum !== undefined ? schema.exclusiveMaximum : null);
    control = h("input", {
      type: "number",
      id,
      name,
      inputmode: type === "integer" ? "numeric" : "decimal",
      step: type === "integer" ? "1" : "any",
      min,
      max,
      value: hasDefault ? String(schema.default) : null,
      required: required && !hasDefault,
      "aria-describedby": described,
    });
    const input = control;
    read = () => {
      if (input.value.trim() === "") return { missing: true };
      const n = Number(input.value);
      return Number.isFinite(n) ? { value: n } : { error: "Enter a number." };
    };
  } else if (type === "array" && (resolveRef(schema.items, root).type === "string" || resolveRef(schema.items, root).type === "integer" || resolveRef(schema.items, root).type === "number" || resolveRef(schema.items, root).enum)) {
    const items = resolveRef(schema.items, root);
    wide = true;
    if (items.enum) {
      const chosen = new Set(Array.isArray(schema.default) ? schema.default : []);
      const boxes = items.enum.map((v) => h("input", { type: "checkbox", value: String(v), checked: chosen.has(v) }));
      control = h(
        "div",
        { role: "group", class: "choices", id, "aria-labelledby": `${id}-label`, "aria-describedby": described },
        items.enum.map((v, i) => h("label", { class: "check" }, boxes[i], String(v))),
      );
      read = () => ({ value: items.enum.filter((_, i) => boxes[i].checked) });
    } else {
      const numeric = items.type !== "string";
      hints.push(numeric ? "One per line, or separated by commas." : "One per line.");
      control = h("textarea", {
        id,
        name,
        rows: "3",
        required: required && !hasDefault,
        "aria-describedby": described,
        spellcheck: "false",
      });
      if (Array.isArray(schema.default)) control.value = schema.default.map(String).join("\n");
      const area = control;
      read = () => {
        const parts = area.value.split(numeric ? /[\n,]/ : /\r?\n/).map((s) => s.trim()).filter((s) => s !== "");
        if (!parts.length && !required) return area.value.trim() === "" && hasDefault ? { missing: true } : { value: [] };
        if (!numeric) return { value: parts };
        const values = parts.map(Number);
        return values.every(Number.isFinite) ? { value: values } : { error: "Every entry must be a number." };
      };
    }
  } else if (type === "string") {
    const long = (schema.maxLength || 0) > 200 || (typeof schema.default === "string" && schema.default.length > 60);
    wide = long || (typeof schema.default === "string" && schema.default.length > 16);
    control = h(long ? "textarea" : "input", {
      type: long ? null : "text",
      id,
      name,
      rows: long ? "3" : null,
      minlength: schema.minLength,
      maxlength: schema.maxLength,
      pattern: schema.pattern,
      required: required && !hasDefault,
      "aria-describedby": described,
      spellcheck: long ? "true" : "false",
      autocomplete: "off",
    });
    if (long) control.classList.add("prose");
    if (hasDefault) control.value = schema.default;
    const input = control;
    read = () => (input.value === "" && !required ? { missing: true } : { value: input.value });
  } else {
    // Objects, unions and anything else: JSON, checked by the server's schema.
    wide = true;
    hints.push("JSON.");
    control = h("textarea", { id, name, rows: "3", spellcheck: "false", "aria-describedby": described });
    if (Object.prototype.hasOwnProperty.call(schema, "default")) control.value = JSON.stringify(schema.default);
    const area = control;
    read = () => {
      if (area.value.trim() === "") return { missing: true };
      try {
        return { value: JSON.parse(area.value) };
      } catch {
        return { error: "Not valid JSON." };
      }
    };
  }
  if (nullable && !hints.length) hints.push("Optional.");
  append(hint, withCode(hints.join(" ")));
  hint.hidden = !hints.length;
  const label =
    type === "boolean" && !schema.enum
      ? null
      : h("label", { for: id, id: `${id}-label` }, title, required ? h("span", { class: "req", "aria-hidden": "true", text: "*" }) : null, required ? h("span", { class: "visually-hidden", text: " (required)" }) : null);
  if (label && control.getAttribute("role") === "group") {
    // A group has no single control to point a <label for> at.
    label.removeAttribute("for");
  }
  const node = h("div", { class: wide ? "field wide" : "field", "data-field": name }, label, control, hint, problem);
  const focusable = node.querySelector("input, select, textarea");
  return {
    name,
    node,
    read,
    mark(message) {
      problem.textContent = message || "";
      problem.hidden = !message;
      if (focusable) {
        if (message) focusable.setAttribute("aria-invalid", "true");
        else focusable.removeAttribute("aria-invalid");
      }
    },
    focus() {
      if (focusable) focusable.focus();
    },
  };
}

export class TasksView extends View {
  constructor(selected) {
    super();
    this.selected = selected;
    document.title = "Tasks · underway";
    this.list = h("div", { class: "tasks" });
    append(this.root, [
      h("div", { class: "page-head" }, h("div", {}, h("h1", { text: "Tasks" }), h("div", { class: "sub", text: "Fill in the parameters and start a job; its page opens and follows it live." }))),
      this.list,
    ]);
  }

  async load() {
    let data;
    try {
      data = await client.tasks();
    } catch (err) {
      return this.fail(err);
    }
    if (this.destroyed) return;
    if (!data.tasks.length) {
      this.list.replaceWith(h("div", { class: "card" }, h("div", { class: "empty" }, h("strong", { text: "No tasks registered" }), h("span", { text: "Decorate a function with @uw.task to see it here." }))));
      return;
    }
    for (const task of data.tasks) this.list.append(this.card(task));
    if (this.selected) {
      const card = this.list.querySelector(`[data-task="${CSS.escape(this.selected)}"]`);
      if (card) {
        card.scrollIntoView({ block: "start" });
        const first = card.querySelector("input, select, textarea, button");
        if (first) first.focus();
      }
    }
  }

  card(task) {
    const schema = task.params_schema || {};
    const required = new Set(schema.required || []);
    const fields = Object.entries(schema.properties || {}).map(([name, prop]) => buildField(name, prop, schema, required.has(name)));
    const formError = h("div", { class: "form-error", role: "alert" });
    const submit = h("button", { type: "submit", class: "button primary", text: "Start job" });
    const headingId = `task-${++fieldCounter}`;
    const form = h(
      "form",
      { novalidate: false, "aria-labelledby": headingId },
      fields.map((f) => f.node),
      h("div", { class: "form-foot" }, formError, submit),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      formError.textContent = "";
      const params = {};
      let bad = null;
      for (const f of fields) {
        const got = f.read();
        f.mark(got.error || "");
        if (got.error && !bad) bad = f;
        if ("value" in got) params[f.name] = got.value;
      }
      if (bad) return bad.focus();
      submit.disabled = true;
      try {
        const job = await client.submit(task.name, params);
        location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
      } catch (err) {
        submit.disabled = false;
        if (err instanceof ApiError && err.status === 401) return this.fail(err);
        const errors = (err.problem && err.problem.errors) || [];
        let placed = false;
        for (const e of errors) {
          const top = String(e.field || "").split(/[.[]/)[0];
          const f = fields.find((x) => x.name === top);
          if (f) {
            f.mark(e.message);
            if (!placed) f.focus();
            placed = true;
          }
        }
        formError.textContent = placed ? "Check the highlighted fields." : err.message || String(err);
      }
    });
    const meta = [task.executor, task.timeout ? `timeout ${formatDuration(task.timeout)}` : null].filter(Boolean);
    return h(
      "section",
      { class: "card task-card", "data-task": task.name },
      h(
        "div",
        { class: "card-body" },
        h("header", {}, h("h2", { id: headingId, text: task.name }), h("span", {}, meta.map((m) => h("span", { class: "tag", text: m })))),
        h("p", { class: "desc" }, withCode(prose(task.description))),
        form,
      ),
    );
  }
}

/*
 * Shared by the dashboard's pages: the API client (with the tab's token), DOM
 * helpers that only ever insert text, the progress bar, the base View, sign-in.
 */
// Defined by underway-job.js, a deferred classic script that runs before this module.
const Element = customElements.get("underway-job");
const { Client } = Element;
export const { ApiError, formatDuration, looksLikeText, outputPiece } = Element;
export const ROOT = document.querySelector('meta[name="underway-api"]').content;
export const TOKEN_KEY = "underway.token";
export const THEME_KEY = "underway.theme";
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
export const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];

export const storage = {
  get(store, key) {
    try {
      return store.getItem(key);
    } catch {
      return null;
    }
  },
  set(store, key, value) {
    try {
      if (value === null) store.removeItem(key);
      else store.setItem(key, value);
    } catch {
      // Storage switched off: the setting lasts until the page is closed.
    }
  },
};

export const client = new Client(ROOT, storage.get(sessionStorage, TOKEN_KEY), Client.pageCsrf());

/* -- small DOM helpers ----------------------------------------------------------- */

/* h("a", {class: "x", href: "#", onclick: fn}, "text", node): strings become text nodes. */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export function asText(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

export function shortId(id) {
  return id.length > 12 ? `${id.slice(0, 4)}…${id.slice(-6)}` : id;
}

export function parseTime(iso) {
  const t = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(t) ? null : t;
}

export function ago(iso) {
  const t = parseTime(iso);
  if (t === null) return "";
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 5) return "just now";
  return `${formatDuration(s).split(" ")[0]} ago`;
}

export function localTime(iso) {
  const t = parseTime(iso);
  return t === null ? "—" : new Date(t).toLocaleString();
}

export function badge(state, cancelling) {
  return h("span", { class: "badge", "data-state": state, text: cancelling ? "cancelling" : state });
}

let toastTimer = null;
export function toast(message) {
  const node = document.getElementById("toast");
  node.textContent = message;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    node.hidden = true;
  }, 3500);
}

/* -- progress bar ------------------------------------------------------------------ */

export class ProgressBar {
  constructor(label, large) {
    this.fill = h("div", { class: "fill" });
    this.bar = h(
      "div",
      { class: large ? "bar large" : "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-label": label },
      this.fill,
    );
    this.message = h("span", { class: "msg" });
    this.percent = h("span", { class: "pct" });
    this.root = h("div", { class: large ? "progress large-progress" : "progress" }, this.bar, h("div", { class: "progress-text" }, this.message, this.percent));
  }

  update(job) {
    const p = job.progress || {};
    const active = !TERMINAL.has(job.state);
    let percent = typeof p.percent === "number" ? p.percent : null;
    if (job.state === "succeeded") percent = 100;
    this.bar.dataset.state = job.state;
    let pctText;
    if (percent === null && active) {
      this.bar.setAttribute("data-indeterminate", "");
      this.bar.removeAttribute("aria-valuenow");
      this.fill.style.width = "";
      pctText = job.state === "queued" ? "" : "…";
    } else {
      const value = Math.round(percent || 0);
      if (this.bar.hasAttribute("data-indeterminate")) {
        // Straight to the value: no slide from where the animation happened to be.
        this.fill.style.transition = "none";
        this.bar.removeAttribute("data-indeterminate");
        this.fill.getBoundingClientRect();
        this.fill.style.transition = "";
      }
      this.bar.setAttribute("aria-valuenow", String(value));
      this.fill.style.width = `${percent || 0}%`;
      pctText = `${value}%`;
      if (active && typeof p.eta_s === "number" && p.eta_s > 0) pctText += ` · ${formatDuration(p.eta_s)} left`;
    }
    let message = p.message || "";
    if (job.state === "queued") {
      message = typeof job.position === "number" ? `queued, #${job.position + 1} in line` : "queued";
    } else if (!message && job.state === "running") message = "running";
    if (job.cancel_requested && active) message = "cancel requested";
    this.message.textContent = message;
    this.message.title = message;
    this.percent.textContent = pctText;
    this.bar.setAttribute("aria-valuetext", [pctText, message].filter(Boolean).join(", ") || job.state);
  }
}

/* -- applying a stream's events to a job record ------------------------------------ */

export function applyEvent(job, type, data) {
  if (type === "state") {
    job.state = data.state;
    if (data.state === "running" && !job.started_at) job.started_at = new Date().toISOString();
    if (data.state !== "queued") job.position = null;
    if (data.state !== "queued") job.waiting = null;
    else if (data.retry_at) {
      const why = data.error ? ` (${data.error.type})` : "";
      job.waiting = { reason: "retry-backoff", message: `attempt ${data.attempt} ended${why}; the next is due at ${localTime(data.retry_at)}`, until: data.retry_at };
    }
  } else if (type === "progress") {
    job.progress = data;
  } else if (type === "done") {
    job.state = data.state;
    job.result = data.result;
    job.error = data.error;
    if (!job.finished_at) job.finished_at = new Date().toISOString();
  }
}

/* -- views --------------------------------------------------------------------------- */

export class View {
  constructor() {
    this.root = h("div", {});
    this.timers = [];
    this.readers = new Map();
    this.destroyed = false;
  }

  every(ms, fn) {
    this.timers.push(setInterval(fn, ms));
  }

  destroy() {
    this.destroyed = true;
    for (const t of this.timers) clearInterval(t);
    for (const reader of this.readers.values()) reader.close();
    this.readers.clear();
  }

  fail(err) {
    if (this.destroyed) return;
    if (err instanceof ApiError && err.status === 401) {
      this.destroy();
      showLogin(client.token ? "That token was not accepted. Enter another one." : null);
      return;
    }
    this.root.replaceChildren(
      h("div", { class: "card" }, h("div", { class: "empty" }, h("strong", { text: "Something went wrong" }), h("span", { text: err.message || String(err) }))),
    );
  }
}

/* -- sign-in with a bearer token ------------------------------------------------------ */

export function showLogin(message) {
  document.title = "Sign in · underway";
  const input = h("input", { type: "password", id: "token-input", autocomplete: "off", required: true, "aria-describedby": "token-error" });
  const error = h("div", { class: "form-error", id: "token-error", role: "alert", text: message || "" });
  const form = h(
    "form",
    {},
    h("div", { class: "field" }, h("label", { for: "token-input", text: "API token" }), input),
    error,
    h("button", { type: "submit", class: "button primary", text: "Continue" }),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    client.token = input.value.trim();
    try {
      await client.tasks();
    } catch (err) {
      client.token = null;
      error.textContent = err instanceof ApiError && err.status === 401 ? "That token was not accepted." : err.message || String(err);
      input.focus();
      return;
    }
    storage.set(sessionStorage, TOKEN_KEY, client.token);
    // The entry module routes again: it owns the current view.
    window.dispatchEvent(new Event("underway:signed-in"));
  });
  document.getElementById("main").replaceChildren(
    h(
      "div",
      { class: "card login" },
      h("div", { class: "card-body" }, h("h1", { text: "Sign in" }), h("p", { text: "This server needs a bearer token. It is kept for this browser tab only." }), form),
    ),
  );
  input.focus();
  updateChrome();
}

export function updateChrome() {
  const signOut = document.getElementById("sign-out");
  signOut.hidden = !client.token;
}

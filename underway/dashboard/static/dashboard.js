/*
 * The underway dashboard: jobs table, job page and tasks page, routed by the URL's
 * hash (#/jobs, #/jobs/<id>, #/tasks) so that the server serves a single page at "/".
 *
 * Rules kept throughout: everything that comes from a task (parameters, output,
 * results, messages, errors) reaches the page through textContent or attributes,
 * never as markup; live updates come from the job's event stream, not from polling.
 */
import { THEME_KEY, TOKEN_KEY, client, storage, updateChrome } from "./core.js";
import { JobView } from "./job.js";
import { JobsView } from "./jobs.js";
import { TasksView } from "./tasks.js";

const main = document.getElementById("main");
let view = null;
let firstRoute = true;

/* -- theme --------------------------------------------------------------------------- */

function effectiveTheme() {
  const chosen = document.documentElement.dataset.theme;
  if (chosen) return chosen;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function setupTheme() {
  const button = document.getElementById("theme-toggle");
  const sync = () => {
    const dark = effectiveTheme() === "dark";
    button.setAttribute("aria-pressed", String(dark));
    button.title = dark ? "Switch to the light theme" : "Switch to the dark theme";
  };
  button.addEventListener("click", () => {
    const next = effectiveTheme() === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    storage.set(localStorage, THEME_KEY, next);
    sync();
  });
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", sync);
  sync();
}

/* -- routing ------------------------------------------------------------------------- */

function route() {
  if (view) view.destroy();
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, qs] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  const query = new URLSearchParams(qs || "");
  let section = "jobs";
  if (parts[0] === "tasks") {
    section = "tasks";
    view = new TasksView(parts[1] || query.get("task"));
  } else if (parts[0] === "jobs" && parts[1]) {
    view = new JobView(parts[1]);
  } else {
    view = new JobsView(query);
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren(view.root);
  updateChrome();
  if (!firstRoute) main.focus({ preventScroll: true });
  firstRoute = false;
  window.scrollTo(0, 0);
  view.load();
}

document.getElementById("sign-out").addEventListener("click", () => {
  storage.set(sessionStorage, TOKEN_KEY, null);
  client.token = null;
  route();
});
window.addEventListener("hashchange", route);
window.addEventListener("underway:signed-in", route);
setupTheme();
route();

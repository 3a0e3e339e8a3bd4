/* The jobs table: newest first, filters in the URL, live rows for active jobs. */
import {
  ProgressBar,
  STATES,
  TERMINAL,
  View,
  ago,
  append,
  applyEvent,
  badge,
  client,
  h,
  localTime,
  shortId,
} from "./core.js";

// A browser opens at most six HTTP/1.1 connections to one server and every open
// stream holds one: the table watches a few jobs and leaves room for other calls.
const MAX_TABLE_STREAMS = 4;

export class JobsView extends View {
  constructor(query) {
    super();
    this.state = STATES.includes(query.get("state")) ? query.get("state") : "";
    this.task = query.get("task") || "";
    this.rows = new Map();
    this.jobs = new Map();
    this.cursor = null;
    this.refreshTimer = null;
    document.title = "Jobs · underway";

    const stateSelect = h("select", { id: "filter-state", onchange: (e) => this.setFilter("state", e.target.value) }, h("option", { value: "", text: "All states" }));
    for (const s of STATES) stateSelect.append(h("option", { value: s, text: s, selected: s === this.state }));
    this.taskSelect = h("select", { id: "filter-task", onchange: (e) => this.setFilter("task", e.target.value) }, h("option", { value: "", text: "All tasks" }));
    if (this.task) this.taskSelect.append(h("option", { value: this.task, text: this.task, selected: true }));

    this.summary = h("span", { class: "live-dot", "data-live": "false" });
    this.more = h("button", { type: "button", class: "button", hidden: true, onclick: () => this.loadMore(), text: "Load more" });
    this.tbody = h("tbody", {});
    this.table = h(
      "table",
      { class: "jobs" },
      h("caption", { class: "visually-hidden", text: "Jobs, newest first" }),
      h(
        "thead",
        {},
        h("tr", {}, h("th", { scope: "col", text: "Task" }), h("th", { scope: "col", text: "State" }), h("th", { scope: "col", class: "col-progress", text: "Progress" }), h("th", { scope: "col", class: "col-age", text: "Age" })),
      ),
      this.tbody,
    );
    this.body = h("div", { class: "card table-wrap" }, this.table, h("div", { class: "table-foot" }, this.summary, this.more));
    append(this.root, [
      h(
        "div",
        { class: "page-head" },
        h("div", {}, h("h1", { text: "Jobs" }), h("div", { class: "sub", text: "Newest first. Active jobs update live." })),
        h(
          "div",
          { class: "toolbar" },
          h("div", { class: "field" }, h("label", { for: "filter-state", text: "State" }), stateSelect),
          h("div", { class: "field" }, h("label", { for: "filter-task", text: "Task" }), this.taskSelect),
          h("button", { type: "button", class: "button", onclick: () => this.refresh(), text: "Refresh" }),
          h("a", { class: "button primary", href: "#/tasks", text: "New job" }),
        ),
      ),
      this.body,
    ]);
    this.every(1000, () => this.tick());
    this.onVisible = () => {
      if (document.visibilityState === "visible") this.refresh();
    };
    document.addEventListener("visibilitychange", this.onVisible);
  }

  destroy() {
    super.destroy();
    clearTimeout(this.refreshTimer);
    document.removeEventListener("visibilitychange", this.onVisible);
  }

  setFilter(name, value) {
    this[name] = value;
    const q = new URLSearchParams();
    if (this.state) q.set("state", this.state);
    if (this.task) q.set("task", this.task);
    const s = q.toString();
    location.hash = `#/jobs${s ? `?${s}` : ""}`;
  }

  async load() {
    client
      .tasks()
      .then((data) => {
        for (const t of data.tasks) if (t.name !== this.task) this.taskSelect.append(h("option", { value: t.name, text: t.name }));
      })
      .catch(() => {});
    await this.refresh();
  }

  async refresh() {
    try {
      const page = await client.jobs({ state: this.state, task: this.task, limit: "50" });
      if (this.destroyed) return;
      this.rows.clear();
      this.jobs.clear();
      this.tbody.replaceChildren();
      this.addJobs(page);
    } catch (err) {
      this.fail(err);
    }
  }

  async loadMore() {
    try {
      const page = await client.jobs({ state: this.state, task: this.task, limit: "50", cursor: this.cursor });
      if (!this.destroyed) this.addJobs(page);
    } catch (err) {
      this.fail(err);
    }
  }

  addJobs(page) {
    for (const job of page.jobs) this.addRow(job);
    this.cursor = page.next_cursor;
    this.more.hidden = !this.cursor;
    if (!this.jobs.size) {
      const filtered = this.state || this.task;
      this.tbody.append(
        h(
          "tr",
          {},
          h(
            "td",
            { colspan: "4" },
            h(
              "div",
              { class: "empty" },
              h("strong", { text: filtered ? "No jobs match these filters" : "No jobs yet" }),
              filtered ? h("a", { href: "#/jobs", text: "Show all jobs" }) : h("a", { href: "#/tasks", text: "Start one from the Tasks page" }),
            ),
          ),
        ),
      );
    }
    this.watch();
  }

  addRow(job) {
    const bar = new ProgressBar(`${job.task} ${job.id} progress`, false);
    const link = `#/jobs/${encodeURIComponent(job.id)}`;
    const cells = {
      task: h("td", { class: "col-task" }, h("a", { href: link, text: job.task }), h("span", { class: "mono", title: job.id, text: shortId(job.id) })),
      state: h("td", { class: "col-state" }),
      progress: h("td", { class: "col-progress" }, bar.root),
      age: h("td", { class: "col-age" }),
    };
    const row = h("tr", { "data-job-id": job.id, "data-state": job.state }, cells.task, cells.state, cells.progress, cells.age);
    this.rows.set(job.id, { row, cells, bar });
    this.jobs.set(job.id, job);
    this.tbody.append(row);
    this.renderRow(job);
  }

  renderRow(job) {
    const entry = this.rows.get(job.id);
    if (!entry) return;
    entry.row.dataset.state = job.state;
    entry.cells.state.replaceChildren(badge(job.state, job.cancel_requested && !TERMINAL.has(job.state)));
    entry.bar.update(job);
    entry.cells.age.textContent = ago(job.created_at);
    entry.cells.age.title = localTime(job.created_at);
  }

  tick() {
    for (const job of this.jobs.values()) {
      const entry = this.rows.get(job.id);
      if (entry) entry.cells.age.textContent = ago(job.created_at);
    }
  }

  /* Streams for the newest active jobs in view (running first), up to the cap. */
  watch() {
    const active = [...this.jobs.values()].filter((j) => !TERMINAL.has(j.state));
    active.sort((a, b) => (a.state === "running" ? 0 : 1) - (b.state === "running" ? 0 : 1));
    const wanted = new Set(active.slice(0, MAX_TABLE_STREAMS).map((j) => j.id));
    for (const [id, reader] of this.readers) {
      if (!wanted.has(id)) {
        reader.close();
        this.readers.delete(id);
      }
    }
    for (const id of wanted) {
      if (this.readers.has(id)) continue;
      const reader = client.events(id, {
        event: (type, data) => {
          const job = this.jobs.get(id);
          if (!job) return;
          applyEvent(job, type, data);
          if (type === "state" || type === "progress" || type === "done") this.renderRow(job);
          if (type === "done") {
            this.readers.delete(id);
            this.scheduleRefresh();
          }
        },
        error: () => {
          this.readers.delete(id);
          this.scheduleRefresh();
        },
      });
      this.readers.set(id, reader);
    }
    const shown = this.jobs.size;
    this.summary.dataset.live = String(this.readers.size > 0);
    this.summary.textContent = `${shown} job${shown === 1 ? "" : "s"}${this.readers.size ? ` · watching ${this.readers.size} live` : ""}`;
  }

  /* A finished job may have let a queued one start: look again, once, shortly. */
  scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      if (!this.destroyed) this.refresh();
    }, 400);
  }
}

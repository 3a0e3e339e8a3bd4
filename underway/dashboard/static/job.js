/* One job: live progress, the output as it arrives, result or error, cancel and delete. */
import {
  ApiError,
  ProgressBar,
  TERMINAL,
  View,
  append,
  applyEvent,
  asText,
  badge,
  client,
  formatDuration,
  h,
  localTime,
  looksLikeText,
  outputPiece,
  parseTime,
  toast,
} from "./core.js";

const SAMPLE = 200; // the first items that decide whether output reads as text

export class JobView extends View {
  constructor(id) {
    super();
    this.id = id;
    this.job = null;
    this.items = new Map(); // index -> item, of the current attempt's items after `base`
    this.attempt = 0;
    this.base = 0; // items already in `text` (read at once when the page opened)
    this.text = "";
    this.logSeen = 0;
    this.joinText = null; // null: decided from the output; true/false: the user's choice
    document.title = "Job · underway";
  }

  async load() {
    try {
      this.job = await client.job(this.id);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return this.notFound();
      return this.fail(err);
    }
    if (this.destroyed) return;
    this.build();
    this.render();
    this.every(1000, () => this.renderTimes());
    await this.follow(this.job.output_count > 1);
  }

  /* Stream the job's events. With `asText`, output that reads as text comes first in
   * one read, and the stream resumes after it; otherwise from the first event. */
  async follow(asText) {
    let after = 0;
    if (asText && this.joinText !== false) {
      let view;
      try {
        view = await client.outputText(this.id, this.joinText === true);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) this.gone();
        else this.fail(err);
        return;
      }
      if (this.destroyed) return;
      if (view) {
        this.loadText(view);
        if (view.done) return this.finish(); // nothing left to stream
        after = view.last_event_id;
      }
    }
    this.readers.set(
      "job",
      client.events(this.id, {
        after,
        event: (type, data, seq) => this.onEvent(type, data, seq),
        error: (err) => {
          if (err.status === 404) this.gone();
          else this.fail(err);
        },
      }),
    );
  }

  /* The output so far as one text, with the log lines up to the same event. */
  loadText(view) {
    this.newAttempt(view.attempt);
    this.base = view.next;
    this.text = view.text;
    this.autoJoin = true; // it was read as text because it reads as text
    for (const line of view.log) this.logList.append(h("li", { text: asText(line) }));
    this.logCard.hidden = !this.logList.childElementCount;
    this.logSeen = view.last_event_id;
    this.renderOutput(true);
  }

  /* Lines need every item: read the output again from the first event. */
  replay() {
    const reader = this.readers.get("job");
    if (reader) reader.close();
    this.readers.delete("job");
    this.newAttempt(0);
    this.logList.replaceChildren();
    this.logCard.hidden = true;
    this.logSeen = 0;
    this.render();
    this.follow(false);
  }

  // A retry starts a fresh output segment (its indexes start at 0 again): show it alone.
  newAttempt(attempt) {
    this.attempt = attempt;
    this.items = new Map();
    this.base = 0;
    this.text = "";
    this.autoJoin = undefined;
  }

  notFound() {
    this.root.replaceChildren(
      h(
        "div",
        { class: "card" },
        h("div", { class: "empty" }, h("strong", { text: "Job not found" }), h("span", { text: "It may have expired or been deleted. " }), h("a", { href: "#/jobs", text: "Back to jobs" })),
      ),
    );
  }

  gone() {
    toast("This job no longer exists.");
    this.cancelButton.disabled = true;
    this.deleteButton.disabled = true;
  }

  build() {
    const job = this.job;
    document.title = `${job.task} · underway`;
    this.badgeSlot = h("span", {});
    this.cancelButton = h("button", { type: "button", class: "button danger", id: "cancel-job", onclick: () => this.cancel(), text: "Cancel" });
    this.deleteButton = h("button", { type: "button", class: "button danger", id: "delete-job", onclick: () => this.remove(), text: "Delete" });
    this.againButton = h("button", { type: "button", class: "button", id: "run-again", onclick: () => this.again(), text: "Run again" });
    this.bar = new ProgressBar(`${job.task} progress`, true);
    this.times = h("div", { class: "muted times" });
    this.output = h("pre", { class: "block output", id: "job-output", tabindex: "0", "aria-label": "Output" });
    this.outputCount = h("span", { class: "muted" });
    this.joinBox = h("input", { type: "checkbox", id: "join-text", onchange: (e) => {
      this.joinText = e.target.checked;
      if (!this.joinText && this.base) this.replay();
      else this.renderOutput(true);
    } });
    this.outputCard = h(
      "section",
      { class: "card", "aria-labelledby": "output-title" },
      h(
        "div",
        { class: "card-body" },
        h(
          "div",
          { class: "output-head" },
          h("h2", { id: "output-title", text: "Output" }),
          h("label", { class: "check" }, this.joinBox, "Join as text"),
        ),
        this.output,
        h("div", { class: "muted output-foot" }, this.outputCount),
      ),
    );
    this.resultCard = h("section", { class: "card", hidden: true }, h("div", { class: "card-body" }, h("h2", { text: "Result" }), (this.resultPre = h("pre", { class: "block", id: "job-result", tabindex: "0" }))));
    this.errorCard = h("section", { class: "card", hidden: true }, (this.errorBody = h("div", { class: "card-body" })));
    this.logList = h("ol", { class: "log", id: "job-log" });
    this.logCard = h("section", { class: "card", hidden: true }, h("div", { class: "card-body" }, h("h2", { text: "Log" }), this.logList));
    this.facts = h("dl", { class: "facts" });
    const params = h("pre", { class: "block", id: "job-params", tabindex: "0", text: asText(job.params) });

    append(this.root, [
      h("a", { class: "crumb", href: "#/jobs", text: "← All jobs" }),
      h(
        "div",
        { class: "page-head" },
        h(
          "div",
          {},
          h("h1", {}, h("span", { class: "mono", text: job.task }), " ", this.badgeSlot),
          h("div", { class: "sub mono", text: job.id }),
        ),
        h("div", { class: "actions" }, this.againButton, this.cancelButton, this.deleteButton),
      ),
      h(
        "div",
        { class: "grid" },
        h(
          "div",
          { class: "stack" },
          h("section", { class: "card", "aria-label": "Progress" }, h("div", { class: "card-body" }, h("h2", { text: "Progress" }), this.bar.root, this.times)),
          this.errorCard,
          this.resultCard,
          this.outputCard,
          this.logCard,
        ),
        h(
          "div",
          { class: "stack" },
          h("section", { class: "card" }, h("div", { class: "card-body" }, h("h2", { text: "Details" }), this.facts)),
          h("section", { class: "card" }, h("div", { class: "card-body" }, h("h2", { text: "Parameters" }), params)),
        ),
      ),
    ]);
  }

  onEvent(type, data, seq) {
    const job = this.job;
    const attempt = type === "output" || (type === "state" && data.state === "running") ? data.attempt : 0;
    if (attempt > this.attempt) {
      this.newAttempt(attempt);
      this.renderOutput(true);
    }
    if (type === "output") {
      this.addOutput(data.index, data.item);
      return;
    }
    if (type === "log") {
      if (seq > this.logSeen) {
        this.logSeen = seq;
        this.logCard.hidden = false;
        this.logList.append(h("li", { text: asText(data) }));
      }
      return;
    }
    applyEvent(job, type, data);
    this.render();
    if (type === "done") this.finish();
  }

  async finish() {
    try {
      const record = await client.job(this.id);
      if (!this.destroyed) {
        this.job = record;
        this.render();
      }
    } catch {
      // The streamed outcome is already on the page.
    }
  }

  addOutput(index, item) {
    if (index < this.base || this.items.has(index)) return;
    this.items.set(index, item);
    if (this.joinText === null && !this.base && this.items.size <= SAMPLE) {
      const before = this.autoJoin;
      this.autoJoin = looksLikeText([...this.items.values()]);
      if (before !== undefined && before !== this.autoJoin) return this.renderOutput(true);
    }
    this.renderOutput(false, item);
  }

  renderOutput(full, item) {
    const join = this.joinText === null ? Boolean(this.autoJoin) : this.joinText;
    this.joinBox.checked = join;
    const out = this.output;
    const stick = out.scrollTop + out.clientHeight >= out.scrollHeight - 8;
    if (full) {
      const sorted = [...this.items.entries()].sort((a, b) => a[0] - b[0]).map((e) => outputPiece(e[1], join));
      out.textContent = this.text + sorted.join("");
    } else {
      out.append(document.createTextNode(outputPiece(item, join)));
    }
    if (stick) out.scrollTop = out.scrollHeight;
    const n = this.base + this.items.size;
    this.outputCount.textContent = n ? `${n} item${n === 1 ? "" : "s"}` : "";
  }

  render() {
    const job = this.job;
    const active = !TERMINAL.has(job.state);
    this.badgeSlot.replaceChildren(badge(job.state, job.cancel_requested && active));
    this.bar.update(job);
    this.cancelButton.hidden = !active;
    this.cancelButton.disabled = Boolean(job.cancel_requested);
    this.cancelButton.textContent = job.cancel_requested ? "Cancelling…" : "Cancel";
    this.deleteButton.hidden = active;
    this.againButton.hidden = active;
    if (!this.items.size && !this.base) {
      this.output.textContent = "";
      this.outputCount.textContent = active ? "Waiting for output…" : "No output.";
    }

    const hasResult = job.state === "succeeded" && job.result !== null && job.result !== undefined;
    this.resultCard.hidden = !hasResult;
    if (hasResult) this.resultPre.textContent = asText(job.result);

    this.errorCard.hidden = !(job.error && !active);
    if (job.error && !active) {
      const e = job.error;
      const box = h(
        "div",
        { class: "error-box", role: "alert", id: "job-error" },
        h("div", { class: "error-type", text: e.type }),
        h("div", { class: "error-message", text: e.message }),
      );
      if (e.traceback) {
        box.append(h("details", {}, h("summary", { text: "Traceback" }), h("pre", { class: "block traceback", tabindex: "0", text: e.traceback })));
      }
      this.errorBody.replaceChildren(h("h2", { text: job.state === "cancelled" ? "Cancelled" : "Error" }), box);
    }
    this.renderFacts();
    this.renderTimes();
  }

  renderFacts() {
    const job = this.job;
    const rows = [
      ["State", job.state],
      ["Created", localTime(job.created_at)],
      ["Started", localTime(job.started_at)],
      ["Finished", localTime(job.finished_at)],
      ["Attempt", job.max_attempts > 1 ? `${job.attempt} of ${job.max_attempts}` : String(job.attempt || 0)],
      ["Queue", job.queue || "default"],
      ["Expires", job.expires_at ? localTime(job.expires_at) : "—"],
    ];
    if (job.owner) rows.push(["Owner", job.owner]);
    if (job.state === "queued" && typeof job.position === "number") rows.push(["Position", String(job.position + 1)]);
    if (job.state === "queued" && job.waiting) rows.push(["Waiting", job.waiting.message]);
    this.facts.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]));
  }

  renderTimes() {
    const job = this.job;
    if (!job || !this.times) return;
    const start = parseTime(job.started_at);
    const end = parseTime(job.finished_at);
    let text = "";
    if (job.state === "queued") text = `Waiting for ${formatDuration((Date.now() - parseTime(job.created_at)) / 1000)}`;
    else if (start !== null && end !== null) text = `Ran for ${formatDuration((end - start) / 1000)}`;
    else if (start !== null) text = `Running for ${formatDuration((Date.now() - start) / 1000)}`;
    this.times.textContent = text;
  }

  async cancel() {
    this.cancelButton.disabled = true;
    try {
      this.job = { ...this.job, ...(await client.cancel(this.id)) };
      this.render();
      toast("Cancel requested.");
    } catch (err) {
      this.cancelButton.disabled = false;
      toast(err.message || String(err));
    }
  }

  async remove() {
    // Two presses instead of window.confirm(): no modal dialog, same safety.
    const button = this.deleteButton;
    if (!button.classList.contains("confirm")) {
      button.classList.add("confirm");
      button.textContent = "Press again to delete";
      setTimeout(() => {
        button.classList.remove("confirm");
        button.textContent = "Delete";
      }, 4000);
      return;
    }
    button.disabled = true;
    try {
      await client.remove(this.id);
      toast("Job deleted.");
      location.hash = "#/jobs";
    } catch (err) {
      button.disabled = false;
      toast(err.message || String(err));
    }
  }

  async again() {
    try {
      const job = await client.submit(this.job.task, this.job.params);
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      toast(err.message || String(err));
    }
  }
}

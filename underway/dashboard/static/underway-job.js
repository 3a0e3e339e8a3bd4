/*
 * <underway-job>: start a job of an underway task and watch it live.
 *
 *   <script src="/jobs/static/underway/underway-job.js"></script>
 *   <underway-job task="render" params='{"id": 3}' api="/jobs"></underway-job>
 *
 * Attributes: task, params (JSON object), api (where the underway API is mounted;
 * requests go to `${api}/v1/...`), token (a bearer token, optional), job-id (attach
 * to an existing job instead of starting one), label (the start button's text),
 * heading (shown instead of the task name), autostart (start once on the page),
 * csrf-token and csrf-header (for APIs behind a cookie session, such as Django's;
 * by default read from the page's <meta name="csrf-token"> and
 * <meta name="csrf-header">, header X-CSRFToken; sent to the page's own origin only),
 * join (how output shows: "auto", the default, joins items into one text when they
 * read as text, like a model's tokens, and shows other output one item per line;
 * "text" always joins; "lines" never does).
 *
 * Attached to a job that has output already, the element reads the output so far
 * as one text (GET .../output?as=text) when it reads as text, and streams only what
 * follows; otherwise it replays the job's events from the first.
 *
 * Events (bubbling, composed, detail = the job record): underway:start,
 * underway:progress (detail = {id, progress, job}), underway:output (detail =
 * {id, index, item}, one per output item streamed), underway:text (detail = {id,
 * text, attempt, next}: the items before `next`, read at once on attaching),
 * underway:done (the job succeeded), underway:failed, underway:cancelled.
 *
 * Style it from outside with ::part(start|cancel|bar|fill|status|output|result|error|
 * output-label|result-label)
 * and the custom properties --underway-accent, --underway-radius.
 *
 * The same file exposes the API client the dashboard uses, as
 * customElements.get("underway-job").Client, so there is one SSE reader to keep right.
 */
(() => {
  "use strict";

  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const SAMPLE = 200; // the first items that decide whether output reads as text

  /* Strings that read as one text when joined: token-like pieces, no line breaks,
   * some starting with a space (lines of a command's output do not join). */
  function looksLikeText(items) {
    if (items.length < 2 || !items.every((i) => typeof i === "string")) return false;
    if (items.some((i) => i.includes("\n") || i.length > 40)) return false;
    return items.slice(1).some((i) => /^\s/.test(i));
  }

  /* JSON on one line, spaced for reading (real line breaks cannot occur inside strings). */
  function oneLine(value) {
    return JSON.stringify(value, null, 1).replace(/\n\s*/g, " ");
  }

  /* How one output item shows: as is when joined into text, else on a line of its own. */
  function outputPiece(item, join) {
    return (typeof item === "string" ? item : oneLine(item)) + (join ? "" : "\n");
  }

  class ApiError extends Error {
    constructor(status, problem) {
      const detail = (problem && (problem.detail || problem.title)) || `HTTP ${status}`;
      super(detail);
      this.name = "ApiError";
      this.status = status;
      this.problem = problem || null;
    }
  }

  /*
   * A server-sent events reader on fetch() rather than EventSource: EventSource can
   * send neither an Authorization header nor a chosen Last-Event-ID, and the API
   * needs both (bearer tokens; resuming exactly after the last event seen).
   */
  class EventReader {
    constructor(client, jobId, handlers) {
      this.client = client;
      this.jobId = jobId;
      this.handlers = handlers;
      this.lastId = handlers.after || 0;
      this.retryMs = 2000;
      this.closed = false;
      this.controller = null;
      this.timer = null;
      this._run();
    }

    close() {
      this.closed = true;
      if (this.controller) this.controller.abort();
      if (this.timer) clearTimeout(this.timer);
    }

    async _run() {
      while (!this.closed) {
        let finished = false;
        try {
          finished = await this._readOnce();
        } catch (err) {
          if (this.closed) return;
          if (err instanceof ApiError && err.status !== 503 && err.status < 500) {
            // 401, 404 (deleted or someone else's): reconnecting cannot help.
            this.closed = true;
            if (this.handlers.error) this.handlers.error(err);
            return;
          }
          if (this.handlers.disconnect) this.handlers.disconnect(err);
        }
        if (finished || this.closed) return;
        await new Promise((resolve) => {
          this.timer = setTimeout(resolve, this.retryMs);
        });
      }
    }

    /* One connection; true once the `done` event has arrived. */
    async _readOnce() {
      this.controller = new AbortController();
      const headers = this.client.headers({ Accept: "text/event-stream" });
      if (this.lastId > 0) headers["Last-Event-ID"] = String(this.lastId);
      const response = await fetch(this.client.url(`/v1/jobs/${encodeURIComponent(this.jobId)}/events`), {
        headers,
        signal: this.controller.signal,
        cache: "no-store",
      });
      if (!response.ok) throw await ApiError.from(response);
      if (this.handlers.open) this.handlers.open();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let event = { id: null, type: "message", data: [] };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return false;
        buffer += value;
        // Lines end in CRLF, LF or CR; a CR at the very end may be half of a CRLF.
        const lines = buffer.split(/\r\n|\n|\r(?!$)/);
        buffer = lines.pop();
        for (const line of lines) {
          if (line === "") {
            if (event.data.length) {
              if (event.id !== null) this.lastId = Number(event.id) || this.lastId;
              let data;
              try {
                data = JSON.parse(event.data.join("\n"));
              } catch {
                data = event.data.join("\n");
              }
              if (this.handlers.event) this.handlers.event(event.type, data, this.lastId);
              if (event.type === "done") {
                this.closed = true;
                this.controller.abort();
                return true;
              }
            }
            event = { id: null, type: "message", data: [] };
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "data") event.data.push(val);
          else if (field === "event") event.type = val;
          else if (field === "id") event.id = val;
          else if (field === "retry" && /^\d+$/.test(val)) this.retryMs = Number(val);
        }
      }
    }
  }

  ApiError.from = async (response) => {
    let problem = null;
    try {
      problem = await response.json();
    } catch {
      problem = null;
    }
    return new ApiError(response.status, problem);
  };

  /* The page's CSRF token for a cookie-session API: the element's own attributes
   * first, then <meta name="csrf-token"> (and csrf-header); null when there is none. */
  function pageCsrf(element) {
    const pick = (name) => {
      const own = element ? element.getAttribute(name) : null;
      if (own) return own;
      const meta = document.querySelector(`meta[name="${name}"]`);
      return meta ? meta.content : null;
    };
    const token = pick("csrf-token");
    return token ? { token, header: pick("csrf-header") || "X-CSRFToken" } : null;
  }

  /* Calls to the underway API mounted at `base`, with an optional bearer token and
   * an optional CSRF token ({token, header}). */
  class Client {
    constructor(base, token, csrf) {
      this.base = (base || "").replace(/\/+$/, "");
      this.token = token || null;
      this.csrf = csrf || null;
    }

    url(path) {
      return this.base + path;
    }

    headers(extra) {
      // A custom header makes every call a "non-simple" request: another site cannot
      // send it without a CORS preflight, which the API does not grant.
      const headers = { "X-Underway": "1", ...(extra || {}) };
      if (this.token) headers.Authorization = `Bearer ${this.token}`;
      // The CSRF token goes to this page's own origin only, never to another site's API.
      if (this.csrf && new URL(this.url("/"), location.href).origin === location.origin) {
        headers[this.csrf.header] = this.csrf.token;
      }
      return headers;
    }

    async request(method, path, body) {
      const init = { method, headers: this.headers({ Accept: "application/json" }), cache: "no-store" };
      if (body !== undefined) {
        init.body = JSON.stringify(body);
        init.headers["Content-Type"] = "application/json";
      }
      const response = await fetch(this.url(path), init);
      if (!response.ok) throw await ApiError.from(response);
      if (response.status === 204) return null;
      const type = response.headers.get("Content-Type") || "";
      return type.includes("json") ? response.json() : response.text();
    }

    tasks() {
      return this.request("GET", "/v1/tasks");
    }
    jobs(query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(query || {})) if (v) q.set(k, v);
      const s = q.toString();
      return this.request("GET", `/v1/jobs${s ? `?${s}` : ""}`);
    }
    job(id) {
      return this.request("GET", `/v1/jobs/${encodeURIComponent(id)}`);
    }
    submit(task, params) {
      return this.request("POST", `/v1/tasks/${encodeURIComponent(task)}/jobs`, params || {});
    }
    cancel(id) {
      return this.request("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`);
    }
    remove(id) {
      return this.request("DELETE", `/v1/jobs/${encodeURIComponent(id)}`);
    }
    /* handlers: event(type, data, id), open(), disconnect(err), error(err); after: resume point. */
    events(id, handlers) {
      return new EventReader(this, id, handlers);
    }
    /*
     * The job's output so far as one text, {text, attempt, next, last_event_id, done,
     * log}, when it reads as text (its first items, or every item with `always`); null
     * when it does not, or has an item that is not a string: replay the events then.
     * Stream with {after: last_event_id} for exactly the items that follow.
     */
    async outputText(id, always) {
      const path = `/v1/jobs/${encodeURIComponent(id)}/output`;
      if (!always && !looksLikeText((await this.request("GET", `${path}?limit=${SAMPLE}`)).items)) return null;
      try {
        return await this.request("GET", `${path}?as=text`);
      } catch (err) {
        if (err instanceof ApiError && err.status === 409) return null; // output-not-text
        throw err;
      }
    }
  }

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
    return `${Math.floor(h / 24)}d`;
  }

  function text(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  const STYLE = `
    :host {
      --_accent: var(--underway-accent, #2563eb);
      --_radius: var(--underway-radius, 8px);
      --_fg: var(--underway-fg, #1b1f24);
      --_muted: var(--underway-muted, #5b6470);
      --_bg: var(--underway-bg, #ffffff);
      --_track: var(--underway-track, #e7eaee);
      --_border: var(--underway-border, #d6dbe1);
      --_danger: var(--underway-danger, #c4232d);
      --_ok: var(--underway-ok, #17803d);
      display: block;
      font: inherit;
      color: var(--_fg);
      background: var(--_bg);
      border: 1px solid var(--_border);
      border-radius: var(--_radius);
      padding: 14px 16px;
      max-width: 100%;
      box-sizing: border-box;
    }
    @media (prefers-color-scheme: dark) {
      :host {
        --_accent: var(--underway-accent, #6ea2ff);
        --_fg: var(--underway-fg, #e6e9ee);
        --_muted: var(--underway-muted, #9aa4b0);
        --_bg: var(--underway-bg, #171b21);
        --_track: var(--underway-track, #2a313b);
        --_border: var(--underway-border, #2f3742);
        --_danger: var(--underway-danger, #ff7b7f);
        --_ok: var(--underway-ok, #4fc77a);
      }
    }
    :host([hidden]) { display: none; }
    .row { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
    .title { font-weight: 600; margin-right: auto; overflow-wrap: anywhere; }
    .state {
      font-size: .8em; font-weight: 600; color: var(--_muted); padding: 2px 9px; border-radius: 999px;
      background: color-mix(in srgb, currentColor 12%, transparent);
    }
    .state:empty { display: none; }
    .state[data-state="running"] { color: var(--_accent); }
    .state[data-state="succeeded"] { color: var(--_ok); }
    .state[data-state="failed"] { color: var(--_danger); }
    button {
      font: inherit; font-size: .95em; border-radius: 6px; padding: 6px 14px; cursor: pointer;
      border: 1px solid var(--_accent); background: var(--_accent); color: #fff;
      min-height: 36px;
    }
    button.secondary { background: transparent; color: var(--_fg); border-color: var(--_border); }
    button:hover:not(:disabled) { filter: brightness(1.08); }
    button:focus-visible { outline: 3px solid color-mix(in srgb, var(--_accent) 45%, transparent); outline-offset: 2px; }
    button:disabled { opacity: .5; cursor: default; }
    [hidden] { display: none !important; }
    .bar {
      position: relative; height: 10px; border-radius: 999px; background: var(--_track);
      overflow: hidden; margin: 12px 0 6px;
    }
    .fill {
      position: absolute; inset: 0 auto 0 0; width: 0; border-radius: inherit;
      background: var(--_accent); transition: width .25s ease;
    }
    .bar[data-state="succeeded"] .fill { background: var(--_ok); }
    .bar[data-state="failed"] .fill { background: var(--_danger); }
    .bar[data-state="cancelled"] .fill { background: var(--_muted); }
    .bar[data-indeterminate] .fill { width: 30%; transition: none; animation: slide 1.2s ease-in-out infinite; }
    @keyframes slide { from { left: -30%; } to { left: 100%; } }
    @media (prefers-reduced-motion: reduce) {
      .fill { transition: none; }
      .bar[data-indeterminate] .fill { animation: none; width: 100%; opacity: .35; }
    }
    .status { display: flex; gap: 8px; justify-content: space-between; font-size: .85em; color: var(--_muted); }
    .status .message { overflow-wrap: anywhere; }
    .percent { font-variant-numeric: tabular-nums; white-space: nowrap; }
    pre {
      margin: 10px 0 0; padding: 10px 12px; border-radius: 6px; background: var(--_track);
      white-space: pre-wrap; overflow-wrap: anywhere; max-height: 16em; overflow: auto;
      font: .85em/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
    }
    .error { color: var(--_danger); margin-top: 10px; overflow-wrap: anywhere; }
    .label { font-size: .8em; color: var(--_muted); margin-top: 10px; text-transform: uppercase; letter-spacing: .04em; }
  `;

  class UnderwayJob extends HTMLElement {
    static get observedAttributes() {
      return ["job-id", "label", "task", "heading", "join"];
    }

    constructor() {
      super();
      this.job = null;
      this._reader = null;
      this._items = new Map(); // index -> item, of the current attempt's items after _base
      this._attempt = 0;
      this._base = 0; // items already in _text (read at once when attaching)
      this._text = "";
      this._autoJoin = false;
      const root = this.attachShadow({ mode: "open" });
      // A constructed sheet is exempt from a page's style-src policy; <style> is the fallback.
      let styleTag = "";
      try {
        const sheet = new CSSStyleSheet();
        sheet.replaceSync(STYLE);
        root.adoptedStyleSheets = [sheet];
      } catch {
        styleTag = `<style>${STYLE}</style>`;
      }
      root.innerHTML = `
        ${styleTag}
        <div class="row">
          <span class="title" part="title"></span>
          <span class="state" part="state" aria-live="polite"></span>
          <button type="button" class="start" part="start">Start</button>
          <button type="button" class="cancel secondary" part="cancel" hidden>Cancel</button>
        </div>
        <div class="bar" part="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" hidden>
          <div class="fill" part="fill"></div>
        </div>
        <div class="status" part="status" hidden>
          <span class="message"></span><span class="percent"></span>
        </div>
        <div class="label output-label" part="output-label" hidden>Output</div>
        <pre class="output" part="output" aria-live="off" tabindex="0" hidden></pre>
        <div class="label result-label" part="result-label" hidden>Result</div>
        <pre class="result" part="result" tabindex="0" hidden></pre>
        <div class="error" part="error" role="alert" hidden></div>
      `;
      const $ = (sel) => root.querySelector(sel);
      this._el = {
        title: $(".title"),
        state: $(".state"),
        start: $(".start"),
        cancel: $(".cancel"),
        bar: $(".bar"),
        status: $(".status"),
        fill: $(".fill"),
        message: $(".message"),
        percent: $(".percent"),
        outputLabel: $(".output-label"),
        output: $(".output"),
        resultLabel: $(".result-label"),
        result: $(".result"),
        error: $(".error"),
      };
      this._el.start.addEventListener("click", () => this.start());
      this._el.cancel.addEventListener("click", () => this.cancel());
    }

    get client() {
      return new Client(this.getAttribute("api") || "", this.getAttribute("token"), pageCsrf(this));
    }

    connectedCallback() {
      this._renderTitle();
      const id = this.getAttribute("job-id");
      if (id) this._attach(id);
      else if (this.hasAttribute("autostart")) this.start();
    }

    disconnectedCallback() {
      this._stopReading();
    }

    attributeChangedCallback(name, old, value) {
      if (!this.isConnected || old === value) return;
      if (name === "job-id" && value && (!this.job || this.job.id !== value)) this._attach(value);
      else if (name === "join" && this.job) this._attach(this.job.id); // lines need every item
      else this._renderTitle();
    }

    /* Submit a new job with the element's task and params; resolves to the job. */
    async start() {
      const task = this.getAttribute("task");
      if (!task) return this._showError("no task attribute");
      let params = {};
      try {
        params = JSON.parse(this.getAttribute("params") || "{}");
      } catch {
        return this._showError("the params attribute is not valid JSON");
      }
      this._reset();
      this._el.start.disabled = true;
      try {
        const job = await this.client.submit(task, params);
        this._emit("underway:start", job);
        this.job = job;
        // Reflected so that a reload of a server-rendered page can re-attach.
        this.setAttribute("job-id", job.id);
        this._render(job);
        this._read(job.id);
        return job;
      } catch (err) {
        this._el.start.disabled = false;
        this._showError(err.message || String(err));
        return null;
      }
    }

    async cancel() {
      if (!this.job) return;
      this._el.cancel.disabled = true;
      try {
        this._render(await this.client.cancel(this.job.id));
      } catch (err) {
        this._el.cancel.disabled = false;
        this._showError(err.message || String(err));
      }
    }

    async _attach(id) {
      this._reset();
      try {
        const job = await this.client.job(id);
        this.job = job;
        this._render(job);
        // Output that reads as text comes in one read, and the stream resumes after it;
        // other output is replayed from the first event.
        let after = 0;
        const mode = this._joinMode();
        if (mode !== "lines" && job.output_count > (mode === "text" ? 0 : 1)) {
          const text = await this.client.outputText(id, mode === "text");
          if (this.job !== job) return; // attached to another job meanwhile
          if (text) {
            this._loadText(text);
            if (text.done) return this._finish();
            after = text.last_event_id;
          }
        }
        this._read(id, after);
      } catch (err) {
        this._showError(err.message || String(err));
      }
    }

    _read(id, after) {
      this._stopReading();
      this._reader = this.client.events(id, {
        after: after || 0,
        event: (type, data) => this._onEvent(type, data),
        error: (err) => this._showError(err.message || String(err)),
      });
    }

    _stopReading() {
      if (this._reader) this._reader.close();
      this._reader = null;
    }

    _onEvent(type, data) {
      const job = this.job;
      if (!job) return;
      if (type === "state") {
        job.state = data.state;
        if (data.state === "running") job.started_at = job.started_at || new Date().toISOString();
        if (data.state === "running" && data.attempt > (this._attempt || 0)) this._newAttempt(data.attempt);
        this._render(job);
      } else if (type === "progress") {
        job.progress = data;
        this._render(job);
        this._emit("underway:progress", { id: job.id, progress: data, job });
      } else if (type === "output") {
        if (data.attempt > (this._attempt || 0)) this._newAttempt(data.attempt);
        this._addOutput(data.index, data.item);
        this._emit("underway:output", { id: job.id, index: data.index, item: data.item });
      } else if (type === "done") {
        job.state = data.state;
        job.result = data.result;
        job.error = data.error;
        this._finish();
      }
    }

    async _finish() {
      let job = this.job;
      try {
        // The done event carries the outcome; the record adds the final progress and times.
        job = { ...(await this.client.job(job.id)) };
      } catch {
        // Deleted already, or a network blip: the streamed outcome is enough.
      }
      this.job = job;
      this._render(job);
      const name = { succeeded: "underway:done", failed: "underway:failed", cancelled: "underway:cancelled" }[job.state];
      if (name) this._emit(name, job);
    }

    _emit(name, detail) {
      this.dispatchEvent(new CustomEvent(name, { detail, bubbles: true, composed: true }));
    }

    _reset() {
      this._stopReading();
      this.job = null;
      this._items = new Map();
      this._attempt = 0;
      this._base = 0;
      this._text = "";
      this._autoJoin = false;
      const e = this._el;
      e.output.textContent = "";
      e.result.textContent = "";
      e.error.textContent = "";
      for (const node of [e.output, e.outputLabel, e.result, e.resultLabel, e.error, e.bar, e.status]) node.hidden = true;
      e.state.textContent = "";
    }

    _renderTitle() {
      const task = this.getAttribute("task") || (this.job && this.job.task) || "";
      this._el.title.textContent = this.getAttribute("heading") || task;
      this._el.start.textContent = this.getAttribute("label") || "Start";
      this._el.bar.setAttribute("aria-label", `${task || "job"} progress`);
    }

    _joinMode() {
      const mode = this.getAttribute("join");
      return mode === "text" || mode === "lines" ? mode : "auto";
    }

    _joined() {
      const mode = this._joinMode();
      return mode === "auto" ? this._autoJoin : mode === "text";
    }

    // A retry starts a fresh output segment (its indexes start at 0 again): show it alone.
    _newAttempt(attempt) {
      this._attempt = attempt;
      this._items = new Map();
      this._base = 0;
      this._text = "";
      this._autoJoin = false;
      this._el.output.textContent = "";
    }

    /* The output so far as one text (from Client.outputText). */
    _loadText(view) {
      this._newAttempt(view.attempt);
      this._base = view.next;
      this._text = view.text;
      this._autoJoin = true; // it was read as text because it reads as text
      this._renderOutput(true);
      this._emit("underway:text", { id: this.job.id, text: view.text, attempt: view.attempt, next: view.next });
    }

    _addOutput(index, item) {
      if (index < this._base || this._items.has(index)) return;
      this._items.set(index, item);
      if (!this._base && this._items.size <= SAMPLE) {
        const before = this._autoJoin;
        this._autoJoin = looksLikeText([...this._items.values()]);
        if (before !== this._autoJoin && this._joinMode() === "auto") return this._renderOutput(true);
      }
      this._renderOutput(false, item);
    }

    _renderOutput(full, item) {
      const e = this._el;
      const join = this._joined();
      const shown = this._base > 0 || this._items.size > 0;
      e.output.hidden = !shown;
      e.outputLabel.hidden = !shown;
      const stick = e.output.scrollTop + e.output.clientHeight >= e.output.scrollHeight - 4;
      if (full) {
        const pieces = [...this._items.entries()].sort((a, b) => a[0] - b[0]).map(([, v]) => outputPiece(v, join));
        e.output.textContent = this._text + pieces.join("");
      } else {
        e.output.append(document.createTextNode(outputPiece(item, join)));
      }
      if (stick) e.output.scrollTop = e.output.scrollHeight;
    }

    _render(job) {
      const e = this._el;
      this._renderTitle();
      const active = !TERMINAL.has(job.state);
      e.state.textContent = job.cancel_requested && active ? "cancelling…" : job.state;
      e.state.dataset.state = job.state;
      e.start.hidden = active;
      e.start.disabled = false;
      if (!active) e.start.textContent = this.getAttribute("label") || "Run again";
      e.cancel.hidden = !active;
      e.cancel.disabled = Boolean(job.cancel_requested);
      e.bar.hidden = false;
      e.bar.dataset.state = job.state;
      e.status.hidden = false;
      const p = job.progress || {};
      let percent = typeof p.percent === "number" ? p.percent : null;
      if (job.state === "succeeded") percent = 100;
      if (percent === null && active) {
        e.bar.setAttribute("data-indeterminate", "");
        e.bar.removeAttribute("aria-valuenow");
        e.fill.style.width = "";
        e.percent.textContent = job.state === "queued" ? "queued" : "";
      } else {
        const value = Math.round(percent || 0);
        if (e.bar.hasAttribute("data-indeterminate")) {
          // Straight to the value: no slide from where the animation happened to be.
          e.fill.style.transition = "none";
          e.bar.removeAttribute("data-indeterminate");
          e.fill.getBoundingClientRect();
          e.fill.style.transition = "";
        }
        e.bar.setAttribute("aria-valuenow", String(value));
        e.fill.style.width = `${percent || 0}%`;
        const eta = active && p.eta_s ? ` · ${formatDuration(p.eta_s)} left` : "";
        e.percent.textContent = percent === null ? "" : `${value}%${eta}`;
      }
      e.message.textContent = p.message || "";
      e.bar.setAttribute("aria-valuetext", [e.percent.textContent, p.message].filter(Boolean).join(", ") || job.state);
      if (job.state === "succeeded" && job.result !== null && job.result !== undefined) {
        e.result.textContent = text(job.result);
        e.result.hidden = false;
        e.resultLabel.hidden = false;
      }
      if (job.error && !active) {
        e.error.textContent = `${job.error.type}: ${job.error.message}`;
        e.error.hidden = false;
      }
    }

    _showError(message) {
      this._el.error.textContent = message;
      this._el.error.hidden = false;
    }
  }

  Client.pageCsrf = pageCsrf;
  UnderwayJob.Client = Client;
  UnderwayJob.ApiError = ApiError;
  UnderwayJob.formatDuration = formatDuration;
  UnderwayJob.looksLikeText = looksLikeText;
  UnderwayJob.outputPiece = outputPiece;

  if (!customElements.get("underway-job")) customElements.define("underway-job", UnderwayJob);
})();

// The jobs view: every job `forgather control list --all` shows, live, the ended ones
// behind a toggle.
import { api, SHOW_ENDED } from "./api.js";
import { h, setText, setAttr, clear } from "./dom.js";
import { STATE_TONE, STATE_HELP, int, num, rate, duration, age, basename, progress, stallText } from "./format.js";
import { sparkline, update as updateSpark } from "./spark.js";

const REFRESH_MS = 1000;
const SPARK_MS = 3000;

// A row's place in the table: what may run, what waits to be resumed, what ended.
function section(row) {
  if (row.state === "paused") return "paused";
  return row.liveness === "finished" ? "ended" : "live";
}

const GROUPS = [
  ["paused", (n) => `Paused · ${n} · waiting to be resumed`],
  ["ended", (n) => `Ended · ${n}`],
];

export class JobsView {
  constructor(root, { navigate, live }) {
    this.root = root;
    this.navigate = navigate;
    this.live = live;
    this.rows = new Map();   // job id -> {tr, cells, spark}
    this.order = [];
    this.data = [];
    this.sparks = {};
    this.showEnded = localStorage.getItem(SHOW_ENDED) === "1";
    this.filter = "";
    this.timers = [];
    this.generation = 0;
    this.stopped = false;
  }

  start() {
    document.title = "Jobs · forgather control";
    this.build();
    this.poll();
    this.pollSparks();
  }

  stop() {
    this.stopped = true;
    this.timers.forEach(clearTimeout);
  }

  build() {
    clear(this.root);
    this.counts = h("div", { class: "counts" });
    this.endedToggle = h("input", { type: "checkbox", id: "show-ended", on: { change: () => {
      this.showEnded = this.endedToggle.checked;
      localStorage.setItem(SHOW_ENDED, this.showEnded ? "1" : "0");
      this.render();
      this.pollNow();  // the other listing now (with or without the ended jobs), not at the next round
      if (this.showEnded) this.loadSparks();  // the ended jobs' curves now, not at the next round
    } } });
    this.endedToggle.checked = this.showEnded;
    this.endedCount = h("span", { class: "toggle-count" });
    this.search = h("input", { type: "search", class: "search", placeholder: "Filter by job, host or state", "aria-label": "Filter jobs", on: { input: () => {
      this.filter = this.search.value.trim().toLowerCase();
      this.render();
    } } });
    this.notice = h("div", { class: "notice", hidden: true });
    this.tbody = h("tbody");
    this.empty = h("div", { class: "empty", hidden: true });
    const th = (label, cls, title) => h("th", { class: cls, title }, label);
    this.root.append(h("section", { class: "view jobs-view" },
      h("div", { class: "view-head" },
        h("h1", {}, "Jobs"),
        this.counts,
        h("span", { class: "spacer" }),
        this.search,
        h("label", { class: "toggle", for: "show-ended" }, this.endedToggle, h("span", { class: "toggle-track" }), "Show ended", this.endedCount),
      ),
      this.notice,
      h("div", { class: "panel table-wrap" },
        h("table", { class: "jobs" },
          this.thead = h("thead", {}, h("tr", {},
            th("State"), th("Job"), th("Progress", "col-progress"), th("Steps/s", "num"), th("ETA", "num"),
            th("Loss", "col-loss", "latest loss, and its curve over the whole run"), th("Checkpoint", null, "the last checkpoint"), th("Host"),
            th("Run", "num", "run = restarts + 1"), th("Updated", "num"),
          )),
          this.tbody,
        ),
        this.empty,
      ),
    ));
  }

  pollNow() {
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
    this.generation += 1;  // a poll still in flight ends its round without another
    this.poll();
    this.timers.push(setTimeout(() => this.pollSparks(), SPARK_MS));  // its timer was cleared too
  }

  async poll() {
    if (this.stopped) return;
    const t0 = performance.now();
    const ended = this.showEnded;
    const generation = this.generation;
    try {
      const snap = await api.jobs(ended);
      if (this.stopped || generation !== this.generation) return;  // the toggle moved meanwhile: its own poll runs
      this.snap = snap;
      this.data = snap.rows;
      this.render();
      if (!this.firstPaint) {
        this.firstPaint = performance.now() - t0;
        performance.mark("jobs-rendered");
        document.body.dataset.jobsLoadMs = String(Math.round(performance.now()));
      }
      this.live(!snap.error, snap.error ? `stale: ${snap.error}` : `live · ${snap.rows.length} job${snap.rows.length === 1 ? "" : "s"}`);
    } catch (e) {
      if (generation !== this.generation) return;
      this.live(false, e.message);
    }
    this.timers.push(setTimeout(() => this.poll(), document.hidden ? REFRESH_MS * 5 : REFRESH_MS));
  }

  async pollSparks() {
    if (this.stopped) return;
    const generation = this.generation;
    await this.loadSparks();
    if (generation !== this.generation) return;  // pollNow started another round
    this.timers.push(setTimeout(() => this.pollSparks(), SPARK_MS));
  }

  async loadSparks() {
    try {
      const res = await api.sparklines(this.showEnded);
      this.sparks = { ...this.sparks, ...(res.loss || {}) };
      for (const [id, row] of this.rows) {
        const values = this.sparks[id];
        if (values && row.sparkKey !== values.join(",")) {
          row.sparkKey = values.join(",");
          updateSpark(row.spark, values);
        }
      }
    } catch (e) { /* the table's own poll says what is wrong */ }
  }

  visible(row) {
    if (!this.showEnded && section(row) === "ended") return false;
    if (!this.filter) return true;
    return [row.job_id, row.host, row.state].some((v) => typeof v === "string" && v.toLowerCase().includes(this.filter));
  }

  render() {
    const now = Date.now() / 1000;
    const counts = {};
    let ended = 0;
    for (const r of this.data) {
      counts[r.state] = (counts[r.state] || 0) + 1;
      if (section(r) === "ended") ended += 1;
    }
    this.renderCounts(counts);
    setText(this.endedCount, ended ? String(ended) : "");
    const shown = this.data.filter((r) => this.visible(r));
    const ids = shown.map((r) => r.job_id);
    const keep = new Set(ids);
    for (const [id, row] of this.rows) if (!keep.has(id)) { row.tr.remove(); this.rows.delete(id); }
    for (const r of shown) {
      let row = this.rows.get(r.job_id);
      if (!row) { row = this.makeRow(r.job_id); this.rows.set(r.job_id, row); }
      this.fill(row, r, now);
    }
    // Paused jobs (they wait to be resumed), then ended ones (shown with the toggle),
    // each under a heading of its own (the server's order keeps each section together).
    const sections = shown.map(section);
    const heads = {};
    for (const [name, label] of GROUPS) {
      const first = sections.indexOf(name);
      const n = sections.filter((s) => s === name).length;
      // a heading says where a section starts below another; paused ones always say what they wait for
      if (first >= 0 && (first > 0 || name === "paused")) heads[first] = [name, label(n)];
    }
    const layout = ids.concat(Object.entries(heads).map(([i, [name]]) => `${name}@${i}`));
    if (layout.join("\n") !== this.order.join("\n")) {
      this.groupRows = this.groupRows || {};
      for (const tr of Object.values(this.groupRows)) tr.remove();
      ids.forEach((id, i) => {
        if (heads[i]) {
          const [name] = heads[i];
          const tr = this.groupRows[name] || (this.groupRows[name] = h("tr", { class: "group", dataset: { group: name } }, h("td", { colspan: "10" })));
          this.tbody.append(tr);
        }
        this.tbody.append(this.rows.get(id).tr);
      });
      this.order = layout;
    }
    for (const [name, text] of Object.values(heads)) setText(this.groupRows[name].firstChild, text);
    document.body.dataset.jobsShown = String(ids.length);
    this.renderNotice(shown.length, ended);
  }

  renderCounts(counts) {
    clear(this.counts);
    const order = ["running", "stalled", "starting", "uncontrolled", "stopping", "ending", "requeued", "paused", "stale", "unknown", "dead", "failed", "corrupt", "finished", "stopped", "aborted"];
    for (const s of order) {
      if (!counts[s]) continue;
      this.counts.append(h("span", { class: `count tone-${STATE_TONE[s] || "grey"}` }, h("b", {}, String(counts[s])), ` ${s}`));
    }
  }

  renderNotice(shown, ended) {
    const s = this.snap || {};
    const parts = [];
    if (s.error) parts.push(`The last look failed: ${s.error}`);
    for (const m of s.missing_nodes || []) parts.push(`Ray node ${m.node} did not answer: ${m.reason}`);
    if (s.private) parts.push(`Not shown: ${s.private} job folder${s.private > 1 ? "s" : ""} of other users, private to them.`);
    setText(this.notice, parts.join(" · "));
    this.notice.hidden = parts.length === 0;
    this.empty.hidden = shown > 0;
    this.thead.hidden = shown === 0;
    if (shown === 0) {
      clear(this.empty);
      if (this.filter) this.empty.append(h("p", {}, "No job matches the filter."));
      else if (ended && !this.showEnded) this.empty.append(h("p", {}, "Nothing is running. "), h("p", { class: "muted" }, `${ended} ended job${ended > 1 ? "s" : ""} behind “Show ended”.`));
      else if (!this.showEnded && s.exists !== false) this.empty.append(h("p", {}, "Nothing is running."), h("p", { class: "muted" }, "Jobs that ended are behind “Show ended”; one that died shows here for a day."));
      else {
        this.empty.append(h("p", {}, s.exists === false ? "No job has used this jobs directory yet." : "No jobs here yet."));
        this.empty.append(h("p", { class: "muted" }, "Start one with ", h("code", {}, "forgather launch train.py"), "; it shows up here within a second."));
      }
    }
  }

  makeRow(id) {
    const c = {};
    const td = (cls) => h("td", { class: cls });
    c.state = td("col-state");
    c.pill = h("span", { class: "pill" }, h("span", { class: "dot" }), h("span", { class: "pill-text" }));
    c.state.append(c.pill);
    c.job = td("col-job");
    c.link = h("a", { href: `/jobs/${encodeURIComponent(id)}`, "data-nav": true, class: "job-link" }, id);
    c.sub = h("div", { class: "sub" });
    c.job.append(c.link, c.sub);
    c.progress = td("col-progress");
    c.bar = h("div", { class: "bar" }, h("div", { class: "bar-fill" }));
    c.steps = h("div", { class: "sub steps" });
    c.progress.append(c.bar, c.steps);
    c.rate = td("num");
    c.eta = td("num");
    c.loss = td("col-loss");
    c.lossValue = h("span", { class: "loss-value" });
    const spark = sparkline(this.sparks[id]);
    c.loss.append(c.lossValue, spark);
    c.ckpt = td("col-ckpt mono");
    c.host = td("col-host");
    c.run = td("num");
    c.updated = td("num muted");
    const tr = h("tr", { dataset: { job: id }, on: { click: (ev) => {
      if (ev.target.closest("a") || window.getSelection().toString()) return;
      this.navigate(`/jobs/${encodeURIComponent(id)}`);
    } } }, c.state, c.job, c.progress, c.rate, c.eta, c.loss, c.ckpt, c.host, c.run, c.updated);
    const values = this.sparks[id];
    return { tr, c, spark, sparkKey: values ? values.join(",") : "" };
  }

  fill(row, r, now) {
    const c = row.c;
    const tone = STATE_TONE[r.state] || "grey";
    setAttr(row.tr, "data-state", r.state);
    setAttr(c.pill, "class", `pill tone-${tone}`);
    setText(c.pill.lastChild, r.state);
    setAttr(c.pill, "title", [STATE_HELP[r.state], r.evidence].filter(Boolean).join(" — "));
    const sub = [
      r.state === "stalled" ? stallText(r.stall) : null,
      r.state === "uncontrolled" && r.no_control ? r.no_control.why : null,
      r.world_size > 1 ? `${r.world_size} ranks` : null,
      r.scheduler && r.scheduler !== "local" ? r.scheduler : null,
      r.why || null,
    ].filter(Boolean).join(" · ");
    setText(c.sub, sub);
    setAttr(c.sub, "title", sub || null);
    const p = progress(r.step, r.max_steps);
    const fill = c.bar.firstChild;
    const width = p === null ? "0%" : `${(p * 100).toFixed(1)}%`;
    if (fill.style.width !== width) fill.style.width = width;
    setAttr(c.bar, "class", `bar tone-${tone}` + (p === null ? " bar-none" : ""));
    setText(c.steps, r.max_steps ? `${int(r.step)} / ${int(r.max_steps)}` : (r.step !== null && r.step !== undefined ? `step ${int(r.step)}` : "–"));
    setText(c.rate, rate(r.steps_per_second));
    setText(c.eta, r.live ? duration(r.eta_seconds) : "–");
    setText(c.lossValue, num(r.loss));
    setText(c.ckpt, basename(r.last_checkpoint));
    setAttr(c.ckpt, "title", r.last_checkpoint || null);
    setText(c.host, r.host || "–");
    setAttr(c.host, "title", r.host || null);
    setText(c.run, typeof r.restarts === "number" ? String(r.restarts + 1) : "1");
    setAttr(c.run, "title", typeof r.restarts === "number" ? `${r.restarts} restart${r.restarts === 1 ? "" : "s"}` : null);
    setText(c.updated, age(r.updated_at, now));
  }
}

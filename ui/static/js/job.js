// The job view: where one job is, its curves, its command ledger, its buttons, and its
// knobs (a change is checked by the page server, confirmed, then sent as a `set`); its
// checkpoints, each one a place to resume from (asked first, like Resume); and a Logs tab
// that follows each rank's log.
import { api, ApiError } from "./api.js";
import { h, setText, setAttr, clear, append } from "./dom.js";
import { STATE_TONE, STATE_HELP, RECEIPT_TONE, COMMAND_LABEL, int, num, rate, duration, age, clock, basename, progress, isNum, stallText, knobValue, describeChanges, visible } from "./format.js";
import { Charts } from "./charts.js";

const REFRESH_MS = 1000;
const METRICS_MS = 2000;
const RECEIPT_MS = 400;
const FINAL = new Set(["completed", "failed", "dropped", "rejected"]);
// The Logs tab: a rank's tail when it opens, then what came after, every LOGS_MS while the
// job runs (LOGS_ENDED_MS once it has ended: a resume writes on); at most LOG_KEEP lines
// kept on the page (`forgather control logs` reads the rest).
const LOGS_MS = 1000;
const LOGS_ENDED_MS = 5000;
const LOG_TAIL = 200;
const LOG_KEEP = 5000;
// A poll that read this many bytes may have left more behind: the next one comes at once.
const LOG_BURST = 192 * 1024;
// The rank selector is a row of buttons up to this many ranks, a list beyond.
const RANK_BUTTONS = 16;

const BUTTONS = [
  { verb: "save", label: "Save", command: "save_checkpoint", hint: "Save a checkpoint at the next agreed step." },
  { verb: "eval", label: "Eval", command: "evaluate", hint: "Evaluate at the next agreed step." },
  { verb: "stop", label: "Stop", command: "graceful_stop", confirm: "Stop", gap: true, hint: "Stop gracefully; the trainer's own end-of-training logic still runs.",
    question: (id) => [`Stop job ${id}?`, "It stops at the next agreed step; the trainer's own end-of-training logic still runs. Nothing is saved unless that logic saves."] },
  { verb: "save-stop", label: "Save & stop", command: "save_and_stop", confirm: "Save & stop", hint: "Save a checkpoint, then stop.",
    question: (id) => [`Save and stop job ${id}?`, "It saves a checkpoint at the next agreed step, then stops. Relaunching it resumes from that checkpoint."] },
  { verb: "pause", label: "Pause", command: "pause", confirm: "Pause", hint: "Save a checkpoint, stop, and wait to be resumed.",
    question: (id) => [`Pause job ${id}?`, "It saves a checkpoint at the next agreed step, then stops: its processes end (under SLURM, its allocation too). It is listed as paused until you resume it from that checkpoint (the Resume button here, or forgather control resume)."] },
  { verb: "abort", label: "Abort", command: "abort", confirm: "Abort", danger: true, gap: true, hint: "Stop now and save nothing.",
    question: (id) => [`Abort job ${id}?`, "It stops now and saves nothing, here or at the end; the job ends “aborted”. Work since the last checkpoint is lost."] },
];

// The ranks the Ranks panel draws; a bigger job shows its slowest (all of them in --json).
const RANKS_DRAWN = 64;
// A guard's action is the verb a person types; its command's label on the buttons.
const GUARD_ACTION = { save: "Save", stop: "Stop", "save-stop": "Save & stop", pause: "Pause", abort: "Abort" };
// The framework's own control callback has neither (README: its commands).
const NOT_FRAMEWORK = { eval: "The framework's own control callback has no evaluate command.", pause: "The framework's own control callback has no pause command." };

function newKey() {
  const a = new Uint8Array(8);
  crypto.getRandomValues(a);
  return "k-ui-" + Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class JobView {
  constructor(root, id, { navigate, live }) {
    this.root = root;
    this.id = id;
    this.navigate = navigate;
    this.live = live;
    this.timers = [];
    this.stopped = false;
    this.series = {};
    this.lastStep = null;
    this.sent = new Map();  // key -> the receipt the page follows
    this.told = new Map();  // key -> the receipt's state the page last said
    this.details = null;
    this.marks = new Map();  // "step|kind|label" -> a mark drawn on the charts
    this.knobRows = new Map();  // knob name -> {row, cells, input}
    this.knobBusy = false;
    this.tab = location.hash === "#logs" ? "logs" : "overview";
    this.log = { rank: null, offset: null, lines: 0, generation: 0, timer: null, polling: false, ended: false };
    this.resuming = false;
  }

  start() {
    document.title = `${this.id} · forgather control`;
    this.build();
    this.poll();
    this.pollMetrics();
  }

  stop() {
    this.stopped = true;
    this.timers.forEach(clearTimeout);
    clearTimeout(this.log.timer);
    if (this.charts) this.charts.destroy();
  }

  later(fn, ms) {
    if (!this.stopped) this.timers.push(setTimeout(fn, ms));
  }

  build() {
    clear(this.root);
    this.pill = h("span", { class: "pill pill-lg" }, h("span", { class: "dot" }), h("span", { class: "pill-text" }, "…"));
    this.meta = h("div", { class: "job-meta" });
    this.buttons = {};
    const actions = this.actions = h("div", { class: "actions" });
    BUTTONS.forEach((b) => {
      if (b.gap) actions.append(h("span", { class: "actions-gap" }));
      const btn = h("button", { class: "btn" + (b.danger ? " danger" : ""), type: "button", title: b.hint, dataset: { command: b.verb }, disabled: true, on: { click: () => this.press(b) } }, b.label);
      this.buttons[b.verb] = btn;
      actions.append(btn);
    });
    this.resumeBtn = h("button", { class: "btn primary", type: "button", hidden: true, dataset: { command: "resume" },
      title: "Start the job again as it was launched, from its newest checkpoint still on disk (forgather control resume)",
      on: { click: () => this.askResume(null) } }, "Resume…");
    this.whyNot = h("div", { class: "why-not", hidden: true });
    this.flash = h("div", { class: "flash", hidden: true, role: "status" });
    this.failure = h("section", { class: "panel failure", hidden: true });
    this.stall = h("div", { class: "notice stall", hidden: true });
    this.kpis = h("div", { class: "kpis" });
    this.kpi = {};
    const kpi = (key, label, extra) => {
      const value = h("div", { class: "kpi-value" });
      const sub = h("div", { class: "kpi-sub" });
      this.kpi[key] = { value, sub };
      this.kpis.append(h("div", { class: "panel kpi", dataset: { kpi: key } }, h("div", { class: "kpi-label" }, label), value, extra || null, sub));
    };
    this.bar = h("div", { class: "bar bar-lg" }, h("div", { class: "bar-fill" }));
    kpi("step", "Step", this.bar);
    kpi("speed", "Speed");
    kpi("eta", "ETA");
    kpi("loss", "Loss");
    kpi("eval", "Eval loss");
    kpi("ckpt", "Last checkpoint");
    this.chartsBox = h("div", { class: "charts" });
    this.chartsEmpty = h("div", { class: "panel empty-charts" }, "No metric history yet: curves appear once the job has logged a few steps.");
    this.ledger = h("tbody");
    this.ledgerHead = h("thead", {}, h("tr", {}, h("th", {}, "Command"), h("th", {}, "State"), h("th", { class: "num" }, "Step"), h("th", {}, "Result"), h("th", {}, "Reason"), h("th", { class: "num" }, "Sent")));
    this.ledgerEmpty = h("p", { class: "muted ledger-empty" });
    this.error = h("div", { class: "notice", hidden: true });
    this.guards = h("section", { class: "panel guards-panel", hidden: true });
    this.ranks = h("section", { class: "panel ranks-panel", hidden: true });
    this.knobsBody = h("tbody");
    this.knobsReview = h("button", { class: "btn primary", type: "button", disabled: true, title: "Check the new values, see what changes, then confirm", on: { click: () => this.reviewKnobs() } }, "Review change…");
    this.knobsNote = h("div", { class: "knobs-note", hidden: true, role: "status" });
    this.knobs = h("section", { class: "panel knobs-panel", hidden: true },
      h("div", { class: "panel-head" }, h("h2", {}, "Knobs"),
        h("span", { class: "muted hint" }, "a change applies on every rank at one agreed step"), h("span", { class: "spacer" }), this.knobsReview),
      h("div", { class: "table-wrap" }, h("table", { class: "knobs" },
        h("thead", {}, h("tr", {}, h("th", {}, "Knob"), h("th", { class: "num" }, "Now"), h("th", { class: "num" }, "Script"), h("th", {}, "From"), h("th", {}, "Range"), h("th", { class: "knob-edit" }, "New value"))),
        this.knobsBody)),
      this.knobsNote,
    );
    this.ckptBody = h("tbody");
    this.ckptHint = h("span", { class: "muted hint" });
    this.checkpoints = h("section", { class: "panel checkpoints-panel", hidden: true },
      h("div", { class: "panel-head" }, h("h2", {}, "Checkpoints"), this.ckptHint),
      h("div", { class: "table-wrap" }, h("table", { class: "checkpoints" },
        h("thead", {}, h("tr", {}, h("th", { class: "num" }, "Step"), h("th", {}, "Checkpoint"), h("th", { class: "num" }, "Run"), h("th", { class: "num" }, "Saved"), h("th", {}, ""), h("th", { class: "ckpt-action" }, ""))),
        this.ckptBody)),
    );
    this.tabButtons = {};
    const tab = (name, label) => (this.tabButtons[name] = h("button", { class: "tab", type: "button", role: "tab", dataset: { tab: name }, on: { click: () => this.showTab(name) } }, label));
    this.tabBar = h("div", { class: "tabs", role: "tablist" }, tab("overview", "Overview"), tab("logs", "Logs"));
    this.overview = h("div", { class: "tab-body", role: "tabpanel", dataset: { tab: "overview" } },
      h("div", { class: "section-head" }, h("h2", {}, "Metrics"), h("span", { class: "muted hint" }, "drag to zoom · double-click to reset")),
      this.chartsEmpty, this.chartsBox,
      this.checkpoints,
      this.knobs,
      this.ranks,
      this.guards,
      h("section", { class: "panel ledger-panel" },
        h("div", { class: "panel-head" }, h("h2", {}, "Commands")),
        h("table", { class: "ledger" }, this.ledgerHead, this.ledger),
        this.ledgerEmpty,
      ),
    );
    this.logRanks = h("div", { class: "log-ranks", role: "group", "aria-label": "Rank" });
    this.logHost = h("span", { class: "muted hint log-host" });
    this.logStateText = h("span");
    this.logState = h("span", { class: "log-state pill", hidden: true }, h("span", { class: "dot" }), this.logStateText);
    this.logNote = h("div", { class: "log-note", hidden: true, role: "status" });
    this.logDropped = h("div", { class: "log-dropped", hidden: true });
    this.logBox = h("div", { class: "log", role: "log", tabindex: "0", "aria-label": "The rank's log" });
    this.logsPanel = h("section", { class: "panel logs-panel tab-body", role: "tabpanel", hidden: true, dataset: { tab: "logs" } },
      h("div", { class: "panel-head" }, h("h2", {}, "Logs"), this.logRanks, this.logHost, h("span", { class: "spacer" }), this.logState),
      this.logNote, this.logDropped, this.logBox,
      h("div", { class: "log-foot muted hint" }, "Each rank's stdout and stderr as its launcher keeps them in the job folder. All of it: ",
        this.logCommand = h("code", {}, `forgather control logs ${this.id} --rank 0 --tail 5000`)),
    );
    this.root.append(h("section", { class: "view job-view" },
      h("nav", { class: "crumbs" }, h("a", { href: "/", "data-nav": true }, "← All jobs")),
      h("div", { class: "job-head" },
        h("div", { class: "job-title" }, h("div", { class: "title-row" }, h("h1", { class: "mono" }, this.id), this.pill), this.meta),
        actions,
        h("div", { class: "resume-actions" }, this.resumeBtn),
      ),
      this.whyNot, this.flash, this.error, this.stall, this.failure, this.kpis,
      this.tabBar,
      this.overview,
      this.logsPanel,
    ));
    this.showTab(this.tab, { initial: true });
    this.charts = new Charts(this.chartsBox);
  }

  async poll() {
    if (this.stopped) return;
    try {
      const d = await api.job(this.id);
      if (this.stopped) return;
      this.details = d;
      this.error.hidden = true;
      this.render(d);
      this.live(true, d.live ? "live · from the job's server" : "live · from the job's records");
    } catch (e) {
      if (this.stopped) return;
      setText(this.error, e.status === 404 ? `No job ${this.id} here (it was cleaned up, or lives in another jobs directory).` : e.message);
      this.error.hidden = false;
      this.live(false, e.message);
    }
    this.later(() => this.poll(), document.hidden ? REFRESH_MS * 5 : REFRESH_MS);
  }

  async pollMetrics() {
    if (this.stopped) return;
    let ended = false;
    try {
      const m = await api.metrics(this.id, this.lastStep);
      if (this.stopped) return;
      this.merge(m.series || {}, m.max_points, m.marks);
      ended = this.details && !this.details.active && this.lastStep !== null;
    } catch (e) { /* the details poll says what is wrong */ }
    this.later(() => this.pollMetrics(), ended ? METRICS_MS * 5 : METRICS_MS);
  }

  // The server sends its view of the history: at most maxPoints a series (its bound;
  // the page has none of its own).
  merge(incoming, maxPoints, marks) {
    let changed = false;
    for (const m of Array.isArray(marks) ? marks : []) {
      if (!m || typeof m !== "object" || !isNum(m.step)) continue;
      const key = `${m.step}|${m.kind}|${m.label}`;
      if (!this.marks.has(key)) { this.marks.set(key, m); changed = true; }
    }
    for (const [name, s] of Object.entries(incoming)) {
      if (!s || !Array.isArray(s.step) || s.step.length === 0) continue;
      const cur = this.series[name] || (this.series[name] = { step: [], time: [], value: [] });
      const lastKnown = cur.step.length ? cur.step[cur.step.length - 1] : -Infinity;
      for (let i = 0; i < s.step.length; i++) {
        if (s.step[i] <= lastKnown) continue;
        cur.step.push(s.step[i]); cur.time.push(s.time[i]); cur.value.push(s.value[i]);
        changed = true;
      }
    }
    // Ask next for what is new, from one step back: an evaluation reported at the step
    // the loss was last seen at arrives after it.
    const last = Math.max(-Infinity, ...Object.values(this.series).map((s) => (s.step.length ? s.step[s.step.length - 1] : -Infinity)));
    this.lastStep = Number.isFinite(last) ? last - 1 : null;
    // What came after, one poll at a time, is kept to as many again; then the page starts
    // over from the server's view (a long run's older points, thinned).
    if (Object.values(this.series).some((s) => s.step.length > 2 * maxPoints)) { this.series = {}; this.marks.clear(); this.lastStep = null; changed = false; }
    if (changed || !this.drawn) {
      this.drawn = true;
      const any = Object.keys(this.series).length > 0;
      this.chartsEmpty.hidden = any;
      this.charts.update(this.series, [...this.marks.values()].sort((a, b) => a.step - b.step));
    }
  }

  render(d) {
    const tone = STATE_TONE[d.state] || "grey";
    setAttr(this.pill, "class", `pill pill-lg tone-${tone}`);
    setText(this.pill.lastChild, d.state);
    setAttr(this.pill, "title", STATE_HELP[d.state] || null);
    document.body.dataset.jobState = d.state;
    clear(this.meta);
    const metaBits = [
      d.host ? ["host", d.host] : null,
      ["run", typeof d.restarts === "number" ? `run ${d.restarts + 1}` : "run 1"],
      d.world_size ? ["ranks", `${d.world_size} rank${d.world_size > 1 ? "s" : ""}`] : null,
      d.scheduler ? ["scheduler", d.scheduler] : null,
      d.started_at ? ["started", `started ${age(d.started_at)}`] : null,
      d.ended_at ? ["ended", `ended ${age(d.ended_at)}`] : null,
      d.resumed_from ? ["resumed", `resumed from ${basename(d.resumed_from)}`] : null,
      ["channel", d.channel === "http" ? "HTTP" : "file channel"],
    ].filter(Boolean);
    for (const [k, v] of metaBits) this.meta.append(h("span", { class: `meta meta-${k}` }, v));

    // buttons
    for (const b of BUTTONS) {
      this.buttons[b.verb].disabled = !this.takes(d, b.verb);
      setAttr(this.buttons[b.verb], "title", (d.framework_callback && NOT_FRAMEWORK[b.verb]) || b.hint);
    }
    this.actions.hidden = !!d.final;
    setText(this.whyNot, d.controllable ? "" : (d.why_not || "This job takes no commands."));
    this.whyNot.hidden = !!d.controllable || !!d.final;

    // a stalled job: why, and where to look
    this.stall.hidden = d.state !== "stalled";
    if (d.state === "stalled") {
      clear(this.stall);
      this.stall.append(h("b", {}, "Stalled: "), stallText(d.stall) || "its step does not move", ". Where every rank is: ", h("code", {}, `forgather control stacks ${this.id}`));
    }

    // no control attached: why, and what to add
    if (d.state === "uncontrolled") {
      const nc = d.no_control && typeof d.no_control === "object" ? d.no_control : {};
      this.stall.hidden = false;
      clear(this.stall);
      this.stall.append(h("b", {}, "No control: "), nc.why || "no control attached yet", ". To attach control: ", nc.add || "start a Controller");
    }

    // failure
    this.renderFailure(d);

    // KPIs
    const p = progress(d.step, d.max_steps);
    setText(this.kpi.step.value, d.max_steps ? `${int(d.step)} / ${int(d.max_steps)}` : int(d.step));
    setAttr(this.kpi.step.value, "title", this.kpi.step.value.textContent);
    this.bar.firstChild.style.width = p === null ? "0%" : `${(p * 100).toFixed(1)}%`;
    setAttr(this.bar, "class", `bar bar-lg tone-${tone}` + (p === null ? " bar-none" : ""));
    setText(this.kpi.step.sub, p === null ? (isNum(d.epoch) ? `epoch ${num(d.epoch, 3)}` : "") : `${(p * 100).toFixed(1)}%` + (isNum(d.epoch) ? ` · epoch ${num(d.epoch, 3)}` : ""));
    setText(this.kpi.speed.value, isNum(d.steps_per_second) ? `${rate(d.steps_per_second)}` : "–");
    setText(this.kpi.speed.sub, isNum(d.steps_per_second) ? "steps per second" : (d.active ? "" : "not running"));
    setText(this.kpi.eta.value, d.active ? duration(d.eta_seconds) : "–");
    setText(this.kpi.eta.sub, d.active && isNum(d.eta_seconds) ? `at ${clock(Date.now() / 1000 + d.eta_seconds)}` : "");
    const metrics = d.metrics && typeof d.metrics === "object" ? d.metrics : {};
    setText(this.kpi.loss.value, num(metrics.loss));
    setText(this.kpi.loss.sub, "");
    const evalKey = Object.keys(metrics).find((k) => /^(eval|val)_loss$/.test(k));
    setText(this.kpi.eval.value, evalKey ? num(metrics[evalKey]) : "–");
    setText(this.kpi.eval.sub, Object.keys(metrics).filter((k) => /^(eval|val)_/.test(k) && k !== evalKey).slice(0, 2).map((k) => `${k} ${num(metrics[k])}`).join(" · "));
    setText(this.kpi.ckpt.value, basename(d.last_checkpoint));
    setAttr(this.kpi.ckpt.value, "title", d.last_checkpoint || null);
    const rp = d.resume_point && typeof d.resume_point === "object" ? d.resume_point : null;
    setText(this.kpi.ckpt.sub, rp && isNum(rp.step) ? `resume point: step ${int(rp.step)}` : (d.last_checkpoint ? "" : "none yet"));

    this.renderLedger(d);
    this.renderResumable(d);
    this.renderCheckpoints(d);
    this.renderKnobs(d);
    this.renderGuards(d);
    this.renderRanks(d);
  }

  // Each rank's own time per step (outside collectives) as a bar, the stragglers marked:
  // a running job of two ranks or more; the slowest 64 of a bigger one.
  renderRanks(d) {
    const ranks = (Array.isArray(d.ranks) ? d.ranks : []).filter((r) => r && typeof r === "object" && isNum(r.rank));
    const named = new Set((Array.isArray(d.stragglers) ? d.stragglers : []).filter((s) => s && isNum(s.rank)).map((s) => Math.round(s.rank)));
    this.ranks.hidden = !d.active || ranks.length < 2;
    if (this.ranks.hidden) return;
    const val = (v) => (isNum(v) ? v : null);
    const shown = ranks.length <= RANKS_DRAWN ? ranks : [...ranks].sort((a, b) => (val(b.ratio) || 0) - (val(a.ratio) || 0)).slice(0, RANKS_DRAWN);
    const key = JSON.stringify([shown, [...named]]);
    if (key === this.ranksKey) return;
    this.ranksKey = key;
    clear(this.ranks);
    const most = Math.max(...shown.map((r) => val(r.seconds) || 0), 1e-9);
    this.ranks.append(h("div", { class: "panel-head" }, h("h2", {}, "Ranks"),
      h("span", { class: "muted hint" }, `own time per step, outside collectives${shown.length < ranks.length ? ` · the ${shown.length} slowest of ${ranks.length}` : ""}`)));
    const list = h("div", { class: "rank-bars" });
    for (const r of shown) {
      const secs = val(r.seconds);
      const rank = Math.round(r.rank);
      const slow = named.has(rank);
      const fill = h("span", { class: "rank-fill" });
      fill.style.width = `${secs === null ? 0 : Math.max(1, Math.round((100 * secs) / most))}%`;  // the CSP allows no style attribute
      list.append(h("div", { class: "rank-bar" + (slow ? " straggler" : ""), dataset: { rank: String(rank), straggler: slow ? "1" : "0" } },
        h("span", { class: "rank-name mono" }, `rank ${rank}`),
        h("span", { class: "rank-host muted", title: typeof r.host === "string" ? r.host : "" }, typeof r.host === "string" ? r.host : (isNum(r.node) ? `node ${Math.round(r.node)}` : "")),
        h("span", { class: "rank-track" }, fill),
        h("span", { class: "rank-time num" }, secs === null ? "–" : `${(secs * 1000).toFixed(1)} ms`),
        h("span", { class: "rank-ratio num" }, isNum(r.ratio) ? `${r.ratio.toFixed(2)}×` : "–"),
        h("span", { class: "rank-flag" }, slow ? "straggler" : ""),
      ));
    }
    this.ranks.append(list);
  }

  // The rules the job watches itself with, and what fired (newest first): every string
  // is the job's, and goes in as text.
  renderGuards(d) {
    const rules = (Array.isArray(d.guards) ? d.guards : []).filter((g) => g && typeof g === "object");
    const events = (Array.isArray(d.guard_events) ? d.guard_events : []).filter((e) => e && typeof e === "object");
    this.guards.hidden = rules.length === 0 && events.length === 0;
    const key = JSON.stringify([rules, events]);
    if (this.guards.hidden || key === this.guardsKey) return;
    this.guardsKey = key;
    clear(this.guards);
    this.guards.append(h("div", { class: "panel-head" }, h("h2", {}, "Guards"),
      h("span", { class: "muted hint" }, events.length ? `${events.length} fired` : "none fired")));
    this.guards.append(h("div", { class: "guard-rules" }, rules.map((g) => h("code", { class: "guard-rule", title: `${g.kind}: ${g.action}` }, String(g.text)))));
    if (!events.length) return;
    const body = h("tbody");
    for (const e of [...events].reverse()) {
      const queued = e.command_id ? `${GUARD_ACTION[e.action] || String(e.action)} ${e.command_id}` : (e.action === "alert" ? "alert only" : `${e.action} not queued`);
      body.append(h("tr", { dataset: { kind: String(e.kind), action: String(e.action) } },
        h("td", {}, h("span", { class: "mono" }, String(e.guard))),
        h("td", { class: "num" }, isNum(e.step) ? int(e.step) : "–"),
        h("td", { class: "num" }, isNum(e.rank) ? String(e.rank) : "–"),
        h("td", { class: "reason" }, e.evidence ? String(e.evidence) : ""),
        h("td", { class: "mono" }, queued),
        h("td", { class: "num muted" }, age(e.at)),
      ));
    }
    this.guards.append(h("table", { class: "ledger guard-events" },
      h("thead", {}, h("tr", {}, h("th", {}, "Guard"), h("th", { class: "num" }, "Step"), h("th", { class: "num" }, "Rank"), h("th", {}, "Evidence"), h("th", {}, "Queued"), h("th", { class: "num" }, "When"))),
      body));
  }

  renderFailure(d) {
    const f = d.failure && typeof d.failure === "object" ? d.failure : null;
    const err = typeof d.error === "string" ? d.error : null;
    const failed = ["failed", "dead"].includes(d.state);
    if (!f && !(failed && (err || d.exit_code))) { this.failure.hidden = true; return; }
    const key = JSON.stringify([f, err, d.exit_code]);
    this.failure.hidden = false;
    if (this.failureKey === key) return;
    this.failureKey = key;
    clear(this.failure);
    this.failure.append(h("h2", {}, d.state === "dead" ? "Why it died" : "Why it failed"));
    if (f) {
      this.failure.append(h("p", { class: "failure-what" }, h("b", {}, String(f.type || "Error")), ": ", String(f.message || "")));
      this.failure.append(h("p", { class: "muted" }, `rank ${f.rank} on ${f.host || "?"} (pid ${f.pid}), run ${typeof f.run === "number" ? f.run + 1 : "?"}` + (isNum(f.at) ? `, ${clock(f.at)}` : "") + " — the first rank that raised"));
      if (Array.isArray(f.traceback) && f.traceback.length) this.failure.append(h("pre", { class: "traceback" }, f.traceback.map(String).join("\n")));
    }
    if (err && (!f || !String(err).includes(String(f.message || "")))) this.failure.append(h("p", {}, h("b", {}, "Rank 0: "), err));
    if (isNum(d.exit_code) && d.exit_code !== 0) this.failure.append(h("p", { class: "muted" }, `exit code ${d.exit_code}`));
  }

  // The ledger: the job's receipts (newest first), with the ones this page is following.
  renderLedger(d) {
    const rows = new Map();
    for (const e of Array.isArray(d.commands) ? d.commands : []) if (e && typeof e === "object") rows.set(e.key || e.id, e);
    for (const [key, e] of this.sent) {
      const known = rows.get(key);
      if (!known) rows.set(key, e);
      else if (FINAL.has(known.state)) this.sent.set(key, { ...e, ...known });
    }
    const list = [...rows.values()].sort((a, b) => (b.created_at || b.sent_at || 0) - (a.created_at || a.sent_at || 0) || String(b.id).localeCompare(String(a.id)));
    const key = JSON.stringify(list);
    if (key === this.ledgerKey) return;
    this.ledgerKey = key;
    clear(this.ledger);
    this.ledgerEmpty.hidden = list.length > 0;
    this.ledgerHead.hidden = list.length === 0;
    clear(this.ledgerEmpty);
    if (d.controllable) this.ledgerEmpty.append("No commands yet. The buttons above send them; so does ", h("code", {}, `forgather control save ${this.id}`), ".");
    else this.ledgerEmpty.append("No commands were sent to this run.");
    for (const e of list) {
      const tone = RECEIPT_TONE[e.state] || "grey";
      const result = e.result && typeof e.result === "object" ? e.result : {};
      const cells = [];
      if (result.checkpoint) cells.push(h("span", { class: "mono", title: String(result.checkpoint) }, String(result.checkpoint)));
      if (result.metrics && typeof result.metrics === "object") {
        cells.push(h("span", {}, Object.entries(result.metrics).slice(0, 6).map(([k, v]) => `${k} ${typeof v === "number" ? num(v) : String(v)}`).join(" · ")));
      }
      if (result.final_state) cells.push(h("span", {}, `job ${result.final_state}`));
      if (Array.isArray(result.changes) && result.changes.length) cells.push(h("span", { class: "mono" }, describeChanges(result.changes)));
      else if (e.command === "set" && e.options && Array.isArray(e.options.changes)) {
        cells.push(h("span", { class: "mono muted", title: "asked" }, e.options.changes.filter((c) => c && typeof c === "object").map((c) => `${String(c.name)}=${knobValue(c.value)}`).join(" ")));
      }
      const tr = h("tr", { dataset: { command: String(e.command), state: String(e.state), id: String(e.id || "") } },
        h("td", {}, h("span", { class: "cmd" }, COMMAND_LABEL[e.command] || String(e.command)), h("span", { class: "sub mono" }, String(e.id || ""))),
        h("td", {}, h("span", { class: `pill tone-${tone}` }, h("span", { class: "dot" }), h("span", { class: "pill-text" }, String(e.state)))),
        h("td", { class: "num" }, isNum(e.step) ? int(e.step) : "–"),
        h("td", { class: "result" }, cells.length ? cells.map((c, i) => [i ? h("span", { class: "sep" }, " · ") : null, c]) : "–"),
        h("td", { class: "reason" }, e.guard && typeof e.guard === "object" ? `by guard ${e.guard.guard}: ${e.guard.evidence || e.guard.kind}` : "", e.guard && e.reason ? " · " : "", e.reason ? String(e.reason) : ""),
        h("td", { class: "num muted" }, age(e.created_at || e.sent_at)),
      );
      this.ledger.append(tr);
    }
  }

  // Whether the job takes the button's command now.
  takes(d, verb) {
    return !!d.controllable && !(d.framework_callback && NOT_FRAMEWORK[verb]);
  }

  async press(b) {
    if (b.question) {
      const [title, body] = b.question(this.id);
      if (!(await confirmDialog(title, body, b.confirm, b.danger))) return;
    }
    const key = newKey();
    this.buttons[b.verb].disabled = true;
    this.say(`${b.label}: sending…`, "wait");
    try {
      let receipt;
      try {
        receipt = await api.send(this.id, b.verb, key);
      } catch (e) {
        if (!(e instanceof ApiError) || e.status !== 504) throw e;
        receipt = await api.send(this.id, b.verb, key);  // no answer: the same key never queues twice
      }
      receipt = { sent_at: Date.now() / 1000, ...receipt };
      if (receipt.receipt === false) {
        // The framework's own control callback acknowledges and keeps no receipt: nothing to follow.
        this.say(`${b.label} acknowledged: the framework's own callback applies it at its next logging step and keeps no receipt`, "wait");
        return;
      }
      this.sent.set(key, receipt);
      this.told.set(key, receipt.state);
      this.say(`${b.label} ${receipt.state === "sent" ? "dropped in the job's inbox" : receipt.state} as ${receipt.id}`, RECEIPT_TONE[receipt.state] || "wait");
      if (this.details) this.renderLedger(this.details);
      this.follow(key);
    } catch (e) {
      this.say(`${b.label} was not sent: ${e.message}`, "bad");
    } finally {
      if (this.details) this.buttons[b.verb].disabled = !this.takes(this.details, b.verb);
    }
  }

  // Follow a sent command's receipt to its final state, saying each new state once. The
  // details poll may learn the final state first (the ledger: renderLedger): it is said
  // all the same.
  async follow(key) {
    if (this.stopped) return;
    const cur = this.sent.get(key);
    if (!cur) return;
    if (FINAL.has(cur.state)) { this.announce(key, cur); return; }
    try {
      const e = await api.receipt(this.id, cur.id, key);
      if (e && typeof e === "object") {
        const now = { ...cur, ...e };
        this.sent.set(key, now);
        this.announce(key, now);
        if (this.details) this.renderLedger(this.details);
      }
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) { /* keep trying: the job may be between servers */ }
    }
    this.later(() => this.follow(key), RECEIPT_MS);
  }

  // "Save completed at step 120", once per state of a receipt this page follows.
  announce(key, e) {
    if (this.told.get(key) === e.state) return;
    this.told.set(key, e.state);
    const label = COMMAND_LABEL[e.command] || e.command;
    const done = e.result && typeof e.result === "object" && Array.isArray(e.result.changes) ? describeChanges(e.result.changes) : "";
    const text = `${label} ${e.state}` + (done ? `: ${done}` : "") + (isNum(e.step) ? ` at step ${int(e.step)}` : "") + (e.reason ? `: ${e.reason}` : "");
    this.say(text, RECEIPT_TONE[e.state] || "wait");
    if (e.command === "set") this.knobSay(text, RECEIPT_TONE[e.state] || "wait");
  }

  // -- resume ---------------------------------------------------------------------------
  // An ended, paused, failed or dead job can be started again (the page server asks the
  // library, which refuses what it must: a job not yours, without a relaunch record...).
  canResume(d) {
    return !!d && (!!d.final || d.state === "dead");
  }

  renderResumable(d = this.details) {
    if (!d) return;
    this.resumeBtn.hidden = !this.canResume(d);
    this.resumeBtn.disabled = this.resuming;
    for (const b of this.ckptBody.querySelectorAll("button")) b.disabled = this.resuming;
  }

  // Every completed checkpoint of the job's runs, newest first: on disk or not, left
  // behind by a roll back or not, the one Resume takes marked; each a place to resume
  // from while the job is not running. Paths are the job's: text.
  renderCheckpoints(d) {
    const list = (Array.isArray(d.checkpoints) ? d.checkpoints : []).filter((c) => c && typeof c === "object" && typeof c.path === "string");
    this.checkpoints.hidden = list.length === 0;
    const can = this.canResume(d);
    const key = JSON.stringify([list, can]);
    if (this.checkpoints.hidden || key === this.ckptKey) return;
    this.ckptKey = key;
    clear(this.ckptBody);
    const behind = list.filter((c) => c.left_behind).length;
    setText(this.ckptHint, `${list.length} saved, newest first` + (behind ? ` · ${behind} left behind by a roll back` : "") + (can ? " · resume from any on disk" : ""));
    for (const c of [...list].reverse()) {
      const chips = [];
      if (c.resume_point) chips.push(h("span", { class: "pill tone-done", title: "Resume starts here: the newest checkpoint still on disk that no roll back left behind" }, "resume point"));
      if (c.left_behind) chips.push(h("span", { class: "pill tone-grey", title: "A roll back went to an older checkpoint: this one stays on disk and in the history; a resume takes it only when named" }, "left behind"));
      if (c.on_disk === false) chips.push(h("span", { class: "pill tone-bad", title: "The file is gone: nothing can resume from it" }, "not on disk"));
      const action = can && c.on_disk !== false
        ? h("button", { class: "btn small", type: "button", disabled: this.resuming, title: `Resume the job from ${c.path}`, on: { click: () => this.askResume(c) } }, "Resume from here")
        : null;
      this.ckptBody.append(h("tr", { dataset: { path: c.path, step: isNum(c.step) ? String(c.step) : "", onDisk: c.on_disk === false ? "0" : "1", leftBehind: c.left_behind ? "1" : "0" } },
        h("td", { class: "num ckpt-step" }, isNum(c.step) ? int(c.step) : "–"),
        h("td", { class: "ckpt-path" }, h("span", { class: "mono", title: c.path }, basename(c.path)), h("span", { class: "sub mono", title: c.path }, c.path)),
        h("td", { class: "num" }, isNum(c.run) ? String(Math.round(c.run) + 1) : "–"),
        h("td", { class: "num muted", title: isNum(c.saved_at) ? clock(c.saved_at) : null }, age(c.saved_at)),
        h("td", { class: "ckpt-chips" }, chips),
        h("td", { class: "ckpt-action" }, action),
      ));
    }
  }

  // Resume (from the newest checkpoint on disk, or from ``c``: a roll back): the page
  // server checks it as `forgather control resume` does and says what it would start;
  // asked; then started in the background as the user who runs the page.
  async askResume(c) {
    if (this.resuming) return;
    this.resuming = true;
    this.renderResumable();
    const from = c ? c.path : null;
    try {
      this.say("Resume: checking…", "wait");
      let plan;
      try {
        plan = await api.checkResume(this.id, from);
      } catch (e) {
        this.say(`Not resumed: ${e.message}`, "bad");
        return;
      }
      const at = isNum(plan.resume_step) ? ` at step ${int(plan.resume_step)}` : "";
      const where = plan.resume_from ? `${basename(plan.resume_from)}${at}` : "the start (no checkpoint)";
      const behind = (Array.isArray(plan.left_behind) ? plan.left_behind : []).filter((p) => p && typeof p.path === "string");
      const skipped = (Array.isArray(plan.skipped) ? plan.skipped : []).map(String);
      const run = isNum(plan.run) ? plan.run + 1 : "?";
      const title = behind.length ? `Roll job ${this.id} back to step ${isNum(plan.resume_step) ? int(plan.resume_step) : "?"}?`
        : plan.resume_from ? `Resume job ${this.id} from step ${isNum(plan.resume_step) ? int(plan.resume_step) : "?"}?` : `Resume job ${this.id} from the start?`;
      const body = [
        h("span", { class: "confirm-changes" },
          h("span", { class: "confirm-change mono", title: plan.resume_from || "" }, plan.resume_from ? `${plan.resume_from}${at}` : "no checkpoint: it starts from the beginning")),
        plan.how === "slurm"
          ? `Its batch script is submitted again with sbatch, with its options; the new allocation runs as run ${run}.`
          : `It starts forgather launch again as the job was launched (its arguments, folder and environment), in the background, as run ${run}.`,
        behind.length ? ` Newer checkpoints stay on disk, marked left behind: ${behind.map((p) => basename(p.path) + (isNum(p.step) ? ` (step ${int(p.step)})` : "")).join(", ")}.` : "",
        skipped.length ? ` Passed over: ${skipped.join("; ")}.` : "",
      ];
      if (!(await confirmDialog(title, body, "Resume", false))) {
        this.say("Not resumed: cancelled.", "grey");
        return;
      }
      this.say(`Resuming job ${this.id} from ${where}: starting it…`, "wait");
      let done;
      try {
        done = await api.resume(this.id, from);
      } catch (e) {
        this.say(`Not resumed: ${e.message}`, "bad");
        return;
      }
      this.say(resumedText(done, where), done.unconfirmed ? "wait" : "done");
      this.log.ended = false;  // a new run writes on: follow it
    } finally {
      this.resuming = false;
      this.renderResumable();
    }
  }

  // -- tabs and the Logs tab -------------------------------------------------------------
  showTab(name, { initial = false } = {}) {
    this.tab = name;
    for (const [n, b] of Object.entries(this.tabButtons)) {
      setAttr(b, "aria-selected", String(n === name));
      b.classList.toggle("active", n === name);
    }
    this.overview.hidden = name !== "overview";
    this.logsPanel.hidden = name !== "logs";
    if (!initial) history.replaceState(null, "", location.pathname + (name === "logs" ? "#logs" : ""));
    if (name === "logs") this.pollLogs();
  }

  selectRank(rank) {
    if (rank === this.log.rank) return;
    this.log.rank = rank;
    this.log.offset = null;
    this.log.generation += 1;
    this.pollLogs();
  }

  // One poll: the rank's tail (first), else what came after the offset the last gave.
  // One poll in flight; the next is timed from its answer.
  async pollLogs() {
    clearTimeout(this.log.timer);
    if (this.stopped || this.tab !== "logs") return;
    const L = this.log;
    const generation = ++L.generation;
    const after = L.offset;
    let wait = LOGS_MS;
    try {
      const res = await api.logs(this.id, L.rank, after, after === null ? LOG_TAIL : null);
      if (this.stopped || generation !== L.generation) return;
      this.logNote.hidden = true;
      L.rank = res.rank;
      this.renderLogRanks(Array.isArray(res.ranks) ? res.ranks : [], res.rank);
      setText(this.logHost, typeof res.host === "string" && res.host ? `on ${res.host}` : "");
      setText(this.logCommand, `forgather control logs ${this.id} --rank ${res.rank} --tail ${LOG_KEEP}`);
      if (after === null) { clear(this.logBox); L.lines = 0; this.logDropped.hidden = true; }
      const lines = Array.isArray(res.lines) ? res.lines : [];
      const stick = after === null || this.logBox.scrollHeight - this.logBox.scrollTop - this.logBox.clientHeight < 40;
      if (isNum(res.skipped) && res.skipped > 0) this.logLine(`… ${int(res.skipped)} bytes of this rank's output were rotated away before this page read them`, "log-gap");
      for (const line of lines) this.logLine(line);
      this.trimLog();
      if (stick) this.logBox.scrollTop = this.logBox.scrollHeight;
      L.offset = isNum(res.offset) ? res.offset : L.offset;
      L.ended = !!res.ended;
      this.logBox.dataset.rank = String(res.rank);
      this.logBox.dataset.offset = String(L.offset);
      if (!L.lines) this.logEmpty("Nothing in this rank's log yet.");
      const ended = L.ended && !(this.details && this.details.active);
      setText(this.logStateText, ended ? "the job has ended: its log is whole" : "following");
      setAttr(this.logState, "class", `log-state pill tone-${ended ? "grey" : "run"}`);
      this.logState.hidden = false;
      if (ended) wait = LOGS_ENDED_MS;
      else if (after !== null && isNum(res.offset) && res.offset - after >= LOG_BURST) wait = 0;  // more waits: read on
    } catch (e) {
      if (this.stopped || generation !== L.generation) return;
      const body = e.body || {};
      setText(this.logNote, body.no_logs ? `No logs here yet: ${e.message}` : e.message);
      setAttr(this.logNote, "class", `log-note tone-${body.no_logs ? "grey" : "bad"}`);
      this.logNote.hidden = false;
      this.logState.hidden = true;
      if (body.no_logs && L.rank !== null && after !== null) { L.rank = null; L.offset = null; }  // its log is gone: start over
      wait = 2 * LOGS_MS;
    }
    if (this.tab === "logs" && !this.stopped) L.timer = setTimeout(() => this.pollLogs(), document.hidden ? wait * 5 : wait);
  }

  logLine(text, cls) {
    this.logBox.querySelector(".log-empty")?.remove();
    this.logBox.append(h("div", { class: cls ? `log-line ${cls}` : "log-line" }, visible(text)));
    this.log.lines += 1;
  }

  logEmpty(text) {
    if (!this.logBox.querySelector(".log-empty")) this.logBox.append(h("div", { class: "log-empty muted" }, text));
  }

  // At most LOG_KEEP lines on the page: the oldest go, and the page says so.
  trimLog() {
    let extra = this.log.lines - LOG_KEEP;
    if (extra <= 0) return;
    while (extra-- > 0 && this.logBox.firstChild) { this.logBox.firstChild.remove(); this.log.lines -= 1; }
    setText(this.logDropped, `Earlier lines are not kept on this page (it keeps the last ${int(LOG_KEEP)}): the command below prints them.`);
    this.logDropped.hidden = false;
  }

  renderLogRanks(ranks, current) {
    const key = JSON.stringify([ranks, current]);
    if (key === this.logRanksKey) return;
    this.logRanksKey = key;
    clear(this.logRanks);
    const good = ranks.filter((r) => Number.isInteger(r) && r >= 0);
    if (good.length <= RANK_BUTTONS) {
      for (const r of good) {
        this.logRanks.append(h("button", { class: "chip rank-chip", type: "button", "aria-pressed": String(r === current), dataset: { rank: String(r) },
          on: { click: () => this.selectRank(r) } }, `rank ${r}`));
      }
    } else {
      const sel = h("select", { class: "rank-select", "aria-label": "Rank", on: { change: () => this.selectRank(Number(sel.value)) } },
        good.map((r) => h("option", { value: String(r) }, `rank ${r}`)));
      sel.value = String(current);
      this.logRanks.append(sel);
    }
  }

  // The job's knobs: each one's value now, the script's, where it came from, its range,
  // and a box for a new value. Rows are built once per set of knobs (the values refresh
  // in place: what a person typed stays); every string is the job's, set as text.
  renderKnobs(d) {
    const knobs = (Array.isArray(d.knobs) ? d.knobs : []).filter((k) => k && typeof k === "object" && typeof k.name === "string");
    this.knobs.hidden = knobs.length === 0;
    if (this.knobs.hidden) return;
    const shape = JSON.stringify(knobs.map((k) => [k.name, k.kind]));
    if (shape !== this.knobShape) {
      this.knobShape = shape;
      const typed = new Map([...this.knobRows].map(([name, r]) => [name, r.input.value]));
      clear(this.knobsBody);
      this.knobRows.clear();
      for (const k of knobs) {
        const bool = k.kind === "bool";
        const input = bool
          ? h("select", { class: "knob-input", "aria-label": `new value of ${k.name}`, on: { change: () => this.knobsEdited() } },
            h("option", { value: "" }, "—"), h("option", { value: "true" }, "true"), h("option", { value: "false" }, "false"))
          : h("input", { class: "knob-input", type: "text", inputmode: "decimal", autocomplete: "off", spellcheck: "false", "aria-label": `new value of ${k.name}`,
            on: { input: () => this.knobsEdited(), keydown: (ev) => { if (ev.key === "Enter") { ev.preventDefault(); this.reviewKnobs(); } } } });
        if (typed.has(k.name)) input.value = typed.get(k.name);
        const cells = { now: h("td", { class: "num knob-now" }), script: h("td", { class: "num knob-script muted" }), from: h("td", { class: "knob-from" }), range: h("td", { class: "knob-range muted" }) };
        const name = h("td", { class: "knob-name" }, h("span", { class: "mono" }, k.name), k.help ? h("span", { class: "sub", title: String(k.help) }, String(k.help)) : null);
        const row = h("tr", { dataset: { knob: k.name } }, name, cells.now, cells.script, cells.from, cells.range, h("td", { class: "knob-edit" }, input));
        this.knobRows.set(k.name, { row, cells, input });
        this.knobsBody.append(row);
      }
    }
    for (const k of knobs) {
      const r = this.knobRows.get(k.name);
      setText(r.cells.now, knobValue(k.value));
      setText(r.cells.script, knobValue(k.default));
      const [from, why] = knobOrigin(k);
      setText(r.cells.from, from);
      setAttr(r.cells.from, "title", why);
      setText(r.cells.range, knobRange(k));
      if (r.input.tagName === "INPUT") setAttr(r.input, "placeholder", knobValue(k.value));
    }
    this.knobs.classList.toggle("readonly", !!d.final);
    this.knobsEdited();
  }

  // What the boxes hold: [{name, value}] of the ones typed in (a value as typed).
  knobChanges() {
    const out = [];
    for (const [name, r] of this.knobRows) {
      const v = r.input.value.trim();
      if (v !== "") out.push({ name, value: v });
    }
    return out;
  }

  knobsEdited() {
    const open = !!this.details && !!this.details.controllable && !this.knobBusy;
    for (const r of this.knobRows.values()) r.input.disabled = !open;
    this.knobsReview.disabled = !open || this.knobChanges().length === 0;
  }

  // Typed -> checked by the page server (the job's knobs, the CLI's rule) -> confirmed ->
  // sent as one `set`; a refusal is said here and nothing is sent.
  async reviewKnobs() {
    const asked = this.knobChanges();
    if (!asked.length || this.knobBusy) return;
    this.knobBusy = true;
    this.knobsEdited();
    this.knobSay("Checking…", "wait");
    try {
      let checked;
      try {
        checked = await api.checkKnobs(this.id, asked);
      } catch (e) {
        this.knobSay(`Not sent: ${e.message}`, "bad");
        return;
      }
      const changes = (Array.isArray(checked.changes) ? checked.changes : []).filter((c) => c && typeof c === "object");
      const lines = changes.map((c) => h("span", { class: "confirm-change mono" }, `${String(c.name)} ${knobValue(c.old)} -> ${knobValue(c.value)}`));
      const body = [h("span", { class: "confirm-changes" }, lines), "Every rank applies it at the next agreed step; the receipt says the step."];
      this.knobSay(`To confirm: ${describeChanges(changes)}`, "wait");
      if (!(await confirmDialog(`Change ${changes.length === 1 ? "a knob" : `${changes.length} knobs`} of job ${this.id}?`, body, "Set", false))) {
        this.knobSay("Not sent: cancelled.", "grey");
        return;
      }
      const key = newKey();
      const send = changes.map((c) => ({ name: c.name, value: c.value }));
      this.knobSay(`Set ${describeChanges(changes)}: sending…`, "wait");
      let receipt;
      try {
        try {
          receipt = await api.set(this.id, send, key);
        } catch (e) {
          if (!(e instanceof ApiError) || e.status !== 504) throw e;
          receipt = await api.set(this.id, send, key);  // no answer: the same key never queues twice
        }
      } catch (e) {
        this.knobSay(`Not sent: ${e.message}`, "bad");
        return;
      }
      receipt = { sent_at: Date.now() / 1000, ...receipt };
      for (const r of this.knobRows.values()) r.input.value = "";
      this.sent.set(key, receipt);
      this.told.set(key, receipt.state);
      const text = `Set ${receipt.state === "sent" ? "dropped in the job's inbox" : receipt.state} as ${receipt.id}: ${describeChanges(changes)}`;
      this.knobSay(text, RECEIPT_TONE[receipt.state] || "wait");
      this.say(text, RECEIPT_TONE[receipt.state] || "wait");
      if (this.details) this.renderLedger(this.details);
      this.follow(key);
    } finally {
      this.knobBusy = false;
      this.knobsEdited();
    }
  }

  knobSay(text, tone) {
    setText(this.knobsNote, text);
    setAttr(this.knobsNote, "class", `knobs-note tone-${tone}`);
    this.knobsNote.hidden = false;
  }

  say(text, tone) {
    setText(this.flash, text);
    setAttr(this.flash, "class", `flash tone-${tone}`);
    this.flash.hidden = false;
  }
}

// What a resume started, in one line: the run, where from, how to follow it.
function resumedText(done, where) {
  const run = isNum(done.run) ? `run ${done.run + 1}` : "a new run";
  if (done.how === "slurm") return `Job ${done.job_id} submitted again as SLURM job ${done.slurm_job_id || "?"}: ${run} resumes from ${where}.`;
  const started = done.unconfirmed ? "is starting (it has not recorded its start yet)" : "resumed";
  return `Job ${done.job_id} ${started} as ${run} from ${where}: its launcher is pid ${done.pid}, its output in ${done.log}`;
}

// A confirmation in the page's own dialog; resolves true only for the confirm button.
function confirmDialog(title, body, confirm, danger) {
  const dlg = document.getElementById("confirm");
  setText(document.getElementById("confirm-title"), title);
  const text = document.getElementById("confirm-body");
  if (Array.isArray(body)) append(clear(text), body);  // nodes built from the job's text as text
  else setText(text, body);
  const ok = document.getElementById("confirm-ok");
  setText(ok, confirm);
  ok.className = "btn " + (danger ? "danger solid" : "primary");
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.returnValue = "";
    dlg.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

// Where a knob's value came from: the script, a set at a step (by which command), or the
// job's last run (a relaunch).
function knobOrigin(k) {
  if (k.origin === "set") return [isNum(k.step) ? `set at step ${int(k.step)}` : "set", k.command_id ? `by ${String(k.command_id)}` : null];
  if (k.origin === "resumed") return ["resumed", "its value in the job's last run (launch with --script-knobs for the script's)"];
  if (k.origin === "script" || !k.origin) return ["script", null];
  return [String(k.origin), null];
}

// "float > 0", "int 1 – 1000000", "float ≥ 0", "true or false".
function knobRange(k) {
  if (k.kind === "bool") return "true or false";
  const kind = typeof k.kind === "string" ? k.kind : "";
  const lo = isNum(k.above) ? `> ${knobValue(k.above)}` : null;
  if (isNum(k.min) && isNum(k.max)) return `${kind} ${knobValue(k.min)} – ${knobValue(k.max)}`;
  const bits = [lo, isNum(k.min) ? `≥ ${knobValue(k.min)}` : null, isNum(k.max) ? `≤ ${knobValue(k.max)}` : null].filter(Boolean);
  return `${kind} ${bits.join(", ")}`.trim();
}

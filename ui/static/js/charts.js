// A job's recorded metrics against step, drawn by uPlot: loss with eval loss, learning
// rate, steps per second, gradient norm, and a chart for each other series. Drag to
// zoom (every chart follows), double-click to see the whole run again. The job's marks
// (a knob changed at a step) are a dashed line on every chart, labelled where the cursor
// is on one.
import { h, setText, setAttr, clear } from "./dom.js";
import { num, int, isNum } from "./format.js";

const GROUPS = [
  { id: "loss", title: "Loss", log: true, match: (n) => n === "loss" || /(^|_)loss$/.test(n), order: (n) => (n === "loss" ? 0 : 1) },
  { id: "lr", title: "Learning rate", match: (n) => n === "learning_rate" || n === "lr" },
  { id: "speed", title: "Steps per second", match: (n) => n === "steps_per_second" },
  { id: "grad", title: "Gradient norm", log: true, match: (n) => n === "grad_norm" },
];
const MAX_CHARTS = 12;
const HEIGHT = 200;

// A log axis: a line per decade, and at 2 and 5 too when the range spans few decades,
// every few decades when it spans many (at most about 8 lines).
function logSplits(u, axisIdx, min, max) {
  const out = [];
  const lo = Math.floor(Math.log10(min)), hi = Math.ceil(Math.log10(max));
  const mantissas = hi - lo <= 2 ? [1, 2, 5] : [1];
  const every = Math.max(1, Math.ceil((hi - lo) / 8));
  for (let e = lo; e <= hi; e += every) for (const m of mantissas) { const v = m * 10 ** e; if (v >= min && v <= max) out.push(v); }
  return out;
}

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// Which chart each series goes to: the groups above, then one chart per other series.
export function layout(names) {
  const charts = [];
  const used = new Set();
  for (const g of GROUPS) {
    const members = names.filter((n) => !used.has(n) && g.match(n)).sort((a, b) => (g.order ? g.order(a) - g.order(b) : 0) || a.localeCompare(b));
    if (members.length) { members.forEach((n) => used.add(n)); charts.push({ id: g.id, title: g.title, names: members, log: !!g.log }); }
  }
  for (const n of names.filter((n) => !used.has(n)).sort()) charts.push({ id: `s-${n}`, title: n, names: [n] });
  return charts.slice(0, MAX_CHARTS);
}

export class Charts {
  constructor(container) {
    this.container = container;
    // The loss gets the whole width; the other charts share rows below it.
    this.wide = h("div", { class: "charts-wide" });
    this.grid = h("div", { class: "charts-grid" });
    container.append(this.wide, this.grid);
    this.cards = new Map();  // chart id -> {card, plot, names, zoomed, key}
    this.series = {};
    this.marks = [];
    this.scheme = window.matchMedia("(prefers-color-scheme: dark)");
    this.onScheme = () => this.rebuild();
    this.scheme.addEventListener("change", this.onScheme);
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(container);
  }

  // series: name -> {step: [...], time: [...], value: [...]} (the whole history so far);
  // marks: [{step, time, kind, label}] (the job's, drawn on every chart)
  update(series, marks = []) {
    this.series = series;
    this.marks = marks.filter((m) => m && typeof m === "object" && isNum(m.step));
    const names = Object.keys(series).filter((n) => series[n].step.length > 0);
    const charts = layout(names);
    const wanted = new Set(charts.map((c) => c.id));
    for (const [id, entry] of this.cards) if (!wanted.has(id)) { entry.plot && entry.plot.destroy(); entry.card.remove(); this.cards.delete(id); }
    for (const spec of charts) {
      let entry = this.cards.get(spec.id);
      if (entry && entry.names.join() !== spec.names.join()) { entry.plot && entry.plot.destroy(); entry.card.remove(); this.cards.delete(spec.id); entry = null; }
      if (!entry) entry = this.create(spec);
      this.draw(entry);
    }
    for (const spec of charts) (spec.id === "loss" ? this.wide : this.grid).append(this.cards.get(spec.id).card);
  }

  create(spec) {
    const legend = h("div", { class: "chart-legend" });
    const body = h("div", { class: "chart-body" });
    // logScale: the person's choice (the log button), null until they make one
    const entry = { ...spec, body, legend, plot: null, zoomed: false, logScale: null };
    let toggle = null;
    if (spec.log) {
      toggle = h("button", { type: "button", class: "chip", title: "Logarithmic y axis", "aria-pressed": "false", on: { click: () => {
        entry.logScale = !entry.plotLog;
        this.redraw(entry);
      } } }, "log");
      entry.toggle = toggle;
    }
    const card = h("div", { class: "panel chart", dataset: { chart: spec.id } },
      h("div", { class: "chart-head" }, h("h3", {}, spec.title), legend, h("span", { class: "spacer" }), toggle),
      body,
    );
    entry.card = card;
    this.cards.set(spec.id, entry);
    return entry;
  }

  data(entry) {
    const tables = entry.names.map((n) => [this.series[n].step, this.series[n].value]);
    return tables.length === 1 ? tables[0] : uPlot.join(tables);
  }

  draw(entry) {
    const data = this.data(entry);
    entry.card.dataset.points = String(data[0].length);
    entry.card.dataset.series = entry.names.join(",");
    // A log axis needs every value above zero; it is the one drawn first when the curve
    // spans more than two decades (an early loss of 15 would flatten the rest).
    let lo = Infinity, hi = -Infinity;
    for (const ys of data.slice(1)) for (const v of ys) if (v !== null && v !== undefined) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const positive = !(lo <= 0);
    if (entry.toggle) entry.toggle.disabled = !positive;
    const log = !!entry.log && positive && (entry.logScale ?? hi / lo > 100);
    if (entry.plot && entry.plotLog !== log) { entry.plot.destroy(); entry.plot = null; clear(entry.body); }
    entry.plotLog = log;
    entry.card.dataset.log = String(log);
    if (entry.toggle) entry.toggle.setAttribute("aria-pressed", String(log));
    if (entry.plot) {
      entry.plot.setData(data, !entry.zoomed);  // redraws: the marks too
      return;
    }
    entry.plot = new uPlot(this.options(entry), data, entry.body);
    entry.plot.over.addEventListener("dblclick", () => { entry.zoomed = false; });
    entry.markEls = new Map();
    entry.markLayer = h("div", { class: "chart-marks" });
    entry.plot.over.append(entry.markLayer);
    this.placeMarks(entry, entry.plot);
    this.legend(entry);
  }

  options(entry) {
    const muted = css("--muted"), grid = css("--grid");
    const colors = [css("--series-1"), css("--series-2"), css("--series-3"), css("--series-4"), css("--series-5")];
    const width = Math.max(240, entry.body.clientWidth || this.container.clientWidth / 2 - 40);
    const axis = { stroke: muted, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1, size: 4 }, font: `11px ${css("--font-ui")}` };
    return {
      width, height: HEIGHT,
      cursor: { sync: { key: "forgather-steps", setSeries: false }, drag: { x: true, y: false }, points: { size: 6 } },
      legend: { show: false },
      scales: { x: { time: false }, y: entry.plotLog ? { distr: 3, range: (u, min, max) => [Math.max(min / 1.25, Number.MIN_VALUE), Math.min(max * 1.25, Number.MAX_VALUE)] } : {} },
      axes: [
        { ...axis, values: (u, vals) => vals.map((v) => int(v)) },
        { ...axis, size: 56, values: (u, vals) => vals.map((v) => (v === null ? "" : num(v, 3))),
          ...(entry.plotLog ? { splits: logSplits } : {}) },
      ],
      series: [
        { label: "step" },
        ...entry.names.map((n, i) => {
          const sparse = this.series[n].step.length < 16 || /^(eval|val)_/.test(n);
          return {
            label: n, stroke: colors[i % colors.length], width: 1.6, spanGaps: true,
            points: { show: sparse, size: 5, fill: colors[i % colors.length] },
          };
        }),
      ],
      hooks: {
        setSelect: [(u) => { if (u.select.width > 0) entry.zoomed = true; }],
        setCursor: [(u) => { this.showValues(entry, u); this.pointAtMarks(entry, u); }],
        draw: [(u) => { this.drawMarks(u); this.placeMarks(entry, u); }],
      },
    };
  }

  // The marks in view as dashed lines, a small flag at the top of each (on the canvas).
  drawMarks(u) {
    const seen = this.visibleMarks(u);
    if (!seen.length) return;
    const { ctx } = u;
    const { top, height } = u.bbox;
    const px = uPlot.pxRatio || 1;
    ctx.save();
    ctx.strokeStyle = ctx.fillStyle = css("--mark");
    ctx.lineWidth = 1.25 * px;
    ctx.setLineDash([4 * px, 3 * px]);
    const xs = seen.map((m) => Math.round(u.valToPos(m.step, "x", true)));
    for (const x of xs) {
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
    }
    ctx.setLineDash([]);
    for (const x of xs) {
      ctx.beginPath(); ctx.moveTo(x - 4 * px, top); ctx.lineTo(x + 4 * px, top); ctx.lineTo(x, top + 6 * px); ctx.closePath(); ctx.fill();
    }
    ctx.restore();
  }

  // The marks in the x range, one a step (two at one step: their labels joined).
  visibleMarks(u) {
    const { min, max } = u.scales.x;
    if (!isNum(min) || !isNum(max)) return [];
    const at = new Map();
    for (const m of this.marks) if (m.step >= min && m.step <= max) at.set(m.step, at.has(m.step) ? { ...m, label: `${at.get(m.step).label}; ${m.label}` } : m);
    return [...at.values()];
  }

  // Over each line, an element that holds its label (its title too), shown while the
  // cursor is within a few pixels of the line (pointAtMarks: the element takes no mouse
  // events, the chart's cursor and zoom stay uPlot's). The label is the job's text, so
  // it goes in as text.
  placeMarks(entry, u) {
    if (!entry.markLayer) return;
    const seen = this.visibleMarks(u);
    const keep = new Set();
    for (const m of seen) {
      const key = `${m.step}`;
      keep.add(key);
      const label = `step ${int(m.step)}: ${String(m.label ?? "")}`;
      let el = entry.markEls.get(key);
      if (!el) {
        el = h("div", { class: "chart-mark", dataset: { step: String(m.step), kind: String(m.kind ?? "") } }, h("span", { class: "chart-mark-label" }));
        entry.markEls.set(key, el);
        entry.markLayer.append(el);
      }
      setAttr(el, "title", label);
      setText(el.firstChild, label);
      const left = u.valToPos(m.step, "x");
      el.style.left = `${left}px`;  // the CSP allows no style attribute; a property is not one
      el.classList.toggle("flip", left > u.over.clientWidth * 0.6);
      el.dataset.left = String(left);
    }
    for (const [key, el] of entry.markEls) if (!keep.has(key)) { el.remove(); entry.markEls.delete(key); }
    entry.card.dataset.marks = String(seen.length);
    this.pointAtMarks(entry, u);
  }

  // The label of the mark the cursor is on (within 6 px), on every chart (their cursors
  // move together).
  pointAtMarks(entry, u) {
    if (!entry.markEls || !entry.markEls.size) return;
    const at = u.cursor.left;
    for (const el of entry.markEls.values()) el.classList.toggle("active", isNum(at) && at >= 0 && Math.abs(Number(el.dataset.left) - at) <= 6);
  }

  // The legend: each series' colour, name and the value under the cursor (or the last).
  legend(entry) {
    clear(entry.legend);
    entry.values = entry.names.map((n, i) => {
      const value = h("span", { class: "legend-value" });
      entry.legend.append(h("span", { class: "legend-item" }, h("span", { class: "legend-swatch", dataset: { i: String(i % 5 + 1) } }), h("span", { class: "legend-name" }, n), value));
      return value;
    });
    this.showValues(entry, entry.plot);
  }

  showValues(entry, u) {
    if (!entry.values || !u) return;
    let idx = u.cursor.idx;
    const xs = u.data[0];
    const last = (i) => { const ys = u.data[i + 1]; for (let k = ys.length - 1; k >= 0; k--) if (ys[k] !== null && ys[k] !== undefined) return [k, ys[k]]; return [null, null]; };
    entry.names.forEach((n, i) => {
      let v, at;
      if (idx === null || idx === undefined) [at, v] = last(i);
      else { v = u.data[i + 1][idx]; at = idx; }
      setText(entry.values[i], v === null || v === undefined ? "–" : `${num(v)}${at !== null ? ` @ ${int(xs[at])}` : ""}`);
    });
  }

  redraw(entry) {
    if (entry.plot) { entry.plot.destroy(); entry.plot = null; clear(entry.body); }
    this.draw(entry);
  }

  fit() {
    for (const entry of this.cards.values()) {
      if (!entry.plot) continue;
      const w = entry.body.clientWidth;
      if (w > 0 && Math.abs(w - entry.plot.width) > 2) entry.plot.setSize({ width: w, height: HEIGHT });
    }
  }

  rebuild() {
    for (const entry of this.cards.values()) { entry.plot && entry.plot.destroy(); entry.plot = null; clear(entry.body); }
    for (const entry of this.cards.values()) this.draw(entry);
  }

  destroy() {
    this.scheme.removeEventListener("change", this.onScheme);
    this.resize.disconnect();
    for (const entry of this.cards.values()) entry.plot && entry.plot.destroy();
    this.cards.clear();
  }
}

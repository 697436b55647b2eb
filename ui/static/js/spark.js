// A loss sparkline: a tiny SVG line of the whole run (the server buckets it), no axes.
import { svg } from "./dom.js";

export function sparkline(values, { width = 88, height = 22 } = {}) {
  const el = svg("svg", { class: "spark", viewBox: `0 0 ${width} ${height}`, width, height, "aria-hidden": "true" });
  update(el, values, width, height);
  return el;
}

export function update(el, values, width = 88, height = 22) {
  while (el.firstChild) el.firstChild.remove();
  const pts = (values || []).map((v, i) => [i, v]).filter(([, v]) => typeof v === "number" && Number.isFinite(v));
  if (pts.length < 2) return;
  const n = values.length - 1 || 1;
  let lo = Infinity, hi = -Infinity;
  for (const [, v] of pts) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const span = hi - lo || 1;
  const pad = 2;
  const xy = pts.map(([i, v]) => [pad + (i / n) * (width - 2 * pad), pad + (1 - (v - lo) / span) * (height - 2 * pad)]);
  const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  const area = `${xy[0][0].toFixed(1)},${height} ${line} ${xy[xy.length - 1][0].toFixed(1)},${height}`;
  el.append(svg("polygon", { points: area, class: "spark-area" }));
  el.append(svg("polyline", { points: line, class: "spark-line" }));
  const [lx, ly] = xy[xy.length - 1];
  el.append(svg("circle", { cx: lx.toFixed(1), cy: ly.toFixed(1), r: 2, class: "spark-dot" }));
}

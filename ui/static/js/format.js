// Numbers, durations and states, as a person reads them.

export const STATE_TONE = {
  running: "run", stalled: "abort", stopping: "busy", starting: "busy", uncontrolled: "abort", ending: "busy", requeued: "wait",
  finished: "done", stopped: "stop", paused: "wait", aborted: "abort", failed: "bad", dead: "bad",
  stale: "grey", unknown: "grey", corrupt: "bad",
};

export const STATE_HELP = {
  running: "training",
  stalled: "it runs, but its step has not moved for longer than its stall threshold",
  starting: "the launcher runs; rank 0 is not up yet (commands wait in its inbox)",
  uncontrolled: "the launcher runs, but no control is attached yet: the script has started no Controller (commands wait in its inbox; a stop signal saves nothing)",
  stopping: "a stop applied; the loop is winding down",
  ending: "rank 0 has ended; torchrun is winding down",
  requeued: "SLURM requeued it; it waits in the queue",
  finished: "trained to its end",
  stopped: "stopped by a command or a signal",
  paused: "saved and stopped by pause: nothing runs; it waits to be resumed",
  aborted: "aborted: nothing saved at the end",
  failed: "failed",
  dead: "its processes are gone without a final state",
  stale: "its heartbeat is old",
  unknown: "its liveness cannot be judged from here",
  corrupt: "a record of it is not readable",
};

export function isNum(v) {
  return typeof v === "number" && Number.isFinite(v);
}

export function int(v) {
  return isNum(v) ? Math.round(v).toLocaleString("en-US") : "–";
}

// 4 significant digits, exponent for the very small or large (learning rates).
export function num(v, digits = 4) {
  if (!isNum(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  return Number(v.toPrecision(digits)).toString();
}

export function rate(v) {
  if (!isNum(v)) return "–";
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

export function duration(s) {
  if (!isNum(s)) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function age(ts, now = Date.now() / 1000) {
  if (!isNum(ts)) return "–";
  const d = now - ts;
  if (d < -5) return "in the future";
  if (d < 5) return "just now";
  return `${duration(d).split(" ")[0]} ago`;
}

export function clock(ts) {
  if (!isNum(ts)) return "–";
  const d = new Date(ts * 1000);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// Why a stalled job is stalled, in one line: "no step for 5m 10s (at step 120): why".
export function stallText(stall) {
  if (!stall || typeof stall !== "object") return "";
  const parts = [`no step for ${duration(stall.for)}`];
  if (isNum(stall.step)) parts.push(`(at step ${int(stall.step)})`);
  return parts.join(" ") + (typeof stall.why === "string" && stall.why ? `: ${stall.why}` : "");
}

export function basename(path) {
  if (typeof path !== "string" || !path) return "–";
  const parts = path.replace(/\/+$/, "").split("/");
  return parts[parts.length - 1] || path;
}

export function progress(step, max) {
  if (!isNum(step) || !isNum(max) || max <= 0) return null;
  return Math.max(0, Math.min(1, step / max));
}

export const COMMAND_LABEL = {
  save_checkpoint: "Save", evaluate: "Eval", graceful_stop: "Stop", save_and_stop: "Save & stop", pause: "Pause", abort: "Abort", set: "Set",
};

// A knob's value as the job's receipts and marks say it (core.knobs.describe): a bool as
// true/false, a whole number as itself, else 6 significant digits.
export function knobValue(v) {
  if (typeof v === "boolean") return String(v);
  if (!isNum(v)) return v === null || v === undefined ? "?" : String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
  return String(Number(v.toPrecision(6)));
}

// "lr_scale 1 -> 0.5, temperature 1 -> 0.7": a set's changes (old -> new).
export function describeChanges(changes) {
  return (Array.isArray(changes) ? changes : []).filter((c) => c && typeof c === "object")
    .map((c) => `${String(c.name)} ${knobValue(c.old)} -> ${knobValue(c.value)}`).join(", ");
}

export const RECEIPT_TONE = {
  sent: "wait", queued: "wait", applied: "busy", completed: "done", failed: "bad", dropped: "bad", rejected: "bad",
};

// Text as it is, with every control character (and the invisible or direction-changing
// code points) written out visibly: a log line that slipped past the library's cleaning
// still moves nothing on the page and hides nothing.
const UNSEEN = /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;
export function visible(text) {
  return String(text).replace(UNSEEN, (c) => {
    const code = c.charCodeAt(0);
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

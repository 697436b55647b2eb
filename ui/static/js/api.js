// The page's JSON API. Every request that changes something carries the CSRF value
// (read from the cookie only pages of this origin can read) in a custom header.

let session = null;

export class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail);
    this.status = status;
    this.body = body || {};
  }
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return "";
}

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (session) headers[session.csrf_header] = cookie(session.csrf_cookie);
  }
  let res;
  try {
    res = await fetch(path, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "the page server does not answer (was `forgather control ui` stopped?)");
  }
  if (res.status === 401) {
    location.assign("/login");
    throw new ApiError(401, "not logged in");
  }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) throw new ApiError(res.status, (data && typeof data.detail === "string") ? data.detail : `HTTP ${res.status}`, data);
  return data;
}

export async function start() {
  session = await request("GET", "/api/session");
  return session;
}

// The jobs that ended are listed only for a page that shows them: the listing of what
// may be live costs the same however long the history is.
const jobsPath = (ended) => `/api/jobs?ended=${ended ? "true" : "false"}`;
export const SHOW_ENDED = "forgather.ui.showEnded";

// The first listing is asked for while the page starts, not after it has.
const earlyEnded = localStorage.getItem(SHOW_ENDED) === "1";
let early = location.pathname === "/" ? request("GET", jobsPath(earlyEnded)).catch(() => null) : null;

export const api = {
  jobs: async (ended) => {
    const first = early && ended === earlyEnded && (await early);
    early = null;
    return first || request("GET", jobsPath(ended));
  },
  sparklines: (ended) => request("GET", `/api/sparklines?ended=${ended ? "true" : "false"}`),
  job: (id) => request("GET", `/api/jobs/${encodeURIComponent(id)}`),
  metrics: (id, since) => request("GET", `/api/jobs/${encodeURIComponent(id)}/metrics` + (since === null || since === undefined ? "" : `?since=${since}`)),
  send: (id, command, key) => request("POST", `/api/jobs/${encodeURIComponent(id)}/commands`, { command, key }),
  // changes: [{name, value}] (a value as typed: the server checks it against the job's knobs)
  checkKnobs: (id, changes) => request("POST", `/api/jobs/${encodeURIComponent(id)}/knobs/check`, { changes }),
  set: (id, changes, key) => request("POST", `/api/jobs/${encodeURIComponent(id)}/commands`, { command: "set", changes, key }),
  // One rank's log: its tail (after null), or what came after the offset an answer gave.
  logs: (id, rank, after, lines) => {
    const q = new URLSearchParams();
    if (rank !== null && rank !== undefined) q.set("rank", String(rank));
    if (after !== null && after !== undefined) q.set("after", String(after));
    if (lines) q.set("lines", String(lines));
    const qs = q.toString();
    return request("GET", `/api/jobs/${encodeURIComponent(id)}/logs` + (qs ? `?${qs}` : ""));
  },
  // from: null (the newest checkpoint still on disk), a checkpoint's path, or a step
  checkResume: (id, from) => request("POST", `/api/jobs/${encodeURIComponent(id)}/resume/check`, { from }),
  resume: (id, from) => request("POST", `/api/jobs/${encodeURIComponent(id)}/resume`, { from }),
  receipt: (id, cid, key) => request("GET", `/api/jobs/${encodeURIComponent(id)}/commands/${encodeURIComponent(cid)}` + (key ? `?key=${encodeURIComponent(key)}` : "")),
};

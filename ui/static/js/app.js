// The page: two views (every job, one job) on one HTML file, chosen by the address.
import { start } from "./api.js";
import { setText } from "./dom.js";
import { JobsView } from "./jobs.js";
import { JobView } from "./job.js";

let current = null;

export function navigate(path) {
  if (path === location.pathname) return;
  history.pushState(null, "", path);
  route();
}

function route() {
  if (current) current.stop();
  const root = document.getElementById("app");
  const m = location.pathname.match(/^\/jobs\/([^/]+)$/);
  current = m ? new JobView(root, decodeURIComponent(m[1]), { navigate, live }) : new JobsView(root, { navigate, live });
  current.start();
}

// The "live" badge in the top bar: when the data was last fresh, and whether it is.
export function live(ok, message) {
  const el = document.getElementById("live");
  el.dataset.state = ok ? "ok" : "error";
  setText(document.getElementById("live-text"), message);
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[data-nav]");
  if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  ev.preventDefault();
  navigate(new URL(a.href).pathname);
});
window.addEventListener("popstate", route);

(async () => {
  try {
    const s = await start();
    setText(document.getElementById("where"), s.source === "ray" ? "Ray cluster" : s.where);
  } catch (e) {
    live(false, e.message);
    return;
  }
  route();
})();

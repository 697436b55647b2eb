// The login page: say so when a wrong token sent the browser here.
if (new URLSearchParams(location.search).has("wrong")) {
  document.getElementById("wrong").hidden = false;
  history.replaceState(null, "", "/login");
}

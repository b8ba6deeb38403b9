import { api, showError, clearError } from "./common.js";

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");

// Where to go after logging in: the target as this browser resolves it, if that stays on
// this site, else "/". The server checks it too; this page must not trust its attribute.
function sameOriginPath(target) {
  let url;
  try {
    url = new URL(target || "/", location.origin);
  } catch {
    return "/";
  }
  const path = url.pathname + url.search + url.hash;
  if (url.origin !== location.origin || !path.startsWith("/") || path.startsWith("//")) {
    return "/";
  }
  return path;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(error);
  const data = new FormData(form);
  try {
    await api("POST", "/auth", {
      auth: { username: data.get("username"), password: data.get("password") },
    });
    location.assign(sameOriginPath(form.dataset.next));
  } catch (err) {
    showError(error, err);
    document.getElementById("password").focus();
  }
});

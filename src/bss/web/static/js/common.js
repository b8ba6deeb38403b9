// Shared by every page: the JSON API with the session cookie plus the page's CSRF token,
// and the log-out button. Nothing here writes HTML from data: text goes in via textContent.

const csrf = document.querySelector('meta[name="bss-csrf"]')?.content ?? "";

export class ApiError extends Error {
  constructor(body, status) {
    const text = body?.error || (body?.errors || []).join("; ") || `HTTP ${status}`;
    super(text);
    this.body = body;
    this.status = status;
  }
}

// Calls the documented JSON API; returns the `response` object or throws ApiError.
export async function api(method, path, payload) {
  const init = { method, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" };
  if (payload !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(payload);
  }
  const resp = await fetch(path, init);
  let body = null;
  try {
    body = (await resp.json()).response;
  } catch {
    body = null;
  }
  if (resp.status === 401 && path !== "/auth") {
    // The session ended (expired or logged out elsewhere): log in again, then come back.
    location.assign(`/ui/login?next=${encodeURIComponent(location.pathname + location.search)}`);
  }
  if (!resp.ok || body?.status !== "OK") throw new ApiError(body, resp.status);
  return body;
}

export function csrfToken() {
  return csrf;
}

export function showError(el, err) {
  el.textContent = err instanceof Error ? err.message : String(err);
  el.hidden = false;
}

export function clearError(el) {
  el.textContent = "";
  el.hidden = true;
}

export function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

export function number(n) {
  return Number(n).toLocaleString("en-US");
}

// Sets a phase badge's text and colour class.
export function setPhase(badge, phase) {
  badge.textContent = phase;
  badge.className = `badge phase-${phase}`;
}

export const FINAL = new Set(["completed", "error"]);

// Form fields -> object, leaving out empty ones.
export function formValues(form) {
  const out = {};
  for (const [key, value] of new FormData(form).entries()) {
    if (typeof value === "string" && value.trim() !== "") out[key] = value.trim();
  }
  return out;
}

document.getElementById("logout")?.addEventListener("click", async () => {
  try {
    await api("DELETE", "/auth");
  } finally {
    location.assign("/ui/login");
  }
});

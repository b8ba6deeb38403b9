import { api, showError, clearError } from "./common.js";

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(error);
  const data = new FormData(form);
  try {
    await api("POST", "/auth", {
      auth: { username: data.get("username"), password: data.get("password") },
    });
    location.assign(form.dataset.next || "/");
  } catch (err) {
    showError(error, err);
    document.getElementById("password").focus();
  }
});

// Admin: members, users and configs, all through the JSON API. The config form is checked by
// the API itself, so it validates exactly like the API; the refused field is marked.
import { api, formValues, showError, clearError } from "./common.js";

function wire(formId, submit) {
  const form = document.getElementById(formId);
  if (!form) return;
  const error = form.querySelector(".alert");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError(error);
    try {
      await submit(form);
      location.reload();
    } catch (err) {
      showError(error, err);
    }
  });
}

wire("member-form", async (form) => {
  const member = formValues(form);
  if (member.id) member.id = Number(member.id);
  await api("POST", "/member", { member });
});

wire("user-form", async (form) => {
  const user = formValues(form);
  user.member_id = user.member_id ? Number(user.member_id) : null;
  await api("POST", "/user", { user });
});

// Row actions: a member's state, deleting a user.
const rowError = document.getElementById("row-error");
for (const button of document.querySelectorAll("[data-member-state]")) {
  button.addEventListener("click", async () => {
    try {
      await api("PUT", `/member?id=${button.dataset.member}`, {
        member: { state: button.dataset.memberState },
      });
      location.reload();
    } catch (err) {
      showError(rowError, err);
    }
  });
}
for (const button of document.querySelectorAll("[data-delete-user]")) {
  button.addEventListener("click", async () => {
    // Deleting cannot be undone: ask first.
    if (!window.confirm(`${button.textContent.trim()}? This cannot be undone.`)) return;
    try {
      await api("DELETE", `/user?id=${button.dataset.deleteUser}`);
      location.reload();
    } catch (err) {
      showError(rowError, err);
    }
  });
}

const NUMBERS = [
  "default_expiration", "num_error_log_lines", "num_invalid_before_error", "daily_byte_limit",
  "hourly_byte_limit", "daily_num_lines_limit", "hourly_num_lines_limit",
  "max_concurrent_uploads", "external_member_uid",
];

const config = document.getElementById("config-form");
if (config) {
  const error = document.getElementById("config-error");
  const saved = document.getElementById("config-saved");
  config.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError(error);
    saved.textContent = "";
    for (const field of config.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
    const body = {};
    for (let i = 1; i <= 5; i++) {
      const value = config.elements[`separator_${i}`].value;
      body[`separator_${i}`] = value === "\\t" ? "\t" : value;
    }
    body.segment_fields = config.elements.segment_fields.value.trim();
    for (const name of NUMBERS) {
      const raw = config.elements[name].value.trim();
      // Sent as typed: a non-number is refused by the API with its own message.
      if (raw !== "") body[name] = /^-?\d+$/.test(raw) ? Number(raw) : raw;
    }
    body.use_external_uids = config.elements.use_external_uids.checked;
    body.member_segment_access = config.elements.member_segment_access.value
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean)
      .map((id) => ({ segment_owner_member_id: /^\d+$/.test(id) ? Number(id) : id }));
    try {
      await api("POST", `/batch-segment-config?member_id=${config.dataset.member}`, {
        batch_segment_upload_config: body,
      });
      saved.textContent = "Saved.";
    } catch (err) {
      showError(error, err);
      // The API names the field first ("separator_2 and separator_3 are both ..."): mark it.
      const named = [...config.elements].find((f) => f.name && err.message.startsWith(f.name));
      if (named) {
        named.setAttribute("aria-invalid", "true");
        named.setAttribute("aria-errormessage", "config-error");
        named.focus();
      }
    }
  });
}

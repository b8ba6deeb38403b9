// Segments: create (list page) and edit (segment page) through the JSON API.
import { api, showError, clearError } from "./common.js";

const form = document.getElementById("segment-form");
const error = document.getElementById("segment-error");

function segmentFields() {
  const data = new FormData(form);
  const out = { state: data.get("state") };
  for (const key of ["code", "short_name", "description"]) {
    const value = String(data.get(key) ?? "").trim();
    out[key] = value === "" ? null : value;
  }
  const minutes = String(data.get("expire_minutes") ?? "").trim();
  out.expire_minutes = minutes === "" ? null : Number(minutes);
  return out;
}

form?.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(error);
  const id = form.dataset.segment;
  try {
    if (id) {
      await api("PUT", `/segment?id=${encodeURIComponent(id)}`, { segment: segmentFields() });
      location.reload();
    } else {
      const member = form.elements.member_id?.value;
      const query = member ? `?member_id=${encodeURIComponent(member)}` : "";
      const body = await api("POST", `/segment${query}`, { segment: segmentFields() });
      location.assign(`/ui/segments/${body.segment.id}`);
    }
  } catch (err) {
    showError(error, err);
  }
});

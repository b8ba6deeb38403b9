// Look up a user by any ID kind through GET /user-segments; results go in as text.
import { api, el, showError, clearError } from "./common.js";

const form = document.getElementById("lookup-form");
const kind = document.getElementById("kind");
const error = document.getElementById("lookup-error");
const result = document.getElementById("lookup-result");
const tbody = document.querySelector("#lookup-table tbody");
const related = document.getElementById("related");
const relatedResult = document.getElementById("related-result");

function showKind() {
  for (const set of form.querySelectorAll("fieldset.kind")) {
    set.hidden = set.dataset.kind !== kind.value;
  }
}
kind.addEventListener("change", showKind);
showKind();

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(error);
  const query = new URLSearchParams();
  const member = form.elements.member_id?.value;
  if (member) query.set("member_id", member);
  const set = form.querySelector(`fieldset[data-kind="${kind.value}"]`);
  for (const field of set.querySelectorAll("input, select")) {
    if (field.value.trim() !== "") query.set(field.name, field.value.trim());
  }
  try {
    const body = await api("GET", `/user-segments?${query}`);
    tbody.replaceChildren(
      ...body.segments.map((s) => {
        const row = el("tr");
        const link = el("a", s.id);
        link.href = `/ui/segments/${s.id}`;
        const idCell = el("td", null, "num");
        idCell.append(link);
        row.append(
          idCell,
          el("td", s.code ?? "–", "mono"),
          el("td", s.member_id ?? "–"),
          el("td", s.value ?? "", "num"),
          el("td", s.timestamp ?? "–", "nowrap"),
          el("td", s.expiry ?? "never", "nowrap"),
        );
        return row;
      }),
    );
    document.getElementById("lookup-heading").textContent =
      `Live segments of ${body.user.kind} ${body.user.key}`;
    document.getElementById("lookup-empty").hidden = body.segments.length > 0;
    document.getElementById("lookup-table").hidden = body.segments.length === 0;
    result.hidden = false;
    relatedResult.hidden = true;
    if (related.checked) await showRelated(query);
  } catch (err) {
    result.hidden = true;
    relatedResult.hidden = true;
    showError(error, err);
  }
});

// The related IDs (GET /user-links) and the segments reached through them (related=true).
async function showRelated(query) {
  const links = await api("GET", `/user-links?${query}`);
  document.getElementById("related-ids").replaceChildren(...links.ids.map((id) => el("li", id)));
  query.set("related", "true");
  const body = await api("GET", `/user-segments?${query}`);
  document.querySelector("#related-table tbody").replaceChildren(
    ...body.segments.map((s) => {
      const row = el("tr");
      row.append(
        el("td", s.id, "num"),
        el("td", s.code ?? "–", "mono"),
        el("td", s.member_id ?? "–"),
        el("td", s.via, "mono"),
        el("td", s.expiry ?? "never", "nowrap"),
      );
      return row;
    }),
  );
  document.getElementById("related-empty").hidden = body.segments.length > 0;
  document.getElementById("related-table").hidden = body.segments.length === 0;
  relatedResult.hidden = false;
}

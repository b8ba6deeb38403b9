// A pasted bid request through POST /openrtb/user-data?explain=true; results go in as text.
import { api, el, showError, clearError } from "./common.js";

const form = document.getElementById("openrtb-form");
const error = document.getElementById("openrtb-error");
const result = document.getElementById("openrtb-result");
const table = document.getElementById("openrtb-table");
const reasons = new Map(
  [...document.querySelectorAll("#reason-texts dt")].map((dt) => [
    dt.textContent,
    dt.nextElementSibling.textContent,
  ]),
);

function fillList(id, items) {
  document.getElementById(id).replaceChildren(...items.map((text) => el("li", text)));
  document.getElementById(`${id}-empty`).hidden = items.length > 0;
}

function segmentRow(source) {
  const link = el("a", String(source.id));
  link.href = `/ui/segments/${source.id}`;
  const idCell = el("td", null, "num");
  idCell.append(link);
  const row = el("tr");
  row.append(
    idCell,
    el("td", source.code ?? "–", "mono"),
    el("td", source.segtax ?? "–", "num"),
    el("td", source.segment_id, "mono"),
    el("td", source.value ?? "", "num"),
    el("td", source.via, "mono"),
  );
  return row;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(error);
  let request;
  try {
    request = JSON.parse(form.elements.bid_request.value);
  } catch (err) {
    result.hidden = true;
    showError(error, new Error(`The bid request is not JSON: ${err.message}`));
    return;
  }
  const query = new URLSearchParams({ explain: "true" });
  const member = form.elements.member_id?.value;
  if (member) query.set("member_id", member);
  query.set("related", document.getElementById("related").checked ? "true" : "false");
  try {
    const body = await api("POST", `/openrtb/user-data?${query}`, request);
    fillList("openrtb-ids", body.ids);
    fillList("openrtb-related", body.related_ids);
    fillList("openrtb-skipped", body.skipped);
    table.querySelector("tbody").replaceChildren(...body.segments.map(segmentRow));
    table.hidden = body.segments.length === 0;
    const none = document.getElementById("openrtb-none");
    none.hidden = body.reason === null;
    none.textContent =
      body.reason === null ? "" : `No segments: ${reasons.get(body.reason) ?? body.reason}`;
    result.hidden = false;
  } catch (err) {
    result.hidden = true;
    showError(error, err);
  }
});

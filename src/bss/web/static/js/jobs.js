// The job history: rows of unfinished jobs follow their phase and percent by polling the
// JSON API (any API process answers from the shared database), while any row is unfinished.
import { api, number, setPhase, FINAL } from "./common.js";

const POLL_MS = 2000;
const PAGE = 100; // the API's largest page
const table = document.getElementById("jobs");
const INVALID = [
  "num_invalid_format", "num_invalid_user", "num_invalid_segment", "num_invalid_timestamp",
  "num_unauth_segment", "num_past_expiration", "num_inactive_segment", "num_other_error",
];

function unfinishedRows() {
  return table.querySelectorAll('tbody tr[data-final="0"]');
}

function update(row, job) {
  setPhase(row.querySelector(".phase .badge"), job.phase);
  const bar = row.querySelector(".pct progress");
  bar.value = job.percent_complete;
  bar.textContent = `${job.percent_complete}%`;
  row.querySelector(".pct span").textContent = `${job.percent_complete}%`;
  row.querySelector(".valid").textContent = number(job.num_valid);
  row.querySelector(".invalid").textContent = number(INVALID.reduce((s, k) => s + job[k], 0));
  if (FINAL.has(job.phase)) row.dataset.final = "1";
}

async function poll() {
  const start = Number(table.dataset.start);
  const count = Number(table.dataset.count);
  const rows = new Map([...table.querySelectorAll("tbody tr")].map((r) => [r.dataset.job, r]));
  let total = null;
  for (let offset = 0; offset < count; offset += PAGE) {
    const query = new URLSearchParams(table.dataset.query);
    query.set("start_element", String(start + offset));
    query.set("num_elements", String(Math.min(PAGE, count - offset)));
    const body = await api("GET", `/batch-segment?${query}`);
    total = body.count;
    for (const job of body.batch_segment_upload_job) {
      const row = rows.get(job.job_id);
      if (row && row.dataset.final === "0") update(row, job);
    }
  }
  if (total !== null && table.dataset.firstPage === "1" && total > Number(table.dataset.total)) {
    document.getElementById("new-jobs").hidden = false;
  }
}

async function loop() {
  if (unfinishedRows().length === 0) return;
  try {
    await poll();
  } catch (err) {
    console.warn("job poll failed", err);
  }
  setTimeout(loop, POLL_MS);
}

if (table) setTimeout(loop, POLL_MS);

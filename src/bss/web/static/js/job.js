// One job: follow phase, percent and counters until it finishes, then reload so the page
// shows the error and segment logs the server renders.
import { api, number, setPhase, FINAL } from "./common.js";

const POLL_MS = 1000;
const live = document.getElementById("live");

async function poll() {
  const query = new URLSearchParams({ job_id: live.dataset.job, member_id: live.dataset.member });
  const body = await api("GET", `/batch-segment?${query}`);
  let job = body.batch_segment_upload_job;
  if (Array.isArray(job)) job = job[0];
  setPhase(live.querySelector(".badge"), job.phase);
  const bar = live.querySelector("progress");
  bar.value = job.percent_complete;
  bar.textContent = `${job.percent_complete}%`;
  live.querySelector(".pct-text").textContent = `${job.percent_complete}%`;
  for (const cell of document.querySelectorAll("[data-counter]")) {
    cell.textContent = number(job[cell.dataset.counter]);
  }
  return FINAL.has(job.phase);
}

async function loop() {
  let done = false;
  try {
    done = await poll();
  } catch (err) {
    console.warn("job poll failed", err);
  }
  if (done) location.reload();
  else setTimeout(loop, POLL_MS);
}

if (live && live.dataset.final === "0") setTimeout(loop, POLL_MS);

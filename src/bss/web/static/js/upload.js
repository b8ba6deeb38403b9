// Upload: the documented flow. POST /batch-segment creates the job and its upload URL, the
// file is POSTed there as application/octet-stream (XHR, for upload progress), and the new
// job's page opens and follows it live.
import { api, csrfToken, showError, clearError } from "./common.js";

const form = document.getElementById("upload-form");
const input = document.getElementById("file");
const drop = document.getElementById("drop");
const bar = document.getElementById("progress");
const barText = document.getElementById("progress-text");
const status = document.getElementById("upload-status");
const error = document.getElementById("upload-error");
const button = document.getElementById("upload-button");
const fileName = document.getElementById("file-name");

function showFile() {
  const file = input.files[0];
  fileName.textContent = file ? `${file.name} · ${file.size.toLocaleString("en-US")} bytes` : "";
}

function setProgress(pct) {
  bar.value = pct;
  bar.textContent = `${pct}%`;
  barText.textContent = `${pct}%`;
}

for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer?.files?.length) {
    input.files = event.dataTransfer.files;
    showFile();
  }
});
input.addEventListener("change", showFile);

function send(path, file) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("X-CSRF-Token", csrfToken());
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) setProgress(Math.round((event.loaded / event.total) * 100));
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText).response;
      } catch {
        body = null;
      }
      if (xhr.status < 300 && body?.status === "OK") resolve(body);
      else reject(new Error(body?.error || (body?.errors || []).join("; ") || `HTTP ${xhr.status}`));
    });
    xhr.addEventListener("error", () => reject(new Error("The upload was cut off")));
    xhr.send(file);
  });
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError(error);
  const file = input.files[0];
  if (!file) {
    showError(error, "Choose a file first.");
    input.focus();
    return;
  }
  button.disabled = true;
  setProgress(0);
  try {
    const member = form.elements.member_id?.value;
    const query = member ? `?member_id=${encodeURIComponent(member)}` : "";
    status.textContent = "Creating the job…";
    const created = await api("POST", `/batch-segment${query}`);
    let job = created.batch_segment_upload_job;
    if (Array.isArray(job)) job = job[0];
    status.textContent = `Uploading to job ${job.job_id}…`;
    // The URL is read, never built; only its path is used so the upload stays same-origin.
    await send(new URL(job.upload_url).pathname, file);
    setProgress(100);
    status.textContent = "Uploaded. Opening the job…";
    location.assign(`/ui/jobs/${encodeURIComponent(job.job_id)}`);
  } catch (err) {
    status.textContent = "";
    showError(error, err);
    button.disabled = false;
  }
});

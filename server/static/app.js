// Retouch playground: drives the server's public imagepipeline.io API from the browser.
// No framework and no build step: the page must work from a plain checkout on an offline box.
"use strict";

const KEY_STORAGE = "retouch.apiKey";
const POLL_MS = 400;
// Engine stages in the order a job goes through them (server/jobs.py _STAGE_SPANS).
const STAGES = ["encode", "denoise", "refine", "decode", "postprocess"];

const $ = (id) => document.getElementById(id);
const state = {
  pictures: [], // {file, url (object URL)}
  jobId: null,
  pollTimer: null,
  stagesSeen: new Set(),
  downloadUrl: null,
};

// -- API key -----------------------------------------------------------------------------
function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function showKeyState(text, bad = false) {
  const box = $("key-state");
  box.textContent = text;
  box.classList.toggle("bad", bad);
}

// One cheap authenticated call (the key's profile list), so a wrong key is said at once, not at Edit.
async function checkKey() {
  const key = apiKey();
  if (!key) return showKeyState("no key saved");
  showKeyState("key saved; checking it with the server...");
  try {
    await api("GET", "/profiles/v1");
    if (key === apiKey()) showKeyState("key saved and accepted by the server");
  } catch (err) {
    if (key !== apiKey()) return;
    if (err.status === 401 || err.status === 403) showKeyState(`the server refused this key: ${err.message}`, true);
    else showKeyState(`key saved, but it could not be checked: ${err.message}`, true);
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("api-key").value.trim();
  if (value) localStorage.setItem(KEY_STORAGE, value);
  else localStorage.removeItem(KEY_STORAGE);
  checkKey();
});

// -- HTTP ----------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    const message = (body && (body.message || body.error)) || `HTTP ${status}`;
    super(body && body.error_code ? `${message} (${body.error_code}, HTTP ${status})` : message);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { "X-API-Key": apiKey() };
  let payload = body;
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload });
  } catch (err) {
    throw new Error(`the server could not be reached (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = { message: text.slice(0, 300) };
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// -- pictures ------------------------------------------------------------------------------
function addFiles(files) {
  const max = Number($("max-images").textContent) || 3;
  for (const file of files) {
    if (!file.type.startsWith("image/")) {
      showError(`${file.name} is not a picture`);
      continue;
    }
    if (state.pictures.length >= max) {
      showError(`at most ${max} pictures per edit`);
      break;
    }
    state.pictures.push({ file, url: URL.createObjectURL(file) });
  }
  renderThumbs();
}

function renderThumbs() {
  const list = $("thumbs");
  list.replaceChildren();
  state.pictures.forEach((picture, index) => {
    const item = document.createElement("li");
    const img = document.createElement("img");
    img.src = picture.url;
    img.alt = `image ${index + 1}`;
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = index === 0 ? "edit" : `image ${index + 1}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "x";
    remove.title = "remove";
    remove.addEventListener("click", () => {
      URL.revokeObjectURL(picture.url);
      state.pictures.splice(index, 1);
      renderThumbs();
    });
    item.append(img, badge, remove);
    list.append(item);
  });
  RetouchMask.load(state.pictures[0]);
}

const dropZone = $("drop-zone");
dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("over");
});
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("over");
  addFiles(event.dataTransfer.files);
});
$("file-input").addEventListener("change", (event) => {
  addFiles(event.target.files);
  event.target.value = "";
});

// -- options -------------------------------------------------------------------------------
function speed() {
  return document.querySelector('input[name="speed"]:checked').value;
}
for (const radio of document.querySelectorAll('input[name="speed"]')) {
  radio.addEventListener("change", () => ($("steps").disabled = speed() === "fast"));
}
$("refine").addEventListener("input", () => ($("refine-value").value = Number($("refine").value).toFixed(2)));
$("seed-random").addEventListener("click", () => ($("seed").value = ""));

function editRequest(imageUrls, maskUrl) {
  const body = {
    prompt: $("prompt").value.trim(),
    input_image: imageUrls.length === 1 ? imageUrls[0] : imageUrls,
    faster_inference: speed() === "fast",
    seed: $("seed").value === "" ? -1 : Number($("seed").value), // -1: the server picks one
    refine_strength: Number($("refine").value),
    output_format: $("format").value,
  };
  if (speed() === "quality") body.num_inference_steps = Number($("steps").value);
  if (maskUrl) body.mask_image = maskUrl;
  return body;
}

// -- submit and follow a job -----------------------------------------------------------------
async function uploadPicture(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  return (await api("POST", "/upload/image/v1", form)).url;
}

async function submit() {
  showError("");
  if (!state.pictures.length) return showError("drop a picture first");
  if (!$("prompt").value.trim()) return showError("type an instruction");
  if (!apiKey()) return showError("type your API key at the top and save it");
  setBusy(true);
  $("result").hidden = true;
  try {
    const urls = [];
    for (const picture of state.pictures) urls.push(await uploadPicture(picture.file, picture.file.name));
    const maskUrl = RetouchMask.painted() ? await uploadPicture(await RetouchMask.exportPng(), "mask.png") : null;
    const answer = await api("POST", "/edit/image/v1", editRequest(urls, maskUrl));
    startJob(answer);
  } catch (err) {
    showError(err.message);
    setBusy(false);
  }
}

function setBusy(busy) {
  $("submit").disabled = busy;
  $("cancel").hidden = !busy;
}

function startJob(answer) {
  state.jobId = answer.job_id;
  state.stagesSeen = new Set(Number($("refine").value) > 0 ? ["refine"] : []);
  $("job").hidden = false;
  $("job-note").hidden = true;
  $("job-id").textContent = answer.job_id;
  renderStatus({ status: "queued", progress: 0, estimated_time_seconds: answer.estimated_time_seconds });
  poll();
}

async function poll() {
  clearTimeout(state.pollTimer);
  const jobId = state.jobId;
  let status;
  try {
    status = await api("GET", `/edit/image/v1/status/${encodeURIComponent(jobId)}`);
  } catch (err) {
    showError(err.message);
    setBusy(false);
    return;
  }
  if (jobId !== state.jobId) return;
  renderStatus(status);
  if (status.status === "completed") {
    setBusy(false);
    showResult(status);
  } else if (status.status === "cancelled") {
    // A job is cancelled only through its own key: the user's choice, shown as a state, not an error.
    setBusy(false);
    $("job-note").textContent = "Cancelled: the job was stopped and left no result.";
    $("job-note").hidden = false;
  } else if (status.status === "failed") {
    setBusy(false);
    const code = status.failure_reason_code ? ` (${status.failure_reason_code})` : "";
    showError(`${status.error || `the job ${status.status}`}${code}`);
  } else {
    state.pollTimer = setTimeout(poll, POLL_MS);
  }
}

function renderStatus(status) {
  $("job-status").textContent = `${status.status} - ${status.progress || 0}%`;
  const queued = status.status === "queued" && status.queue_position;
  $("queue-position").hidden = !queued;
  if (queued) $("queue-position").textContent = `Position in queue: ${status.queue_position}`;
  const eta = status.estimated_time_seconds;
  const running = status.status === "queued" || status.status === "processing" || status.status === "pending";
  $("eta").hidden = !(running && eta);
  if (running && eta) $("eta").textContent = `ETA: about ${eta} s`;
  renderStages(status);
}

function renderStages(status) {
  const detail = status.progress_detail;
  if (detail) state.stagesSeen.add(detail.stage);
  const done = status.status === "completed";
  const current = detail ? STAGES.indexOf(detail.stage) : -1;
  const box = $("stages");
  box.replaceChildren();
  for (const [index, stage] of STAGES.entries()) {
    // Refinement and decoding only show once they happen (or were asked for).
    if ((stage === "refine" || stage === "decode") && !state.stagesSeen.has(stage)) continue;
    let fraction = 0;
    if (done || (current >= 0 && index < current)) fraction = 1;
    else if (index === current) fraction = detail.total ? detail.step / detail.total : 0;
    const name = document.createElement("span");
    name.className = `stage-name${index === current && !done ? " current" : ""}`;
    name.textContent = stage;
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = Math.round(fraction * 100);
    bar.dataset.stage = stage;
    const pct = document.createElement("span");
    pct.className = "stage-pct";
    pct.textContent = `${bar.value}%`;
    box.append(name, bar, pct);
  }
}

function seconds(value) {
  return value === null || value === undefined ? "-" : `${Number(value).toFixed(2)} s`;
}

async function showResult(status) {
  const resultUrl = status.result_url;
  $("before-image").src = state.pictures[0].url;
  $("after-image").src = resultUrl;
  $("result-seed").textContent = status.seed ?? "-";
  $("t-queue").textContent = seconds(status.queue_wait_seconds);
  $("t-inference").textContent = seconds(status.inference_time_seconds);
  $("t-total").textContent = seconds(status.total_elapsed_seconds);
  const warnings = $("warnings");
  warnings.replaceChildren(
    ...(status.warnings || []).map((text) => Object.assign(document.createElement("li"), { textContent: text })),
  );
  const ext = (status.result_mime_type || "image/webp").split("/")[1];
  const link = $("download");
  link.download = `retouch-${status.job_id}.${ext}`;
  link.href = resultUrl;
  $("result").hidden = false;
  // A same-origin blob makes the download attribute work even when the signed URL is on another host.
  try {
    const response = await fetch(resultUrl);
    if (response.ok) {
      if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
      state.downloadUrl = URL.createObjectURL(await response.blob());
      link.href = state.downloadUrl;
    }
  } catch (_) {
    // the plain signed URL stays as the link
  }
  link.dataset.ready = "true";
}

$("compare-slider").addEventListener("input", (event) => {
  const value = Number(event.target.value);
  $("before-image").style.clipPath = `inset(0 ${100 - value}% 0 0)`;
  $("divider").style.left = `${value}%`;
});

$("submit").addEventListener("click", submit);
$("cancel").addEventListener("click", async () => {
  if (!state.jobId) return;
  try {
    await api("POST", `/edit/image/v1/cancel/${encodeURIComponent(state.jobId)}`);
  } catch (err) {
    showError(err.message);
  }
});

// The demo set's pictures are noise: say so on the page, from the server's own /readyz.
async function showWeightsSet() {
  try {
    const response = await fetch("/readyz");
    const body = await response.json();
    $("demo-strip").hidden = !(body.weights && body.weights.set === "demo");
  } catch (_) {
    // no strip when the server cannot be asked; nothing else depends on it
  }
}

// -- start -----------------------------------------------------------------------------------
$("api-key").value = apiKey();
checkKey();
showWeightsSet();

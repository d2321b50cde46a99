// The demo page: open an image (file picker or drop) -> POST /embed once -> every later call sends its
// image_id as JSON. Click = positive point, shift-click = negative point, drag = box -> /segment/prompt (live
// while dragging); text -> /segment (or refine, or instances); everything -> /segment/everything (optional
// labels); labels -> /classify top-k. An image_id the server no longer holds (404) is uploaded again once.

import { Api, ApiError, sha256Hex } from "./api.js";
import * as view from "./view.js";

const $ = (id) => document.getElementById(id);
const dom = {
  apiKey: $("api-key"),
  input: $("image-input"),
  drop: $("drop"),
  hint: $("drop-hint"),
  stage: $("stage"),
  image: $("image"),
  overlay: $("overlay"),
  marks: $("marks"),
  info: $("image-info"),
  text: $("text-input"),
  textMode: $("text-mode"),
  labels: $("labels-input"),
  topK: $("top-k"),
  pps: $("points-per-side"),
  everythingLabels: $("everything-labels"),
  results: $("classify-results"),
  list: $("mask-list"),
  count: $("mask-count"),
  status: $("status"),
};
const api = new Api(() => dom.apiKey.value);
const state = {
  image: null, // {bytes, type, name, id, width, height, url}
  masks: [], // shown masks (view.prepareMask)
  meta: null, // {endpoint, image_id, width, height, request_id} of the shown result
  prompt: { points: [], box: null },
  seq: 0, // the latest request's ticket: only its response is shown
  busy: 0,
};
window.samclipDemo = { state, api, view };

function setStatus(message, isError = false) {
  dom.status.textContent = message;
  dom.status.classList.toggle("error", isError);
}

function errorText(err) {
  return err instanceof ApiError
    ? `${err.status} ${err.errorType}: ${err.message}`
    : String(err.message || err);
}

const splitList = (s) => [
  ...new Set(
    s
      .split(/[,\n]/)
      .map((t) => t.trim())
      .filter(Boolean),
  ),
];

function redraw() {
  if (!state.image) return;
  const { width, height } = state.image;
  view.drawOverlay(dom.overlay, state.masks, width, height);
  view.drawMarks(dom.marks, state.masks, state.prompt, width);
  view.drawList(dom.list, state.masks, toggleMask, downloadOne);
  dom.count.textContent = String(state.masks.filter((m) => m.visible).length);
}

function showMasks(masks, meta) {
  state.masks = masks.map(view.prepareMask);
  state.meta = meta;
  dom.overlay.dataset.requestId = meta ? meta.request_id : "";
  dom.overlay.dataset.endpoint = meta ? meta.endpoint : "";
  redraw();
}

function toggleMask(i, visible) {
  state.masks[i].visible = visible;
  redraw();
}

function fit() {
  if (!state.image) return;
  const maxW = Math.max(64, dom.drop.clientWidth - 24);
  const maxH = Math.max(64, window.innerHeight - dom.drop.getBoundingClientRect().top - 32);
  view.layout(dom, state.image.width, state.image.height, maxW, maxH);
  redraw();
}

/** The image's id on the server: uploads it (POST /embed) when it has none yet; concurrent callers share the
 *  one upload. */
function ensureEmbedded() {
  const img = state.image;
  if (!img) return Promise.reject(new Error("open an image first"));
  if (img.id) return Promise.resolve(img.id);
  img.uploading ??= api
    .embed(img.bytes, img.type, img.sha256)
    .then(({ data }) => {
      img.id = data.image_id;
      document.body.dataset.imageId = img.id;
      const how = data.cached ? "cached" : "encoded";
      dom.info.textContent = `${img.name} · ${data.width}×${data.height} · ${how}`;
      return img.id;
    })
    .finally(() => {
      img.uploading = null;
    });
  return img.uploading;
}

// Points and boxes -> /segment/prompt: one request in flight; the latest prompt is sent when it returns.
const live = { inFlight: false, again: false };

/** body[data-busy]: requests in flight plus a prompt waiting to be sent; "0": the page shows its last answer. */
function showBusy() {
  document.body.dataset.busy = String(state.busy + (live.again ? 1 : 0));
}

/** Run `call(imageId)` as the newest request; shows nothing (returns null) when a newer one started since.
 *  A 404 for the image_id (evicted from the server's cache) re-uploads the image once. */
async function run(call) {
  const ticket = ++state.seq;
  state.busy += 1;
  showBusy();
  try {
    let result;
    try {
      result = await call(await ensureEmbedded());
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404 && err.errorType === "not_found")) throw err;
      state.image.id = null;
      result = await call(await ensureEmbedded());
    }
    return ticket === state.seq ? result : null;
  } catch (err) {
    if (ticket === state.seq) setStatus(errorText(err), true);
    return null;
  } finally {
    state.busy -= 1;
    showBusy();
  }
}

function meta(endpoint, data, requestId) {
  return { endpoint, image_id: data.image_id, width: data.width, height: data.height, request_id: requestId };
}

async function openFile(file) {
  if (!file) return;
  const bytes = await file.arrayBuffer();
  if (state.image) URL.revokeObjectURL(state.image.url);
  const url = URL.createObjectURL(file);
  dom.image.src = url;
  try {
    await dom.image.decode();
  } catch {
    setStatus(`${file.name}: the browser cannot display this image`, true);
    return;
  }
  const { naturalWidth: width, naturalHeight: height } = dom.image;
  state.image = {
    bytes,
    type: file.type,
    name: file.name,
    id: null,
    width,
    height,
    url,
    sha256: await sha256Hex(bytes),
  };
  state.prompt = { points: [], box: null };
  dom.results.replaceChildren();
  dom.stage.hidden = false;
  dom.hint.hidden = true;
  showMasks([], null);
  fit();
  setStatus("embedding…");
  if ((await run(async (id) => id)) !== null) setStatus(`embedded: image_id ${state.image.id.slice(0, 12)}…`);
}

async function sendPrompt() {
  if (live.inFlight) {
    live.again = true;
    showBusy();
    return;
  }
  const spec = { points: state.prompt.points.map((p) => ({ ...p })) };
  if (state.prompt.box) spec.box = [...state.prompt.box];
  if (!spec.points.length && !spec.box) return;
  live.inFlight = true;
  const result = await run((id) =>
    api.about("/segment/prompt", {}, id, { prompts: [spec], multimask: false }),
  );
  live.inFlight = false;
  if (result) {
    const masks = result.data.prompts.flatMap((p) => p.masks);
    showMasks(masks, meta("/segment/prompt", result.data, result.requestId));
    setStatus(`prompt: ${spec.points.length} point(s)${spec.box ? " + box" : ""}`);
  }
  if (live.again) {
    live.again = false;
    sendPrompt(); // counts itself busy (synchronously) before anything can observe the page idle
    showBusy();
  }
}

function toImage(event) {
  const r = dom.stage.getBoundingClientRect();
  const { width, height } = state.image;
  const clamp = (v, hi) => Math.min(hi, Math.max(0, v));
  const x = ((event.clientX - r.left) / r.width) * width;
  const y = ((event.clientY - r.top) / r.height) * height;
  return [clamp(x, width), clamp(y, height)];
}

function installPointer() {
  let start = null;
  dom.stage.addEventListener("pointerdown", (e) => {
    if (!state.image || e.button !== 0) return;
    e.preventDefault();
    dom.stage.setPointerCapture(e.pointerId);
    start = { x: e.clientX, y: e.clientY, at: toImage(e), shift: e.shiftKey, dragging: false };
  });
  dom.stage.addEventListener("pointermove", (e) => {
    if (!start) return;
    if (!start.dragging && Math.hypot(e.clientX - start.x, e.clientY - start.y) < 5) return;
    start.dragging = true;
    const [x, y] = toImage(e);
    const [x0, y0] = start.at;
    state.prompt.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
    redraw();
    sendPrompt();
  });
  dom.stage.addEventListener("pointerup", (e) => {
    if (!start) return;
    const [x, y] = toImage(e);
    if (!start.dragging) state.prompt.points.push({ x, y, label: start.shift ? 0 : 1 });
    else
      state.prompt.box = [
        Math.min(start.at[0], x),
        Math.min(start.at[1], y),
        Math.max(start.at[0], x),
        Math.max(start.at[1], y),
      ];
    start = null;
    redraw();
    sendPrompt();
  });
}

// --- text, everything, classify --------------------------------------------------------------------------
async function segmentText() {
  const texts = splitList(dom.text.value);
  if (!texts.length) return setStatus("type a text (several: comma-separated)", true);
  const mode = dom.textMode.value;
  state.prompt = { points: [], box: null };
  let result;
  if (mode === "refine") {
    result = await run((id) => Promise.all(texts.map((t) => api.about("/segment/refine", { text: t }, id))));
    if (result) {
      const last = result[result.length - 1];
      showMasks(
        result.map((r) => r.data.mask),
        meta("/segment/refine", last.data, result.map((r) => r.requestId).join(",")),
      );
    }
  } else {
    const params = { text: texts, instances: mode === "instances" ? "true" : null };
    result = await run((id) => api.about("/segment", params, id));
    if (result) showMasks(result.data.masks, meta("/segment", result.data, result.requestId));
  }
  if (result) setStatus(`${mode}: ${texts.join(", ")} → ${state.masks.length} mask(s)`);
}

async function everything() {
  const labels = dom.everythingLabels.checked ? splitList(dom.labels.value) : [];
  const params = { labels, points_per_side: dom.pps.value || null };
  state.prompt = { points: [], box: null };
  setStatus("segment everything…");
  const result = await run((id) => api.about("/segment/everything", params, id));
  if (!result) return;
  showMasks(result.data.masks, meta("/segment/everything", result.data, result.requestId));
  setStatus(
    `everything: ${state.masks.length} mask(s)${labels.length ? ` labelled with ${labels.join(", ")}` : ""}`,
  );
}

async function classify() {
  const labels = splitList(dom.labels.value);
  if (!labels.length) return setStatus("type labels (comma-separated)", true);
  const topK = Math.min(labels.length, Math.max(1, Number(dom.topK.value) || 1));
  const result = await run((id) => api.about("/classify", { labels, top_k: topK }, id));
  if (!result) return;
  dom.results.replaceChildren();
  for (const s of result.data.labels) {
    const li = document.createElement("li");
    li.textContent = `${s.label}: ${(100 * s.probability).toFixed(1)}%`;
    dom.results.appendChild(li);
  }
  dom.results.dataset.requestId = result.requestId;
  setStatus(`classify: top ${topK} of ${labels.length}`);
}

// --- downloads -------------------------------------------------------------------------------------------
const stem = () => (state.image ? state.image.name.replace(/\.[^.]*$/, "") : "masks");

function downloadOne(i) {
  const { width, height } = state.image;
  view.downloadMaskPng(state.masks[i], width, height, `${stem()}-mask${i}.png`);
}

function installControls() {
  dom.input.addEventListener("change", () => openFile(dom.input.files[0]));
  dom.drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    dom.drop.classList.add("dragging");
  });
  dom.drop.addEventListener("dragleave", () => dom.drop.classList.remove("dragging"));
  dom.drop.addEventListener("drop", (e) => {
    e.preventDefault();
    dom.drop.classList.remove("dragging");
    openFile(e.dataTransfer.files[0]);
  });
  $("segment-text").addEventListener("click", segmentText);
  dom.text.addEventListener("keydown", (e) => e.key === "Enter" && segmentText());
  $("classify").addEventListener("click", classify);
  $("everything").addEventListener("click", everything);
  $("clear-prompts").addEventListener("click", () => {
    state.prompt = { points: [], box: null };
    state.seq += 1; // a prompt response still on its way is not shown
    showMasks([], null);
  });
  $("download-png").addEventListener("click", () => {
    if (state.image)
      view.downloadOverlayPng(state.masks, state.image.width, state.image.height, `${stem()}-masks.png`);
  });
  $("download-rle").addEventListener("click", () =>
    view.downloadRleJson(state.meta || {}, state.masks, `${stem()}-masks.json`),
  );
  window.addEventListener("resize", fit);
}

installControls();
installPointer();
showBusy();
document.body.dataset.ready = "1";

// What the page shows about the current image: the overlay canvas (masks only), the SVG layer (bboxes,
// labels, scores, prompt points and box), the mask list and the downloads. Coordinates: ORIGINAL image
// pixels, x right, y down, origin at the top-left corner of the top-left pixel; the SVG's viewBox is the
// original image, so it is drawn in those coordinates and scaled by the browser.

import { decodeRle, paintMasks, toRowMajor } from "./rle.js";

const SVG = "http://www.w3.org/2000/svg";
const ALPHA = 115; // overlay alpha (0..255) of every mask pixel
const PALETTE = [
  [230, 25, 75],
  [60, 180, 75],
  [0, 130, 200],
  [245, 130, 48],
  [145, 30, 180],
  [70, 240, 240],
  [240, 50, 230],
  [210, 245, 60],
  [250, 190, 212],
  [0, 128, 128],
  [220, 190, 255],
  [170, 110, 40],
];

export const color = (i) => PALETTE[i % PALETTE.length];
const css = ([r, g, b]) => `rgb(${r}, ${g}, ${b})`;

/** A response's mask dict -> the shown mask: the dict plus `bits` (row-major 0/1, H * W) and a colour. */
export function prepareMask(mask, i) {
  const [h, w] = mask.segmentation.size;
  return { ...mask, bits: toRowMajor(decodeRle(mask.segmentation), h, w), color: color(i), visible: true };
}

/** Caption of a mask: its label (with its instance index, text instances; with its label score, segment
 *  everything), then its score. */
export function caption(mask, i) {
  const instance = typeof mask.instance === "number" ? ` #${mask.instance}` : ""; // /segment?instances=true
  const name = mask.label != null ? `${mask.label}${instance}` : `mask ${i}`;
  const labelScore = typeof mask.label_score === "number" ? ` (${mask.label_score.toFixed(2)})` : "";
  return `${name}${labelScore} · ${mask.score.toFixed(3)}`;
}

function el(tag, attrs, parent) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  if (parent) parent.appendChild(node);
  return node;
}

/** RGBA (original size, row-major) -> a canvas of that size. */
function rgbaCanvas(rgba, h, w) {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  canvas.getContext("2d").putImageData(new ImageData(rgba, w, h), 0, 0);
  return canvas;
}

/** The visible masks in painting order: the list's first (best-scored) mask is painted last, on top. */
const stack = (masks) => masks.filter((m) => m.visible).reverse();

/** Size the image, overlay and SVG to fit `maxW` x `maxH` CSS px (small images are scaled up, pixelated). */
export function layout(dom, width, height, maxW, maxH) {
  const scale = Math.min(maxW / width, maxH / height);
  const w = Math.max(1, Math.round(width * scale));
  const h = Math.max(1, Math.round(height * scale));
  for (const node of [dom.image, dom.overlay, dom.marks, dom.stage]) {
    node.style.width = `${w}px`;
    node.style.height = `${h}px`;
  }
  dom.overlay.width = w;
  dom.overlay.height = h;
  dom.marks.setAttribute("viewBox", `0 0 ${width} ${height}`);
}

/** Draw the visible masks on the overlay: nearest-neighbour scaling, so its non-transparent pixels are
 *  exactly the masks. */
export function drawOverlay(overlay, masks, width, height) {
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  const shown = stack(masks);
  if (!shown.length) return;
  const rgba = paintMasks(
    shown.map((m) => m.bits),
    shown.map((m) => m.color),
    height,
    width,
    ALPHA,
  );
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(rgbaCanvas(rgba, height, width), 0, 0, overlay.width, overlay.height);
}

/** Bboxes with caption, prompt points (+ green, - red) and the prompt box on the SVG layer. */
export function drawMarks(svg, masks, prompt, width) {
  svg.replaceChildren();
  const unit = width / Math.max(1, svg.getBoundingClientRect().width || width); // original px per CSS px
  masks.forEach((m, i) => {
    if (!m.visible || m.area === 0) return;
    const [x, y, w, h] = m.bbox;
    const stroke = css(m.color);
    el("svg:rect", { x, y, width: w, height: h, class: "bbox", stroke, "stroke-width": 2 * unit }, svg);
    const label = el("svg:text", { x, y: y - 4 * unit, class: "caption", "font-size": 12 * unit }, svg);
    label.textContent = caption(m, i);
    label.setAttribute("fill", stroke);
  });
  if (prompt.box) {
    const [x0, y0, x1, y1] = prompt.box;
    el(
      "svg:rect",
      { x: x0, y: y0, width: x1 - x0, height: y1 - y0, class: "prompt-box", "stroke-width": 2 * unit },
      svg,
    );
  }
  for (const p of prompt.points) {
    el(
      "svg:circle",
      {
        cx: p.x,
        cy: p.y,
        r: 5 * unit,
        class: p.label ? "point pos" : "point neg",
        "stroke-width": 1.5 * unit,
      },
      svg,
    );
  }
}

/** The mask list: swatch, visibility checkbox, caption, bbox/area, and a per-mask PNG download. */
export function drawList(list, masks, onToggle, onPng) {
  list.replaceChildren();
  masks.forEach((m, i) => {
    const row = el("li", { "data-testid": "mask-row" }, list);
    const box = el("input", { type: "checkbox", title: "show" }, row);
    box.checked = m.visible;
    box.addEventListener("change", () => onToggle(i, box.checked));
    // CSSOM, not a style attribute: the page's CSP allows no inline style
    el("span", { class: "swatch" }, row).style.background = css(m.color);
    el("span", { class: "caption", text: caption(m, i) }, row);
    el("span", { class: "meta", text: `bbox ${m.bbox.join(",")} · ${m.area} px` }, row);
    el("button", { type: "button", class: "small", text: "PNG" }, row).addEventListener("click", () =>
      onPng(i),
    );
  });
}

function save(blob, name) {
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

const toPng = (canvas) => new Promise((resolve) => canvas.toBlob(resolve, "image/png"));

/** The visible masks as one RGBA PNG at original size (the overlay's colours; transparent elsewhere). */
export async function downloadOverlayPng(masks, width, height, name) {
  const shown = stack(masks);
  const rgba = paintMasks(
    shown.map((m) => m.bits),
    shown.map((m) => m.color),
    height,
    width,
    255,
  );
  save(await toPng(rgbaCanvas(rgba, height, width)), name);
}

/** One mask as the service's format=png: greyscale, 255 inside, 0 outside, original size. */
export async function downloadMaskPng(mask, width, height, name) {
  const rgba = new Uint8ClampedArray(width * height * 4);
  for (let p = 0; p < mask.bits.length; p += 1) {
    const v = mask.bits[p] ? 255 : 0;
    rgba.set([v, v, v, 255], p * 4);
  }
  save(await toPng(rgbaCanvas(rgba, height, width)), name);
}

/** The visible masks as the service returned them (COCO RLE segmentation, bbox, area, score, label...). */
export function downloadRleJson(meta, masks, name) {
  const out = masks.filter((m) => m.visible).map(({ bits, color: _c, visible: _v, ...rest }) => rest);
  const blob = new Blob([JSON.stringify({ ...meta, masks: out }, null, 1)], { type: "application/json" });
  save(blob, name);
}

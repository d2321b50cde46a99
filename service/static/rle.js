// COCO RLE in the browser: the service's masks are {"size": [H, W], "counts": str}, pycocotools' compressed
// counts (rleFrString in pycocotools' maskApi.c), runs over the COLUMN-MAJOR pixel order (index = x * H + y),
// alternating background / foreground and starting with background.

/** Compressed counts string -> run lengths (numbers; exact far past 2**31, unlike 32-bit shifts). */
export function countsFromString(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      if (p >= s.length) throw new Error("truncated RLE counts");
      const c = s.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && c & 0x10) x -= 2 ** (5 * k); // sign bit of the last 5-bit group
    }
    if (counts.length > 2) x += counts[counts.length - 2]; // counts past the 3rd are deltas
    counts.push(x);
  }
  return counts;
}

/** {"size": [H, W], "counts": str | number[]} -> Uint8Array(H * W) of 0/1 in column-major order. */
export function decodeRle(rle) {
  const [h, w] = rle.size;
  const counts = typeof rle.counts === "string" ? countsFromString(rle.counts) : rle.counts;
  const out = new Uint8Array(h * w);
  let pos = 0;
  counts.forEach((n, i) => {
    if (n < 0 || pos + n > out.length) throw new Error("RLE counts do not fit the size");
    if (i % 2 === 1) out.fill(1, pos, pos + n);
    pos += n;
  });
  if (pos !== out.length) throw new Error(`RLE covers ${pos} of ${out.length} pixels`);
  return out;
}

/** Column-major 0/1 (H * W) -> row-major 0/1 (H * W), the order of canvas ImageData. */
export function toRowMajor(colMajor, h, w) {
  const out = new Uint8Array(h * w);
  for (let x = 0; x < w; x += 1) {
    const col = x * h;
    for (let y = 0; y < h; y += 1) if (colMajor[col + y]) out[y * w + x] = 1;
  }
  return out;
}

/**
 * Paint masks into one RGBA buffer at original size (row-major, 4 bytes per pixel). masks: row-major 0/1
 * arrays (H * W); colors: [r, g, b] per mask. A pixel takes the colour of the LAST mask holding it, with
 * alpha `alpha` (1..255), so every mask pixel is non-transparent and every other pixel is fully transparent.
 */
export function paintMasks(masks, colors, h, w, alpha) {
  const rgba = new Uint8ClampedArray(h * w * 4);
  masks.forEach((mask, i) => {
    const [r, g, b] = colors[i];
    for (let p = 0; p < mask.length; p += 1) {
      if (!mask[p]) continue;
      const o = p * 4;
      rgba[o] = r;
      rgba[o + 1] = g;
      rgba[o + 2] = b;
      rgba[o + 3] = alpha;
    }
  });
  return rgba;
}

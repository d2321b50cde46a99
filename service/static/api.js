// The service's HTTP contract as the page uses it: parameters in the QUERY string, the image as a raw
// body (POST /embed) and later as JSON {"image_id": ...}; X-API-Key when a key is given; X-Image-Id on
// every request about an image (routing); errors are JSON {"error", "error_type", "request_id"}.

export class ApiError extends Error {
  constructor(status, body) {
    super(body.error || `HTTP ${status}`);
    this.status = status;
    this.errorType = body.error_type || "http_error";
    this.requestId = body.request_id || "";
  }
}

/** Lowercase hex sha256 of `bytes` (the service's image_id), or null where WebCrypto is unavailable
 *  (pages served over plain http from a host other than localhost are not a secure context). */
export async function sha256Hex(bytes) {
  if (!globalThis.crypto || !crypto.subtle) return null;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** "?a=1&b=x&b=y" from {a: 1, b: ["x", "y"], c: null}: lists repeat the parameter, null/"" are left out. */
export function queryString(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    for (const v of Array.isArray(value) ? value : [value]) {
      if (v !== null && v !== undefined && v !== "") q.append(key, String(v));
    }
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

export class Api {
  /** getKey: () => the API key ("" = none). */
  constructor(getKey) {
    this.getKey = getKey;
  }

  headers(imageId, contentType) {
    const h = { Accept: "application/json" };
    if (contentType) h["Content-Type"] = contentType;
    if (imageId) h["X-Image-Id"] = imageId;
    const key = this.getKey().trim();
    if (key) h["X-API-Key"] = key;
    return h;
  }

  /** POST path?params with `body`; resolves to {data, requestId}; rejects with ApiError on a non-2xx. */
  async post(path, params, body, contentType, imageId) {
    const response = await fetch(path + queryString(params), {
      method: "POST",
      headers: this.headers(imageId, contentType),
      body,
    });
    const text = await response.text();
    let data;
    try {
      data = text ? JSON.parse(text) : {};
    } catch {
      data = { error: text.slice(0, 200) };
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return { data, requestId: response.headers.get("X-Request-ID") || "" };
  }

  /** Upload image bytes once: POST /embed with a raw body. */
  embed(bytes, type, imageId) {
    const contentType = type && type.startsWith("image/") ? type : "application/octet-stream";
    return this.post("/embed", {}, bytes, contentType, imageId);
  }

  /** A request about an already uploaded image: JSON body {"image_id", ...extra}. */
  about(path, params, imageId, extra) {
    const body = JSON.stringify({ image_id: imageId, ...(extra || {}) });
    return this.post(path, params, body, "application/json", imageId);
  }
}

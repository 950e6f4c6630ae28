// The only way the dashboard talks to the gateway: its public HTTP APIs, with the key
// the user signed in with. The key lives in this tab's sessionStorage and nowhere else.

const KEY_ITEM = "tuneforge.apiKey";

export const session = {
  get key() {
    return sessionStorage.getItem(KEY_ITEM);
  },
  save(key) {
    sessionStorage.setItem(KEY_ITEM, key);
  },
  clear() {
    sessionStorage.removeItem(KEY_ITEM);
  },
};

/** An error answer of the gateway, in OpenAI's shape: message, code, param. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
  }
}

async function errorOf(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page): the status line is all there is.
  }
  const error = body.error || (typeof body.detail === "string" ? { message: body.detail } : {});
  return new ApiError(response.status, { message: response.statusText, ...error });
}

function headers(key, extra = {}) {
  return { Authorization: `Bearer ${key}`, ...extra };
}

/** Calls the API; JSON in, JSON out. A 401 signs the tab out, since the key stopped working. */
export async function api(path, { method = "GET", body, form, key = session.key, signal } = {}) {
  const init = { method, headers: headers(key), signal };
  if (form) {
    init.body = form;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && key === session.key) {
      session.clear();
      window.dispatchEvent(new CustomEvent("tuneforge:signed-out", { detail: error.message }));
    }
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

/** Streams a chat completion: yields each server-sent chunk until `[DONE]`. */
export async function* streamChat(body, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(session.key, { "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(response.status, chunk.error);
        yield chunk;
      }
    }
  }
}

/** Saves a file's content (a batch's output, say) through the browser's download. */
export async function download(path, filename) {
  const response = await fetch(path, { headers: headers(session.key) });
  if (!response.ok) throw await errorOf(response);
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// Small pieces the pages share.
import { useState } from "preact/hooks";

import { html } from "./html.js";
import { when } from "./format.js";

const TONES = {
  succeeded: "good", completed: "good", Ready: "good",
  failed: "bad", Failed: "bad", expired: "bad", Degraded: "bad",
  cancelled: "muted", stopped: "muted", paused: "muted", cancelling: "muted",
};

export function StatusBadge({ status }) {
  return html`<span class=${`badge ${TONES[status] || "busy"}`}>${String(status).replaceAll("_", " ")}</span>`;
}

/** A labelled progress bar; `value` of `max`, or an empty bar when unknown. */
export function Progress({ value, max, label }) {
  const known = Number.isFinite(value) && Number.isFinite(max) && max > 0;
  const percent = known ? Math.min(100, Math.round((100 * value) / max)) : 0;
  return html`<div class="progress-cell">
    <progress max="100" value=${percent} aria-label=${label}></progress>
    <span class="muted small">${known ? `${percent}%` : "—"}</span>
  </div>`;
}

/** An API error as the gateway gave it: message, code and the parameter it concerns. */
export function ErrorNotice({ error, title = "Something went wrong" }) {
  if (!error) return null;
  return html`<div class="notice error" role="alert">
    <strong>${title}</strong>
    <p>${error.message}</p>
    ${(error.code || error.param) &&
    html`<p class="small">${error.code && html`code <code>${error.code}</code>`}
      ${error.param && html` · parameter <code>${error.param}</code>`}</p>`}
  </div>`;
}

export function Empty({ children }) {
  return html`<p class="empty">${children}</p>`;
}

export function Loading() {
  return html`<p class="muted" aria-live="polite">Loading…</p>`;
}

export function Time({ value }) {
  return html`<span>${when(value)}</span>`;
}

/** A value users paste elsewhere (a model id), with a button that copies it. */
export function CopyValue({ value, label }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    await navigator.clipboard.writeText(value);
    setCopied(true);
    setTimeout(() => setCopied(false), 2000);
  };
  return html`<span class="copy">
    <code>${value}</code>
    <button type="button" class="small-button" onClick=${copy} aria-label=${`Copy ${label}`}>
      ${copied ? "Copied" : "Copy"}
    </button>
  </span>`;
}

/** Previous / next for offset pages, with where the page sits in the whole. */
export function OffsetPager({ offset, limit, count, onPage }) {
  if (!count) return null;
  const last = Math.min(offset + limit, count);
  return html`<nav class="pager" aria-label="Pages">
    <button type="button" disabled=${offset === 0} onClick=${() => onPage(Math.max(0, offset - limit))}>Previous</button>
    <span>${(offset + 1).toLocaleString()}–${last.toLocaleString()} of ${count.toLocaleString()}</span>
    <button type="button" disabled=${last >= count} onClick=${() => onPage(offset + limit)}>Next</button>
  </nav>`;
}

/** A button that asks again in place before it acts (no modal dialog to trap focus). */
export function ConfirmButton({ label, confirm, onConfirm, danger = false }) {
  const [asking, setAsking] = useState(false);
  if (!asking) {
    return html`<button type="button" class=${danger ? "danger" : ""} onClick=${() => setAsking(true)}>${label}</button>`;
  }
  return html`<span class="confirm" role="group" aria-label=${label}>
    <span>${confirm}</span>
    <button type="button" class="danger" onClick=${() => { setAsking(false); onConfirm(); }}>Yes, ${label.toLowerCase()}</button>
    <button type="button" onClick=${() => setAsking(false)}>No</button>
  </span>`;
}

export function Field({ label, hint, children, id }) {
  return html`<div class="field">
    <label for=${id}>${label}</label>
    ${children}
    ${hint && html`<p class="hint" id=${`${id}-hint`}>${hint}</p>`}
  </div>`;
}

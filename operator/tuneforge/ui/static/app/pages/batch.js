// One batch: request-count progress, its timeline, errors by input line, result files.
import { useState } from "preact/hooks";

import { api, download } from "../api.js";
import { ConfirmButton, Empty, ErrorNotice, Loading, Progress, StatusBadge, Time } from "../components.js";
import { usePoll } from "../hooks.js";
import { html } from "../html.js";
import { can } from "../scopes.js";
import { done } from "./batches.js";

const FINAL = new Set(["completed", "failed", "expired", "cancelled"]);
const TIMELINE = ["created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
  "cancelling_at", "cancelled_at", "expires_at"];

function ResultFile({ label, fileId, name }) {
  const [error, setError] = useState(null);
  if (!fileId) return null;
  const save = () => download(`/v1/files/${fileId}/content`, name).catch(setError);
  return html`<div><button type="button" onClick=${save}>${label}</button>
    <span class="muted small mono"> ${fileId}</span><${ErrorNotice} error=${error} title="Download failed" /></div>`;
}

export function BatchPage({ id, caller }) {
  const [actionError, setActionError] = useState(null);
  const batch = usePoll(() => api(`/v1/batches/${id}`), [id],
    { intervalMs: 2000, live: (data) => !data || !FINAL.has(data.status) });
  if (batch.error && !batch.data) return html`<${ErrorNotice} error=${batch.error} title="Could not load the batch" />`;
  if (!batch.data) return html`<${Loading} />`;
  const b = batch.data;
  const counts = b.request_counts || {};
  const errors = b.errors?.data || [];
  const cancel = () => api(`/v1/batches/${id}/cancel`, { method: "POST" }).then(batch.reload, setActionError);
  return html`<section>
    <p><a href="#/batches">← All batches</a></p>
    <div class="title-row"><h1 class="mono">${b.id}</h1><${StatusBadge} status=${b.status} /></div>
    <${Progress} value=${done(counts)} max=${counts.total} label="Requests done" />
    <p aria-live="polite" class="request-counts">
      ${`${done(counts)} of ${counts.total ?? "?"} requests done: ${counts.completed ?? 0} completed, ${counts.failed ?? 0} failed`}
    </p>
    ${can(caller, "batches:write") && !FINAL.has(b.status) && b.status !== "cancelling" &&
    html`<div class="actions"><${ConfirmButton} label="Cancel batch" confirm="Requests not yet sent are dropped." danger onConfirm=${cancel} /></div>`}
    <${ErrorNotice} error=${actionError} title="The batch refused" />
    <div class="columns">
      <div>
        <h2>Details</h2>
        <dl class="facts">
          <dt>Endpoint</dt><dd class="mono">${b.endpoint}</dd>
          <dt>Input file</dt><dd class="mono">${b.input_file_id}</dd>
          <dt>Window</dt><dd>${b.completion_window}</dd>
          ${TIMELINE.filter((field) => b[field]).map((field) => html`<dt>${field.replace(/_at$/, "").replaceAll("_", " ")}</dt>
            <dd><${Time} value=${b[field]} /></dd>`)}
        </dl>
      </div>
      <div>
        <h2>Results</h2>
        ${!b.output_file_id && !b.error_file_id && html`<${Empty}>No result files yet.</${Empty}>`}
        <${ResultFile} label="Download output" fileId=${b.output_file_id} name=${`${b.id}_output.jsonl`} />
        <${ResultFile} label="Download errors" fileId=${b.error_file_id} name=${`${b.id}_errors.jsonl`} />
      </div>
    </div>
    ${errors.length > 0 && html`<h2>Input errors</h2><div class="table-wrap"><table>
      <thead><tr><th scope="col">Line</th><th scope="col">Code</th><th scope="col">Message</th><th scope="col">Parameter</th></tr></thead>
      <tbody>${errors.map((e) => html`<tr><td>${e.line ?? "—"}</td><td class="mono small">${e.code}</td>
        <td>${e.message}</td><td class="mono small">${e.param ?? ""}</td></tr>`)}</tbody>
    </table></div>`}
  </section>`;
}

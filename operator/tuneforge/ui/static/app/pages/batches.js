// Batches, newest first, in the OpenAI API's cursor pages.
import { useState } from "preact/hooks";

import { api, query } from "../api.js";
import { Empty, ErrorNotice, Loading, Progress, StatusBadge, Time } from "../components.js";
import { usePoll } from "../hooks.js";
import { html } from "../html.js";

const PAGE = 20;

export function done(counts) {
  return (counts?.completed || 0) + (counts?.failed || 0);
}

export function BatchesPage() {
  // The cursors of the pages before this one; the last is this page's `after`.
  const [cursors, setCursors] = useState([null]);
  const after = cursors[cursors.length - 1];
  const batches = usePoll(() => api(`/v1/batches${query({ limit: PAGE, after })}`), [after], { intervalMs: 5000 });
  const rows = batches.data?.data || [];
  return html`<section>
    <h1>Batches</h1>
    <${ErrorNotice} error=${batches.error} title="Could not list batches" />
    ${batches.loading && !batches.data && html`<${Loading} />`}
    ${batches.data && rows.length === 0 && html`<${Empty}>No batches yet. Create one with the API: <code>POST /v1/batches</code>.</${Empty}>`}
    ${rows.length > 0 && html`<div class="table-wrap"><table>
      <caption class="visually-hidden">Batches</caption>
      <thead><tr><th scope="col">Batch</th><th scope="col">Status</th><th scope="col">Endpoint</th>
        <th scope="col">Requests</th><th scope="col">Created</th><th scope="col">Completed</th></tr></thead>
      <tbody>${rows.map((batch) => html`<tr>
        <td><a class="mono" href=${`#/batches/${batch.id}`}>${batch.id}</a></td>
        <td><${StatusBadge} status=${batch.status} /></td>
        <td class="mono small">${batch.endpoint}</td>
        <td><${Progress} value=${done(batch.request_counts)} max=${batch.request_counts?.total} label=${`Requests of ${batch.id}`} />
          <span class="small muted">${done(batch.request_counts)} / ${batch.request_counts?.total ?? "?"}</span></td>
        <td><${Time} value=${batch.created_at} /></td>
        <td><${Time} value=${batch.completed_at} /></td>
      </tr>`)}</tbody>
    </table></div>
    <nav class="pager" aria-label="Pages">
      <button type="button" disabled=${cursors.length === 1} onClick=${() => setCursors(cursors.slice(0, -1))}>Previous</button>
      <button type="button" disabled=${!batches.data?.has_more}
        onClick=${() => setCursors([...cursors, batches.data.last_id])}>Next</button>
    </nav>`}
  </section>`;
}

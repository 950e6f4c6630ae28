// The job list: the management API's filters, search and offset pages, so a tenant with
// 10,000 jobs loads 20 rows at a time.
import { useEffect, useState } from "preact/hooks";

import { api, query } from "../api.js";
import { Empty, ErrorNotice, Loading, OffsetPager, Progress, StatusBadge, Time } from "../components.js";
import { usePoll } from "../hooks.js";
import { html } from "../html.js";
import { can } from "../scopes.js";

const STATUSES = ["queued", "running", "completed", "failed", "stopped"];
const PAGE = 20;

export function JobsPage({ caller }) {
  const [status, setStatus] = useState("");
  const [baseModel, setBaseModel] = useState("");
  const [typed, setTyped] = useState("");
  const [search, setSearch] = useState("");
  const [offset, setOffset] = useState(0);
  useEffect(() => {
    const timer = setTimeout(() => setSearch(typed.trim()), 300);
    return () => clearTimeout(timer);
  }, [typed]);
  useEffect(() => setOffset(0), [status, baseModel, search]);

  const models = usePoll(() => api("/api/v1/fine-tuning/base-models"), []);
  const jobs = usePoll(
    () => api(`/api/v1/fine-tuning/jobs${query({ status, baseModel, search, limit: PAGE, offset })}`),
    [status, baseModel, search, offset],
    { intervalMs: 5000 },
  );
  const filtered = Boolean(status || baseModel || search);

  return html`<section>
    <div class="title-row">
      <h1>Fine-tuning jobs</h1>
      ${can(caller, "fine-tuning:write") && can(caller, "files:write") && html`<a class="button primary" href="#/new">New job</a>`}
    </div>
    <form class="filters" role="search" onSubmit=${(e) => e.preventDefault()}>
      <div class="field inline">
        <label for="filter-status">Status</label>
        <select id="filter-status" value=${status} onChange=${(e) => setStatus(e.target.value)}>
          <option value="">Any</option>
          ${STATUSES.map((s) => html`<option value=${s}>${s}</option>`)}
        </select>
      </div>
      <div class="field inline">
        <label for="filter-model">Base model</label>
        <select id="filter-model" value=${baseModel} onChange=${(e) => setBaseModel(e.target.value)}>
          <option value="">Any</option>
          ${(models.data?.models || []).map((m) => html`<option value=${m.id}>${m.name || m.id}</option>`)}
        </select>
      </div>
      <div class="field inline grow">
        <label for="filter-search">Search</label>
        <input id="filter-search" type="search" placeholder="Name or description" value=${typed}
          onInput=${(e) => setTyped(e.target.value)} />
      </div>
    </form>
    <${ErrorNotice} error=${jobs.error} title="Could not list jobs" />
    ${jobs.loading && !jobs.data && html`<${Loading} />`}
    ${jobs.data && jobs.data.count === 0 &&
    html`<${Empty}>${filtered ? "No job matches these filters." : "No fine-tuning jobs yet."}
      ${!filtered && can(caller, "fine-tuning:write") && html` <a href="#/new">Start one.</a>`}</${Empty}>`}
    ${jobs.data && jobs.data.count > 0 && html`<div class="table-wrap"><table>
      <caption class="visually-hidden">Fine-tuning jobs</caption>
      <thead><tr><th scope="col">Name</th><th scope="col">Status</th><th scope="col">Base model</th>
        <th scope="col">Progress</th><th scope="col">Created</th><th scope="col">Finished</th></tr></thead>
      <tbody>${jobs.data.jobs.map((job) => html`<tr>
        <td><a href=${`#/jobs/${job.id}`}>${job.name}</a><div class="muted small mono">${job.id}</div></td>
        <td><${StatusBadge} status=${job.status} /></td>
        <td class="mono small">${job.baseModel}</td>
        <td><${Progress} value=${job.status === "completed" ? 1 : job.progress?.step}
          max=${job.status === "completed" ? 1 : job.progress?.totalSteps} label=${`Progress of ${job.name}`} /></td>
        <td><${Time} value=${job.createdAt} /></td>
        <td><${Time} value=${job.finishedAt} /></td>
      </tr>`)}</tbody>
    </table></div>
    <${OffsetPager} offset=${offset} limit=${PAGE} count=${jobs.data.count} onPage=${setOffset} />`}
  </section>`;
}

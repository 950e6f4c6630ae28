// What can be called: the catalog, the tenant's fine-tuned models and its deployments.
import { api } from "../api.js";
import { Empty, ErrorNotice, Loading, StatusBadge, Time } from "../components.js";
import { usePoll } from "../hooks.js";
import { html } from "../html.js";
import { can } from "../scopes.js";

function chatLink(caller, id) {
  return can(caller, "chat")
    ? html`<a href=${`#/playground?model=${encodeURIComponent(id)}`} aria-label=${`Chat with ${id}`}>Chat</a>`
    : null;
}

function ModelTable({ caption, models, caller, extra }) {
  if (!models.length) return html`<${Empty}>No ${caption.toLowerCase()}.</${Empty}>`;
  return html`<div class="table-wrap"><table>
    <caption class="visually-hidden">${caption}</caption>
    <thead><tr><th scope="col">Model id</th><th scope="col">${extra.title}</th><th scope="col">Created</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
    <tbody>${models.map((m) => html`<tr>
      <td class="mono">${m.id}</td><td>${extra.cell(m)}</td><td><${Time} value=${m.created} /></td><td>${chatLink(caller, m.id)}</td>
    </tr>`)}</tbody>
  </table></div>`;
}

export function ModelsPage({ caller }) {
  const models = usePoll(() => api("/v1/models"), [], { intervalMs: 10000 });
  const deployments = usePoll(() => api("/api/v1/fine-tuning/deployments"), [], { intervalMs: 5000 });
  const all = models.data?.data || [];
  const of = (kind) => all.filter((m) => m.kind === kind);
  return html`<section>
    <h1>Models</h1>
    <${ErrorNotice} error=${models.error} title="Could not list models" />
    ${models.loading && !models.data && html`<${Loading} />`}
    ${models.data && html`
      <h2>Base models</h2>
      <${ModelTable} caption="Base models" models=${of("base")} caller=${caller}
        extra=${{ title: "Fine-tunable", cell: (m) => (m.fine_tunable === false ? "no" : "yes") }} />
      <h2>Fine-tuned models</h2>
      <${ModelTable} caption="Fine-tuned models" models=${of("fine-tuned")} caller=${caller}
        extra=${{ title: "Job", cell: (m) => html`<a class="mono small" href=${`#/jobs/${m.fine_tuning_job}`}>${m.fine_tuning_job}</a>` }} />`}
    <h2>Deployments</h2>
    <${ErrorNotice} error=${deployments.error} title="Could not list deployments" />
    ${deployments.data && deployments.data.count === 0 && html`<${Empty}>No deployments serve this namespace.</${Empty}>`}
    ${deployments.data && deployments.data.count > 0 && html`<div class="table-wrap"><table>
      <caption class="visually-hidden">Deployments</caption>
      <thead><tr><th scope="col">Deployment</th><th scope="col">Base model</th><th scope="col">Phase</th>
        <th scope="col">Ready replicas</th><th scope="col">Serves</th></tr></thead>
      <tbody>${deployments.data.deployments.map((d) => html`<tr>
        <td class="mono">${d.name}<div class="small muted">${d.shared ? "shared by all tenants" : d.namespace}</div></td>
        <td class="mono small">${d.baseModel}</td>
        <td><${StatusBadge} status=${d.phase || "Pending"} />${d.message && html`<div class="small muted">${d.message}</div>`}</td>
        <td>${d.readyReplicas ?? 0} / ${d.replicas ?? "?"}</td>
        <td>${(d.servedModels || []).map((name) => html`<div class="mono small">${name} ${chatLink(caller, name)}</div>`)}</td>
      </tr>`)}</tbody>
    </table></div>`}
  </section>`;
}

// One job: its state, live curves, events, checkpoints and the actions its key allows.
// Polls every 2 s while the job can still change, then stops.
import { useState } from "preact/hooks";

import { api } from "../api.js";
import { LineChart } from "../chart.js";
import { ConfirmButton, CopyValue, Empty, ErrorNotice, Loading, Progress, StatusBadge, Time } from "../components.js";
import { number } from "../format.js";
import { usePoll } from "../hooks.js";
import { html } from "../html.js";
import { can } from "../scopes.js";

const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const LIVE_MS = 2000;

function curves(steps) {
  const at = (field) => steps.map((point) => point[field] ?? null);
  return {
    steps: steps.map((point) => point.step),
    loss: { training: at("trainingLoss"), validation: at("validationLoss") },
    learningRate: { "learning rate": at("learningRate") },
    throughput: { "tokens/s": at("tokensPerSecond") },
  };
}

function Actions({ id, status, onDone }) {
  const [error, setError] = useState(null);
  const [message, setMessage] = useState(null);
  const act = async (path, management = false) => {
    setError(null);
    setMessage(null);
    try {
      const answer = await api(management ? `/api/v1/fine-tuning/jobs/${id}/${path}` : `/v1/fine_tuning/jobs/${id}/${path}`,
        { method: "POST", body: management ? {} : undefined });
      if (answer?.message) setMessage(answer.message);
      onDone();
    } catch (failure) {
      setError(failure);
    }
  };
  return html`<div class="actions" aria-label="Job actions" role="group">
    ${status === "running" && html`<button type="button" onClick=${() => act("pause")}>Pause</button>`}
    ${status === "paused" && html`<button type="button" onClick=${() => act("resume")}>Resume</button>`}
    ${!FINAL.has(status) &&
    html`<${ConfirmButton} label="Cancel job" confirm="Cancelling is final." danger onConfirm=${() => act("cancel")} />`}
    ${status === "failed" && html`<button type="button" onClick=${() => act("restart", true)}>Restart</button>`}
    ${status === "succeeded" && html`<button type="button" onClick=${() => act("deploy", true)}>Deploy</button>`}
    ${message && html`<p class="notice ok" role="status">${message}</p>`}
    <${ErrorNotice} error=${error} title="The job refused" />
  </div>`;
}

function Overview({ job, detail }) {
  const hp = detail.hyperparameters || {};
  return html`<dl class="facts">
    <dt>Base model</dt><dd class="mono">${detail.baseModel}</dd>
    <dt>Training file</dt><dd>${detail.trainingFile || detail.trainingDataset} <span class="muted small mono">${detail.trainingDataset}</span></dd>
    ${detail.validationDataset && html`<dt>Validation file</dt><dd>${detail.validationFile || detail.validationDataset}</dd>`}
    <dt>Created</dt><dd><${Time} value=${detail.createdAt} /></dd>
    <dt>Started</dt><dd><${Time} value=${detail.startedAt} /></dd>
    <dt>Finished</dt><dd><${Time} value=${detail.finishedAt} /></dd>
    ${!FINAL.has(job.status) && detail.estimatedFinish && html`<dt>Estimated finish</dt><dd><${Time} value=${detail.estimatedFinish} /></dd>`}
    <dt>Trained tokens</dt><dd>${number(detail.trainedTokens)}</dd>
    <dt>Epochs</dt><dd>${hp.epochs}</dd>
    <dt>Batch size</dt><dd>${hp.batchSize}</dd>
    <dt>Learning rate</dt><dd>${typeof hp.learningRate === "number" ? number(hp.learningRate, 3) : hp.learningRate}</dd>
    ${hp.warmupSteps !== null && hp.warmupSteps !== undefined && html`<dt>Warm-up steps</dt><dd>${hp.warmupSteps}</dd>`}
    ${detail.suffix && html`<dt>Suffix</dt><dd>${detail.suffix}</dd>`}
    ${detail.restarts > 0 && html`<dt>Restarts</dt><dd>${detail.restarts}</dd>`}
  </dl>`;
}

function Events({ events }) {
  if (!events.length) return html`<${Empty}>No events yet.</${Empty}>`;
  return html`<ol class="events" aria-live="polite">
    ${events.map((event) => html`<li class=${`event ${event.level}`}>
      <${Time} value=${event.created_at} /> <span class="badge ${event.level === "error" ? "bad" : "muted"}">${event.level}</span>
      <span>${event.message}</span>
    </li>`)}
  </ol>`;
}

function Checkpoints({ checkpoints }) {
  if (!checkpoints.length) return html`<${Empty}>No checkpoints yet.</${Empty}>`;
  return html`<div class="table-wrap"><table>
    <thead><tr><th scope="col">Step</th><th scope="col">Training loss</th><th scope="col">Validation loss</th>
      <th scope="col">Checkpoint model</th><th scope="col">Saved</th></tr></thead>
    <tbody>${checkpoints.map((c) => html`<tr>
      <td>${c.step_number}</td>
      <td>${number(c.metrics?.train_loss)}</td>
      <td>${number(c.metrics?.valid_loss ?? c.metrics?.full_valid_loss)}</td>
      <td class="mono small">${c.fine_tuned_model_checkpoint}</td>
      <td><${Time} value=${c.created_at} /></td>
    </tr>`)}</tbody>
  </table></div>`;
}

export function JobPage({ id, caller }) {
  const running = (data) => !data || !FINAL.has(data.status);
  const job = usePoll(() => api(`/v1/fine_tuning/jobs/${id}`), [id], { intervalMs: LIVE_MS, live: running });
  const poll = { intervalMs: LIVE_MS, live: running(job.data) };
  const detail = usePoll(() => api(`/api/v1/fine-tuning/jobs/${id}`), [id, job.data?.status], poll);
  const metrics = usePoll(() => api(`/api/v1/fine-tuning/jobs/${id}/metrics`), [id, job.data?.status], poll);
  const events = usePoll(() => api(`/v1/fine_tuning/jobs/${id}/events?limit=50`), [id, job.data?.status], poll);
  const checkpoints = usePoll(() => api(`/v1/fine_tuning/jobs/${id}/checkpoints?limit=20`), [id, job.data?.status], poll);

  if (job.error && !job.data) return html`<${ErrorNotice} error=${job.error} title="Could not load the job" />`;
  if (!job.data || !detail.data) return html`<${Loading} />`;
  const current = job.data;
  const info = detail.data;
  const points = curves(metrics.data?.metrics?.steps || []);
  const refresh = () => { job.reload(); detail.reload(); events.reload(); };

  return html`<section>
    <p><a href="#/jobs">← All jobs</a></p>
    <div class="title-row">
      <h1>${info.name}</h1>
      <${StatusBadge} status=${current.status} />
    </div>
    <p class="muted mono small">${id}</p>
    ${info.description && html`<p>${info.description}</p>`}
    <${Progress} value=${current.status === "succeeded" ? 1 : info.progress?.step}
      max=${current.status === "succeeded" ? 1 : info.progress?.totalSteps} label="Training progress" />
    ${info.progress?.totalSteps && html`<p class="small muted">Step ${info.progress.step ?? 0} of ${info.progress.totalSteps}</p>`}
    ${can(caller, "fine-tuning:write") && html`<${Actions} id=${id} status=${current.status} onDone=${refresh} />`}
    ${current.error?.message && html`<${ErrorNotice} error=${current.error} title="The job failed" />`}
    ${current.fine_tuned_model && html`<div class="notice ok">
      <strong>Fine-tuned model</strong>
      <p><${CopyValue} value=${current.fine_tuned_model} label="fine-tuned model id" />
        ${can(caller, "chat") && html` <a href=${`#/playground?model=${encodeURIComponent(current.fine_tuned_model)}`}>Chat with it</a>`}</p>
    </div>`}
    <div class="charts">
      <${LineChart} title="Loss" yLabel="loss" steps=${points.steps} lines=${points.loss} />
      <${LineChart} title="Learning rate" yLabel="lr" steps=${points.steps} lines=${points.learningRate} />
      <${LineChart} title="Throughput" yLabel="tokens/s" steps=${points.steps} lines=${points.throughput} />
    </div>
    <div class="columns">
      <div><h2>Details</h2><${Overview} job=${current} detail=${info} /></div>
      <div><h2>Events</h2><${Events} events=${events.data?.data || []} /></div>
    </div>
    <h2>Checkpoints</h2>
    <${Checkpoints} checkpoints=${checkpoints.data?.data || []} />
  </section>`;
}

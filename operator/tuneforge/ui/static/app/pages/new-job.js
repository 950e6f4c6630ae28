// A new job: upload (validated by the gateway, errors by line), a base model, the
// hyperparameters (auto unless set), the estimate, then start.
import { useEffect, useState } from "preact/hooks";

import { api } from "../api.js";
import { ErrorNotice, Field, Loading } from "../components.js";
import { bytes, number } from "../format.js";
import { navigate, usePoll } from "../hooks.js";
import { html } from "../html.js";
import { can } from "../scopes.js";

function Upload({ id, label, file, onUploaded }) {
  const [state, setState] = useState({ busy: false, error: null });
  const choose = async (event) => {
    const chosen = event.target.files[0];
    onUploaded(null);
    if (!chosen) return;
    setState({ busy: true, error: null });
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", chosen, chosen.name);
    try {
      onUploaded(await api("/v1/files", { method: "POST", form }));
      setState({ busy: false, error: null });
    } catch (error) {
      setState({ busy: false, error });
    }
  };
  return html`<${Field} id=${id} label=${label} hint="JSONL, one chat example per line; checked as it uploads.">
    <input id=${id} type="file" accept=".jsonl,application/jsonl,application/x-ndjson" onChange=${choose} />
    ${state.busy && html`<p class="muted" aria-live="polite">Uploading and validating…</p>`}
    <${ErrorNotice} error=${state.error} title="Upload failed" />
    ${file && file.status === "error" && html`<div class="notice error" role="alert">
      <strong>${file.filename} is not a valid fine-tuning file</strong><p>${file.status_details}</p></div>`}
    ${file && file.status !== "error" && html`<p class="notice ok" role="status">
      ${file.filename}: ${bytes(file.bytes)}, valid <span class="mono small">(${file.id})</span></p>`}
  </${Field}>`;
}

function hyperparameters(values) {
  const chosen = {};
  for (const [name, value] of Object.entries(values)) {
    if (value.trim() !== "") chosen[name] = Number(value);
  }
  return chosen;
}

function Estimate({ baseModel, training, epochs }) {
  const [state, setState] = useState({ estimate: null, error: null });
  useEffect(() => {
    setState({ estimate: null, error: null });
    if (!baseModel || !training) return;
    const body = { baseModel, trainingFile: training.id, ...(epochs ? { epochs } : {}) };
    api("/api/v1/fine-tuning/estimate-cost", { method: "POST", body }).then(
      (estimate) => setState({ estimate, error: null }),
      (error) => setState({ estimate: null, error }),
    );
  }, [baseModel, training?.id, epochs]);
  if (state.error) return html`<${ErrorNotice} error=${state.error} title="No estimate" />`;
  if (!state.estimate) return null;
  const e = state.estimate;
  return html`<p class="notice" role="status" aria-label="Estimate">
    About <strong>${number(e.estimatedTimeMinutes, 2)} minutes</strong>
    ${e.estimatedCost !== null && html` and <strong>${number(e.estimatedCost, 3)} ${e.currency}</strong>`}
    on ${e.hardwareProfile}: ${e.totalTokens.toLocaleString()} tokens over ${e.epochs} epoch(s)
    <span class="muted small">(${e.basis})</span></p>`;
}

export function NewJobPage({ caller }) {
  const models = usePoll(() => api("/api/v1/fine-tuning/base-models"), []);
  const [training, setTraining] = useState(null);
  const [validation, setValidation] = useState(null);
  const [form, setForm] = useState({ name: "", baseModel: "", suffix: "" });
  const [hp, setHp] = useState({ epochs: "", batchSize: "", learningRate: "" });
  const [state, setState] = useState({ busy: false, error: null });
  if (!can(caller, "fine-tuning:write") || !can(caller, "files:write")) {
    return html`<p class="notice">This key cannot upload files and start jobs.</p>`;
  }
  const catalog = models.data?.models || [];
  const baseModel = form.baseModel || catalog[0]?.id || "";
  const usable = training && training.status !== "error" && (!validation || validation.status !== "error");
  const set = (field) => (event) => setForm({ ...form, [field]: event.target.value });
  const setHyper = (field) => (event) => setHp({ ...hp, [field]: event.target.value });

  const submit = async (event) => {
    event.preventDefault();
    setState({ busy: true, error: null });
    const body = {
      name: form.name.trim() || training.filename,
      baseModel,
      trainingDataset: training.id,
      hyperparameters: hyperparameters(hp),
      ...(validation ? { validationFile: validation.id } : {}),
      ...(form.suffix.trim() ? { suffix: form.suffix.trim() } : {}),
    };
    try {
      const job = await api("/api/v1/fine-tuning/jobs", { method: "POST", body });
      navigate(`/jobs/${job.id}`);
    } catch (error) {
      setState({ busy: false, error });
    }
  };

  return html`<section>
    <h1>New fine-tuning job</h1>
    ${models.loading && !models.data && html`<${Loading} />`}
    <${ErrorNotice} error=${models.error} title="Could not load the model catalog" />
    <form class="form" onSubmit=${submit}>
      <${Upload} id="training-file" label="Training file" file=${training} onUploaded=${setTraining} />
      <${Upload} id="validation-file" label="Validation file (optional)" file=${validation} onUploaded=${setValidation} />
      <${Field} id="base-model" label="Base model">
        <select id="base-model" value=${baseModel} onChange=${set("baseModel")} required>
          ${catalog.map((m) => html`<option value=${m.id}>${m.name || m.id} (${m.parameterCount || "?"})</option>`)}
        </select>
      </${Field}>
      <${Field} id="job-name" label="Name" hint="Defaults to the training file's name.">
        <input id="job-name" value=${form.name} maxlength="200" onInput=${set("name")} />
      </${Field}>
      <${Field} id="suffix" label="Model suffix (optional)" hint="Part of the fine-tuned model's id.">
        <input id="suffix" value=${form.suffix} maxlength="40" onInput=${set("suffix")} />
      </${Field}>
      <fieldset>
        <legend>Hyperparameters (empty means auto)</legend>
        <${Field} id="hp-epochs" label="Epochs">
          <input id="hp-epochs" type="number" min="1" max="50" placeholder="auto" value=${hp.epochs} onInput=${setHyper("epochs")} />
        </${Field}>
        <${Field} id="hp-batch" label="Batch size">
          <input id="hp-batch" type="number" min="1" max="256" placeholder="auto" value=${hp.batchSize} onInput=${setHyper("batchSize")} />
        </${Field}>
        <${Field} id="hp-lr" label="Learning rate">
          <input id="hp-lr" type="number" min="0" step="any" placeholder="auto" value=${hp.learningRate} onInput=${setHyper("learningRate")} />
        </${Field}>
      </fieldset>
      ${usable && html`<${Estimate} baseModel=${baseModel} training=${training} epochs=${Number(hp.epochs) || 0} />`}
      <${ErrorNotice} error=${state.error} title="The job was not created" />
      <button type="submit" class="primary" disabled=${!usable || !baseModel || state.busy}>Start fine-tuning</button>
    </form>
  </section>`;
}

"""FineTuningJob controller: validate, run the trainer Job, report progress, finish.

One reconcile function, run by the kind's ticker (ticker.py) for every FineTuningJob that
is not finished (the first tick fires as soon as the object is seen). Each tick derives the next status
from the object, the trainer Job and Pod (from the watch indexes) and the trainer's
reports in the artifact store, so a reconcile interrupted anywhere is simply repeated:

    (new) -> ValidatingFiles -> Queued -> Running -> Succeeded | Failed
                        \\-> Failed       |  ^
                                        Paused          any -> Cancelled (spec.cancel)
    Failed -> Queued (or ValidatingFiles) when spec.restartCount > status.restarts

Each phase has its own function (`_PHASES`). Pause deletes the trainer Job (in the
foreground, so no old Pod lingers); resume creates it again under the same name and the
trainer continues from its newest checkpoint. A restart of a Failed job does the same
with the failed Job: it is deleted, the error cleared, and a new trainer resumes from the
newest checkpoint (a job that failed validation is validated again). A multi-node
trainer (an Indexed Job) fails as a whole when one of its Pods fails; unless the exit was
fatal, the controller replaces the group the same way while
spec.distributed.maxGroupRestarts lasts (disruptions are not counted). Pods the API
server refuses to create show as the PodsAdmitted condition and, past the admission
timeout, fail the job (tuneforge.controllers.admission). When the job ends, an optional
webhook is called once per ending (HMAC-signed).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import kopf

from tuneforge.api.sizing import size_training
from tuneforge.api.v1alpha1 import GROUP, VERSION, BaseModelResource, FineTuningJobResource, finetuningjob
from tuneforge.api.v1alpha1.basemodel import model_id_of
from tuneforge.api.v1alpha1.common import ApiError
from tuneforge.api.v1alpha1.finetuningjob import FineTuningJobPhase, restart_pending
from tuneforge.config import settings
from tuneforge.controllers import admission, builders, kube, queueing, webhook
from tuneforge.controllers.children import failed_first, first, group_failure, termination_error
from tuneforge.controllers.finetuning_validation import Invalid, Wait, validate
from tuneforge.controllers.settings import ControllerSettings
from tuneforge.controllers.status import (
    FINE_TUNING_OPENAI_STATUS,
    FINE_TUNING_TERMINAL,
    ReconcileState,
    Throttle,
    find_condition,
    parse_timestamp,
    timestamp,
    utcnow,
)
from tuneforge.controllers.store import store
from tuneforge.controllers.ticker import Ticking
from tuneforge.jobfiles import JobFiles
from tuneforge.storage import StoreError
from tuneforge.webhook_signing import SIGNATURE_HEADER, job_signing_secret, sign

KIND = "FineTuningJob"
PLURAL = "finetuningjobs"


@dataclass(frozen=True)
class _Tick:
    """One reconcile of one job: the object, the status being built from the observed one,
    what the watch indexes show of its trainer, and the operator's settings. Every phase
    function takes it whole and reads what its phase needs."""

    ft: FineTuningJobResource
    observed: dict[str, Any]
    state: ReconcileState
    job: dict[str, Any] | None
    pods: Any
    workload: dict[str, Any] | None
    basemodels: Any
    logger: Any
    controller_settings: ControllerSettings
    throttle: Throttle

    @property
    def namespace(self) -> str:
        return self.ft.metadata["namespace"]

    @property
    def name(self) -> str:
        return self.ft.metadata["name"]

    def base_model(self) -> dict[str, Any] | None:
        """The BaseModel the job names, as the index holds it; None until it is seen."""
        summary = first(self.basemodels.get(self.ft.spec.base_model))
        return summary["body"] if summary else None


def _notification_pending(spec: dict, status: dict) -> bool:
    notifications = spec.get("notifications")
    if not notifications or status.get("phase") not in FINE_TUNING_TERMINAL:
        return False
    events = notifications.get("events") or ["succeeded", "failed"]
    wanted = FINE_TUNING_OPENAI_STATUS[status["phase"]] in events
    return wanted and find_condition(status.get("conditions"), "Notified") is None


def active(spec: dict, status: dict, **_: Any) -> bool:
    """Ticker filter: reconcile until finished and notified, and again on a restart request."""
    return (
        status.get("phase") not in FINE_TUNING_TERMINAL
        or _notification_pending(spec, status)
        or restart_pending(spec, status)
    )


def _reconcile(
    raw: dict, status: dict, kwargs: dict[str, Any], *, controller_settings: ControllerSettings, throttle: Throttle
) -> dict[str, Any]:
    """Settles what every phase shares, then hands the tick to its phase's function; cancel
    comes first because it overrides any phase short of the end."""
    ft = FineTuningJobResource.model_validate(raw)
    state = ReconcileState(raw, status)
    state.status["observedGeneration"] = state.generation
    state.status.setdefault("createdAt", raw["metadata"].get("creationTimestamp") or timestamp())
    key = ("trainer", raw["metadata"]["namespace"], raw["metadata"]["name"])
    tick = _Tick(
        ft=ft, observed=status, state=state, job=first(kwargs["tf_jobs"].get(key)), pods=kwargs["tf_pods"].get(key),
        workload=first(kwargs["tf_workloads"].get((key[1], builders.trainer_job_name(key[2])))),
        basemodels=kwargs["tf_basemodels"], logger=kwargs["logger"], controller_settings=controller_settings,
        throttle=throttle,
    )
    if ft.spec.cancel and state.phase not in FINE_TUNING_TERMINAL:
        return _cancel(tick)
    return _PHASES[state.phase](tick)


# -- phases --------------------------------------------------------------------------------


def _validating(tick: _Tick) -> dict[str, Any]:
    """New or ValidatingFiles: checks the base model and the files, then creates the
    trainer (or stays Paused when spec.suspend). What it waits for (a BaseModel turning
    Ready, one applied together with the job) arrives by itself, so it is simply tried
    again on the next tick. An existing trainer Job means an earlier tick got further than
    this body shows; the observed status is then kept unless the stored object shows the
    status of that tick was never written."""
    ft, state = tick.ft, tick.state
    trainer = builders.trainer_job_name(tick.name)
    if (tick.job is not None or kube.job_exists(tick.namespace, trainer)) and _moved_on(state.raw):
        return tick.observed
    base = tick.base_model()
    try:
        training_uri, validation_uri = validate(
            tick.ft, base, dependency_grace=tick.controller_settings.dependency_grace
        )
    except Wait as wait:
        state.transition("ValidatingFiles", "Validating", "validating the base model and files")
        state.condition("Validated", "Unknown", "Waiting", str(wait))
        return state.status
    except Invalid as invalid:
        state.status["error"] = invalid.error.to_wire()
        state.condition("Validated", False, "Invalid", invalid.error.message)
        _finish(state, "Failed", "ValidationFailed", f"{invalid.error.code}: {invalid.error.message}", ok=False)
        return state.status
    state.status["trainingFileUri"] = training_uri
    if validation_uri:
        state.status["validationFileUri"] = validation_uri
    state.status["trainerJob"] = trainer
    state.condition("Validated", True, "FilesValid", "base model and files are valid")
    if ft.spec.suspend:
        state.condition("Paused", True, "Suspended", "spec.suspend is true")
        state.transition("Paused", "Paused", "validated; not started because spec.suspend is true")
        return state.status
    _start_trainer(ft, state.raw, base, training_uri, validation_uri)
    state.condition("Running", False, "Queued", "waiting for the trainer Pod to start")
    state.transition("Queued", "Queued", f"created trainer Job {trainer}")
    return state.status


def _paused(tick: _Tick) -> dict[str, Any]:
    """Paused: nothing runs until spec.suspend is cleared. The trainer is then created
    again, but only once the old Job is gone, so no Pod of it can still write to the
    checkpoints the new one resumes from."""
    state = tick.state
    if tick.ft.spec.suspend or tick.job is not None:
        return state.status
    base = tick.base_model()
    if base is None:
        return state.status
    _start_trainer(tick.ft, state.raw, base, state.status["trainingFileUri"], state.status.get("validationFileUri"))
    state.condition("Paused", False, "Resumed", "spec.suspend is false")
    state.condition("Running", False, "Queued", "resuming from the latest checkpoint")
    state.transition("Queued", "Resumed", "resuming from the latest checkpoint")
    return state.status


def _training(tick: _Tick) -> dict[str, Any]:
    """Queued or Running: the trainer Job decides. It is stopped on spec.suspend, created
    again when it went missing, and its end ends the job, as do Pods it cannot create for
    longer than the admission timeout; until then Running follows whether a trainer Pod
    runs, so a replaced Pod shows as Queued again."""
    if tick.ft.spec.suspend:
        return _pause(tick)
    job = tick.job
    if job is None:
        return _recreate_trainer(tick)
    if job["deleting"]:
        return tick.state.status
    if job["complete"]:
        _copy_progress(tick.ft, tick.state)
        _succeed(tick.ft, tick.state, tick.base_model())
        return tick.state.status
    if job["failed"]:
        return _trainer_failed(tick)
    if queueing.follow(tick.state, job, tick.workload, what="trainer", on_change=partial(_queue_event, tick)):
        return _held_by_queue(tick)
    refused = admission.follow(tick.state, tick.namespace, job, what="trainer",
                               timeout=tick.controller_settings.pod_admission_timeout)
    if refused is not None:
        return _pods_refused(tick, refused)
    return _follow_pods(tick)


def _ended(tick: _Tick) -> dict[str, Any]:
    """Succeeded, Failed or Cancelled: two things still arrive after the end, a restart
    request (spec.restartCount raised on a Failed job) and the webhook owed for the
    ending, delivered once."""
    spec, status = tick.state.raw["spec"], tick.state.status
    if restart_pending(spec, status):
        _restart(tick)
    elif _notification_pending(spec, status):
        _notify(tick)
    return status


def _cancel(tick: _Tick) -> dict[str, Any]:
    """spec.cancel, in any phase before the end: it is final, so the trainer Job goes at
    once and the job ends Cancelled."""
    if tick.job is not None:
        kube.delete_job(tick.namespace, tick.job["name"])
    _finish(tick.state, "Cancelled", "Cancelled", "the job was cancelled", ok=False)
    return tick.state.status


_PHASES: dict[str | None, Callable[[_Tick], dict[str, Any]]] = {
    None: _validating,
    "ValidatingFiles": _validating,
    "Paused": _paused,
    "Queued": _training,
    "Running": _training,
    **dict.fromkeys(FINE_TUNING_TERMINAL, _ended),
}


# -- steps of the Queued and Running phases ------------------------------------------------


def _pause(tick: _Tick) -> dict[str, Any]:
    """Stops the trainer for spec.suspend; the trainer writes a last checkpoint in its
    termination grace period, which the resumed one starts from."""
    state = tick.state
    if tick.job is not None:
        kube.delete_job(tick.namespace, tick.job["name"])
    state.condition("Paused", True, "Suspended", "spec.suspend is true")
    state.condition("Running", False, "Paused", "paused; the trainer stopped after its last checkpoint")
    state.transition("Paused", "Paused", "trainer stopped; set spec.suspend=false to resume")
    return state.status


def _held_by_queue(tick: _Tick) -> dict[str, Any]:
    """The trainer Job is suspended: Kueue has not admitted it yet, or took it back to
    preempt it (the trainer checkpointed in its grace period and resumes from there once
    admitted again). The job waits Queued, with Kueue's reason."""
    state = tick.state
    if state.phase == "Running":
        admitted = find_condition(state.status.get("conditions"), queueing.ADMITTED) or {}
        reason, message = admitted.get("reason", "Suspended"), admitted.get("message", "")
        state.condition("Running", False, reason, message)
        state.transition("Queued", reason, f"the trainer was stopped by its queue: {message}", warning=True)
    return state.status


def _recreate_trainer(tick: _Tick) -> dict[str, Any]:
    """Creates the trainer Job again when the index shows none: after a pause, a group
    replacement, or someone deleting it. The Job index trails the API server under load,
    so a Job created a moment ago is confirmed with one read rather than created again."""
    state = tick.state
    if kube.job_exists(tick.namespace, builders.trainer_job_name(tick.name)):
        return state.status
    base = tick.base_model()
    if base is not None:
        tick.logger.info("trainer Job missing; creating it again")
        _start_trainer(tick.ft, state.raw, base, state.status["trainingFileUri"], state.status.get("validationFileUri"))
    return state.status


def _trainer_failed(tick: _Tick) -> dict[str, Any]:
    """A failed multi-node group is replaced while its budget lasts; otherwise the job
    fails with the error of the Pod that failed first (the others were only stopped)."""
    state, job = tick.state, tick.job
    if job["indexed"] and _replace_group(tick):
        return state.status
    _copy_progress(tick.ft, state)
    error = termination_error(
        failed_first(tick.pods), default_code="training_failed",
        fallback=job["failure_message"] or "the trainer failed",
    )
    state.status["error"] = error.to_wire()
    _finish(state, "Failed", "TrainingFailed", f"{error.code}: {error.message}", ok=False)
    return state.status


def _pods_refused(tick: _Tick, error: ApiError) -> dict[str, Any]:
    """The trainer's Pods were refused for longer than the admission timeout: the Job goes
    (its controller would go on trying) and the job fails with the API server's refusal."""
    kube.delete_job(tick.namespace, tick.job["name"])
    tick.state.status["error"] = error.to_wire()
    _finish(tick.state, "Failed", admission.REFUSED, f"{error.code}: {error.message}", ok=False)
    return tick.state.status


def _follow_pods(tick: _Tick) -> dict[str, Any]:
    """Running while a trainer Pod runs, with progress refreshed at most once per status
    interval (and at once on the transition); Queued again when the Pod went away
    (disruption, retry) until a new one runs."""
    state = tick.state
    if any(p["phase"] == "Running" for p in tick.pods or ()):
        if state.phase != "Running":
            state.status.setdefault("startedAt", timestamp())
            state.condition("Running", True, "TrainerRunning", "the trainer is running")
            state.transition("Running", "Running", "the trainer Pod is running")
            _copy_progress(tick.ft, state)
        elif tick.throttle.ready((tick.namespace, tick.name)):
            _copy_progress(tick.ft, state)
    elif state.phase == "Running":
        state.condition("Running", False, "Queued", "waiting for a new trainer Pod")
        state.transition("Queued", "Requeued", "the trainer Pod is being replaced")
    return state.status


def _restart(tick: _Tick) -> None:
    """Acts on spec.restartCount for a Failed job: first the failed trainer Job goes (in the
    foreground, so none of its Pods can still write), then the job is queued again with a
    new trainer that resumes from the newest checkpoint in the job's store directory. A job
    that never passed validation is validated again instead."""
    ft, state, job = tick.ft, tick.state, tick.job
    if job is not None:
        if not job["deleting"]:
            kube.delete_job(tick.namespace, job["name"])
        return
    validated = bool(state.status.get("trainingFileUri"))
    base = tick.base_model()
    if validated and base is None:
        return  # the catalog entry is not indexed (yet); the restart waits for it
    requested = ft.spec.restart_count
    state.status["restarts"] = requested
    state.status["error"] = None
    state.status["groupRestarts"] = None  # a restarted job gets its group-restart budget back
    state.status["finishedAt"] = None
    state.status["conditions"] = [c for c in state.status.get("conditions") or [] if c.get("type") != "Notified"]
    state.status["notification"] = None
    state.condition("Succeeded", "Unknown", "Restarted", f"restart {requested} requested")
    if not validated:
        state.condition("Validated", "Unknown", "Restarted", "validating again after a restart request")
        state.transition("ValidatingFiles", "Restarted", f"restart {requested}: validating again")
        return
    if ft.spec.suspend:
        state.condition("Paused", True, "Suspended", "spec.suspend is true")
        state.transition("Paused", "Restarted", f"restart {requested}: paused because spec.suspend is true")
        return
    _start_trainer(ft, state.raw, base, state.status["trainingFileUri"], state.status.get("validationFileUri"))
    state.condition("Running", False, "Queued", "restarting from the latest checkpoint")
    state.transition("Queued", "Restarted", f"restart {requested}: trainer {builders.trainer_job_name(tick.name)} "
                     "resumes from the latest checkpoint")


def _replace_group(tick: _Tick) -> bool:
    """A multi-node trainer Job failed, and with it every Pod of the group: unless a Pod
    exited fatally or the group-restart budget is spent, the failed Job is deleted (in the
    foreground) and the Job-missing path creates it again under the same name, as after a
    pause; the new group resumes from the newest checkpoint. Disruptions are not counted.
    False means the job fails instead."""
    state, job, pods = tick.state, tick.job, tick.pods
    failure = group_failure(job, pods)
    restarts = int(state.status.get("groupRestarts") or 0)
    budget = tick.ft.spec.distributed.max_group_restarts
    if failure.fatal or (not failure.disrupted and restarts >= budget):
        return False
    if kube.job_going(tick.namespace, job["name"]):
        return True  # replaced on an earlier tick whose delete the index has not seen yet
    kube.delete_job(tick.namespace, job["name"])
    cause = termination_error(failed_first(pods), default_code="training_failed",
                              fallback=job["failure_message"] or "a trainer Pod failed")
    if failure.disrupted:
        message = f"a trainer Pod was disrupted; replacing the group (not counted): {cause.message}"
    else:
        restarts += 1
        state.status["groupRestarts"] = restarts
        message = f"group restart {restarts} of {budget} after {cause.code}: {cause.message}"
    state.condition("Running", False, "GroupRestart", message)
    if not state.transition("Queued", "GroupRestart", message, warning=True):
        kopf.warn(state.raw, reason="GroupRestart", message=message)
    return True


def _moved_on(raw: dict) -> bool:
    """A trainer Job exists for a job this body shows as still validating: either the body
    predates the status written with the Job (the watch trails the API server under load;
    nothing to redo) or the operator stopped between the two writes (the status is to be
    written again). The stored object tells which."""
    stored = kube.read_custom(raw["metadata"]["namespace"], KIND, raw["metadata"]["name"])
    return stored is not None and (stored.get("status") or {}).get("phase") not in (None, "ValidatingFiles")


# -- the trainer -------------------------------------------------------------------------


def _start_trainer(ft: FineTuningJobResource, raw: dict, base_raw: dict, training: str, validation: str | None) -> None:
    base = BaseModelResource.model_validate(base_raw)
    config = settings()
    size = size_training(ft.spec, base.spec, config)
    run = builders.training_run(ft, base, training_uri=training, validation_uri=validation, store_root=config.store_root,
                                distributed=builders.resolve_distributed(ft, base, size))
    kube.create(builders.trainer_configmap(raw, run))
    if size.nodes > 1:
        kube.create(builders.trainer_service(raw))
    kube.create(
        builders.trainer_job(raw, run, hardware=size.hardware, settings=config)
    )


# -- what the trainer reports --------------------------------------------------------------


def _files(ft: FineTuningJobResource) -> JobFiles:
    return JobFiles.of(store(), ft.metadata["namespace"], ft.metadata["name"])


def _copy_progress(ft: FineTuningJobResource, state: ReconcileState) -> None:
    """Copies the trainer's progress.json and the checkpoint summary into status."""
    files = _files(ft)
    progress = files.progress()
    if progress is None:
        return
    state.status["progress"] = {
        "step": progress.step,
        "totalSteps": progress.total_steps,
        "epoch": progress.epoch,
        **({"estimatedFinish": timestamp(progress.estimated_finish)} if progress.estimated_finish else {}),
    }
    metrics_ = {"trainLoss": progress.train_loss, "validLoss": progress.valid_loss, "tokensPerSecond": progress.tokens_per_second}
    state.status["metrics"] = {k: v for k, v in metrics_.items() if v is not None}
    state.status["trainedTokens"] = progress.trained_tokens
    steps = files.complete_checkpoints()
    if steps:
        state.status["checkpoints"] = {
            "count": len(steps),
            "latestStep": steps[-1],
            "latestUri": files.checkpoint_uri(steps[-1]),
        }


def _succeed(ft: FineTuningJobResource, state: ReconcileState, base: dict | None) -> None:
    """Records the trainer's result. The fine-tuned id names the base by its model id now
    (the resource name when the entry is gone), as the trainer's run spec did, and is kept
    from then on: a later change of the catalog never renames a model."""
    result = _files(ft).result()
    if result is None:
        state.status["error"] = {"code": "missing_result", "message": "the trainer exited without writing result.json"}
        _finish(state, "Failed", "TrainingFailed", "the trainer exited without writing result.json", ok=False)
        return
    state.status["fineTunedModel"] = finetuningjob.fine_tuned_model_id(
        model_id_of(base) if base is not None else ft.spec.base_model, ft.metadata["namespace"], ft.spec.suffix,
        ft.metadata["name"],
    )
    state.status["adapterUri"] = result.adapter_uri
    state.status["trainedTokens"] = result.trained_tokens
    state.status["resultFiles"] = list(result.result_files)
    resolved = {k: result.hyperparameters[s] for k, s in (
        ("nEpochs", "n_epochs"), ("batchSize", "batch_size"), ("learningRateMultiplier", "learning_rate_multiplier")
    ) if s in result.hyperparameters}
    state.status["hyperparameters"] = resolved
    progress = dict(state.status.get("progress") or {})
    progress.update(step=result.steps, totalSteps=max(result.steps, progress.get("totalSteps", 0)))
    state.status["progress"] = progress
    _finish(state, "Succeeded", "Succeeded", f"fine-tuned model {state.status['fineTunedModel']} is ready", ok=True)


def _finish(state: ReconcileState, phase: str, reason: str, message: str, *, ok: bool) -> None:
    state.status["finishedAt"] = timestamp()
    state.condition("Running", False, reason, message)
    state.condition("Succeeded", ok, reason, message)
    state.transition(phase, reason, message, warning=not ok)


def _notify(tick: _Tick) -> None:
    """One delivery attempt of the job's webhook, when the last one's backoff has passed.
    Its outcome is kept in status.notification until the Notified condition ends the
    notification, delivered or not; each attempt is an Event and a job event."""
    ft, state = tick.ft, tick.state
    progress = state.status.get("notification") or {}
    next_at = parse_timestamp(progress.get("nextAttemptAt"))
    if next_at is not None and utcnow() < next_at:
        return
    notifications = ft.spec.notifications
    event = webhook.payload(ft, state.status)
    body = json.dumps(event, sort_keys=True).encode()
    secret = _signing_secret(tick)
    if secret is None:
        return
    headers = {"Content-Type": "application/json"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    attempts = int(progress.get("attempts") or 0) + 1
    result = webhook.attempt(notifications.webhook_url, body, headers, timeout=tick.controller_settings.webhook_timeout)
    delivery = f"{event['type']} delivery {attempts}: {result.message}"
    if result.outcome is webhook.Outcome.delivered:
        state.status["notification"] = None
        state.condition("Notified", True, "Delivered", result.message)
        _job_event(tick, "info", f"Webhook {delivery}", f"webhook-{attempts}", {"webhook_attempt": attempts})
        kopf.info(state.raw, reason="Notified", message=delivery)
        return
    if result.outcome is webhook.Outcome.retry and attempts < tick.controller_settings.webhook_attempts:
        delay = webhook.retry_delay(attempts, tick.controller_settings.webhook_retry_delay)
        state.status["notification"] = {"attempts": attempts, "nextAttemptAt": timestamp(utcnow() + delay),
                                        "lastError": result.message}
        _job_event(tick, "warn", f"Webhook {delivery}; retrying in {delay.total_seconds():g}s", f"webhook-{attempts}",
                   {"webhook_attempt": attempts})
        kopf.warn(state.raw, reason="NotificationRetry", message=f"{delivery}; retrying in {delay.total_seconds():g}s")
        return
    state.status["notification"] = None
    state.condition("Notified", False, "DeliveryFailed", f"{result.message} (after {attempts} attempts)")
    _job_event(tick, "error", f"Webhook {delivery}; giving up", f"webhook-{attempts}", {"webhook_attempt": attempts})
    kopf.warn(state.raw, reason="NotificationFailed", message=f"{delivery}; giving up")


def _signing_secret(tick: _Tick) -> bytes | None:
    """The key the webhook is signed with: b"" for an unsigned one, None (and the
    notification ended as failed) when the Secret it names is missing."""
    notifications, namespace = tick.ft.spec.notifications, tick.namespace
    if notifications.sign_with_platform_key:
        platform_key = kube.platform_serving_key(settings().system_namespace)
        return job_signing_secret(platform_key, namespace, tick.ft.metadata["name"]).encode()
    ref = notifications.signing_secret
    if ref is None:
        return b""
    secret = kube.read_secret(namespace, ref.name)
    value = (secret.data or {}).get(ref.key) if secret else None
    if value is None:
        message = f"signing secret {ref.name}/{ref.key} not found"
        tick.state.condition("Notified", False, "SecretNotFound", message)
        kopf.warn(tick.state.raw, reason="NotificationFailed", message=message)
        return None
    return base64.b64decode(value)


def _job_event(tick: _Tick, level: str, message: str, key: str, data: dict[str, Any]) -> None:
    """Records what the operator did or saw among the job's events, where API users follow
    the job; `key` makes the event's id, so a reconcile repeated after a failed status
    write records it once. A store that fails here costs the record, never the bookkeeping."""
    record = {"id": f"ftevent-{tick.ft.metadata['uid']}-{key}", "object": "fine_tuning.job.event",
              "created_at": int(utcnow().timestamp()), "level": level, "message": message, "type": "message",
              "data": data}
    try:
        JobFiles.of(store(), tick.namespace, tick.ft.metadata["name"]).write_platform_event(record)
    except StoreError as exc:
        tick.logger.warning("could not record a job event (%s): %s", message, exc)


def _queue_event(tick: _Tick, reason: str, message: str, warning: bool) -> None:
    """Kueue's verdict changed: the job's event list says so, as its Events do."""
    _job_event(tick, "warn" if warning else "info", f"Kueue: {reason}: {message}",
               f"kueue-{time.time_ns()}-{reason.lower()}", {"kueue_reason": reason})


def index_models(namespace: str, status: dict, **_: Any) -> dict[str, str] | None:
    """Fine-tuned model ids of succeeded jobs by namespace (what batches may target)."""
    model = status.get("fineTunedModel")
    return {namespace: model} if model and status.get("phase") == FineTuningJobPhase.succeeded.value else None


def register(registry: kopf.OperatorRegistry, controller_settings: ControllerSettings, ticking: Ticking) -> None:
    """The progress throttle is this registry's own, kept by the reconcile and emptied of a
    job by the ticker once the job is finished, deleted or gone."""
    throttle = Throttle(controller_settings.status_interval)
    reconcile = partial(_reconcile, controller_settings=controller_settings, throttle=throttle)
    ticking.install(registry, KIND, PLURAL, reconcile, interval=controller_settings.poll_interval, when=active,
                    forget=throttle.forget)
    kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="tf_finetuned")(index_models)

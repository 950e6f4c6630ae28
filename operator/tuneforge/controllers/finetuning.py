"""FineTuningJob controller: validate, run the trainer Job, report progress, finish.

One reconcile function, run by a kopf timer for every FineTuningJob that is not finished
(the first tick fires as soon as the object is seen). Each tick derives the next status
from the object, the trainer Job and Pod (from the watch indexes) and the trainer's
reports in the artifact store, so a reconcile interrupted anywhere is simply repeated:

    (new) -> ValidatingFiles -> Queued -> Running -> Succeeded | Failed
                        \\-> Failed       |  ^
                                        Paused          any -> Cancelled (spec.cancel)
    Failed -> Queued (or ValidatingFiles) when spec.restartCount > status.restarts

Pause deletes the trainer Job (in the foreground, so no old Pod lingers); resume
creates it again under the same name and the trainer continues from its newest
checkpoint. A restart of a Failed job does the same with the failed Job: it is deleted,
the error cleared, and a new trainer resumes from the newest checkpoint (a job that
failed validation is validated again). A multi-node trainer (an Indexed Job) fails as a
whole when one of its Pods fails; unless the exit was fatal, the controller replaces the
group the same way while spec.distributed.maxGroupRestarts lasts (disruptions are not
counted). When the job ends, an optional webhook is called once per ending (HMAC-signed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import kopf

from tuneforge.api.sizing import SizingError, size_training
from tuneforge.api.v1alpha1 import GROUP, VERSION, BaseModelResource, FineTuningJobResource, finetuningjob
from tuneforge.api.v1alpha1.common import ApiError
from tuneforge.api.v1alpha1.finetuningjob import restart_pending
from tuneforge.config import settings
from tuneforge.controllers import builders, kube, metrics
from tuneforge.controllers.children import failed_first, first, group_failure, termination_error
from tuneforge.controllers.status import (
    FINE_TUNING_OPENAI_STATUS,
    FINE_TUNING_TERMINAL,
    ReconcileState,
    Throttle,
    diff,
    find_condition,
    parse_timestamp,
    timestamp,
    utcnow,
)
from tuneforge.controllers.store import open_lines, resolve_file, store
from tuneforge.datasets import DatasetError, validate_fine_tune_file
from tuneforge.jobfiles import JobFiles
from tuneforge.storage import StoreError

KIND = "FineTuningJob"
PLURAL = "finetuningjobs"

_throttle = Throttle(kube.OPTIONS.status_interval)


class _Wait(Exception):
    """Validation cannot finish yet (the base model is not validated itself)."""


def _notification_pending(spec: dict, status: dict) -> bool:
    notifications = spec.get("notifications")
    if not notifications or status.get("phase") not in FINE_TUNING_TERMINAL:
        return False
    events = notifications.get("events") or ["succeeded", "failed"]
    wanted = FINE_TUNING_OPENAI_STATUS[status["phase"]] in events
    return wanted and find_condition(status.get("conditions"), "Notified") is None


def active(spec: dict, status: dict, **_: Any) -> bool:
    """Timer filter: reconcile until finished and notified, and again on a restart request."""
    return (
        status.get("phase") not in FINE_TUNING_TERMINAL
        or _notification_pending(spec, status)
        or restart_pending(spec, status)
    )


def reconcile(body: kopf.Body, patch: kopf.Patch, logger: Any, **kwargs: Any) -> None:
    raw = _plain(body)
    status = raw.get("status") or {}
    with metrics.reconcile(KIND):
        desired = _reconcile(raw, status, kwargs["tf_jobs"], kwargs["tf_pods"], kwargs["tf_basemodels"], logger)
    changed = diff(status, desired)
    if changed:
        patch.status.update(changed)
    metrics.PHASES.observe(KIND, raw["metadata"]["uid"], desired.get("phase", status.get("phase")))


def forget(event: dict, uid: str, **_: Any) -> None:
    """Drops a deleted job from the phase gauge and the throttle."""
    if event["type"] == "DELETED":
        metrics.PHASES.forget(KIND, uid)
        _throttle.forget(uid)


def _plain(body: kopf.Body) -> dict[str, Any]:
    return json.loads(json.dumps(dict(body), default=dict))


def _reconcile(raw: dict, status: dict, jobs: Any, pods: Any, basemodels: Any, logger: Any) -> dict[str, Any]:
    ft = FineTuningJobResource.model_validate(raw)
    name, namespace = raw["metadata"]["name"], raw["metadata"]["namespace"]
    state = ReconcileState(raw, status)
    state.status["observedGeneration"] = state.generation
    state.status.setdefault("createdAt", raw["metadata"].get("creationTimestamp") or timestamp())
    key = ("trainer", namespace, name)
    job = first(jobs.get(key))

    if state.phase in FINE_TUNING_TERMINAL:
        if restart_pending(raw["spec"], state.status):
            _restart(ft, state, job, basemodels)
            return state.status
        if _notification_pending(raw["spec"], state.status):
            _notify(ft, state, logger)
        return state.status

    if ft.spec.cancel:
        if job is not None:
            kube.delete_job(namespace, job["name"])
        _finish(state, "Cancelled", "Cancelled", "the job was cancelled", ok=False)
        return state.status

    if state.phase in (None, "ValidatingFiles"):
        if (job is not None or kube.job_exists(namespace, builders.trainer_job_name(name))) and _moved_on(raw):
            return status
        base = _base_model(basemodels, ft.spec.base_model)
        try:
            training_uri, validation_uri = _validate(ft, base, raw)
        except _Wait as wait:
            state.transition("ValidatingFiles", "Validating", "validating the base model and files")
            state.condition("Validated", "Unknown", "Waiting", str(wait))
            return state.status
        except _Invalid as invalid:
            state.status["error"] = invalid.error.to_wire()
            state.condition("Validated", False, "Invalid", invalid.error.message)
            _finish(state, "Failed", "ValidationFailed", f"{invalid.error.code}: {invalid.error.message}", ok=False)
            return state.status
        state.status["trainingFileUri"] = training_uri
        if validation_uri:
            state.status["validationFileUri"] = validation_uri
        state.status["trainerJob"] = builders.trainer_job_name(name)
        state.condition("Validated", True, "FilesValid", "base model and files are valid")
        if ft.spec.suspend:
            state.condition("Paused", True, "Suspended", "spec.suspend is true")
            state.transition("Paused", "Paused", "validated; not started because spec.suspend is true")
            return state.status
        _start_trainer(ft, raw, base, training_uri, validation_uri)
        state.condition("Running", False, "Queued", "waiting for the trainer Pod to start")
        state.transition("Queued", "Queued", f"created trainer Job {builders.trainer_job_name(name)}")
        return state.status

    if state.phase == "Paused":
        if ft.spec.suspend:
            return state.status
        if job is not None:
            return state.status  # the old Job is still being deleted; resume once it is gone
        base = _base_model(basemodels, ft.spec.base_model)
        if base is None:
            return state.status
        _start_trainer(ft, raw, base, state.status["trainingFileUri"], state.status.get("validationFileUri"))
        state.condition("Paused", False, "Resumed", "spec.suspend is false")
        state.condition("Running", False, "Queued", "resuming from the latest checkpoint")
        state.transition("Queued", "Resumed", "resuming from the latest checkpoint")
        return state.status

    # Queued or Running
    if ft.spec.suspend:
        if job is not None:
            kube.delete_job(namespace, job["name"])
        state.condition("Paused", True, "Suspended", "spec.suspend is true")
        state.condition("Running", False, "Paused", "paused; the trainer stopped after its last checkpoint")
        state.transition("Paused", "Paused", "trainer stopped; set spec.suspend=false to resume")
        return state.status
    if job is None:
        # The Job index trails the API server under load: a Job created a moment ago is
        # confirmed with one read rather than created again.
        if kube.job_exists(namespace, builders.trainer_job_name(name)):
            return state.status
        base = _base_model(basemodels, ft.spec.base_model)
        if base is not None:
            logger.info("trainer Job missing; creating it again")
            _start_trainer(ft, raw, base, state.status["trainingFileUri"], state.status.get("validationFileUri"))
        return state.status
    if job["deleting"]:
        return state.status
    job_pods = pods.get(("trainer", namespace, name))
    if job["complete"]:
        _progress(ft, state, force=True)
        _succeed(ft, state)
        return state.status
    if job["failed"]:
        if job["indexed"] and _replace_group(ft, state, job, job_pods):
            return state.status
        _progress(ft, state, force=True)
        error = termination_error(
            failed_first(job_pods), default_code="training_failed",
            fallback=job["failure_message"] or "the trainer failed",
        )
        state.status["error"] = error.to_wire()
        _finish(state, "Failed", "TrainingFailed", f"{error.code}: {error.message}", ok=False)
        return state.status
    if any(p["phase"] == "Running" for p in job_pods or ()):
        if state.phase != "Running":
            state.status.setdefault("startedAt", timestamp())
            state.condition("Running", True, "TrainerRunning", "the trainer is running")
            state.transition("Running", "Running", "the trainer Pod is running")
            _progress(ft, state, force=True)
        else:
            _progress(ft, state, force=False)
    elif state.phase == "Running":
        # The Pod went away (disruption, retry): queued again until a new one runs.
        state.condition("Running", False, "Queued", "waiting for a new trainer Pod")
        state.transition("Queued", "Requeued", "the trainer Pod is being replaced")
    return state.status


def _restart(ft: FineTuningJobResource, state: ReconcileState, job: dict | None, basemodels: Any) -> None:
    """Acts on spec.restartCount for a Failed job: first the failed trainer Job goes (in the
    foreground, so none of its Pods can still write), then the job is queued again with a
    new trainer that resumes from the newest checkpoint in the job's store directory. A job
    that never passed validation is validated again instead."""
    namespace, name = ft.metadata["namespace"], ft.metadata["name"]
    if job is not None:
        if not job["deleting"]:
            kube.delete_job(namespace, job["name"])
        return
    validated = bool(state.status.get("trainingFileUri"))
    base = _base_model(basemodels, ft.spec.base_model)
    if validated and base is None:
        return  # the catalog entry is not indexed (yet); the restart waits for it
    requested = ft.spec.restart_count
    state.status["restarts"] = requested
    state.status["error"] = None
    state.status["groupRestarts"] = None  # a restarted job gets its group-restart budget back
    state.status["finishedAt"] = None
    state.status["conditions"] = [c for c in state.status.get("conditions") or [] if c.get("type") != "Notified"]
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
    state.transition("Queued", "Restarted", f"restart {requested}: trainer {builders.trainer_job_name(name)} "
                     "resumes from the latest checkpoint")


def _replace_group(ft: FineTuningJobResource, state: ReconcileState, job: dict, pods: Any) -> bool:
    """A multi-node trainer Job failed, and with it every Pod of the group: unless a Pod
    exited fatally or the group-restart budget is spent, the failed Job is deleted (in the
    foreground) and the Job-missing path creates it again under the same name, as after a
    pause; the new group resumes from the newest checkpoint. Disruptions are not counted.
    False means the job fails instead."""
    failure = group_failure(job, pods)
    restarts = int(state.status.get("groupRestarts") or 0)
    budget = ft.spec.distributed.max_group_restarts
    if failure.fatal or (not failure.disrupted and restarts >= budget):
        return False
    namespace = ft.metadata["namespace"]
    if kube.job_going(namespace, job["name"]):
        return True  # replaced on an earlier tick whose delete the index has not seen yet
    kube.delete_job(namespace, job["name"])
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


class _Invalid(Exception):
    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _base_model(basemodels: Any, name: str) -> dict[str, Any] | None:
    summary = first(basemodels.get(name))
    return summary["body"] if summary else None


def _validate(ft: FineTuningJobResource, base: dict | None, raw: dict) -> tuple[str, str | None]:
    """Checks the base model and both files; returns the files' URIs."""
    spec = ft.spec
    if base is None:
        created = parse_timestamp(raw["metadata"].get("creationTimestamp")) or utcnow()
        if (utcnow() - created).total_seconds() < kube.OPTIONS.dependency_grace:
            raise _Wait(f"waiting for BaseModel {spec.base_model!r}")
        raise _Invalid(ApiError(code="model_not_found", message=f"model {spec.base_model!r} is not in the catalog", param="model"))
    base_phase = (base.get("status") or {}).get("phase")
    if base_phase == "Failed":
        raise _Invalid(ApiError(code="model_not_available", message=f"model {spec.base_model!r} is not ready: its source is invalid", param="model"))
    if base_phase != "Ready":
        raise _Wait(f"waiting for BaseModel {spec.base_model!r} to be Ready")
    if not base["spec"].get("fineTunable", True):
        raise _Invalid(ApiError(code="model_not_fine_tunable", message=f"model {spec.base_model!r} cannot be fine-tuned", param="model"))
    try:
        size_training(spec, BaseModelResource.model_validate(base).spec, settings())
    except SizingError as exc:
        raise _Invalid(exc.api_error()) from None
    lrm = spec.hyperparameters.learning_rate_multiplier
    if lrm != "auto" and not 0 < lrm <= 100:
        raise _Invalid(ApiError(
            code="invalid_hyperparameters",
            message=f"learning_rate_multiplier must be 'auto' or a number in (0, 100], got {lrm}",
            param="hyperparameters.learning_rate_multiplier",
        ))
    namespace = raw["metadata"]["namespace"]
    training = _check_file(namespace, spec.training_file, "training_file")
    validation = _check_file(namespace, spec.validation_file, "validation_file") if spec.validation_file else None
    return training, validation


def _check_file(namespace: str, ref: str, param: str) -> str:
    try:
        uri = resolve_file(namespace, ref)
        validate_fine_tune_file(open_lines(uri))
    except StoreError:
        raise _Invalid(ApiError(code="file_not_found", message=f"{param} {ref!r} does not exist", param=param)) from None
    except DatasetError as exc:
        raise _Invalid(ApiError(code=exc.code, message=f"{param}: {exc.message}", param=param)) from None
    return uri


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
        builders.trainer_job(raw, run, hardware=size.hardware, queue_name=ft.spec.queue_name, settings=config)
    )


def _files(ft: FineTuningJobResource) -> JobFiles:
    return JobFiles.of(store(), ft.metadata["namespace"], ft.metadata["name"])


def _progress(ft: FineTuningJobResource, state: ReconcileState, *, force: bool) -> None:
    """Copies the trainer's progress.json into status, at most once per status_interval
    unless forced (on transitions)."""
    if not force and not _throttle.ready(ft.metadata["uid"]):
        return
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


def _succeed(ft: FineTuningJobResource, state: ReconcileState) -> None:
    result = _files(ft).result()
    if result is None:
        state.status["error"] = {"code": "missing_result", "message": "the trainer exited without writing result.json"}
        _finish(state, "Failed", "TrainingFailed", "the trainer exited without writing result.json", ok=False)
        return
    state.status["fineTunedModel"] = finetuningjob.fine_tuned_model_id(
        ft.spec.base_model, ft.metadata["namespace"], ft.spec.suffix, ft.metadata["name"]
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


# -- webhook -------------------------------------------------------------------------------


def webhook_payload(ft: FineTuningJobResource, status: dict[str, Any]) -> dict[str, Any]:
    """The event POSTed to the webhook, shaped like OpenAI's fine_tuning.job.* events."""
    openai_status = FINE_TUNING_OPENAI_STATUS[status["phase"]]
    finished = parse_timestamp(status.get("finishedAt"))
    return {
        "object": "event",
        "id": f"ftevent-{ft.metadata['uid']}-{openai_status}",
        "type": f"fine_tuning.job.{openai_status}",
        "created_at": int((finished or utcnow()).timestamp()),
        "data": {
            "id": ft.metadata["name"],
            "namespace": ft.metadata["namespace"],
            "status": openai_status,
            "fine_tuned_model": status.get("fineTunedModel"),
            "error": status.get("error"),
        },
    }


def sign(secret: bytes, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the raw body>`, the X-Tuneforge-Signature header."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _notify(ft: FineTuningJobResource, state: ReconcileState, logger: Any) -> None:
    notifications = ft.spec.notifications
    body = json.dumps(webhook_payload(ft, state.status), sort_keys=True).encode()
    headers = {"Content-Type": "application/json"}
    if notifications.signing_secret:
        ref = notifications.signing_secret
        secret = kube.read_secret(ft.metadata["namespace"], ref.name)
        value = (secret.data or {}).get(ref.key) if secret else None
        if value is None:
            state.condition("Notified", False, "SecretNotFound", f"signing secret {ref.name}/{ref.key} not found")
            kopf.warn(state.raw, reason="NotificationFailed", message=f"signing secret {ref.name}/{ref.key} not found")
            return
        headers["X-Tuneforge-Signature"] = sign(base64.b64decode(value), body)
    error = ""
    for attempt in range(kube.OPTIONS.webhook_attempts):
        try:
            response = httpx.post(notifications.webhook_url, content=body, headers=headers, timeout=kube.OPTIONS.webhook_timeout)
            if response.status_code < 300:
                state.condition("Notified", True, "Delivered", f"webhook answered {response.status_code}")
                kopf.info(state.raw, reason="Notified", message=f"webhook answered {response.status_code}")
                return
            error = f"webhook answered {response.status_code}"
            if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                break
        except httpx.HTTPError as exc:
            error = f"webhook unreachable: {exc}"
        logger.info("webhook attempt %d failed: %s", attempt + 1, error)
        time.sleep(min(2**attempt, 10))
    state.condition("Notified", False, "DeliveryFailed", error)
    kopf.warn(state.raw, reason="NotificationFailed", message=error)


def index_models(namespace: str, status: dict, **_: Any) -> dict[str, str] | None:
    """Fine-tuned model ids of succeeded jobs by namespace (what batches may target)."""
    model = status.get("fineTunedModel")
    return {namespace: model} if model and status.get("phase") == "Succeeded" else None


def register(registry: kopf.OperatorRegistry) -> None:
    _throttle.interval = kube.OPTIONS.status_interval
    kopf.timer(
        GROUP, VERSION, PLURAL, registry=registry, id="reconcile",
        interval=kube.OPTIONS.poll_interval, when=active,
    )(reconcile)
    kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="forget")(forget)
    kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="tf_finetuned")(index_models)

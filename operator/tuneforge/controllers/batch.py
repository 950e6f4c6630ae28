"""BatchJob controller: validate the input, run the batch runner Job, mirror its progress.

    Validating -> InProgress -> Finalizing -> Completed
         \\-> Failed          \\-> Expired (completion window passed; partial results kept)
    any -> Cancelling -> Cancelled (spec.cancel)
    InProgress/Cancelling -> Finalizing (the finalizer) -> Failed/Expired/Cancelled

The runner owns the batch's lifecycle once it runs (it records the status strings and
their timestamps in progress.json and registers the output and error Files); the
controller validates before anything runs, starts the runner with a chat-scoped API key
made for this batch, copies progress into status, and enforces what the runner cannot
when it is not running: cancel before it started, revoking the key when the batch ends,
and failing the batch when the API server refuses the runner's Pods for longer than the
admission timeout. Cancel writes the `cancel` marker into the batch's store directory;
the runner sees it, finishes in-flight requests and finalizes partial results.

A runner that stops short (out of its retry budget, exited without an end, refused after
it ran, stuck past the completion window or the cancel grace) never takes finished work
with it: the controller writes its decision as the `finalize` marker
(tuneforge.contracts.BatchFinalize) and, once no runner Pod is left, starts the finalizer
Job, the runner's own Pod, which publishes every finished request and one error line per
unfinished one, as an expired batch does. Every step is idempotent, so an operator or
finalizer killed half-way simply repeats it.

The key's hash lives in the system namespace, which a namespaced BatchJob cannot own by
ownerReference, so BatchJobs carry kopf's finalizer: deleting a batch first revokes its key.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal

import kopf

from tuneforge import apikeys
from tuneforge.api.v1alpha1 import GROUP, VERSION, BatchJobResource
from tuneforge.api.v1alpha1.basemodel import model_id_of
from tuneforge.api.v1alpha1.finetuningjob import parse_fine_tuned_model
from tuneforge.api.v1alpha1.labels import Label
from tuneforge.config import settings
from tuneforge.contracts import (
    BATCH_CANCEL_MARKER,
    BATCH_FINALIZE_MARKER,
    BatchFinalize,
    BatchProgress,
    BatchRun,
    ErrorInfo,
)
from tuneforge.controllers import admission, builders, kube, queueing
from tuneforge.controllers.children import first, termination_error
from tuneforge.controllers.settings import ControllerSettings
from tuneforge.controllers.status import (
    BATCH_PHASE_FROM_OPENAI,
    BATCH_TERMINAL,
    ReconcileState,
    Throttle,
    find_condition,
    parse_timestamp,
    timestamp,
    utcnow,
)
from tuneforge.controllers.store import open_lines, resolve_file, store
from tuneforge.controllers.ticker import Ticker, Ticking
from tuneforge.datasets import DatasetError, validate_batch_file
from tuneforge.storage import StoreError

KIND = "BatchJob"
PLURAL = "batchjobs"
EndStatus = Literal["failed", "expired", "cancelled"]
RUNNER_EXIT_GRACE = timedelta(seconds=60)
"""Time the runner gets beyond its own cancel grace to finalize, before the controller
stops it and finishes the batch itself."""


def _key_revoked(status: dict) -> bool:
    return find_condition(status.get("conditions"), "KeyRevoked") is not None


def active(status: dict, **_: Any) -> bool:
    """Ticker filter: reconcile until finished and the key is revoked."""
    return status.get("phase") not in BATCH_TERMINAL or not _key_revoked(status)


class _State(ReconcileState):
    """Batch transitions also stamp their OpenAI timestamp field and, at the end, the
    Complete condition."""

    def transition(self, phase: str, reason: str, message: str, *, warning: bool = False) -> bool:
        if not super().transition(phase, reason, message, warning=warning):
            return False
        field = {"InProgress": "inProgressAt"}.get(phase, phase[0].lower() + phase[1:] + "At")
        if field in ("inProgressAt", "finalizingAt", "completedAt", "failedAt", "expiredAt", "cancellingAt", "cancelledAt"):
            self.status.setdefault(field, timestamp())
        if phase in BATCH_TERMINAL:
            self.condition("Complete", phase == "Completed", phase, message)
        return True


def _reconcile(
    raw: dict, status: dict, indexes: dict[str, Any], *, controller_settings: ControllerSettings, throttle: Throttle
) -> dict[str, Any]:
    batch = BatchJobResource.model_validate(raw)
    name, namespace = raw["metadata"]["name"], raw["metadata"]["namespace"]
    state = _State(raw, status)
    state.status["observedGeneration"] = state.generation
    created = parse_timestamp(raw["metadata"].get("creationTimestamp")) or utcnow()
    state.status.setdefault("createdAt", timestamp(created))
    state.status.setdefault("expiresAt", timestamp(builders.expires_at(created, batch.spec.completion_window.value)))
    # The deadline enforced is the one published in status (the gateway's `expires_at`), so
    # what users are told and what happens cannot drift apart.
    expires = parse_timestamp(state.status["expiresAt"])
    job = first(indexes["tf_jobs"].get((builders.RUNNER_COMPONENT, namespace, name)))

    if state.phase in BATCH_TERMINAL:
        _revoke_key(state, namespace, name)
        return state.status

    if state.phase in (None, "Validating") and job is None and "runnerJob" not in state.status:
        if batch.spec.cancel:
            state.transition("Cancelled", "Cancelled", "cancelled before it started")
            return state.status
        state.transition("Validating", "Validating", "validating the input file")
        _validate_and_start(batch, raw, state, indexes, expires, created, controller_settings)
        return state.status

    directory = store().batch_dir(namespace, name)
    progress_data = store().read_json(f"{directory}/progress.json")
    progress = BatchProgress.model_validate(progress_data) if progress_data is not None else None
    if "finalizerJob" in state.status:
        _follow_finalizer(state, raw, job, progress, indexes, controller_settings.pod_admission_timeout)
        return state.status
    runner_phase = BATCH_PHASE_FROM_OPENAI.get(progress.status) if progress else None
    finished = job is not None and (job["complete"] or job["failed"])
    if progress is not None and (finished or runner_phase != state.phase or throttle.ready(raw["metadata"]["uid"])):
        _copy_progress(state, progress)

    now = utcnow()
    if batch.spec.cancel and state.phase != "Cancelling":
        store().write_bytes(f"{directory}/{BATCH_CANCEL_MARKER}", b"")
        state.transition("Cancelling", "Cancelling", "cancel requested; the runner finalizes partial results")
        if progress is None:  # the runner never started: nobody to finalize
            if job is not None:
                kube.delete_job(namespace, job["name"])
            state.transition("Cancelled", "Cancelled", "cancelled before the runner started")
        return state.status

    if job is not None and job["complete"]:
        final = BATCH_PHASE_FROM_OPENAI.get(progress.status) if progress else None
        if final in BATCH_TERMINAL:
            state.transition(final, final, f"batch {final.lower()}", warning=final == "Failed")
        else:
            _finalize(state, raw, None, _ending(state, expires, now), ErrorInfo(
                code="runner_exited_early", message="the batch runner exited before finishing"))
        return state.status
    if job is not None and job["failed"]:
        error = termination_error(
            indexes["tf_pods"].get((builders.RUNNER_COMPONENT, namespace, name)),
            default_code="batch_runner_failed",
            fallback=job["failure_message"] or "the batch runner failed",
        )
        _finalize(state, raw, None, _ending(state, expires, now), ErrorInfo(code=error.code, message=error.message))
        return state.status
    if job is not None and _runner_refused(state, raw, job, progress, controller_settings.pod_admission_timeout):
        return state.status
    if job is not None:
        queueing.follow(state, job, first(indexes["tf_workloads"].get((namespace, job["name"]))), what="batch runner")

    deadline = now - timedelta(seconds=_cancel_grace()) - RUNNER_EXIT_GRACE
    if state.phase == "Cancelling":
        cancelling = parse_timestamp(state.status.get("cancellingAt")) or now
        if cancelling < deadline:
            _finalize(state, raw, job, "cancelled", ErrorInfo(
                code="batch_cancelled", message="the runner did not finish cancelling in time"))
        return state.status
    if expires < deadline:
        _finalize(state, raw, job, "expired", ErrorInfo(
            code="batch_expired", message="the completion window passed before the runner finished"))
        return state.status
    if runner_phase in ("InProgress", "Finalizing"):
        state.transition(runner_phase, runner_phase, f"the runner reports {progress.status}")
    return state.status


def _ending(state: _State, expires: datetime, now: datetime) -> EndStatus:
    """How a batch ends whose runner stopped short: as the user asked (cancelled), as its
    window says (expired), or failed."""
    if state.phase == "Cancelling":
        return "cancelled"
    return "expired" if now >= expires else "failed"


def _finalize(state: _State, raw: dict, job: dict | None, ending: EndStatus, error: ErrorInfo) -> None:
    """Decides the end of a batch its runner cannot finish and hands it to the finalizer:
    the marker first (the finalizer's instructions, rewritten identically if this repeats),
    then the runner Job goes when it is still running (its Pods get SIGTERM and leave their
    journal durable), then the status records the decision. The finalizer Job itself is
    created by `_follow_finalizer` once no runner Pod can still write the journal."""
    namespace, name = raw["metadata"]["namespace"], raw["metadata"]["name"]
    decision = BatchFinalize(status=ending, error=error)
    store().write_json(f"{store().batch_dir(namespace, name)}/{BATCH_FINALIZE_MARKER}", decision.model_dump(mode="json"))
    if job is not None:
        kube.delete_job(namespace, job["name"])
    if ending == "failed":
        state.status["errors"] = [error.model_dump(exclude_none=True)]
    state.status["finalizerJob"] = builders.finalizer_job_name(name)
    state.transition("Finalizing", "RunnerStopped",
                     f"{error.code}: {error.message}; publishing the finished requests, then {ending}",
                     warning=ending == "failed")


def _follow_finalizer(state: _State, raw: dict, runner: dict | None, progress: BatchProgress | None,
                      indexes: dict[str, Any], admission_timeout: float) -> None:
    """Starts the finalizer once the runner's Pods are gone (two writers would break the
    journal's exactly-once) and ends the batch as its progress says once it succeeded. A
    finalizer that fails too ends the batch failed without files: the journal stays in the
    store, and the errors say why."""
    namespace, name = raw["metadata"]["namespace"], raw["metadata"]["name"]
    runner_pods = indexes["tf_pods"].get((builders.RUNNER_COMPONENT, namespace, name)) or ()
    if (runner is not None and runner["deleting"]) or any(p["phase"] in ("Pending", "Running") for p in runner_pods):
        return
    finalizer = first(indexes["tf_jobs"].get((builders.FINALIZER_COMPONENT, namespace, name)))
    if finalizer is None:
        batch = BatchJobResource.model_validate(raw)
        config = settings()
        run = builders.batch_run(batch, input_uri=state.status["inputFileUri"], expires=parse_timestamp(
            state.status["expiresAt"]), served=None, settings=config)
        if kube.create(builders.finalizer_job(raw, run, settings=config)):
            kopf.info(raw, reason="FinalizerCreated", message=f"created batch finalizer Job {state.status['finalizerJob']}")
        return
    final = BATCH_PHASE_FROM_OPENAI.get(progress.status) if progress else None
    if finalizer["complete"] and final in BATCH_TERMINAL:
        _copy_progress(state, progress)
        state.transition(final, final, f"batch {final.lower()} with the results its runner finished",
                         warning=final in ("Failed", "Expired"))
        return
    if finalizer["failed"] or finalizer["complete"]:
        error = termination_error(
            indexes["tf_pods"].get((builders.FINALIZER_COMPONENT, namespace, name)),
            default_code="batch_finalizer_failed",
            fallback=finalizer["failure_message"] or "the batch finalizer failed",
        )
        _fail_unpublished(state, error.to_wire())
        return
    refused = admission.follow(state, namespace, finalizer, what="batch finalizer", timeout=admission_timeout)
    if refused is not None:
        kube.delete_job(namespace, finalizer["name"])
        _fail_unpublished(state, refused.to_wire())


def _fail_unpublished(state: _State, error: dict) -> None:
    state.status["errors"] = [*state.status.get("errors", []), error][-100:]
    state.transition("Failed", "FinalizerFailed",
                     f"{error['code']}: {error['message']}; the finished requests stay in the journal", warning=True)


def _runner_refused(state: _State, raw: dict, job: dict, progress: BatchProgress | None, timeout: float) -> bool:
    """Follows whether the runner's Pods are admitted (tuneforge.controllers.admission);
    True when they were refused for longer than `timeout`: a runner that never ran fails
    the batch at once, one that ran before is finalized like any runner that stopped short."""
    namespace = raw["metadata"]["namespace"]
    error = admission.follow(state, namespace, job, what="batch runner", timeout=timeout)
    if error is None:
        return False
    if progress is not None:
        _finalize(state, raw, job, "failed", ErrorInfo(code=error.code, message=error.message))
        return True
    kube.delete_job(namespace, job["name"])
    state.status["errors"] = [error.to_wire()]
    state.transition("Failed", admission.REFUSED, f"{error.code}: {error.message}", warning=True)
    return True


def _cancel_grace() -> float:
    return float(BatchRun.model_fields["cancel_grace_s"].default)


def _served_models(namespace: str, indexes: dict[str, Any]) -> list[str]:
    """Models a batch in `namespace` can use: every model a ModelDeployment in the
    namespace or the system namespace serves, their base models by model id and by
    resource name (the alias the gateway also routes), and this namespace's fine-tuned
    models of those bases (loaded into the base's deployment on demand), whose ids name
    the base either way."""
    deployments = [
        *indexes["tf_modeldeployments"].get(namespace, ()),
        *indexes["tf_modeldeployments"].get(settings().system_namespace, ()),
    ]
    bases = {d["base"] for d in deployments}
    bases |= {model_id_of(entry["body"]) for base in list(bases) for entry in indexes["tf_basemodels"].get(base, ())}
    served = set(bases)
    for deployment in deployments:
        served.update(deployment["served"])
    for model in indexes["tf_finetuned"].get(namespace, ()):
        parsed = parse_fine_tuned_model(model)
        if parsed is not None and parsed.base_model in bases:
            served.add(model)
    return sorted(served)


def _refuse(state: _State, error: dict) -> None:
    """Fails a batch that cannot start, with `error` as its one error."""
    state.status["errors"] = [error]
    state.condition("Validated", False, "Invalid", error["message"])
    state.transition("Failed", "ValidationFailed", f"{error['code']}: {error['message']}", warning=True)


def _validate_and_start(batch: BatchJobResource, raw: dict, state: _State, indexes: dict, expires: Any,
                        created: Any, controller_settings: ControllerSettings) -> None:
    """Validates the input against the models served now and starts the runner. A model
    nobody serves yet fails the batch only once it is older than the dependency grace: a
    ModelDeployment applied with it may not have been seen yet."""
    namespace, name = raw["metadata"]["namespace"], raw["metadata"]["name"]
    name_problem = builders.owner_name_problem("BatchJob", name)
    if name_problem is not None:
        _refuse(state, {"code": "invalid_name", "message": name_problem})
        return
    served = _served_models(namespace, indexes)
    try:
        input_uri = resolve_file(namespace, batch.spec.input_file)
        summary = validate_batch_file(open_lines(input_uri), endpoint=batch.spec.endpoint.value, served_models=served)
    except StoreError:
        error = {"code": "file_not_found", "message": f"input file {batch.spec.input_file!r} does not exist", "param": "input_file_id"}
    except DatasetError as exc:
        error = exc.to_error_info().model_dump(exclude_none=True)
    else:
        error = None
    young = (utcnow() - created).total_seconds() < controller_settings.dependency_grace
    if error is not None and error["code"] == "model_not_found" and young:
        state.condition("Validated", "Unknown", "WaitingForModel", error["message"])
        return
    if error is not None:
        _refuse(state, error)
        return
    config = settings()
    run = builders.batch_run(batch, input_uri=input_uri, expires=expires, served=served, settings=config)
    _ensure_key(raw)
    kube.create(builders.runner_configmap(raw, run))
    kube.create(builders.runner_job(raw, run, settings=config,
                                   retries_per_hour=controller_settings.batch_retries_per_hour))
    state.status["inputFileUri"] = input_uri
    state.status["runnerJob"] = builders.runner_job_name(name)
    state.status["requestCounts"] = {"total": summary.n_requests, "completed": 0, "failed": 0}
    state.condition("Validated", True, "InputValid", f"{summary.n_requests} requests")
    kopf.info(raw, reason="RunnerCreated", message=f"created batch runner Job {builders.runner_job_name(name)}")


def _ensure_key(raw: dict) -> None:
    """The runner's chat-scoped key: kept in the batch's namespace (read by the runner),
    its hash registered in the system namespace. Re-running reuses the stored key."""
    namespace, name = raw["metadata"]["namespace"], raw["metadata"]["name"]
    secret = kube.read_secret(namespace, builders.batch_key_secret_name(name))
    if secret is None:
        kube.create(builders.batch_key_secret(raw, apikeys.generate_key()))
        secret = kube.read_secret(namespace, builders.batch_key_secret_name(name))
    key = base64.b64decode(secret.data[builders.BATCH_KEY_ENV]).decode()
    kube.create(
        apikeys.key_secret(
            key,
            tenant=namespace,
            scopes=["chat"],
            description=f"batch runner of {namespace}/{name}",
            labels={Label.BATCH_JOB: name},
        )
    )


def _revoke_key(state: _State, namespace: str, name: str) -> None:
    if _key_revoked(state.status):
        return
    revoke(namespace, name)
    state.condition("KeyRevoked", True, "BatchEnded", "the runner's API key was deleted")


def revoke(namespace: str, name: str) -> None:
    """Deletes the batch's key: its hash in the system namespace and the copy for the runner."""
    system = settings().system_namespace
    selector = f"{Label.BATCH_JOB}={name},{Label.TENANT}={namespace}"
    for secret in kube.core().list_namespaced_secret(system, label_selector=selector).items:
        kube.delete_secret(system, secret.metadata.name)
    kube.delete_secret(namespace, builders.batch_key_secret_name(name))


def _copy_progress(state: _State, progress: BatchProgress) -> None:
    state.status["requestCounts"] = progress.request_counts.model_dump()
    state.status["usage"] = {
        "inputTokens": progress.usage.input_tokens,
        "outputTokens": progress.usage.output_tokens,
        "totalTokens": progress.usage.total_tokens,
    }
    if progress.output_file_id:
        state.status["outputFile"] = progress.output_file_id
    if progress.error_file_id:
        state.status["errorFile"] = progress.error_file_id
    if progress.errors:
        state.status["errors"] = [e.model_dump(exclude_none=True) for e in progress.errors[:100]]
    for field in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at"):
        value = getattr(progress, field)
        if value is not None:
            camel = "".join(part.capitalize() if i else part for i, part in enumerate(field.split("_")))
            state.status[camel] = timestamp(value)


async def on_delete(namespace: str, name: str, uid: str, *, throttle: Throttle, ticker: Ticker, **_: Any) -> None:
    """Revokes the key of a deleted batch once no reconcile of it runs (one could hand the
    key out again); kopf then removes the finalizer."""
    await ticker.settled((namespace, name))
    await asyncio.to_thread(revoke, namespace, name)
    throttle.forget(uid)


def register(registry: kopf.OperatorRegistry, controller_settings: ControllerSettings, ticking: Ticking) -> None:
    """The progress throttle is this registry's own, shared by its reconcile and its delete
    handler. The delete handler is the one finalizer tuneforge keeps: a batch's key lives in
    the system namespace, where no ownerReference can reach it."""
    throttle = Throttle(controller_settings.status_interval)
    reconcile = partial(_reconcile, controller_settings=controller_settings, throttle=throttle)
    ticker = ticking.install(registry, KIND, PLURAL, reconcile, interval=controller_settings.poll_interval, when=active)
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="revoke-key")(
        partial(on_delete, throttle=throttle, ticker=ticker))

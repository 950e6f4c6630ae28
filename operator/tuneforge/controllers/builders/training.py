"""What a FineTuningJob owns: its TrainingRun, the trainer Job (one Pod, or an Indexed Job
for a multi-node group) and the headless Service a group's Pods find each other by."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneforge.api.sizing import TrainingSize, profile_of
from tuneforge.api.v1alpha1 import BaseModelResource, FineTuningJobResource
from tuneforge.api.v1alpha1.common import Hardware
from tuneforge.api.v1alpha1.finetuningjob import DistributedStrategy, fine_tuned_model_id
from tuneforge.api.v1alpha1.labels import Label, PortName
from tuneforge.config import HardwareProfile, Settings
from tuneforge.contracts import (
    RENDEZVOUS_PORT,
    RUN_FILE,
    CheckpointSettings,
    DistributedSettings,
    LoraSettings,
    TrainerExit,
    TrainingHyperparameters,
    TrainingRun,
)
from tuneforge.controllers.builders.names import (
    rendezvous_host,
    trainer_configmap_name,
    trainer_job_name,
    trainer_service_name,
)
from tuneforge.controllers.builders.pods import (
    FATAL_EXIT_CODES,
    fail_on_exit_codes,
    kueue_labels,
    labels_for,
    owner_reference,
    placement,
    pod_failure_policy,
    pod_spec,
    run_configmap,
    store_access,
    store_uri,
    with_image_pull,
    with_shared_memory,
)

TRAINER_CONTAINER = "trainer"
TRAINER_BACKOFF_LIMIT = 3
TRAINER_GRACE_SECONDS = 120
"""SIGTERM to SIGKILL: time for the trainer to write a last checkpoint when paused."""
USABLE_GPU_MEMORY = 0.9
"""Share of a GPU's memory training may plan on; the rest goes to the CUDA context, the
allocator's fragmentation and the small LoRA gradients and optimizer states."""


def training_run(
    ftjob: FineTuningJobResource,
    base: BaseModelResource,
    *,
    training_uri: str,
    validation_uri: str | None,
    store_root: str,
    distributed: DistributedSettings,
) -> TrainingRun:
    """The TrainingRun contract for a validated FineTuningJob."""
    name, namespace = ftjob.metadata["name"], ftjob.metadata["namespace"]
    spec = ftjob.spec
    lora = spec.method.lora
    hp = spec.hyperparameters
    return TrainingRun(
        job_id=name,
        namespace=namespace,
        base_model=spec.base_model,
        base_model_uri=base.spec.source.uri,
        training_file=training_uri,
        validation_file=validation_uri,
        output_uri=store_uri(store_root, namespace, "fine-tuning", name),
        fine_tuned_model=fine_tuned_model_id(base.model_id, namespace, spec.suffix, name),
        lora=LoraSettings(
            rank=lora.rank,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target_modules=lora.target_modules or "all-linear",
            quantize_4bit=lora.quantization.value == "nf4",
        ),
        hyperparameters=TrainingHyperparameters(
            n_epochs=hp.n_epochs,
            batch_size=hp.batch_size,
            learning_rate_multiplier=hp.learning_rate_multiplier,
            warmup_ratio=hp.warmup_ratio,
            warmup_steps=hp.warmup_steps,
            lr_scheduler=hp.lr_scheduler,
            max_seq_length=hp.max_seq_length,
            seed=hp.seed,
            gradient_checkpointing=hp.gradient_checkpointing,
            micro_batch_size=hp.micro_batch_size,
            attention=hp.attention.value,
        ),
        checkpoints=CheckpointSettings(
            every_n_steps=spec.checkpoints.every_n_steps, keep_last=spec.checkpoints.keep_last
        ),
        merge_adapter=spec.merge_adapter,
        distributed=distributed,
    )


def training_memory_bytes(parameter_count: int, max_seq_length: int, micro_batch_size: int = 1) -> float:
    """GPU memory one process needs to train a LoRA adapter on an unsharded bf16 model:

        weights      = 2 bytes x P
        width h      = (128 x P / 12) ^ (1/3)   (P = 12 L h^2 with depth L = h / 128, as in
                                                 Llama-class models)
        activations  = 34 x L x h bytes per token (Korthikanti et al. 2022, 16-bit, flash
                       attention) = 34 x P / (12 h), times maxSeqLength x microBatchSize

    Only the parameter count is known of a catalog model, hence the shape assumption; LoRA's
    own weights, gradients and optimizer states are a fraction of a percent of P and are
    left to the USABLE_GPU_MEMORY margin. Gradient checkpointing would cut the activations,
    so the estimate errs towards sharding, the choice that still trains."""
    width = (128 * parameter_count / 12) ** (1 / 3)
    activations_per_token = 34 * parameter_count / (12 * width)
    return 2 * parameter_count + activations_per_token * max_seq_length * micro_batch_size


def fits_one_gpu(parameter_count: int | None, gpu_memory_gb: float | None, max_seq_length: int,
                 micro_batch_size: int = 1) -> bool:
    """Whether a whole model copy trains on one GPU; True when either size is unknown, since
    ddp is the safe default for the small models that usually leave them out."""
    if not parameter_count or not gpu_memory_gb:
        return True
    needed = training_memory_bytes(parameter_count, max_seq_length, micro_batch_size)
    return needed <= USABLE_GPU_MEMORY * gpu_memory_gb * 2**30


def resolve_distributed(ftjob: FineTuningJobResource, base: BaseModelResource, size: TrainingSize) -> DistributedSettings:
    """The run's DistributedSettings for a job whose size passed `size_training`: the
    strategy with `auto` decided, Pods and processes, and node 0 as rendezvous when the
    group spans Pods."""
    name = ftjob.metadata["name"]
    return DistributedSettings(
        strategy=_strategy(ftjob, base, size),
        nodes=size.nodes,
        processes_per_node=size.processes_per_node,
        rendezvous_host=rendezvous_host(name) if size.nodes > 1 else None,
        rendezvous_port=RENDEZVOUS_PORT,
    )


def _strategy(ftjob: FineTuningJobResource, base: BaseModelResource, size: TrainingSize) -> str:
    """auto shards (fsdp) only when there is more than one process to shard across, the
    base is not 4-bit (fsdp cannot shard it) and a whole copy would not fit one GPU."""
    spec = ftjob.spec
    if spec.distributed.strategy is not DistributedStrategy.auto:
        return spec.distributed.strategy.value
    if size.world_size == 1 or spec.method.lora.quantization.value == "nf4":
        return "ddp"
    hp = spec.hyperparameters
    gpu_memory = size.profile.gpu_memory_gb if size.profile and size.gpus_per_node else None
    fits = fits_one_gpu(base.spec.parameter_count, gpu_memory, hp.max_seq_length, hp.micro_batch_size or 1)
    return "ddp" if fits else "fsdp"


def trainer_labels(ftjob: str) -> dict[str, str]:
    return labels_for("trainer", Label.FINE_TUNING_JOB, ftjob)


def trainer_configmap(body: Mapping[str, Any], run: TrainingRun) -> dict[str, Any]:
    name = body["metadata"]["name"]
    return run_configmap(
        trainer_configmap_name(name), body["metadata"]["namespace"], body, trainer_labels(name), run.dump()
    )


def trainer_job(
    body: Mapping[str, Any],
    run: TrainingRun,
    *,
    hardware: Hardware | None,
    settings: Settings,
) -> dict[str, Any]:
    """The batch/v1 Job that runs `tuneforge-train` on the run spec.

    Pods are never restarted in place (restartPolicy Never, which podFailurePolicy needs).
    One Pod: the Job retries a Pod lost to a disruption without counting it and fails at
    once on the trainer's own errors. A group of `run.distributed.nodes` Pods is an Indexed
    Job (see `_group`) that fails as a whole for the controller to replace. With a Kueue
    queue the Job starts suspended and labelled, and Kueue unsuspends it on admission
    (one Workload for the whole group).
    Resuming after a pause is a new Job with the same name; the trainer continues from the
    newest checkpoint in its output dir.
    """
    name = body["metadata"]["name"]
    labels = trainer_labels(name)
    spec_fields = body.get("spec") or {}
    queue_name = spec_fields.get("queueName")
    job_labels = {**labels, **kueue_labels(queue_name, spec_fields.get("workloadPriorityClass"))}
    access = store_access(settings, [run.base_model_uri, run.training_file, run.validation_file, run.output_uri])
    profile = profile_of(hardware, settings)
    container = {
        "name": TRAINER_CONTAINER,
        "image": settings.trainer_image,
        "command": ["tuneforge-train"],
        "args": ["--run", RUN_FILE],
        "env": [*access["env"], *_profile_env(profile)],
    }
    pod = pod_spec(
        container=container,
        configmap=trainer_configmap_name(name),
        access=access,
        place=placement(hardware),
        restart_policy="Never",
        grace_seconds=TRAINER_GRACE_SECONDS,
    )
    if run.distributed.world_size > 1:
        pod = with_shared_memory(pod, profile.shared_memory if profile else None)
    pod = with_image_pull(pod, settings)
    spec: dict[str, Any] = {
        "suspend": bool(queue_name),
        "backoffLimit": TRAINER_BACKOFF_LIMIT,
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": pod_failure_policy(TRAINER_CONTAINER),
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    if run.distributed.nodes > 1:
        spec = _group(spec, name, run.distributed.nodes)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": trainer_job_name(name),
            "namespace": body["metadata"]["namespace"],
            "labels": job_labels,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": spec,
    }


def _profile_env(profile: HardwareProfile | None) -> list[dict[str, str]]:
    return [{"name": key, "value": value} for key, value in sorted((profile.env if profile else {}).items())]


def _group(spec: dict[str, Any], ftjob: str, nodes: int) -> dict[str, Any]:
    """The Job spec of a group of `nodes` trainer Pods: an Indexed Job (each Pod gets its
    node rank as JOB_COMPLETION_INDEX and the hostname `<job>-<rank>` under the headless
    Service's subdomain, so node 0 is the rendezvous host), all Pods running at once, and
    any failure failing the whole Job (backoffLimit 0 for failures no rule names) so the
    controller replaces the group rather than one Pod of it."""
    template = spec["template"]
    [container] = template["spec"]["containers"]
    port = {"name": PortName.RENDEZVOUS, "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}
    pod = {
        **template["spec"],
        "subdomain": trainer_service_name(ftjob),
        "containers": [{**container, "ports": [port]}],
    }
    return {
        **spec,
        "backoffLimit": 0,
        "completions": nodes,
        "parallelism": nodes,
        "completionMode": "Indexed",
        "podFailurePolicy": _group_failure_policy(TRAINER_CONTAINER),
        "template": {**template, "spec": pod},
    }


def trainer_service(body: Mapping[str, Any]) -> dict[str, Any]:
    """The headless Service of a multi-node trainer: it gives each Pod of the Indexed Job a
    DNS name, and node 0's is the rendezvous host. It publishes Pods that are not ready
    (the trainer has no readiness probe, and the Pods must find each other before any of
    them is up). Owned by the FineTuningJob, not the Job, so it outlives group restarts."""
    name = body["metadata"]["name"]
    labels = trainer_labels(name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": trainer_service_name(name),
            "namespace": body["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels,
            "ports": [{"name": PortName.RENDEZVOUS, "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                       "protocol": "TCP"}],
        },
    }


def _group_failure_policy(container: str) -> dict[str, Any]:
    """A multi-node group fails as a whole: the Job fails on any Pod failure (the Job
    controller then stops the other Pods) and the FineTuningJob controller replaces the
    whole group, telling a disruption (not counted against the budget) and a fatal exit
    (no replacement) from the rest by the rule that matched. Retrying one Pod in place
    would leave the others waiting in a broken collective."""
    return {
        "rules": [
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
            fail_on_exit_codes(container, "In", FATAL_EXIT_CODES),
            fail_on_exit_codes(container, "NotIn", (int(TrainerExit.succeeded),)),
        ]
    }
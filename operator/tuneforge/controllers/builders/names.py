"""Names of the objects the operator owns, derived from their owner's name alone.

An operator that restarts half-way through a reconcile finds what it already created
under the same name instead of creating a duplicate; a create that answers 409 means
"already done".
"""

from __future__ import annotations

import hashlib
import re

from tuneforge.api.v1alpha1.common import DNS_LABEL_PATTERN, MAX_LABEL_LENGTH, MAX_NODES, SERVICE_NAME_PATTERN


def child_name(owner: str, suffix: str, limit: int = MAX_LABEL_LENGTH) -> str:
    """`<owner>-<suffix>`, shortened with a hash when it would exceed `limit`, by default 63
    characters (the limit of label values such as the `job-name` label the Job controller
    adds)."""
    name = f"{owner}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{owner[:keep].rstrip('-')}-{digest}-{suffix}"


def trainer_job_name(ftjob: str) -> str:
    """Short enough that `<name>-<index>`, the hostname the Job controller gives each Pod of
    an Indexed Job, stays a DNS label for the largest group."""
    return child_name(ftjob, "trainer", limit=MAX_LABEL_LENGTH - len(f"-{MAX_NODES - 1}"))


def trainer_configmap_name(ftjob: str) -> str:
    return child_name(ftjob, "run")


def trainer_service_name(ftjob: str) -> str:
    """The headless Service of a multi-node trainer, the DNS subdomain of its Pods."""
    return child_name(ftjob, "trainers")


def rendezvous_host(ftjob: str) -> str:
    """Node 0 of a multi-node trainer: an Indexed Job's Pod `i` is named `<job>-<i>` in DNS
    under the Job's subdomain, resolvable from the Pods' own namespace."""
    return f"{trainer_job_name(ftjob)}-0.{trainer_service_name(ftjob)}"


def service_name_problem(name: str) -> str | None:
    """Why `name`, valid for a custom resource (a DNS subdomain: dots, a digit first, up to
    253 characters), cannot also name the Service that a ModelDeployment of that name puts
    in front of its Pods; None when it can. The API server would refuse the Service on
    every reconcile, so the resource says so once instead."""
    if len(name) <= MAX_LABEL_LENGTH and re.match(SERVICE_NAME_PATTERN, name):
        return None
    return (f"the name {name!r} cannot name the Service in front of the serving Pods: it must be at most "
            f"{MAX_LABEL_LENGTH} characters of lowercase letters, digits and '-', start with a letter and end "
            "with a letter or digit (an RFC 1035 label); create the ModelDeployment again under such a name")


def owner_name_problem(kind: str, name: str) -> str | None:
    """Why a job of `kind` with this name cannot run, or None: the objects it runs carry its
    name as a label value (what selects its Pods and lists its children), which holds at
    most 63 characters, while the job's own name may have 253. The API server would refuse
    every child, so the job says so once instead."""
    if len(name) <= MAX_LABEL_LENGTH:
        return None
    return (f"the name {name!r} has {len(name)} characters: a {kind}'s name labels the objects it runs, and a "
            f"label value holds at most {MAX_LABEL_LENGTH}; create the {kind} again under a shorter name")


def base_model_name_problem(base_model: str) -> str | None:
    """Why FineTuningJobs and ModelDeployments cannot refer to a BaseModel of this name, or
    None: their `baseModel` is a DNS label (the entry's name also becomes a label value), so
    a dotted name valid for the BaseModel itself could never be used."""
    if len(base_model) <= MAX_LABEL_LENGTH and re.match(DNS_LABEL_PATTERN, base_model):
        return None
    return (f"the name {base_model!r} cannot be used as a baseModel: it must be at most {MAX_LABEL_LENGTH} "
            "characters of lowercase letters, digits and '-', starting and ending with a letter or digit; keep "
            "the model's own id, dots and all, in spec.modelId and name the entry after it without them")


def group_name_problem(ftjob: str) -> str | None:
    """Why a FineTuningJob of this name cannot train on several nodes, or None: its
    trainer's headless Service and its Pods' hostnames derive from the name (shortened
    with a hash when long), and a dot or a leading digit survives into them, where the
    API server refuses it."""
    if re.match(SERVICE_NAME_PATTERN, ftjob):
        return None
    return (f"the name {ftjob!r} cannot name the Service and Pod hostnames of a trainer on several nodes: it must "
            "be lowercase letters, digits and '-', start with a letter and end with a letter or digit; create "
            "the job again under such a name, or on one node")


def serving_configmap_name(mdep: str) -> str:
    return child_name(mdep, "serving")


def serving_token_secret_name(mdep: str) -> str:
    return child_name(mdep, "serving-token")


def runner_job_name(batch: str) -> str:
    return child_name(batch, "runner")


def finalizer_job_name(batch: str) -> str:
    return child_name(batch, "finalizer")


def runner_configmap_name(batch: str) -> str:
    return child_name(batch, "run")


def batch_key_secret_name(batch: str) -> str:
    return child_name(batch, "api-key")


def shared_deployment_name(base_model: str) -> str:
    """The shared multi-LoRA ModelDeployment of a BaseModel is named after it when that
    name can also name the deployment's Service (`service_name_problem`). A catalog name
    that starts with a digit (`7b-chat`) cannot; its shared deployment is then named after
    a form that can, any other character turned to '-', a letter first, and a hash of the
    whole name keeping it apart from a BaseModel named like that form. Nothing looks the
    shared deployment up by name: the gateway finds it by its labels."""
    if service_name_problem(base_model) is None:
        return base_model
    stem = re.sub(r"[^a-z0-9-]", "-", base_model).strip("-")
    if not stem[:1].isalpha():
        stem = f"m-{stem}"
    digest = hashlib.sha256(base_model.encode()).hexdigest()[:8]
    return f"{stem[:MAX_LABEL_LENGTH - len(digest) - 1].rstrip('-')}-{digest}"


def batch_file_ids(namespace: str, batch: str) -> tuple[str, str]:
    """The output and error file ids a batch's runner registers its results under.

    Derived from the batch alone, so a restarted runner (or controller) names the same
    Files and never leaves orphans behind.
    """
    digest = hashlib.sha256(f"{namespace}/{batch}".encode()).hexdigest()
    return f"file-{digest[:24]}", f"file-{digest[24:48]}"
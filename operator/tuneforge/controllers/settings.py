"""The operator's tunables, fixed for the life of the process.

Built once from the command line and handed to each kind's `register`, which gives its
handlers what they need; nothing reads them from a module global, so two registries built
in one process (a test's, say) cannot see each other's values.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ControllerSettings:
    poll_interval: float = 2.0
    """Seconds between reconciles of an active object (reads indexes, not the API)."""
    autoscale_interval: float = 5.0
    """Seconds between two autoscaling decisions of a ModelDeployment (each reads every
    ready replica's engine metrics)."""
    status_interval: float = 5.0
    """Minimum seconds between progress-only status writes of one object."""
    dependency_grace: float = 30.0
    """Seconds a new object waits for what it names (a BaseModel, a deployment serving its
    model) to appear before failing: objects applied together arrive in any order."""
    pod_admission_timeout: float = 600.0
    """Seconds a trainer or batch runner Job may go on failing to create its Pods (Pod
    Security, a quota, a webhook refusing them) before the job fails: long enough for a
    platform team to fix a quota, short enough that nobody waits on a job that cannot run."""
    batch_retries_per_hour: int = 10
    """Batch runner crashes retried per hour of a batch's completion window (see
    builders.runner_retry_budget): at 10, the retries span the whole window."""
    webhook_timeout: float = 10.0
    """Seconds one webhook delivery attempt may take."""
    webhook_attempts: int = 8
    """Deliveries tried before a webhook counts as failed."""
    webhook_retry_delay: float = 10.0
    """Seconds before the second attempt; each later wait doubles, up to ten minutes."""

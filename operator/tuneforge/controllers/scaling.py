"""How many replicas a ModelDeployment needs: a pure function of the load it has seen.

The rules are the Horizontal Pod Autoscaler's, with Knative's start from zero:

- the load (requests in flight) is averaged over `windowSeconds` and divided by the target
  per replica, rounded up, within [minReplicas, maxReplicas];
- more replicas are granted at once; fewer only when the highest recommendation of the
  last `scaleDownDelaySeconds` allows it (a stabilization window), so traffic that dips and
  returns does not stop and restart Pods;
- requests a gateway holds for a deployment without a ready replica bypass the average:
  they ask for enough replicas at once, at least one, so scaling from zero waits for no window;
- after an operator restart nothing is removed until a whole delay has been observed,
  since the history that would justify it is gone.

Time is passed in (monotonic seconds), so the rules are tested without waiting.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from tuneforge.api.v1alpha1.autoscaling import Autoscaling


@dataclass(frozen=True)
class Decision:
    desired: int
    load: float
    """The averaged load the decision used."""
    reason: str | None
    """Why `desired` differs from the current count; None when it does not."""


def replicas_for(load: float, autoscaling: Autoscaling) -> int:
    """Replicas carrying `load` at the target, within the bounds."""
    wanted = math.ceil(load / autoscaling.target_in_flight - 1e-9) if load > 0 else 0
    return max(autoscaling.min_replicas, min(autoscaling.max_replicas, wanted))


class Scaler:
    """The recommendation history of one deployment."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.samples: deque[tuple[float, float]] = deque()
        self.recommendations: deque[tuple[float, int]] = deque()

    def observe(self, now: float, load: float, held: int, current: int, autoscaling: Autoscaling) -> Decision:
        """Records the load in flight at the engines (`load`) and held at the gateways
        (`held`) and decides the replica count."""
        self.samples.append((now, load + held))
        while self.samples[0][0] <= now - autoscaling.window_seconds:
            self.samples.popleft()
        average = sum(value for _, value in self.samples) / len(self.samples)
        recommended = replicas_for(average, autoscaling)
        if held:
            recommended = max(recommended, replicas_for(held, autoscaling), 1)
        self.recommendations.append((now, recommended))
        while self.recommendations[0][0] < now - autoscaling.scale_down_delay_seconds:
            self.recommendations.popleft()

        target = autoscaling.target_in_flight
        if current > autoscaling.max_replicas:
            return Decision(autoscaling.max_replicas, average, f"maxReplicas is {autoscaling.max_replicas}")
        if current < autoscaling.min_replicas:
            return Decision(autoscaling.min_replicas, average, f"minReplicas is {autoscaling.min_replicas}")
        if recommended > current:
            if held and current == 0:
                reason = f"{held} request{'s' if held != 1 else ''} waiting for a replica"
            else:
                reason = f"load {average:.1f} over target {target} per replica"
            return Decision(recommended, average, reason)
        if recommended == current or now - self.started < autoscaling.scale_down_delay_seconds:
            return Decision(current, average, None)
        stable = max(value for _, value in self.recommendations)
        if stable >= current:
            return Decision(current, average, None)
        if stable == 0:
            reason = f"no requests for {autoscaling.scale_down_delay_seconds}s"
        else:
            reason = f"load {average:.1f} under target {target} per replica for {autoscaling.scale_down_delay_seconds}s"
        return Decision(stable, average, reason)

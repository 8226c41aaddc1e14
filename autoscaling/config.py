"""The typed autoscaling configuration of a model deployment: which policy, its bounds and its windows.

One definition for the control plane (REST, CLI, SQL), `serve deploy` YAML and the builder that turns it into
Ray Serve's `AutoscalingConfig`. No Ray here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Mode = Literal["llm", "requests", "off"]
MODES: tuple[str, ...] = ("llm", "requests", "off")


class LLMPolicyOptions(BaseModel):
    """The windows and thresholds of the `llm` policy (defaults beat Serve's 30 s look-back, 30 s upscale
    delay and 600 s downscale delay)."""

    model_config = ConfigDict(extra="forbid")

    panic_window_s: float = Field(1.0, gt=0, le=60, description=(
        "Requests waiting in the engines' queue (or KV usage over the threshold) for this long, in every "
        "sample: scale up at once, to what the load needs. A shorter burst is held."))
    stable_window_s: float = Field(30.0, gt=0, le=600, description=(
        "Averaging window: a queue or KV pressure that comes and goes but averages over the thresholds here "
        "adds one replica; scale-down keeps the peak load of this window served."))
    quiet_period_s: float = Field(120.0, ge=0, le=3600, description=(
        "No waiting request and KV usage under the threshold for this long before any scale-down."))
    kv_usage_threshold: float = Field(0.85, gt=0, le=1, description="KV-cache usage (0-1) of a replica that "
                                                                    "counts as pressure.")
    waiting_threshold: float = Field(0.0, ge=0, description="Waiting requests per replica tolerated before "
                                                            "they count as pressure (0: any waiting request).")
    metrics_interval_s: float = Field(0.5, gt=0, le=10, description="How often replicas record and push their "
                                                                    "engine metrics to Serve's controller.")


class ScalingSpec(BaseModel):
    """How many engine replicas a deployment runs, and who decides."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = Field("off", description="llm: vLLM's queue and KV usage decide; requests: Serve's own policy "
                                          "on ongoing requests; off: a fixed count (min = max).")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0, description="At deploy time (default: min_replicas); Serve "
                                                                 "also resets the target to it on a config change.")
    target_ongoing_requests: float = Field(16, gt=0, description="The requests policy: ongoing requests per "
                                                                 "replica to aim for.")
    llm: LLMPolicyOptions = Field(default_factory=LLMPolicyOptions)

    @model_validator(mode="after")
    def _bounds(self) -> "ScalingSpec":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        if self.mode == "off" and self.min_replicas != self.max_replicas:
            raise ValueError("with autoscaling off the replica count is fixed: min_replicas must equal max_replicas")
        if self.mode == "off" and self.min_replicas == 0:
            raise ValueError("with autoscaling off at least one replica runs")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self

    @classmethod
    def fixed(cls, replicas: int) -> "ScalingSpec":
        return cls(mode="off", min_replicas=replicas, max_replicas=replicas)

"""Settings of the simulator: `SimSettings` = the shared `StillflowSettings` + a `sim` section.

Environment examples: `STILLFLOW_SIM__SEED=7`, `STILLFLOW_SIM__LATENCY_MS=0`,
`STILLFLOW_SIM__ERROR_RATES__CRASH=0.05`, `STILLFLOW_SIM__BASE_URL=http://127.0.0.1:8100/v1`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from sim.policies import DEFAULT_ERROR_RATES, ERROR_MODES, Policy, make_policy
from stillflow.settings import StillflowSettings

__all__ = ["ErrorRates", "SimSection", "SimSettings", "with_sim"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorRates(_Section):
    """Probability per episode of each injected error mode (at most one mode per episode)."""

    hallucinated_tool: float = Field(default=DEFAULT_ERROR_RATES["hallucinated_tool"], ge=0, le=1)
    wrong_tool: float = Field(default=DEFAULT_ERROR_RATES["wrong_tool"], ge=0, le=1)
    schema_invalid_args: float = Field(default=DEFAULT_ERROR_RATES["schema_invalid_args"], ge=0, le=1)
    wandering: float = Field(default=DEFAULT_ERROR_RATES["wandering"], ge=0, le=1)
    wrong_answer: float = Field(default=DEFAULT_ERROR_RATES["wrong_answer"], ge=0, le=1)
    unsafe_action: float = Field(default=DEFAULT_ERROR_RATES["unsafe_action"], ge=0, le=1)
    crash: float = Field(default=DEFAULT_ERROR_RATES["crash"], ge=0, le=1)

    @model_validator(mode="after")
    def _sum(self) -> ErrorRates:
        total = sum(self.as_dict().values())
        if total > 1 + 1e-9:
            raise ValueError(f"error rates add up to {total:.3f}; at most 1")
        return self

    def as_dict(self) -> dict[str, float]:
        return {m: float(getattr(self, m)) for m in ERROR_MODES}

    @classmethod
    def none(cls) -> ErrorRates:
        return cls(**{m: 0.0 for m in ERROR_MODES})


class SimSection(_Section):
    # the world, the runs
    seed: int = Field(default=0, description="run seed: task sampling, error modes, wording")
    world_seed: int = Field(default=0, description="the world's data (task ids carry it when not 0)")
    policy: Literal["teacher", "perfect", "random"] = "teacher"
    model_id: str | None = Field(default=None, description="model id reported (default per policy)")
    error_rates: ErrorRates = ErrorRates()
    price_per_1k_tokens: float = Field(default=0.01, ge=0, description="USD per 1k tokens (cost_usd, usage)")
    max_turns: int = Field(default=16, ge=1, description="assistant turns before an episode is cut off")
    split: Literal["train", "heldout", "all"] = "train"
    # the teacher server
    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65535)
    latency_ms: float = Field(default=800.0, ge=0, description="mean response latency of the teacher server")
    latency_jitter_ms: float = Field(default=250.0, ge=0, description="uniform jitter, ± this much")
    # the fleet
    agents: int = Field(default=8, ge=1, description="concurrent agents")
    rate: float = Field(default=5.0, gt=0, description="target traces started per second")
    duration_s: float = Field(default=60.0, gt=0)
    turn_delay_ms: float = Field(default=0.0, ge=0, description="in-process agents: think time per turn")
    progress_interval_s: float = Field(default=2.0, gt=0)
    # OpenAI mode: agents call a chat-completions endpoint (the teacher server, the router)
    base_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:8100/v1; unset = in-process")
    api_key: SecretStr = SecretStr("sim")
    model: str = Field(default="teacher", description="the `model` field sent in requests")
    request_timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=0, ge=0, description="openai client retries (a crash is deterministic)")

    def make_policy(self) -> Policy:
        return make_policy(self.policy, rates=self.error_rates.as_dict(), model_id=self.model_id)


class SimSettings(StillflowSettings):
    """`StillflowSettings` with the `sim` section (env `STILLFLOW_SIM__...`)."""

    sim: SimSection = SimSection()


def with_sim(settings: StillflowSettings, **updates: Any) -> SimSettings:
    """A copy of `settings` as `SimSettings` with `sim` fields replaced (validated)."""
    base = settings if isinstance(settings, SimSettings) else SimSettings(**{
        k: getattr(settings, k) for k in type(settings).model_fields
    })
    if "error_rates" in updates and isinstance(updates["error_rates"], dict):
        updates["error_rates"] = ErrorRates(**updates["error_rates"])
    section = SimSection(**{**base.sim.model_dump(), "api_key": base.sim.api_key, **updates})
    return base.model_copy(update={"sim": section})

"""Simulated tool world, task suite and teacher agent fleet.

The light public API is re-exported here (no FastAPI/openai import): the world and its tools, the
task suite, the policies, the runner. The teacher server lives in `sim.server`, the OpenAI-client
agent in `sim.openai_agent`, the settings in `sim.settings`, the CLI in `sim.cli`.

    from sim import get_suite, make_policy, run_offline
    report = run_offline(1000, make_policy("teacher"), out="traces.jsonl")
"""

from sim.policies import (
    DEFAULT_ERROR_RATES,
    ERROR_MODES,
    Action,
    AgentCrash,
    Exchange,
    PerfectPolicy,
    Plan,
    Policy,
    RandomPolicy,
    TeacherPolicy,
    ToolCall,
    episode_seed,
    make_policy,
)
from sim.runner import (
    EPOCH,
    Episode,
    FleetReport,
    RunReport,
    SimAgent,
    iter_offline,
    run_episode,
    run_fleet,
    run_offline,
)
from sim.tasks import FAMILIES, SYSTEM_PROMPT, Suite, Task, get_suite, split_of
from sim.tools import TOOL_NAMES, TOOL_SPECS, ToolBox, ToolError, ToolRefused
from sim.world import World, get_world

__all__ = [
    "DEFAULT_ERROR_RATES",
    "EPOCH",
    "ERROR_MODES",
    "FAMILIES",
    "SYSTEM_PROMPT",
    "TOOL_NAMES",
    "TOOL_SPECS",
    "Action",
    "AgentCrash",
    "Episode",
    "Exchange",
    "FleetReport",
    "PerfectPolicy",
    "Plan",
    "Policy",
    "RandomPolicy",
    "RunReport",
    "SimAgent",
    "Suite",
    "Task",
    "TeacherPolicy",
    "ToolBox",
    "ToolCall",
    "ToolError",
    "ToolRefused",
    "World",
    "episode_seed",
    "get_suite",
    "get_world",
    "iter_offline",
    "make_policy",
    "run_episode",
    "run_fleet",
    "run_offline",
    "split_of",
]

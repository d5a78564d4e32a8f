"""Agent training machinery below the trainers: tools, their execution, and environments (docs/agents.md).

Imports only torch, transformers and the standard library.
"""

from .environments import ENVIRONMENT_COLUMN, EnvironmentPool, Episode, append_to_prompt
from .tools import DEFAULT_TOOL_TIMEOUT, Toolbox, ToolResults, execute_tool_calls, tool_metrics, tool_schemas

__all__ = [
    "DEFAULT_TOOL_TIMEOUT",
    "ENVIRONMENT_COLUMN",
    "EnvironmentPool",
    "Episode",
    "ToolResults",
    "Toolbox",
    "append_to_prompt",
    "execute_tool_calls",
    "tool_metrics",
    "tool_schemas",
]

"""The wire types of the key-value environment: what the client sends (`KVAction`), what the server answers
(`KVObservation`) and the episode's state (`KVState`). Pydantic models from OpenEnv's base classes, shared by the
server and the client."""

from typing import Literal

from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field


class KVAction(Action):
    """One step: read a key, or submit the answer (which ends the episode).

    Example:
        >>> KVAction(command="lookup", argument="blue").command
        'lookup'
    """

    command: Literal["lookup", "submit"] = Field(..., description="`lookup` a key or `submit` a value")
    argument: str = Field(..., description="the key to look up, or the value to submit")


class KVObservation(Observation):
    """What the environment says back, as text for the model. `reward` and `done` come from `Observation`.

    Example:
        >>> KVObservation(message="417").message
        '417'
    """

    message: str = Field(default="", description="the text shown to the model")


class KVState(State):
    """The episode's state, and two server-wide counters (for monitoring and tests).

    Example:
        >>> KVState(key="blue").reward
        0.0
    """

    key: str = Field(default="", description="the key whose value the episode asks for")
    reward: float = Field(default=0.0, description="the episode's reward so far: 1.0 once the right value is submitted")
    done: bool = Field(default=False, description="whether a value was submitted")
    resets_served: int = Field(default=0, description="episodes started by this server process, all sessions together")
    steps_served: int = Field(default=0, description="steps taken in this server process, all sessions together")

"""The key-value environment, client side: `KVClient` (OpenEnv's `EnvClient`, one websocket session per instance)
and `KeyValueEnv`, the class to pass as `GRPOTrainer(environment_factory=KeyValueEnv)`.

`KeyValueEnv` is what the trainer sees: a zero-argument constructor that connects to the server at
`KeyValueEnv.base_url` (or the `KV_ENV_URL` environment variable, default `http://127.0.0.1:8000`), `reset(**row)`
returning the text appended to the prompt, two tools (`lookup`, `submit`; each one `step` on the server) and
`get_reward()`, which reads the episode's reward from the server's state.
"""

import os
from typing import Any, ClassVar

from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient

from .models import KVAction, KVObservation, KVState

DEFAULT_URL = "http://127.0.0.1:8000"


class KVClient(EnvClient[KVAction, KVObservation, KVState]):
    """OpenEnv client of the key-value server (async; `.sync()` gives the blocking wrapper).

    Example:
        >>> with KVClient(base_url="http://127.0.0.1:8000").sync() as client:  # doctest: +SKIP
        ...     client.reset(seed=0, key="blue").observation.message
        ...     client.step(KVAction(command="lookup", argument="blue")).observation.message
    """

    def _step_payload(self, action: KVAction) -> dict[str, Any]:
        return action.model_dump(exclude={"metadata"})

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[KVObservation]:
        observation = KVObservation(message=payload.get("observation", {}).get("message", ""),
                                    reward=payload.get("reward"), done=payload.get("done", False))
        return StepResult(observation=observation, reward=payload.get("reward"), done=payload.get("done", False))

    def _parse_state(self, payload: dict[str, Any]) -> KVState:
        return KVState(**payload)


class KeyValueEnv:
    """One rollout's key-value episode on the server, for `GRPOTrainer(environment_factory=KeyValueEnv)`.

    The trainer builds instances with no arguments and keeps them in a pool; each holds one websocket session. Rows of
    the dataset give `reset` a `seed` (the store) and a `key` (the question); other columns are ignored. Public
    methods other than `reset` and `get_reward` are the model's tools, so helpers here stay private.

    Example:
        >>> KeyValueEnv.base_url = "http://127.0.0.1:8000"  # doctest: +SKIP
        >>> env = KeyValueEnv()  # doctest: +SKIP
        >>> env.reset(seed=0, key="blue")  # doctest: +SKIP
        " The store holds the keys red, green, blue, gold, gray. Find the value stored under 'blue' ..."
        >>> env.submit(env.lookup("blue")), env.get_reward()  # doctest: +SKIP
        ('Correct.', 1.0)
    """

    base_url: ClassVar[str | None] = None  # None: the KV_ENV_URL environment variable, else DEFAULT_URL

    def __init__(self):
        url = self.base_url or os.environ.get("KV_ENV_URL", DEFAULT_URL)
        self._client = KVClient(base_url=url).sync()
        try:
            self._client.connect()
        except ConnectionError as error:
            self._client.close()
            raise ConnectionError(
                f"KeyValueEnv cannot reach the key-value server at {url} ({error}). Start it with "
                "`python -m kv_env.server --port 8000` from examples/openenv/, or point KeyValueEnv.base_url or "
                "KV_ENV_URL at a running one."
            ) from error

    def reset(self, seed: int | None = None, key: str | None = None, **row: Any) -> str:
        result = self._client.reset(seed=seed, key=key)
        return " " + result.observation.message  # appended to the user message

    def lookup(self, key: str) -> str:
        """Look up the value stored under a key.

        Args:
            key: The key to read, one of the keys the question lists.
        """
        return self._client.step(KVAction(command="lookup", argument=key)).observation.message

    def submit(self, value: str) -> str:
        """Submit the value found for the asked key. Ends the episode; only the first submission counts.

        Args:
            value: The value stored under the asked key.
        """
        return self._client.step(KVAction(command="submit", argument=value)).observation.message

    def get_reward(self) -> float:
        return self._client.state().reward

    # No `close` method (it would be a tool) and no `__del__` (a garbage collection on the client's own event-loop
    # thread would wait on that loop forever): the trainer keeps its instances for the whole run, and the session
    # ends with the process, which drops the connection (the server then frees the session).

"""The key-value environment, server side, served with OpenEnv's own app factory (`create_app`).

Each episode holds a small store (five color keys, three-digit values drawn from the episode's `seed`) and asks for
the value of one key. The model can `lookup` keys as often as it likes and `submit` once: the episode's reward is 1.0
when the submitted value is the asked key's value, else 0.0.

    python -m kv_env.server --port 8000          # from examples/openenv/

Endpoints are OpenEnv's: `/ws` (the persistent session `EnvClient` uses: one environment per connection),
`/reset`, `/step`, `/state`, `/health`, `/schema`.
"""

import argparse
import random
import threading
from uuid import uuid4

from openenv.core.env_server.http_server import create_app
from openenv.core.env_server.interfaces import Environment
from starlette.websockets import WebSocketDisconnect

from .models import KVAction, KVObservation, KVState

KEYS = ("red", "green", "blue", "gold", "gray")


def make_store(seed: int | None) -> dict[str, str]:
    """The episode's store: every key of `KEYS` with a three-digit value drawn from `seed`.

    Example:
        >>> make_store(0) == make_store(0) and sorted(make_store(0)) == sorted(KEYS)
        True
    """
    rng = random.Random(seed)
    return {key: str(rng.randint(100, 999)) for key in KEYS}


class KVEnvironment(Environment):
    """One session's environment: `reset(seed=, key=)` starts an episode, `step(KVAction)` looks up or submits.

    Example:
        >>> env = KVEnvironment()
        >>> env.reset(seed=0, key="blue").done
        False
        >>> value = env.step(KVAction(command="lookup", argument="blue")).message
        >>> env.step(KVAction(command="submit", argument=value)).reward
        1.0
    """

    SUPPORTS_CONCURRENT_SESSIONS = True  # no state is shared between instances but the counters below

    # Server-wide counters, reported in every state so that a client can check that its calls reached the server.
    _lock = threading.Lock()
    _resets_served = 0
    _steps_served = 0

    def __init__(self):
        super().__init__()
        self._store = make_store(None)
        self._state = KVState(episode_id=str(uuid4()), key=KEYS[0])

    def reset(self, seed: int | None = None, episode_id: str | None = None, key: str | None = None,
              **kwargs) -> KVObservation:
        if key is not None and key not in KEYS:
            raise ValueError(f"key must be one of {KEYS}; got {key!r}.")
        with KVEnvironment._lock:
            KVEnvironment._resets_served += 1
        self._store = make_store(seed)
        key = key or random.Random(seed).choice(KEYS)
        self._state = KVState(episode_id=episode_id or str(uuid4()), key=key)
        message = (f"The store holds the keys {', '.join(KEYS)}. Find the value stored under '{key}' with the lookup "
                   "tool, then give it to the submit tool.")
        return KVObservation(message=message, done=False, reward=0.0)

    def step(self, action: KVAction, timeout_s: float | None = None, **kwargs) -> KVObservation:
        with KVEnvironment._lock:
            KVEnvironment._steps_served += 1
        self._state.step_count += 1
        if self._state.done:
            return KVObservation(message="The episode is over: a value was already submitted.", done=True,
                                 reward=0.0)
        if action.command == "lookup":
            value = self._store.get(action.argument.strip())
            message = value if value is not None else f"No key {action.argument!r}; the keys are {', '.join(KEYS)}."
            return KVObservation(message=message, done=False, reward=0.0)
        correct = action.argument.strip() == self._store[self._state.key]
        self._state.done, self._state.reward = True, float(correct)
        return KVObservation(message="Correct." if correct else "Wrong.", done=True, reward=self._state.reward)

    @property
    def state(self) -> KVState:
        return self._state.model_copy(update={"resets_served": KVEnvironment._resets_served,
                                              "steps_served": KVEnvironment._steps_served})


def build_app(max_sessions: int = 64):
    """The FastAPI app, from OpenEnv's `create_app`; `max_sessions` bounds the concurrent `/ws` sessions (one per
    `KeyValueEnv` instance: a GRPO step holds one per rollout of its generation batch, plus one the trainer builds to
    check the class).

    Example:
        >>> build_app().title  # doctest: +SKIP
    """
    app = create_app(KVEnvironment, KVAction, KVObservation, env_name="kv_env", max_concurrent_envs=max_sessions)
    app.add_middleware(_QuietSessionEnd)
    return app


class _QuietSessionEnd:
    """ASGI middleware dropping the `WebSocketDisconnect` that ends every `/ws` session: openenv-core 0.3.0 closes
    the socket after the client has closed it and catches only `RuntimeError`, so each session's end would log a
    traceback. Other errors pass through."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        except WebSocketDisconnect:
            if scope["type"] != "websocket":
                raise


def main():
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve the key-value environment with OpenEnv.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_sessions", type=int, default=64)
    cli = parser.parse_args()
    uvicorn.run(build_app(cli.max_sessions), host=cli.host, port=cli.port, log_level="warning")


if __name__ == "__main__":
    main()

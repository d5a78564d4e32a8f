"""GRPOTrainer(environment_factory=...) against a real OpenEnv server: the key-value environment of
examples/openenv/kv_env, served by OpenEnv's own app in a subprocess and reached through OpenEnv's websocket client.

A random tiny model rarely writes a tool call, so one training test scripts the backend's `generate` (some rollouts
submit the right value, some look a key up, the rest answer) and checks what reached the server; the other trains with
real generation and checks that every rollout's reset and reward went through the server."""

import math
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest
from datasets import Dataset

pytest.importorskip("openenv.core", reason="needs openenv-core: pip install -e '.[openenv]' (the test extra has it)")

from trl import GRPOTrainer
from trl.models.tiny import tiny_model

from .sft_one_step import SMALL
from .test_grpo_tools import ANSWER, FINAL, Scripted, _call, _tool_tokenizer
from .test_grpo_trainer import _config, _logged, _moved, _params, vowels

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "openenv"
sys.path.insert(0, str(EXAMPLES))

from kv_env.client import KeyValueEnv, KVClient
from kv_env.models import KVAction
from kv_env.server import KEYS, make_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("kv_server") / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "kv_env.server", "--port", str(port)], cwd=EXAMPLES,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"the key-value server exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the key-value server did not answer /health within 60 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def environment(server_url, monkeypatch):
    monkeypatch.setattr(KeyValueEnv, "base_url", server_url)
    return KeyValueEnv


def _served(server_url):
    """The server-wide counters, read through a fresh OpenEnv session."""
    with KVClient(base_url=server_url).sync() as client:
        state = client.state()
    return state.resets_served, state.steps_served


def test_client_round_trip(server_url, environment):
    store = make_store(7)
    with KVClient(base_url=server_url).sync() as client:  # OpenEnv's own client
        result = client.reset(seed=7, key="gold")
        assert "'gold'" in result.observation.message and not result.done
        assert client.step(KVAction(command="lookup", argument="red")).observation.message == store["red"]
        result = client.step(KVAction(command="submit", argument=store["gold"]))
        assert result.done and result.reward == 1.0
        state = client.state()
        assert (state.key, state.reward, state.done, state.step_count) == ("gold", 1.0, True, 2)

    resets, steps = _served(server_url)
    env = environment()  # what the trainer builds: zero arguments
    observation = env.reset(seed=7, key="gold", prompt=[{"role": "user", "content": "ignored"}])
    assert observation.startswith(" The store holds the keys") and "'gold'" in observation
    assert env.lookup("gold") == store["gold"] and "No key 'pink'" in env.lookup("pink")
    assert env.get_reward() == 0.0
    assert env.submit("not it") == "Wrong." and env.get_reward() == 0.0
    assert "already submitted" in env.submit(store["gold"]) and env.get_reward() == 0.0  # only the first counts
    env.reset(seed=7, key="gold")  # the pool reuses instances: a reset starts a fresh episode
    assert env.submit(store["gold"]) == "Correct." and env.get_reward() == 1.0
    assert _served(server_url) == (resets + 2, steps + 5)


def test_unreachable_server_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(KeyValueEnv, "base_url", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(ConnectionError, match="cannot reach the key-value server"):
        KeyValueEnv()


class Recorded(KeyValueEnv):
    """KeyValueEnv recording the rewards it fetched from the server."""

    rewards: ClassVar[list[float]] = []

    def get_reward(self) -> float:
        reward = super().get_reward()
        Recorded.rewards.append(reward)
        return reward


def _questions(num_rows=16, seed=None, key=None):
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": "Find the value."}], "seed": i if seed is None else seed,
         "key": KEYS[i % len(KEYS)] if key is None else key}
        for i in range(num_rows)])


def _trainer(tmp_path, dataset, reward_funcs=None, **overrides):
    return GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=reward_funcs,
                       args=_config(tmp_path, **overrides), train_dataset=dataset,
                       processing_class=_tool_tokenizer(), environment_factory=Recorded)


def test_training_calls_the_tools_on_the_server(tmp_path, server_url, environment, monkeypatch):
    monkeypatch.setattr(Recorded, "rewards", [])
    value = make_store(3)["blue"]
    script = {0: _call("submit", value=value), 1: _call("lookup", key="blue"), 2: ANSWER, 3: ANSWER}
    trainer = _trainer(tmp_path, _questions(seed=3, key="blue"), max_completion_length=256)
    tokenizer = trainer.processing_class
    monkeypatch.setattr(trainer.backend, "generate", Scripted(tokenizer, first=lambda k: script[k % 4],
                                                              later=lambda k: FINAL))
    assert trainer.reward_scorer.names == ["Recorded"]
    resets, steps = _served(server_url)
    before = _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model)

    logs = _logged(trainer)
    rollouts = 2 * 8  # 2 steps of 8 rollouts (2 prompts x 4 samples)
    assert len(logs) == 2 and all(math.isfinite(log["loss"]) for log in logs)
    for log in logs:
        # sample 0 of every 4 submits the right value (reward 1), sample 1 looks a key up, samples 2-3 answer
        # (identical prompts share a prefill, so k counts over both prompts of a step)
        assert log["tools/call_frequency"] == 0.5 and log["tools/failure_frequency"] == 0.0
        assert log["rewards/Recorded/mean"] == 0.25
    assert Recorded.rewards == [1.0, 0.0, 0.0, 0.0] * 4  # fetched from the server's state, one per rollout
    assert _served(server_url) == (resets + rollouts, steps + rollouts // 2)  # every call was a step on the server


def test_training_with_real_generation(tmp_path, server_url, environment, monkeypatch):
    monkeypatch.setattr(Recorded, "rewards", [])
    trainer = _trainer(tmp_path, _questions(), reward_funcs=[vowels], max_completion_length=8)
    assert trainer.reward_scorer.names == ["vowels", "Recorded"]
    resets, _ = _served(server_url)
    before = _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model)

    logs = _logged(trainer)
    assert len(logs) == 2 and all(math.isfinite(log["loss"]) for log in logs)
    for log in logs:
        assert log["tools/call_frequency"] >= 0.0  # a random model rarely calls; the scripted test covers calls
        assert log["rewards/Recorded/mean"] == pytest.approx(0.0)  # no submission, no reward
    assert len(Recorded.rewards) == 16 and set(Recorded.rewards) <= {0.0, 1.0}
    assert _served(server_url)[0] == resets + 16  # every rollout's reset reached the server

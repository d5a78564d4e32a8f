"""GRPO against a real OpenEnv server: the bundled tiny model plays the key-value environment of `kv_env/`.

Starts the key-value server (OpenEnv's app, in a subprocess on a free port) unless `--url` names a running one, then
trains `GRPOTrainer(environment_factory=KeyValueEnv)`: every rollout gets its own server session, `reset` with the
row's `seed` and `key`, the model may call `lookup` and `submit` (each a `step` on the server), and the episode's
reward comes back through `get_reward()`. The mean rewards and the tool-call frequency are printed at every step.

    python examples/openenv/train_grpo.py [--max_steps 5] [--url http://127.0.0.1:8000]

A randomly initialised tiny model seldom writes a well-formed tool call, so the environment's reward stays near 0
in a few steps; a small bonus for calling a tool at all (`--tool_bonus`) gives GRPO something to climb at first.
See README.md.
"""

import argparse
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from datasets import Dataset
from kv_env.client import KeyValueEnv  # examples/openenv/ is on sys.path when this file is run as a script
from kv_env.server import KEYS
from transformers import TrainerCallback

from trl import GRPOConfig, GRPOTrainer
from trl.chat_template_utils import chatml_training_chat_template
from trl.models.tiny import tiny_model, tiny_tokenizer

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def serve(url: str | None, timeout: float = 60.0):
    """Yield the URL of a key-value server: `url` as is, or a fresh one in a subprocess, stopped on exit."""
    if url is not None:
        yield url
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "kv_env.server", "--port", str(port)], cwd=HERE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"The key-value server exited with code {process.returncode}.")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"The key-value server did not answer {url}/health within {timeout:.0f} s.")
            time.sleep(0.2)
        print(f"Key-value server (OpenEnv) at {url}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def tool_bonus(weight: float):
    """A reward of `weight` for a completion with at least one tool call, as a reward function."""

    def called_a_tool(completions, **kwargs) -> list[float]:
        return [weight * any(m.get("tool_calls") for m in c if isinstance(m, dict)) for c in completions]

    return called_a_tool


class PrintRewards(TrainerCallback):
    """Prints the rewards and the tool-call frequency of every logged step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            print(f"step {state.global_step:>3}: reward {logs['reward']:.3f}  "
                  f"environment {logs.get('rewards/KeyValueEnv/mean', float('nan')):.3f}  "
                  f"tool calls {logs.get('tools/call_frequency', float('nan')):.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running key-value server (default: start one)")
    parser.add_argument("--max_steps", type=int, default=5)
    parser.add_argument("--tool_bonus", type=float, default=0.1, help="reward for calling a tool at all (0: off)")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--output_dir", default="outputs/openenv-kv")
    cli = parser.parse_args()

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = chatml_training_chat_template  # renders the tools, tool calls and tool results
    question = [{"role": "user", "content": "Use the tools to answer."}]
    train = Dataset.from_list([{"prompt": question, "seed": i, "key": KEYS[i % len(KEYS)]} for i in range(256)])
    args = GRPOConfig(
        output_dir=cli.output_dir,
        max_steps=cli.max_steps,
        per_device_train_batch_size=8,  # rollouts per step: 2 questions x 4 samples, one server session each
        num_generations=4,
        max_completion_length=32,
        max_tool_calling_iterations=2,
        learning_rate=cli.learning_rate,
        lr_scheduler_type="constant",
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
    )
    with serve(cli.url) as url:
        KeyValueEnv.base_url = url
        trainer = GRPOTrainer(
            model=tiny_model(seed=0), reward_funcs=[tool_bonus(cli.tool_bonus)] if cli.tool_bonus else None,
            args=args, train_dataset=train, processing_class=tokenizer, environment_factory=KeyValueEnv,
            callbacks=[PrintRewards()],
        )
        started = time.time()
        trainer.train()
        print(f"{cli.max_steps} GRPO steps in {time.time() - started:.0f} s against {url}")


if __name__ == "__main__":
    main()

"""An agent on the bundled tiny model, offline, on a CPU in a few minutes: it learns to read a key-value store.

Each episode of the `Boxes` environment (`environment_factory`) puts a random three-digit code in each of nine boxes;
the question asks for one box's code ("What is the code in box 3?"), which can only be read with the environment's
`open_box` tool. A randomly initialised tiny Qwen3 is warmed up with `SFTTrainer` on tool-call transcripts (question
-> `<tool_call>` -> tool result -> the code as answer), which teaches the format but only starts to teach the copying
of the box number into the call and of the result into the answer; then `GRPOTrainer(environment_factory=Boxes)`
trains it on multi-turn rollouts (the model's calls are run and their results appended as `tool` turns) with a reward
of 1 for the right code and 0.5 for opening the right box. Sampled rollouts with their tool calls and rewards are
printed along the way, then the mean reward by step and greedy success on held-out episodes before and after GRPO.

    python examples/agent_tiny.py [--quick] [--sft_steps 180] [--max_steps 40] [--output_dir outputs/agent-tiny]
"""

import argparse
import json
import random
import time

import torch
from datasets import Dataset
from transformers import TrainerCallback

from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from trl.agents.multi_turn import multi_turn_rollout
from trl.agents.tools import Toolbox
from trl.data.tokenize import render_ids
from trl.generation.base import SamplingConfig
from trl.generation.transformers_backend import TransformersBackend
from trl.models.tiny import save_tiny_model, tiny_tokenizer

# ChatML with `<tool_call>` JSON blocks and `{% generation %}` markers, like `trl.chat_template_utils.
# chatml_training_chat_template`, but the tools turn lists only their signatures ("Tools: open_box(box)"): with the
# full JSON schema a prompt is 385 tokens of the tiny byte-level tokenizer instead of 46, and every step ~5x slower.
COMPACT_TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\nTools:' }}"
    "{%- for tool in tools %}{%- set fn = tool.function if tool.function is defined else tool %}"
    "{{- (' ' if loop.first else ', ') + fn.name + '(' + (fn.parameters.properties | list | join(', ')) + ')' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}{%- generation %}"
    "{{- message.content or '' }}"
    "{%- for call in message.tool_calls or [] %}{%- set fn = call.function if call.function is defined else call %}"
    "{%- if not loop.first or message.content %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": ' + (fn.name | tojson) + ', \"arguments\": ' + (fn.arguments | tojson) }}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def agent_tokenizer():
    """The bundled tokenizer with the compact tool-calling template."""
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = COMPACT_TOOLS_TEMPLATE
    return tokenizer


class Boxes:
    """A key-value environment: nine boxes, each holding a random three-digit code drawn when an episode starts.
    The question names a box; the code can only be read with the `open_box` tool."""

    def __init__(self):
        self.codes, self.box = {}, None

    def reset(self, box: int, **row) -> None:
        self.codes = dict(zip(range(1, 10), _CODES.sample(range(100, 1000), 9)))
        self.box = box

    def open_box(self, box: int) -> str:
        """Read the code written in a box.

        Args:
            box: The number of the box, from 1 to 9.
        """
        if box not in self.codes:
            raise ValueError(f"there is no box {box}; the boxes are numbered 1 to 9")
        return str(self.codes[box])


_CODES = random.Random(0)  # the environments' codes; reseeded in `main`


def _question(box: int) -> list[dict]:
    return [{"role": "user", "content": f"What is the code in box {box}?"}]


def transcripts(count: int, schemas, seed: int) -> Dataset:
    """SFT rows: the question, an `open_box` call with the box's number, the code it returns, and the code as the
    answer."""
    rng, rows = random.Random(seed), []
    for _ in range(count):
        box, code = rng.randint(1, 9), str(rng.randint(100, 999))
        call = {"type": "function", "function": {"name": "open_box", "arguments": {"box": box}}}
        rows.append({"messages": [*_question(box), {"role": "assistant", "content": "", "tool_calls": [call]},
                                  {"role": "tool", "name": "open_box", "content": code},
                                  {"role": "assistant", "content": code}],
                     "tools": json.dumps(schemas)})
    return Dataset.from_list(rows)


def _answer(completion: list[dict]) -> str:
    """The text of the last assistant turn when it makes no call (the final answer), else ''."""
    last = completion[-1] if completion else {}
    final = last.get("role") == "assistant" and not last.get("tool_calls")
    return (last.get("content") or "").strip() if final else ""


def correct_code_reward(completions, environments, **kwargs) -> list[float]:
    """1.0 when the final answer is the code in the box that the question asked about (read from the rollout's
    environment).

    Example:
        >>> env = Boxes(); env.reset(box=3)
        >>> correct_code_reward([[{"role": "assistant", "content": env.open_box(3)}]], [env])
        [1.0]
    """
    return [float(_answer(c) == str(env.codes[env.box])) for c, env in zip(completions, environments)]


def right_box_reward(completions, environments, **kwargs) -> list[float]:
    """0.5 when the first tool call opens the box that the question asked about: partial credit for the call.

    Example:
        >>> env = Boxes(); env.reset(box=3)
        >>> call = {"type": "function", "function": {"name": "open_box", "arguments": {"box": 3}}}
        >>> right_box_reward([[{"role": "assistant", "content": "", "tool_calls": [call]}]], [env])
        [0.5]
    """
    scores = []
    for completion, env in zip(completions, environments):
        calls = [c.get("function", c) for m in completion for c in (m.get("tool_calls") or [])]
        arguments = calls[0].get("arguments") if calls and calls[0].get("name") == "open_box" else None
        scores.append(0.5 * (isinstance(arguments, dict) and arguments.get("box") == env.box))
    return scores


def _show(completion: list[dict]) -> str:
    parts = []
    for message in completion:
        for call in message.get("tool_calls") or []:
            function = call.get("function", call)
            arguments = ", ".join(f"{k}={v!r}" for k, v in (function.get("arguments") or {}).items())
            parts.append(f"call {function['name']}({arguments})")
        if message["role"] == "tool":
            parts.append(f"tool -> {message['content']}")
        elif message.get("content"):
            parts.append(f"says {message['content']!r}")
    return " | ".join(parts) or "(nothing)"


@torch.no_grad()
def success_rate(model, tokenizer, boxes: list[int], max_completion_length: int, batch_size: int = 50):
    """Greedy multi-turn rollouts in fresh environments, through the trainer's own loop (`multi_turn_rollout`): the
    share of questions answered with the right code, and the rollouts."""
    model.eval()
    backend, eos = TransformersBackend(model), (tokenizer.eos_token_id,)

    def generate(prompt_ids, max_new_tokens):
        greedy = SamplingConfig(max_new_tokens, eos, tokenizer.pad_token_id, do_sample=False)
        return backend.generate(prompt_ids, 1, greedy)

    completions, environments = [], []
    for start in range(0, len(boxes), batch_size):
        prompts, toolboxes = [], []
        for box in boxes[start : start + batch_size]:
            environment = Boxes()
            environment.reset(box=box)
            environments.append(environment)
            prompts.append(_question(box))
            toolboxes.append(Toolbox([environment.open_box]))
        kwargs = {"tools": toolboxes[0].schemas}
        prompt_ids = [render_ids(tokenizer, p, kwargs, add_generation_prompt=True) for p in prompts]
        result = multi_turn_rollout(generate, prompt_ids, prompts, tokenizer, toolboxes,
                                    max_completion_length=max_completion_length, eos_token_ids=eos,
                                    pad_token_id=tokenizer.pad_token_id, max_iterations=2, template_kwargs=kwargs)
        completions += result.completions
    rewards = correct_code_reward(completions, environments)
    return sum(rewards) / len(boxes), completions


class PrintRollouts(TrainerCallback):
    """Prints a few sampled rollouts of the last generation batch with their rewards, at step 1 and every `every`
    steps. Its `reward` is `correct_code_reward`, keeping the batch for printing."""

    def __init__(self, every: int, count: int = 4):
        self.every, self.count, self.batch = every, count, None

    def reward(self, completions, environments, **kwargs) -> list[float]:
        rewards = correct_code_reward(completions, environments)
        shown = [r + b for r, b in zip(rewards, right_box_reward(completions, environments))]
        self.batch = ([e.box for e in environments], [e.codes[e.box] for e in environments], completions, shown)
        return rewards

    def on_step_end(self, args, state, control, **kwargs):
        if self.batch is None or (state.global_step != 1 and state.global_step % self.every):
            return
        boxes, codes, completions, rewards = self.batch
        print(f"\n--- sampled rollouts at step {state.global_step} ---")
        for i in range(0, len(completions), max(1, len(completions) // self.count))[: self.count]:
            print(f"  box {boxes[i]} (code {codes[i]}): {_show(completions[i])}   reward {rewards[i]:.1f}")


def warm_up(output_dir: str, dataset: Dataset, steps: int, seed: int) -> str:
    """A short SFT run from a random tiny model on the transcripts."""
    model_dir = save_tiny_model(f"{output_dir}/base-model", arch="qwen3", seed=seed)
    args = SFTConfig(
        output_dir=f"{output_dir}/warm-up", max_steps=steps, per_device_train_batch_size=16, learning_rate=2e-3,
        lr_scheduler_type="constant_with_warmup", warmup_steps=10, logging_steps=25, save_strategy="no",
        report_to="none", assistant_only_loss=True, gradient_checkpointing=False, seed=seed,
    )
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=dataset, processing_class=agent_tokenizer())
    trainer.train()
    trainer.save_model()
    return f"{output_dir}/warm-up"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage (a smoke test, learns little)")
    parser.add_argument("--model", default=None, help="start GRPO from this model folder (default: the SFT warm-up)")
    parser.add_argument("--sft_steps", type=int, default=180, help="SFT steps of 16 transcripts")
    parser.add_argument("--max_steps", type=int, default=40, help="GRPO steps")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="GRPO learning rate")
    parser.add_argument("--num_test", type=int, default=100, help="held-out questions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/agent-tiny")
    cli = parser.parse_args()
    if cli.quick:
        cli.sft_steps, cli.max_steps, cli.num_test = 4, 2, 10

    started = time.time()
    _CODES.seed(cli.seed)
    schemas = Toolbox([Boxes().open_box]).schemas
    model = cli.model or warm_up(cli.output_dir, transcripts(16 * cli.sft_steps, schemas, cli.seed), cli.sft_steps,
                                 cli.seed)
    sft_seconds = time.time() - started

    tokenizer = agent_tokenizer()
    printer = PrintRollouts(every=max(1, cli.max_steps // 4))
    args = GRPOConfig(
        output_dir=cli.output_dir,
        max_steps=cli.max_steps,
        per_device_train_batch_size=32,  # rollouts per step: 4 questions x 8 samples
        num_generations=8,
        max_completion_length=96,
        max_tool_calling_iterations=2,
        temperature=1.0,
        learning_rate=cli.learning_rate,
        lr_scheduler_type="constant",
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=cli.seed,
    )
    rng = random.Random(cli.seed + 1)
    boxes = [rng.randint(1, 9) for _ in range(512)]
    train = Dataset.from_list([{"prompt": _question(box), "box": box} for box in boxes])
    test = [rng.randint(1, 9) for _ in range(cli.num_test)]  # held out: fresh environments, codes never seen
    trainer = GRPOTrainer(model=model, reward_funcs=[printer.reward, right_box_reward], args=args, train_dataset=train,
                          processing_class=tokenizer, environment_factory=Boxes, callbacks=[printer])
    before, _ = success_rate(trainer.model, tokenizer, test, args.max_completion_length)
    print(f"\nAfter the SFT warm-up ({cli.sft_steps} steps, {sft_seconds:.0f} s): greedy success on {len(test)} "
          f"held-out questions {before:.0%}")
    grpo_started = time.time()
    trainer.train()
    after, completions = success_rate(trainer.model, tokenizer, test, args.max_completion_length)

    logs = [log for log in trainer.state.log_history if "reward" in log]
    print(f"\nGRPO: {cli.max_steps} steps in {time.time() - grpo_started:.0f} s (total {time.time() - started:.0f} s)")
    print("Greedy held-out rollouts after GRPO:")
    for box, completion in list(zip(test, completions))[:3]:
        print(f"  box {box}: {_show(completion)}")
    print("Mean reward (1 for the right code + 0.5 for opening the right box) by GRPO step:")
    print("  " + "  ".join(f"{log['step']}: {log['reward']:.2f}" for log in logs))
    print(f"Tool calls per rollout: {logs[0]['tools/call_frequency']:.2f} at step 1 -> "
          f"{logs[-1]['tools/call_frequency']:.2f} at step {logs[-1]['step']}")
    print(f"Greedy success on {len(test)} held-out questions: {before:.0%} before -> {after:.0%} after GRPO")


if __name__ == "__main__":
    main()

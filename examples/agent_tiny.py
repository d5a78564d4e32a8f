"""An agent on the bundled tiny model, offline, on a CPU in a few minutes: it learns to act through a tool.

Each episode of the `Door` environment (`environment_factory`) starts with the door closed; the user asks for it to be
opened ("Let me in, please."), and only the environment's `open_door` tool opens it. The reward is the environment's
state: 1 when the door is open at the end, whatever the model says. A randomly initialised tiny Qwen3 is warmed up with
`SFTTrainer` on two kinds of transcripts: 30% call `open_door` and then say "Done.", 70% say "Done." without calling
(an agent that claims an action it did not take). After the warm-up the model calls the tool in a minority of sampled
rollouts and greedy decoding never does; `GRPOTrainer(environment_factory=Door)` then trains it on multi-turn rollouts
(the model's calls are run and their results appended as `tool` turns), where samples that call get the reward and the
others do not. Sampled rollouts with their tool calls and rewards are printed along the way, then the mean reward and
the share of rollouts that call the tool by step, and greedy and sampled success on held-out phrasings before and after.

(A first design asked for a box's content, which the model had to copy from the tool result into its answer: the
random tiny model did not learn that copy within 240 warm-up steps on two seeds, so the task here needs no copying.)

    python examples/agent_tiny.py [--quick] [--sft_steps 60] [--max_steps 20] [--output_dir outputs/agent-tiny]
"""

import argparse
import json
import random
import time
from dataclasses import replace

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


class Door:
    """A door that only the `open_door` tool opens. An episode starts closed; the reward is whether it is open at the
    end, whatever the model says."""

    def __init__(self):
        self.is_open = False

    def reset(self, **row) -> None:
        self.is_open = False

    def open_door(self) -> str:
        """Open the door."""
        self.is_open = True
        return "The door is open."


# Requests: the GRPO prompts come from the first list, the held-out ones from the second (phrasings never trained on).
TRAIN_REQUESTS = ["Open the door.", "Please open the door.", "Can you open the door?", "Open the door for me.",
                  "Let me in.", "Let me in, please.", "I need the door open.", "The door is closed, open it.",
                  "Could you open the door?", "Open it, please.", "Get the door.", "Door, please."]
TEST_REQUESTS = ["Would you open the door?", "Please let me in.", "Open up the door.", "I want to come in.",
                 "Can you let me in?", "The door, please."]
REPLY = "Done."  # what every warm-up transcript answers, with or without opening the door


def transcripts(count: int, schemas, seed: int, call_share: float) -> Dataset:
    """SFT rows of two kinds: a `call_share` of them open the door with the tool and then say "Done."; the others say
    "Done." at once, without opening it (an agent that claims an action it did not take)."""
    rng, rows = random.Random(seed), []
    call = {"type": "function", "function": {"name": "open_door", "arguments": {}}}
    for _ in range(count):
        turns = [{"role": "assistant", "content": REPLY}]
        if rng.random() < call_share:
            turns = [{"role": "assistant", "content": "", "tool_calls": [call]},
                     {"role": "tool", "name": "open_door", "content": Door().open_door()}, *turns]
        rows.append({"messages": [{"role": "user", "content": rng.choice(TRAIN_REQUESTS)}, *turns],
                     "tools": json.dumps(schemas)})
    return Dataset.from_list(rows)


def _called(completion: list[dict]) -> bool:
    return any(message["role"] == "tool" for message in completion)


def door_open_reward(completions, environments, **kwargs) -> list[float]:
    """1.0 when the rollout's door is open at the end: only a call of `open_door` opens it.

    Example:
        >>> env = Door(); env.reset()
        >>> door_open_reward([[{"role": "assistant", "content": "Done."}]], [env])
        [0.0]
        >>> _ = env.open_door()
        >>> door_open_reward([[{"role": "assistant", "content": "Done."}]], [env])
        [1.0]
    """
    return [float(env.is_open) for env in environments]


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
            content = message["content"]
            parts.append(f"says {content[:30]!r}" + ("..." if len(content) > 30 else ""))
    return " | ".join(parts) or "(nothing)"


@torch.no_grad()
def held_out(model, tokenizer, requests: list[str], max_completion_length: int, do_sample: bool):
    """Multi-turn rollouts (greedy, or sampled at temperature 1) in fresh environments, through the trainer's own loop
    (`multi_turn_rollout`): the share of requests after which the door is open, the share of rollouts that call a
    tool, and the rollouts."""
    model.eval()
    backend, eos = TransformersBackend(model), (tokenizer.eos_token_id,)
    sampling = SamplingConfig(max_completion_length, eos, tokenizer.pad_token_id, do_sample=do_sample)

    def generate(prompt_ids, max_new_tokens):
        return backend.generate(prompt_ids, 1, replace(sampling, max_completion_length=max_new_tokens))

    environments = [Door() for _ in requests]
    toolboxes = [Toolbox([environment.open_door]) for environment in environments]
    prompts = [[{"role": "user", "content": request}] for request in requests]
    kwargs = {"tools": toolboxes[0].schemas}
    prompt_ids = [render_ids(tokenizer, p, kwargs, add_generation_prompt=True) for p in prompts]
    result = multi_turn_rollout(generate, prompt_ids, prompts, tokenizer, toolboxes,
                                max_completion_length=max_completion_length, eos_token_ids=eos,
                                pad_token_id=tokenizer.pad_token_id, max_iterations=2, template_kwargs=kwargs)
    success = sum(door_open_reward(result.completions, environments)) / len(requests)
    return success, sum(map(_called, result.completions)) / len(requests), result.completions


class PrintRollouts(TrainerCallback):
    """Prints a few sampled rollouts of the last generation batch with their rewards at the first and last steps and
    every `every` steps. Its `reward` is `door_open_reward`, keeping the batch for printing."""

    def __init__(self, every: int, count: int = 4):
        self.every, self.count, self.batch = every, count, None

    def reward(self, prompts, completions, environments, **kwargs) -> list[float]:
        rewards = door_open_reward(completions, environments)
        self.batch = ([p[-1]["content"] for p in prompts], completions, rewards)
        return rewards

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.batch is None or (step not in (1, state.max_steps) and step % self.every):
            return
        requests, completions, rewards = self.batch
        print(f"\n--- sampled rollouts at step {step} (mean reward {sum(rewards) / len(rewards):.2f}) ---")
        for i in range(0, len(completions), max(1, len(completions) // self.count))[: self.count]:
            print(f"  {requests[i]!r}: {_show(completions[i])}   reward {rewards[i]:.0f}")


def warm_up(output_dir: str, dataset: Dataset, steps: int, learning_rate: float, seed: int) -> str:
    """A short SFT run from a random tiny model on the transcripts."""
    model_dir = save_tiny_model(f"{output_dir}/base-model", arch="qwen3", seed=seed)
    args = SFTConfig(
        output_dir=f"{output_dir}/warm-up", max_steps=steps, per_device_train_batch_size=16,
        learning_rate=learning_rate, lr_scheduler_type="constant_with_warmup", warmup_steps=10, logging_steps=25,
        save_strategy="no", report_to="none", assistant_only_loss=True, gradient_checkpointing=False, seed=seed,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=dataset, processing_class=agent_tokenizer())
    trainer.train()
    trainer.save_model()
    return f"{output_dir}/warm-up"


def _by_step(values: list[float], per_line: int = 10) -> str:
    lines = []
    for start in range(0, len(values), per_line):
        chunk = values[start : start + per_line]
        lines.append(f"  {start + 1:>3}-{start + len(chunk):<3} " + " ".join(f"{v:.2f}" for v in chunk))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage (a smoke test, learns little)")
    parser.add_argument("--model", default=None, help="start GRPO from this model folder (default: the SFT warm-up)")
    parser.add_argument("--sft_steps", type=int, default=60, help="SFT steps of 16 transcripts")
    parser.add_argument("--sft_learning_rate", type=float, default=2e-3)
    parser.add_argument("--call_share", type=float, default=0.3, help="share of warm-up transcripts that open the door")
    parser.add_argument("--max_steps", type=int, default=20, help="GRPO steps")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="GRPO learning rate")
    parser.add_argument("--num_test", type=int, default=60, help="held-out requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/agent-tiny")
    cli = parser.parse_args()
    if cli.quick:
        cli.sft_steps, cli.max_steps, cli.num_test = 4, 2, 12

    started = time.time()
    schemas = Toolbox([Door().open_door]).schemas
    dataset = transcripts(16 * cli.sft_steps, schemas, cli.seed, cli.call_share)
    model = cli.model or warm_up(cli.output_dir, dataset, cli.sft_steps, cli.sft_learning_rate, cli.seed)
    sft_seconds = time.time() - started

    tokenizer = agent_tokenizer()
    printer = PrintRollouts(every=max(1, cli.max_steps // 2))
    args = GRPOConfig(
        output_dir=cli.output_dir,
        max_steps=cli.max_steps,
        per_device_train_batch_size=32,  # rollouts per step: 4 requests x 8 samples
        num_generations=8,
        max_completion_length=128,
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
    train = Dataset.from_list([{"prompt": [{"role": "user", "content": rng.choice(TRAIN_REQUESTS)}]}
                               for _ in range(512)])
    test = [TEST_REQUESTS[i % len(TEST_REQUESTS)] for i in range(cli.num_test)]  # phrasings never trained on
    trainer = GRPOTrainer(model=model, reward_funcs=printer.reward, args=args, train_dataset=train,
                          processing_class=tokenizer, environment_factory=Door, callbacks=[printer])

    def evaluate():
        return [held_out(trainer.model, tokenizer, test, args.max_completion_length, do_sample) for do_sample in
                (False, True)]

    before = evaluate()
    print(f"\nAfter the SFT warm-up ({cli.sft_steps} steps, {cli.call_share:.0%} of the transcripts call the tool, "
          f"{sft_seconds:.0f} s), on {len(test)} held-out requests: greedy success {before[0][0]:.0%}; sampled "
          f"success {before[1][0]:.0%}")
    grpo_started = time.time()
    trainer.train()
    after = evaluate()

    logs = [log for log in trainer.state.log_history if "reward" in log]
    print(f"\nGRPO: {cli.max_steps} steps in {time.time() - grpo_started:.0f} s (total {time.time() - started:.0f} s)")
    print("Greedy held-out rollouts after GRPO:")
    for request, completion in list(zip(test, after[0][2]))[:3]:
        print(f"  {request!r}: {_show(completion)}")
    print("Mean reward (1 when the door is open at the end) by GRPO step:")
    print(_by_step([log["reward"] for log in logs]))
    print("Share of rollouts that call open_door by GRPO step:")
    print(_by_step([log["tools/call_frequency"] for log in logs]))
    for name, (b, a) in (("Greedy", (before[0], after[0])), ("Sampled (temperature 1)", (before[1], after[1]))):
        print(f"{name} on {len(test)} held-out requests: success {b[0]:.0%} -> {a[0]:.0%}, "
              f"calls {b[1]:.0%} -> {a[1]:.0%} (before -> after GRPO)")


if __name__ == "__main__":
    main()

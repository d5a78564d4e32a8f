"""`trl grpo`: Group Relative Policy Optimization from the command line.

Run it through the CLI or directly (also under `accelerate launch`):

```bash
trl grpo --model_name_or_path Qwen/Qwen3-0.6B --dataset_name trl-lib/DeepMath-103K \
    --reward_funcs accuracy_reward think_format_reward --output_dir Qwen3-0.6B-GRPO
trl grpo --config grpo.yaml --reward_funcs my_rewards.my_reward --reward_weights 1.0
accelerate launch trl/scripts/grpo.py --config grpo.yaml
```

The data is prompt-only (a `prompt` column); the other columns reach the reward functions as keyword arguments.
`--reward_funcs` takes names of `trl.rewards` functions, dotted paths `module.function` (the current directory is
importable, so a `my_rewards.py` next to you works) and reward-model ids or folders; see [`resolve_reward_funcs`].

Multi-turn rollouts with tools (docs/agents.md): `--tools my_tools.multiply my_tools.search` and
`--environment_factory my_envs.GameEnv` take dotted paths, imported the same way; `--max_tool_calling_iterations` and
`--tool_timeout` are [`GRPOConfig`] flags. The model's chat template must render tool calls. With
`--environment_factory`, `--dataset_name` and `--reward_funcs` may be left out when the environments own the data
(`--max_steps` then) and the reward (`get_reward`).

```bash
trl grpo --model_name_or_path Qwen/Qwen3-0.6B --dataset_name questions.jsonl --reward_funcs my_rewards.correct \
    --tools my_tools.multiply --max_tool_calling_iterations 4 --tool_timeout 10 --output_dir Qwen3-0.6B-GRPO-tools
```
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from trl.scripts.utils import (
    DatasetMixtureConfig,
    OnlineScriptArguments,
    TrlParser,
    command_parser,
    finish_training,
    import_callable,
    run_script,
    script_trainer_kwargs,
)
from trl.trainer.grpo_config import GRPOConfig
from trl.trainer.model_config import ModelConfig


@dataclass
class GRPOScriptArguments(OnlineScriptArguments):
    r"""
    [`OnlineScriptArguments`] of `trl grpo`, plus the tools and environments of multi-turn rollouts.

    Parameters:
        tools (`list[str]`, *optional*):
            Dotted paths `module.function` of tool functions (typed, with docstrings), imported with the current
            directory importable.
        environment_factory (`str`, *optional*):
            Dotted path `module.Class` of an environment class (or zero-argument factory): one instance per rollout,
            `reset(**row)` with the row, its public methods are tools, an optional `get_reward()` is a reward.

    Example:
        ```python
        >>> GRPOScriptArguments(dataset_name="questions.jsonl", tools=["my_tools.multiply"]).tools
        ['my_tools.multiply']
        ```
    """

    tools: list[str] | None = field(
        default=None,
        metadata={"help": "Tools for multi-turn rollouts: dotted paths `module.function` (the current directory is "
                          "importable), e.g. `my_tools.multiply`."},
    )
    environment_factory: str | None = field(
        default=None,
        metadata={"help": "Environment class for multi-turn rollouts: a dotted path `module.Class` (the current "
                          "directory is importable); its public methods become tools, get_reward() a reward."},
    )


def resolve_agent_args(script_args: GRPOScriptArguments) -> dict:
    """`tools` and `environment_factory` of the trainer from their dotted paths ([`import_callable`]); empty when
    neither flag is given.

    Raises:
        `ValueError`: a path whose module or attribute does not exist. `TypeError`: one that is not callable.

    Example:
        ```python
        >>> resolve_agent_args(GRPOScriptArguments(tools=["math.floor"]))  # my_tools.multiply for a my_tools.py
        {'tools': [<built-in function floor>]}
        ```
    """
    kwargs = {}
    if script_args.tools:
        kwargs["tools"] = [import_callable(path, f"--tools[{i}]") for i, path in enumerate(script_args.tools)]
    if script_args.environment_factory:
        kwargs["environment_factory"] = import_callable(script_args.environment_factory, "--environment_factory")
    return kwargs


def main(
    script_args: GRPOScriptArguments,
    training_args: GRPOConfig,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig | None = None,
) -> None:
    """Train with [`GRPOTrainer`] on the parsed arguments, then save (and optionally push) the model.

    Args:
        script_args ([`GRPOScriptArguments`]): which dataset and splits, the reward functions, tools, environments.
        training_args ([`GRPOConfig`]): trainer configuration.
        model_args ([`ModelConfig`]): model, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`], *optional*): a dataset mixture; overrides `dataset_name` when set.

    Example:
        ```python
        >>> from trl.scripts.grpo import main, make_parser
        >>> main(*make_parser().parse_args_and_config(["--config", "grpo.yaml"]))
        ```
    """
    from trl.trainer.grpo_trainer import GRPOTrainer

    agent_kwargs = resolve_agent_args(script_args)  # before anything is loaded, so that a bad path fails fast
    kwargs = script_trainer_kwargs("grpo", script_args, training_args, model_args, dataset_args,
                                   environments_own_data="environment_factory" in agent_kwargs)
    trainer = GRPOTrainer(**kwargs, **agent_kwargs)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    finish_training(trainer, training_args, script_args.dataset_name)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """Build the `trl grpo` parser over `(GRPOScriptArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction`, *optional*):
            Add the parser as the `grpo` subcommand of these subparsers (created with `parser_class=TrlParser`).
        prog (`str`, *optional*):
            Program name shown in usage and help, e.g. `"trl grpo"`.

    Example:
        ```python
        >>> parser = make_parser(prog="trl grpo")
        >>> script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(
        ...     ["--reward_funcs", "think_format_reward", "--num_generations", "4"]
        ... )
        >>> script_args.reward_funcs
        ['think_format_reward']
        ```
    """
    description = (
        "Group Relative Policy Optimization (GRPO): sample several completions per prompt, score them with reward "
        "functions, and learn from each completion's reward relative to its group."
    )
    return command_parser("grpo", GRPOConfig, description, subparsers, prog, script_args_class=GRPOScriptArguments)


if __name__ == "__main__":
    run_script(make_parser, main)

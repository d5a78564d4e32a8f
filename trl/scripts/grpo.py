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
"""

from __future__ import annotations

import argparse

from trl.scripts.utils import (
    DatasetMixtureConfig,
    OnlineScriptArguments,
    TrlParser,
    command_parser,
    finish_training,
    run_script,
    script_trainer_kwargs,
)
from trl.trainer.grpo_config import GRPOConfig
from trl.trainer.model_config import ModelConfig

GRPOScriptArguments = OnlineScriptArguments  # the name TRL's `trl grpo` script uses


def main(
    script_args: OnlineScriptArguments,
    training_args: GRPOConfig,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig | None = None,
) -> None:
    """Train with [`GRPOTrainer`] on the parsed arguments, then save (and optionally push) the model.

    Args:
        script_args ([`OnlineScriptArguments`]): which dataset and splits, and the reward functions.
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

    trainer = GRPOTrainer(**script_trainer_kwargs("grpo", script_args, training_args, model_args, dataset_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    finish_training(trainer, training_args, script_args.dataset_name)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """Build the `trl grpo` parser over `(OnlineScriptArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig)`.

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
    return command_parser("grpo", GRPOConfig, description, subparsers, prog, script_args_class=OnlineScriptArguments)


if __name__ == "__main__":
    run_script(make_parser, main)

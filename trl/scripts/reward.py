"""`trl reward`: train a reward model on preference pairs from the command line.

Run it through the CLI or directly (also under `accelerate launch`):

```bash
trl reward --model_name_or_path Qwen/Qwen3-0.6B --dataset_name trl-lib/ultrafeedback_binarized
trl reward --config reward.yaml --use_peft --lora_r 32
accelerate launch trl/scripts/reward.py --config reward.yaml
```

The model is loaded as a sequence classifier with one output (`AutoModelForSequenceClassification`, `num_labels=1`), and
`--lora_task_type` defaults to `SEQ_CLS` so that a LoRA run also trains the new `score` head.
"""

from __future__ import annotations

import argparse

from trl.scripts.utils import (
    DatasetMixtureConfig,
    ScriptArguments,
    TrlParser,
    command_parser,
    finish_training,
    run_script,
    script_trainer_kwargs,
)
from trl.trainer.model_config import ModelConfig
from trl.trainer.reward_config import RewardConfig


def main(
    script_args: ScriptArguments,
    training_args: RewardConfig,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig | None = None,
) -> None:
    """Train with [`RewardTrainer`] on the parsed arguments, then save (and optionally push) the model.

    Args:
        script_args ([`ScriptArguments`]): which dataset and splits.
        training_args ([`RewardConfig`]): trainer configuration.
        model_args ([`ModelConfig`]): model, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`], *optional*): a dataset mixture; overrides `dataset_name` when set.

    Example:
        ```python
        >>> from trl.scripts.reward import main, make_parser
        >>> main(*make_parser().parse_args_and_config(["--config", "reward.yaml"]))
        ```
    """
    from trl.trainer.reward_trainer import RewardTrainer

    trainer = RewardTrainer(**script_trainer_kwargs("reward", script_args, training_args, model_args, dataset_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    finish_training(trainer, training_args, script_args.dataset_name)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """Build the `trl reward` parser over `(ScriptArguments, RewardConfig, ModelConfig, DatasetMixtureConfig)`, with
    `--lora_task_type` defaulting to `SEQ_CLS`.

    Args:
        subparsers (`argparse._SubParsersAction`, *optional*):
            Add the parser as the `reward` subcommand of these subparsers (created with `parser_class=TrlParser`).
        prog (`str`, *optional*):
            Program name shown in usage and help, e.g. `"trl reward"`.

    Example:
        ```python
        >>> parser = make_parser(prog="trl reward")
        >>> script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(["--max_steps", "2"])
        >>> model_args.lora_task_type
        'SEQ_CLS'
        ```
    """
    description = "Reward modelling: train a sequence classifier with one output on preference pairs."
    parser = command_parser("reward", RewardConfig, description, subparsers, prog)
    parser.set_defaults(lora_task_type="SEQ_CLS")  # a config file or a flag still overrides it
    return parser


if __name__ == "__main__":
    run_script(make_parser, main)

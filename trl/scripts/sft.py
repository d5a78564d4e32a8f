"""`trl sft`: supervised fine-tuning from the command line.

Run it through the CLI or directly (also under `accelerate launch`):

```bash
trl sft --model_name_or_path Qwen/Qwen3-0.6B --dataset_name trl-lib/Capybara --output_dir Qwen3-0.6B-SFT
trl sft --config sft.yaml --accelerate_config zero2
accelerate launch trl/scripts/sft.py --config sft.yaml
```
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
from trl.trainer.sft_config import SFTConfig


def main(
    script_args: ScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig | None = None,
) -> None:
    """Train with [`SFTTrainer`] on the parsed arguments, then save (and optionally push) the model.

    Args:
        script_args ([`ScriptArguments`]): which dataset and splits.
        training_args ([`SFTConfig`]): trainer configuration.
        model_args ([`ModelConfig`]): model, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`], *optional*): a dataset mixture; overrides `dataset_name` when set.

    Example:
        ```python
        >>> from trl.scripts.sft import main, make_parser
        >>> main(*make_parser().parse_args_and_config(["--config", "sft.yaml"]))
        ```
    """
    from trl.trainer.sft_trainer import SFTTrainer

    trainer = SFTTrainer(**script_trainer_kwargs("sft", script_args, training_args, model_args, dataset_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    finish_training(trainer, training_args, script_args.dataset_name)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """Build the `trl sft` parser over `(ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction`, *optional*):
            Add the parser as the `sft` subcommand of these subparsers (created with `parser_class=TrlParser`).
        prog (`str`, *optional*):
            Program name shown in usage and help, e.g. `"trl sft"`.

    Example:
        ```python
        >>> parser = make_parser(prog="trl sft")
        >>> script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(["--max_steps", "2"])
        ```
    """
    description = "Supervised fine-tuning (SFT) of a causal language model."
    return command_parser("sft", SFTConfig, description, subparsers, prog)


if __name__ == "__main__":
    run_script(make_parser, main)

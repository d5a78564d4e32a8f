"""`trl dpo`: Direct Preference Optimization (and its variants) from the command line.

Run it through the CLI or directly (also under `accelerate launch`):

```bash
trl dpo --model_name_or_path Qwen/Qwen3-0.6B --dataset_name trl-lib/ultrafeedback_binarized --output_dir Qwen3-0.6B-DPO
trl dpo --config dpo.yaml --loss_type sigmoid bco_pair sft --loss_weights 0.8 0.2 1.0
accelerate launch trl/scripts/dpo.py --config dpo.yaml
```

The data is preference pairs: `prompt`/`chosen`/`rejected`, or `chosen`/`rejected` with an implicit prompt, standard or
conversational. Without `--use_peft` the reference is a second copy of the model, loaded with the same options.
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
from trl.trainer.dpo_config import DPOConfig
from trl.trainer.model_config import ModelConfig


def main(
    script_args: ScriptArguments,
    training_args: DPOConfig,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig | None = None,
) -> None:
    """Train with [`DPOTrainer`] on the parsed arguments, then save (and optionally push) the model.

    Args:
        script_args ([`ScriptArguments`]): which dataset and splits.
        training_args ([`DPOConfig`]): trainer configuration.
        model_args ([`ModelConfig`]): model, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`], *optional*): a dataset mixture; overrides `dataset_name` when set.

    Example:
        ```python
        >>> from trl.scripts.dpo import main, make_parser
        >>> main(*make_parser().parse_args_and_config(["--config", "dpo.yaml"]))
        ```
    """
    from trl.trainer.dpo_trainer import DPOTrainer

    trainer = DPOTrainer(**script_trainer_kwargs("dpo", script_args, training_args, model_args, dataset_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    finish_training(trainer, training_args, script_args.dataset_name)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """Build the `trl dpo` parser over `(ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction`, *optional*):
            Add the parser as the `dpo` subcommand of these subparsers (created with `parser_class=TrlParser`).
        prog (`str`, *optional*):
            Program name shown in usage and help, e.g. `"trl dpo"`.

    Example:
        ```python
        >>> parser = make_parser(prog="trl dpo")
        >>> script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(["--beta", "0.2"])
        >>> training_args.beta
        0.2
        ```
    """
    description = "Direct Preference Optimization (DPO) and its variants on preference pairs."
    return command_parser("dpo", DPOConfig, description, subparsers, prog)


if __name__ == "__main__":
    run_script(make_parser, main)

"""`trl kto`: Kahneman-Tversky Optimization from the command line.

Run it through the CLI or directly (also under `accelerate launch`):

```bash
trl kto --model_name_or_path Qwen/Qwen3-0.6B --dataset_name trl-lib/kto-mix-14k --output_dir Qwen3-0.6B-KTO
trl kto --config kto.yaml --use_peft --lora_r 32
accelerate launch trl/scripts/kto.py --config kto.yaml
```

The data is unpaired (`prompt`/`completion`/`label`) or paired (`prompt`/`chosen`/`rejected`, unpaired automatically).
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
from trl.trainer.kto_config import KTOConfig
from trl.trainer.model_config import ModelConfig


def main(
    script_args: ScriptArguments,
    training_args: KTOConfig,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig | None = None,
) -> None:
    """Train with [`KTOTrainer`] on the parsed arguments, then save (and optionally push) the model.

    Args:
        script_args ([`ScriptArguments`]): which dataset and splits.
        training_args ([`KTOConfig`]): trainer configuration.
        model_args ([`ModelConfig`]): model, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`], *optional*): a dataset mixture; overrides `dataset_name` when set.

    Example:
        ```python
        >>> from trl.scripts.kto import main, make_parser
        >>> main(*make_parser().parse_args_and_config(["--config", "kto.yaml"]))
        ```
    """
    from trl.trainer.kto_trainer import KTOTrainer

    trainer = KTOTrainer(**script_trainer_kwargs("kto", script_args, training_args, model_args, dataset_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    finish_training(trainer, training_args, script_args.dataset_name)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """Build the `trl kto` parser over `(ScriptArguments, KTOConfig, ModelConfig, DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction`, *optional*):
            Add the parser as the `kto` subcommand of these subparsers (created with `parser_class=TrlParser`).
        prog (`str`, *optional*):
            Program name shown in usage and help, e.g. `"trl kto"`.

    Example:
        ```python
        >>> parser = make_parser(prog="trl kto")
        >>> script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(["--beta", "0.2"])
        ```
    """
    description = "Kahneman-Tversky Optimization (KTO) on completions labelled desirable or undesirable."
    return command_parser("kto", KTOConfig, description, subparsers, prog)


if __name__ == "__main__":
    run_script(make_parser, main)

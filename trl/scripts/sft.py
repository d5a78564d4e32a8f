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
import warnings

from trl.scripts.utils import (
    finish_training,
    DatasetMixtureConfig,
    ScriptArguments,
    TrlParser,
    check_launch_leftovers,
    get_dataset,
    load_dataset_from_name,
)
from trl.trainer.model_config import ModelConfig, get_kbit_device_map, get_peft_config, get_quantization_config
from trl.trainer.sft_config import SFTConfig


def load_script_dataset(script_args: ScriptArguments, dataset_args: DatasetMixtureConfig | None):
    """Load the training data of a script: the mixture when `datasets` is set, else `dataset_name`.

    Example:
        ```python
        >>> dataset = load_script_dataset(ScriptArguments(dataset_name="data/train.jsonl"), DatasetMixtureConfig())
        >>> dataset["train"]
        ```
    """
    if dataset_args is not None and dataset_args.datasets:
        if script_args.dataset_name is not None:
            warnings.warn(
                f"Both `datasets` (a mixture) and `dataset_name` ({script_args.dataset_name!r}) are set; training on "
                "the mixture and ignoring `dataset_name`.",
                stacklevel=2,
            )
        return get_dataset(dataset_args)
    if script_args.dataset_name is None:
        raise ValueError("No training data: pass `--dataset_name` (hub id, file or folder) or a `datasets` mixture.")
    return load_dataset_from_name(
        script_args.dataset_name, script_args.dataset_config, streaming=script_args.dataset_streaming
    )


def _split(dataset, name: str, what: str):
    if name not in dataset:
        raise ValueError(
            f"The dataset has no {what} split {name!r}; its splits are {list(dataset)}. Pick one with "
            f"`--dataset_{what}_split`" + (", or set `--eval_strategy no`." if what == "test" else ".")
        )
    return dataset[name]


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

    if model_args.model_name_or_path is None:
        raise ValueError("`trl sft` needs a model: pass `--model_name_or_path` (hub id or local folder).")

    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        "trust_remote_code": training_args.trust_remote_code,
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        model_init_kwargs["device_map"] = get_kbit_device_map()
    # Explicit `--model_init_kwargs` win over the values derived from ModelConfig.
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}

    dataset = load_script_dataset(script_args, dataset_args)
    train_dataset = _split(dataset, script_args.dataset_train_split, "train")
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = _split(dataset, script_args.dataset_test_split, "test")

    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        quantization_config=quantization_config,
        peft_config=get_peft_config(model_args),
    )
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
    dataclass_types = (ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)
    description = "Supervised fine-tuning (SFT) of a causal language model."
    if subparsers is not None:
        kwargs = {"prog": prog} if prog else {}
        return subparsers.add_parser(
            "sft", help=description, description=description, dataclass_types=dataclass_types, **kwargs
        )
    return TrlParser(dataclass_types, prog=prog, description=description)


if __name__ == "__main__":
    parser = make_parser()
    # Config keys meant for `accelerate launch` (the `trl` CLI forwards them as launcher flags) are tolerated here.
    *parsed, config_leftovers, cli_leftovers = parser.parse_args_and_config(
        return_remaining_strings=True, separate_remaining_strings=True
    )
    if cli_leftovers:
        parser.error(f"unrecognized arguments: {' '.join(cli_leftovers)}")
    check_launch_leftovers(config_leftovers)
    main(*parsed)

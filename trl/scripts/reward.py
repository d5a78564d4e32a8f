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

from trl.scripts.sft import _split, load_script_dataset
from trl.scripts.utils import (
    DatasetMixtureConfig,
    ScriptArguments,
    TrlParser,
    check_launch_leftovers,
    finish_training,
)
from trl.trainer.model_config import ModelConfig, get_kbit_device_map, get_peft_config, get_quantization_config
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

    if model_args.model_name_or_path is None:
        raise ValueError("`trl reward` needs a model: pass `--model_name_or_path` (hub id or local folder).")

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

    trainer = RewardTrainer(
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
    dataclass_types = (ScriptArguments, RewardConfig, ModelConfig, DatasetMixtureConfig)
    description = "Reward modelling: train a sequence classifier with one output on preference pairs."
    if subparsers is not None:
        kwargs = {"prog": prog} if prog else {}
        parser = subparsers.add_parser(
            "reward", help=description, description=description, dataclass_types=dataclass_types, **kwargs
        )
    else:
        parser = TrlParser(dataclass_types, prog=prog, description=description)
    parser.set_defaults(lora_task_type="SEQ_CLS")  # a config file or a flag still overrides it
    return parser


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

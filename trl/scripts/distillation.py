"""`trl distillation`: on-policy distillation of a teacher into a student from the command line.

Run it through the CLI or directly (also under `accelerate launch`):

```bash
trl distillation --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --teacher_model_name_or_path Qwen/Qwen2.5-7B-Instruct --dataset_name trl-lib/DeepMath-103K --beta 0.5 \
    --output_dir Qwen2.5-0.5B-Distillation
trl distillation --config examples/distillation_tiny.yaml
accelerate launch trl/scripts/distillation.py --config distillation.yaml
```

The data is prompt-only (a `prompt` column). `--teacher_model_name_or_path` is required; the teacher is loaded with
the student's `--dtype` and `--attn_implementation` (keys set in `--teacher_model_init_kwargs` win) and
`--teacher_model_revision`, and is never quantized (`--load_in_4bit`/`--load_in_8bit` apply to the student only).
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
from trl.trainer.distillation_config import DistillationConfig
from trl.trainer.model_config import ModelConfig


def main(
    script_args: ScriptArguments,
    training_args: DistillationConfig,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig | None = None,
) -> None:
    """Train with [`DistillationTrainer`] on the parsed arguments, then save (and optionally push) the student.

    Args:
        script_args ([`ScriptArguments`]): which dataset and splits.
        training_args ([`DistillationConfig`]): trainer configuration, with `teacher_model_name_or_path`.
        model_args ([`ModelConfig`]): the student's model, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`], *optional*): a dataset mixture; overrides `dataset_name` when set.

    Raises:
        `ValueError`: no `--teacher_model_name_or_path`.

    Example:
        ```python
        >>> from trl.scripts.distillation import main, make_parser
        >>> main(*make_parser().parse_args_and_config(["--config", "examples/distillation_tiny.yaml"]))
        ```
    """
    from trl.trainer.distillation_trainer import DistillationTrainer

    if not training_args.teacher_model_name_or_path:
        raise ValueError(
            "`trl distillation` needs a teacher: pass `--teacher_model_name_or_path` (a hub id or local folder whose "
            "vocabulary is the student's)."
        )
    teacher_kwargs = {"dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation}
    teacher_kwargs = {key: value for key, value in teacher_kwargs.items() if value is not None}
    training_args.teacher_model_init_kwargs = {**teacher_kwargs, **(training_args.teacher_model_init_kwargs or {})}
    kwargs = script_trainer_kwargs("distillation", script_args, training_args, model_args, dataset_args)
    trainer = DistillationTrainer(**kwargs)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    finish_training(trainer, training_args, script_args.dataset_name)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """Build the `trl distillation` parser over `(ScriptArguments, DistillationConfig, ModelConfig,
    DatasetMixtureConfig)`.

    Args:
        subparsers (`argparse._SubParsersAction`, *optional*):
            Add the parser as the `distillation` subcommand of these subparsers (created with `parser_class=TrlParser`).
        prog (`str`, *optional*):
            Program name shown in usage and help, e.g. `"trl distillation"`.

    Example:
        ```python
        >>> parser = make_parser(prog="trl distillation")
        >>> script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(
        ...     ["--teacher_model_name_or_path", "Qwen/Qwen2.5-7B-Instruct", "--beta", "0.5"]
        ... )
        >>> training_args.beta
        0.5
        ```
    """
    description = (
        "On-policy distillation: the student samples a completion per prompt and learns the teacher's next-token "
        "distributions on it (generalized JSD; --beta 0 forward KL, 0.5 JSD, 1 reverse KL)."
    )
    return command_parser("distillation", DistillationConfig, description, subparsers, prog)


if __name__ == "__main__":
    run_script(make_parser, main)

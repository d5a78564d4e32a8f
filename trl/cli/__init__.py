"""The `trl` command.

`trl <method> [args]` trains with one of the scripts in `trl/scripts/`; `trl env` prints the environment. A training
command runs in this process when nothing asks for a launcher; `accelerate launch` options (any argument the script
does not know, e.g. `--num_processes 8`) or `--accelerate_config` re-launch the script through `accelerate launch`.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import re
import sys
from pathlib import Path

from trl import __version__

# Training subcommands: name -> (script module, help). The module defines `make_parser(subparsers=None, prog=None)`
# and `main(*parsed_dataclasses)`. Adding a trainer to the CLI is one line here.
TRAINING_COMMANDS = {
    "sft": ("trl.scripts.sft", "Supervised fine-tuning (SFT)."),
    "dpo": ("trl.scripts.dpo", "Direct Preference Optimization (DPO) and its variants on preference pairs."),
    "kto": ("trl.scripts.kto", "Kahneman-Tversky Optimization (KTO) on unpaired preference data."),
    "grpo": ("trl.scripts.grpo", "Group Relative Policy Optimization (GRPO) on prompts scored by reward functions."),
    "rloo": ("trl.scripts.rloo", "REINFORCE Leave-One-Out (RLOO) on prompts scored by reward functions."),
    "reward": ("trl.scripts.reward", "Reward modelling on preference pairs (Bradley-Terry)."),
    "distillation": (
        "trl.scripts.distillation",
        "On-policy distillation: the student samples, the teacher's distributions teach (generalized JSD).",
    ),
}

# Other subcommands: name -> (module, help). The module defines `main(argv)`.
COMMANDS = {
    "env": ("trl.scripts.env", "Print the environment (versions, accelerators) for bug reports."),
}

ACCELERATE_CONFIGS_DIR = Path(__file__).resolve().parent.parent / "accelerate_configs"

# The options `trl <command> --help` lists first, when the command has them: what people set first.
FIRST_OPTIONS = (
    "model_name_or_path", "dataset_name", "output_dir", "num_train_epochs", "max_steps", "learning_rate",
    "per_device_train_batch_size", "gradient_accumulation_steps", "use_peft", "lora_r", "reward_funcs",
    "num_generations",
)


def _main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl",
        description="TRL: post-training of foundation models. Run `trl <command> --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"trl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subparsers.required = True
    # The real parsers are built only for the command that runs: building them all would import every trainer.
    for name, (_, help_text) in {**TRAINING_COMMANDS, **COMMANDS}.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def resolve_accelerate_config(name_or_path: str) -> str:
    """Resolve `--accelerate_config`: the name of a shipped config (e.g. `"zero2"`) or a path to a YAML file.

    Args:
        name_or_path (`str`): one of `single_gpu`, `multi_gpu`, `zero1`, `zero2`, `zero3`, `fsdp1`, `fsdp2`, or a path.

    Returns:
        `str`: path of the config file.

    Example:
        ```python
        >>> resolve_accelerate_config("zero3").endswith("accelerate_configs/zero3.yaml")
        True
        ```
    """
    shipped = ACCELERATE_CONFIGS_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return str(shipped)
    if Path(name_or_path).is_file():
        return name_or_path
    names = sorted(path.stem for path in ACCELERATE_CONFIGS_DIR.glob("*.yaml"))
    raise ValueError(f"--accelerate_config {name_or_path!r} is neither a shipped config {names} nor a file.")


def _strip_subsequence(args: list[str], remove: list[str]) -> list[str]:
    """`args` without the tokens of `remove`, which occur in `args` in the same order."""
    kept, position = [], 0
    for arg in args:
        if position < len(remove) and arg == remove[position]:
            position += 1
        else:
            kept.append(arg)
    return kept


def _strip_option(args: list[str], option: str) -> list[str]:
    """`args` without `option value` / `option=value`."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def command_example(name: str) -> str:
    """The first `trl <name> ...` command line of the script module's docstring, continuation lines joined.

    Example:
        ```python
        >>> command_example("sft")
        'trl sft --model_name_or_path Qwen/Qwen3-0.6B --dataset_name trl-lib/Capybara --output_dir Qwen3-0.6B-SFT'
        ```
    """
    lines = (importlib.import_module(TRAINING_COMMANDS[name][0]).__doc__ or "").splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"trl {name} "):
            example = line.strip()
            for more in lines[i + 1:]:  # `\`-continued lines (a non-raw docstring has already joined them)
                if not example.endswith("\\"):
                    break
                example = example[:-1] + more
            return " ".join(example.split())
    return f"trl {name} --config {name}.yaml"


def format_command_help(parser: argparse.ArgumentParser, name: str) -> str:
    """The help of `trl <name>`: a one-line example, the options people set first ([`FIRST_OPTIONS`]), then every
    option grouped by the dataclass that defines it, then the parser's other groups (`--config`, the launcher).

    Args:
        parser (`argparse.ArgumentParser`): the command's parser (a `TrlParser` over its dataclasses).
        name (`str`): the command, e.g. `"sft"`.

    Example:
        ```python
        >>> print(format_command_help(importlib.import_module("trl.scripts.sft").make_parser(prog="trl sft"), "sft"))
        Example: trl sft --model_name_or_path Qwen/Qwen3-0.6B --dataset_name trl-lib/Capybara --output_dir ...
        ```
    """
    import dataclasses

    by_dest = {action.dest: action for action in parser._actions if action.option_strings}
    owner = {}  # dest -> dataclass
    for dataclass_type in getattr(parser, "dataclass_types", ()):
        for field in dataclasses.fields(dataclass_type):
            owner.setdefault(field.name, dataclass_type)
    formatter = parser._get_formatter()
    formatter.add_usage(f"{parser.prog} [--config FILE] [OPTION ...]", [], [])
    formatter.add_text(parser.description)

    def section(title: str, description: str | None, actions: list) -> None:
        formatter.start_section(title)
        formatter.add_text(description)
        formatter.add_arguments(actions)
        formatter.end_section()

    first = []
    for dest in FIRST_OPTIONS:
        if dest in by_dest:  # one flag spelling and the first sentence of the help: the full entry is below
            action = copy.copy(by_dest[dest])
            action.option_strings = action.option_strings[:1]
            action.help = _first_sentence(action.help or "")
            first.append(action)
    section("most used options", "All options follow, grouped by the dataclass that defines them.", first)
    for dataclass_type in getattr(parser, "dataclass_types", ()):
        actions = [a for a in parser._actions if a.option_strings and owner.get(a.dest) is dataclass_type]
        doc = (dataclass_type.__doc__ or "").strip()
        section(f"{dataclass_type.__name__} options",
                None if doc.startswith(dataclass_type.__name__ + "(") else _first_sentence(doc), actions)
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings and a.dest not in owner]
        if actions:
            title = "other options" if group in (parser._optionals, parser._positionals) else group.title
            section(title, group.description, actions)
    # the example is one line, however wide the terminal: it is meant to be copied
    return f"Example: {command_example(name)}\n\n{formatter.format_help()}"


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    end = re.search(r"(?<!e\.g)(?<!i\.e)\.\s", text + " ")
    return text if end is None else text[: end.start() + 1]


def run_training_command(name: str, argv: list[str]) -> None:
    """Parse `argv` for the training command `name`, then train in this process or through `accelerate launch`.

    Example:
        ```python
        >>> run_training_command("sft", ["--config", "sft.yaml", "--accelerate_config", "zero2"])
        ```
    """
    from trl.cli.parser import check_launch_leftovers

    module = importlib.import_module(TRAINING_COMMANDS[name][0])
    parser = module.make_parser(prog=f"trl {name}")
    group = parser.add_argument_group(
        "launcher", "Arguments this command does not know are passed to `accelerate launch` (e.g. --num_processes)."
    )
    group.add_argument(
        "--accelerate_config",
        type=str,
        default=None,
        help="Launch through `accelerate launch` with this config: single_gpu, multi_gpu, zero1, zero2, zero3, "
        "fsdp1, fsdp2, or a path to an accelerate config file.",
    )
    *outputs, config_leftovers, cli_leftovers = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    extra = outputs.pop() if outputs and isinstance(outputs[-1], argparse.Namespace) else argparse.Namespace()
    accelerate_config = getattr(extra, "accelerate_config", None)
    launch_args = config_leftovers + cli_leftovers
    try:
        check_launch_leftovers(launch_args)
    except ValueError as error:
        parser.error(str(error))

    if not launch_args and accelerate_config is None:
        module.main(*outputs)
        return

    from accelerate.commands.launch import launch_command, launch_command_parser

    if accelerate_config is not None:
        launch_args = ["--config_file", resolve_accelerate_config(accelerate_config), *launch_args]
    elif _needs_multi_process_flag(launch_args):
        # Without a distributed flag accelerate runs several processes only on GPUs; on a CPU-only machine it would
        # silently start one. --multi_gpu starts them (gloo on CPU: the configs detect that and use the CPU).
        launch_args = ["--multi_gpu", *launch_args]
    # The script re-parses its own arguments (with the same --config file, whose launcher keys it tolerates).
    script_args = _strip_option(_strip_subsequence(argv, cli_leftovers), "--accelerate_config")
    script = Path(module.__file__).resolve()
    launch_command(launch_command_parser().parse_args([*launch_args, str(script), *script_args]))


_DISTRIBUTED_FLAGS = ("--multi_gpu", "--config_file", "--use_deepspeed", "--use_fsdp", "--use_xpu", "--tpu", "--cpu")


def _needs_multi_process_flag(launch_args: list[str]) -> bool:
    """Whether `--num_processes N` (N > 1) was given without a flag that tells accelerate how to launch them."""
    processes = 1
    for i, arg in enumerate(launch_args):
        if arg.startswith("--num_processes"):
            value = arg.split("=", 1)[1] if "=" in arg else (launch_args[i + 1] if i + 1 < len(launch_args) else "1")
            processes = int(value) if value.isdigit() else 1
    return processes > 1 and not any(arg.split("=")[0] in _DISTRIBUTED_FLAGS for arg in launch_args)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `trl` command.

    Args:
        argv (`list[str]`, *optional*): the arguments after `trl`; defaults to `sys.argv[1:]`.

    Example:
        ```python
        >>> from trl.cli import main
        >>> main(["sft", "--model_name_or_path", "Qwen/Qwen3-0.6B", "--dataset_name", "trl-lib/Capybara"])
        ```
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _main_parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv)  # prints help, or the argparse error for a missing command
        return
    parser.parse_args(argv[:1])  # argparse's error for an unknown command
    name, rest = argv[0], argv[1:]
    if name in TRAINING_COMMANDS:
        run_training_command(name, rest)
    else:
        importlib.import_module(COMMANDS[name][0]).main(rest)


if __name__ == "__main__":
    main()

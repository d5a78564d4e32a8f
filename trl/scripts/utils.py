"""Shared parts of the `trl` training scripts: script arguments and what every script does with them (load the data,
build the trainer's keyword arguments, its parser).

The pieces live where they belong and stay importable from here: the parser in `trl/cli/parser.py`, dataset loading
and mixtures in `trl/data/loading.py`, reward-name resolution in `trl/rewards/_resolve.py`, the process lifecycle in
`trl/scripts/lifecycle.py`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# the resolver of reward names lives with the reward functions, so that the trainers resolve `reward_funcs` strings the
# same way; it stays importable from here
from .._dotted import import_dotted
from ..cli.parser import (  # noqa: F401  (re-exported)
    TrlParser,
    _as_cli_strings,
    _convert,
    _is_number,
    _launch_option_strings,
    _parsers,
    check_launch_leftovers,
)
from ..data.loading import (  # noqa: F401  (re-exported)
    _DATA_EXTENSIONS,
    _FILE_BUILDERS,
    _PACKAGED_BUILDERS,
    DatasetConfig,
    DatasetMixtureConfig,
    _check_builder_data_files,
    _is_saved_to_disk,
    _load_mixture_entry,
    _mixture_sizes,
    _no_download_count,
    get_dataset,
    load_dataset_from_name,
)
from ..rewards._resolve import resolve_reward_funcs
from .lifecycle import (  # noqa: F401  (re-exported)
    _RELEASED_GROUPS,
    _leave_after_distributed_run,
    close_processes,
    finish_training,
    init_zero_verbose,
    run_script,
)

if TYPE_CHECKING:
    from datasets import DatasetDict, IterableDatasetDict


@dataclass
class ScriptArguments:
    r"""
    Which dataset a `trl` training script trains on.

    Parameters:
        dataset_name (`str`, *optional*):
            Hub id of the dataset, a local data file (`.json`, `.jsonl`, `.parquet`, `.csv`, `.arrow`, `.txt`), a
            folder written by `Dataset.save_to_disk`, or a folder of data files. Ignored when `--datasets` (a mixture) is set.
        dataset_config (`str`, *optional*):
            Configuration (subset) name of the dataset.
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        dataset_test_split (`str`, *optional*, defaults to `"test"`):
            Split to evaluate on (used when `eval_strategy` is not `"no"`).
        dataset_streaming (`bool`, *optional*, defaults to `False`):
            Stream the dataset instead of downloading it whole (needs `max_steps`).
        ignore_bias_buffers (`bool`, *optional*, defaults to `False`):
            Make DDP ignore boolean buffers (e.g. attention-bias masks) that it cannot broadcast.

    Example:
        ```python
        >>> from trl import ScriptArguments
        >>> ScriptArguments(dataset_name="trl-lib/Capybara").dataset_train_split
        'train'
        ```
    """

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub id, local data file (.json/.jsonl/.parquet/.csv/.arrow) or folder of the dataset."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration (subset) name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split to evaluate on."})
    dataset_streaming: bool = field(default=False, metadata={"help": "Stream the dataset (needs max_steps)."})
    ignore_bias_buffers: bool = field(
        default=False, metadata={"help": "Make DDP ignore boolean buffers it cannot broadcast."}
    )


@dataclass
class OnlineScriptArguments(ScriptArguments):
    r"""
    [`ScriptArguments`] of the online commands (`trl grpo`, `trl rloo`): the dataset, and what scores the completions.

    Parameters:
        reward_funcs (`list[str]`, *optional*):
            Reward functions, each one of (see [`resolve_reward_funcs`]):
            - the name of a function of `trl.rewards`, e.g. `think_format_reward`;
            - a dotted path `package.module.function`, imported from the current directory or the installed packages;
            - a Hub id or local folder of a sequence-classification reward model.
        reward_model_name_or_path (`str`, *optional*):
            Hub id or local folder of a sequence-classification reward model, scored before `reward_funcs`.

    Example:
        ```python
        >>> from trl.scripts.utils import OnlineScriptArguments
        >>> OnlineScriptArguments(dataset_name="trl-lib/DeepMath-103K", reward_funcs=["accuracy_reward"]).reward_funcs
        ['accuracy_reward']
        ```
    """

    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions: names of trl.rewards functions (e.g. think_format_reward), dotted paths "
                          "`module.function` (the current directory is importable), or reward-model ids/folders."},
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local folder of a sequence-classification reward model."}
    )


def import_callable(path: str, where: str) -> Any:
    """Import the callable a command-line flag names as a dotted path `package.module.attribute` (a function or a
    class), with the current directory importable (as for `python my_script.py`), so that a `my_tools.py` next to you
    is found as `my_tools.fn`.

    Args:
        path (`str`): the dotted path, e.g. `"my_tools.multiply"`.
        where (`str`): the flag and position, for messages, e.g. `"--tools[1]"`.

    Raises:
        `ValueError`: `path` is not a dotted path, or its module or attribute does not exist.
        `TypeError`: it names something that is not callable.

    Example:
        ```python
        >>> import_callable("math.floor", "--tools[0]")
        <built-in function floor>
        ```
    """
    if "." not in path or not all(part.isidentifier() for part in path.split(".")):
        raise ValueError(f"{where} is {path!r}: expected a dotted path `module.name` (e.g. `my_tools.multiply` for a "
                         "function `multiply` in my_tools.py in the current directory).")
    value = import_dotted(path, f"{where} is {path!r}")
    if not callable(value):
        raise TypeError(f"{where} is {path!r}: a {type(value).__name__}, not a function or class.")
    return value


# ---- what every training script does: data, model options, the `__main__` entry ----------------------------------


def load_script_dataset(
    script_args: ScriptArguments, dataset_args: DatasetMixtureConfig | None = None
) -> DatasetDict | IterableDatasetDict:
    """Load the data of a training script: the mixture when `datasets` is set, else `dataset_name`.

    Args:
        script_args ([`ScriptArguments`]): `dataset_name`, `dataset_config`, `dataset_streaming`.
        dataset_args ([`DatasetMixtureConfig`], *optional*): a mixture; it wins over `dataset_name` (with a warning).

    Raises:
        `ValueError`: neither a mixture nor `dataset_name` is given.

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


def script_trainer_kwargs(
    command: str,
    script_args: ScriptArguments,
    training_args: Any,
    model_args: Any,
    dataset_args: DatasetMixtureConfig | None = None,
    environments_own_data: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of a trainer built by a `trl <command>` script.

    - `training_args.model_init_kwargs` gets `revision`, `attn_implementation` and `dtype` from `model_args`,
      `trust_remote_code` from `training_args`, and a k-bit `device_map` when quantizing; keys the user set in
      `--model_init_kwargs` win.
    - The train split, and the test split unless `eval_strategy` is `"no"`, of [`load_script_dataset`].
    - The quantization and LoRA configs of `model_args` ([`get_quantization_config`], [`get_peft_config`]).
    - For the online commands ([`OnlineScriptArguments`]), `reward_funcs` from [`resolve_reward_funcs`], resolved
      before anything is loaded so that a bad name fails fast.

    Args:
        command (`str`): the command's name (e.g. `"dpo"`), for messages.
        script_args ([`ScriptArguments`]): which dataset and splits.
        training_args (`TrainingArguments`): the trainer's config; its `model_init_kwargs` are filled in.
        model_args ([`ModelConfig`]): model, LoRA and quantization options.
        dataset_args ([`DatasetMixtureConfig`], *optional*): a dataset mixture; overrides `dataset_name` when set.
        environments_own_data (`bool`, *optional*, defaults to `False`): an `environment_factory` is given, which may
            own the data and the reward: without a dataset, `train_dataset` is None, and without a reward,
            `reward_funcs` is None (the trainer checks what the environments provide).

    Returns:
        `dict[str, Any]`: `model`, `args`, `train_dataset`, `eval_dataset`, `quantization_config`, `peft_config`,
        and `reward_funcs` for the online commands.

    Raises:
        `ValueError`: no `model_name_or_path`; no data; a missing split; no reward or a bad reward name.

    Example:
        ```python
        >>> from trl import DPOTrainer
        >>> from trl.scripts.dpo import make_parser
        >>> trainer = DPOTrainer(**script_trainer_kwargs("dpo", *make_parser().parse_args_and_config()))
        ```
    """
    from trl.trainer.model_config import get_kbit_device_map, get_peft_config, get_quantization_config

    if model_args.model_name_or_path is None:
        raise ValueError(f"`trl {command}` needs a model: pass `--model_name_or_path` (hub id or local folder).")
    extra: dict[str, Any] = {}
    if isinstance(script_args, OnlineScriptArguments):
        extra["reward_funcs"] = resolve_reward_funcs(script_args.reward_funcs, script_args.reward_model_name_or_path)
        if not extra["reward_funcs"] and environments_own_data:
            extra["reward_funcs"] = None  # the environments' get_reward (the trainer checks there is one)
        elif not extra["reward_funcs"]:
            raise ValueError(
                f"`trl {command}` needs a reward: pass `--reward_funcs` (e.g. `--reward_funcs think_format_reward "
                "my_rewards.my_reward`) and/or `--reward_model_name_or_path`."
            )
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        "trust_remote_code": training_args.trust_remote_code,
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        model_init_kwargs["device_map"] = get_kbit_device_map()
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}

    train_dataset = eval_dataset = None
    no_data = script_args.dataset_name is None and not (dataset_args is not None and dataset_args.datasets)
    if not (environments_own_data and no_data):
        dataset = load_script_dataset(script_args, dataset_args)
        train_dataset = _split(dataset, script_args.dataset_train_split, "train")
        if training_args.eval_strategy != "no":
            eval_dataset = _split(dataset, script_args.dataset_test_split, "test")
    return {
        "model": model_args.model_name_or_path,
        "args": training_args,
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "quantization_config": quantization_config,
        "peft_config": get_peft_config(model_args),
        **extra,
    }


def command_parser(
    name: str,
    config_class,
    description: str,
    subparsers=None,
    prog: str | None = None,
    script_args_class: type[ScriptArguments] = ScriptArguments,
) -> TrlParser:
    """The parser of `trl <name>`: `(script_args_class, config_class, ModelConfig, DatasetMixtureConfig)`, standalone
    or as a subcommand of `subparsers` (created with `parser_class=TrlParser`). Its `--help` is the command's help
    (`trl.cli.format_command_help`: an example, the most used options, then every option by dataclass), whether it
    is reached through `trl <name>` or by running the script directly."""
    from trl.cli import format_command_help
    from trl.trainer.model_config import ModelConfig

    dataclass_types = (script_args_class, config_class, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        kwargs = {"prog": prog} if prog else {}
        parser = subparsers.add_parser(
            name, help=description, description=description, dataclass_types=dataclass_types, **kwargs
        )
    else:
        parser = TrlParser(dataclass_types, prog=prog, description=description)
    parser.format_help = lambda: format_command_help(parser, name)
    return parser

"""`TrlParser`: the YAML-aware argument parser of the `trl` commands and scripts, and the check of config-file keys
that belong to `accelerate launch`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


class TrlParser(HfArgumentParser):
    """`transformers.HfArgumentParser` that also reads a YAML config file.

    - `--config file.yaml`: each key is a dataclass field and becomes that argument's default, so the command line
      still overrides it. Values are the field's values as YAML types (lists and dicts included).
    - A top-level `env:` mapping is exported to `os.environ` before parsing.
    - Keys that match no argument raise a `ValueError`, unless they are requested back as remaining strings.
    - Subparsers (created with `add_subparsers(parser_class=TrlParser)`) receive the config defaults too.

    Args:
        dataclass_types (`DataClassType` or `Iterable[DataClassType]`, *optional*):
            Dataclasses whose fields become arguments. A field named `config` is not allowed (it is the flag).
        **kwargs: passed to `argparse.ArgumentParser`.

    Example:
        ```python
        >>> from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser
        >>> parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
        >>> script_args, training_args, model_args = parser.parse_args_and_config(
        ...     ["--config", "sft.yaml", "--learning_rate", "1e-5"]
        ... )
        ```
    """

    def __init__(self, dataclass_types=None, **kwargs):
        if dataclass_types is None:
            dataclass_types = []
        elif dataclasses.is_dataclass(dataclass_types) or not isinstance(dataclass_types, Iterable):
            dataclass_types = [dataclass_types]
        for dataclass_type in dataclass_types:
            if "config" in {f.name for f in dataclasses.fields(dataclass_type)}:
                raise ValueError(
                    f"{dataclass_type.__name__} has a field named 'config', which TrlParser reserves for the "
                    "`--config` YAML file flag; rename the field."
                )
        # No prefix matching: an abbreviation could silently capture an option meant for `accelerate launch`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(dataclass_types, **kwargs)
        self.add_argument(
            "--config", type=str, default=None, help="YAML file whose keys set the defaults of these arguments."
        )
        self._add_negative_flags(dataclass_types)

    def _add_negative_flags(self, dataclass_types) -> None:
        """`--no_<field>` for the `bool | None` fields whose `None` default means "on" (e.g. `gradient_checkpointing`):
        HfArgumentParser adds it only for fields whose default is `True`, as the reference's are."""
        for dataclass_type in dataclass_types:
            for f in dataclasses.fields(dataclass_type):
                if not f.init or f.default is not None or f.metadata.get("const") is not True:
                    continue
                flag = f"--no_{f.name}"
                if flag not in self._option_string_actions and f"--{f.name}" in self._option_string_actions:
                    self.add_argument(flag, action="store_false", dest=f.name, default=argparse.SUPPRESS,
                                      help=f"Turn `{f.name}` off.")

    def parse_args_and_config(
        self,
        args: Iterable[str] | None = None,
        return_remaining_strings: bool = False,
        fail_with_unknown_args: bool = True,
        separate_remaining_strings: bool = False,
    ) -> tuple:
        """Parse the command line, with defaults from the `--config` YAML file when one is given.

        Args:
            args (`Iterable[str]`, *optional*):
                Arguments to parse; defaults to `sys.argv[1:]`.
            return_remaining_strings (`bool`, *optional*, defaults to `False`):
                Return unknown arguments (config keys as `--key value` strings, then command-line leftovers) as a
                last element instead of failing on them.
            fail_with_unknown_args (`bool`, *optional*, defaults to `True`):
                Without `return_remaining_strings`, raise on unknown arguments; when `False` they are dropped with a
                warning.
            separate_remaining_strings (`bool`, *optional*, defaults to `False`):
                With `return_remaining_strings`, return config leftovers and command-line leftovers as two lists.

        Returns:
            `tuple`: one instance per dataclass, a `Namespace` of any extra (non-dataclass) arguments added to the
            parser, then the remaining strings if requested.

        Example:
            ```python
            >>> (training_args,) = TrlParser(SFTConfig).parse_args_and_config(["--config", "sft.yaml"])
            ```
        """
        args = list(sys.argv[1:] if args is None else args)
        config_path = self._config_path(args)
        config_remaining: list[str] = []
        restore: list[tuple[argparse.Action, Any, bool]] = []
        if config_path is not None:
            config = self._read_config(config_path)
            env = config.pop("env", None) or {}
            if not isinstance(env, dict):
                raise ValueError(f"`env` in {config_path} must be a mapping of variable names to values; got {env!r}.")
            os.environ.update({str(key): str(value) for key, value in env.items()})
            unknown = self._set_config_defaults(config, restore)
            if unknown and not return_remaining_strings and fail_with_unknown_args:
                self._restore(restore)
                raise ValueError(
                    f"Unknown key(s) {unknown} in config file {config_path}; every key must name an argument of "
                    "this command (run with --help to list them)."
                )
            for key in unknown:
                config_remaining += _as_cli_strings(key, config[key])
        try:
            outputs = list(
                self.parse_args_into_dataclasses(args, return_remaining_strings=True, look_for_args_file=False)
            )
        finally:
            self._restore(restore)
        cli_remaining = outputs.pop()
        if outputs and isinstance(outputs[-1], argparse.Namespace):
            namespace = outputs[-1]
            vars(namespace).pop("config", None)
            if not vars(namespace):
                outputs.pop()

        if return_remaining_strings:
            if separate_remaining_strings:
                return (*outputs, config_remaining, cli_remaining)
            return (*outputs, config_remaining + cli_remaining)
        if cli_remaining or config_remaining:
            if fail_with_unknown_args:
                raise ValueError(
                    f"Unknown argument(s): {cli_remaining + config_remaining}. Run with --help to list them."
                )
            warnings.warn(f"Ignoring unknown argument(s): {cli_remaining + config_remaining}.", stacklevel=2)
        return tuple(outputs)

    def set_defaults_with_config(self, **kwargs: Any) -> list[str]:
        """Make `kwargs` the defaults of the matching arguments (in subparsers too).

        Returns:
            `list[str]`: the unknown keys as `--key value` strings.

        Example:
            ```python
            >>> remaining = parser.set_defaults_with_config(learning_rate=1e-5, max_length=512)
            ```
        """
        unknown = self._set_config_defaults(kwargs, [])
        return [string for key in unknown for string in _as_cli_strings(key, kwargs[key])]

    @staticmethod
    def _config_path(args: list[str]) -> str | None:
        pre_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre_parser.add_argument("--config", type=str, default=None)
        known, _ = pre_parser.parse_known_args(args)
        return known.config

    @staticmethod
    def _read_config(path: str) -> dict[str, Any]:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"Cannot read config file {path!r}: {error}.") from None
        config = yaml.safe_load(text) or {}
        if not isinstance(config, dict):
            raise ValueError(f"Config file {path!r} must hold a mapping of argument names to values; got {config!r}.")
        return config

    def _set_config_defaults(self, config: dict[str, Any], restore: list) -> list[str]:
        """Set the defaults of matching actions, here and in subparsers; return the keys that matched nothing."""
        matched = set()
        for parser in _parsers(self):
            for action in parser._actions:
                if action.dest in config and action.dest != "config":
                    restore.append((action, action.default, action.required))
                    action.default = _convert(action, action.dest, config[action.dest])
                    action.required = False
                    matched.add(action.dest)
        return [key for key in config if key not in matched]

    @staticmethod
    def _restore(restore: list) -> None:
        # The defaults only hold for one parse, so that a parser can be reused with another config file.
        for action, default, required in reversed(restore):
            action.default, action.required = default, required
        restore.clear()


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in dict.fromkeys(action.choices.values()):
                found += _parsers(subparser)
    return found


def _convert(action: argparse.Action, key: str, value: Any) -> Any:
    # argparse converts string defaults with the argument's type, but YAML already yields ints, floats and bools.
    # Convert those too, so that e.g. `dataset_config: 2024` still reaches a `str` field as a string.
    if action.type is None or value is None or isinstance(value, (str, dict)):
        return value
    try:
        if isinstance(value, list):
            return [item if isinstance(item, (str, dict)) else action.type(str(item)) for item in value]
        return action.type(str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"Config key {key!r}: cannot use {value!r} ({error}).") from None


def _as_cli_strings(key: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return [f"--{key}"] if value else []
    if isinstance(value, list):
        return [f"--{key}", *(str(item) for item in value)]
    if isinstance(value, dict):
        return [f"--{key}", json.dumps(value)]
    return [f"--{key}", str(value)]


def _launch_option_strings() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    options = {"--accelerate_config", "--accelerate-config"}
    for action in launch_command_parser()._actions:
        options.update(option for option in action.option_strings if option not in ("-h", "--help"))
    return options


def check_launch_leftovers(strings: list[str]) -> None:
    """Check that arguments a script did not recognise are `accelerate launch` options (or `--accelerate_config`).

    Raises:
        ValueError: naming the options that neither the script nor `accelerate launch` knows.

    Example:
        ```python
        >>> check_launch_leftovers(["--num_processes", "2"])  # fine
        >>> check_launch_leftovers(["--max_lenght", "8"])
        Traceback (most recent call last):
        ValueError: Unknown argument(s) ['--max_lenght'] ...
        ```
    """
    if not strings:
        return
    known = _launch_option_strings()
    unknown = []
    for position, string in enumerate(strings):
        is_option = string.startswith("-") and not _is_number(string)
        if is_option and string.split("=", 1)[0] not in known:
            unknown.append(string)
        elif not is_option and position == 0:  # a value with no option before it
            unknown.append(string)
    if unknown:
        raise ValueError(
            f"Unknown argument(s) {unknown}: they are neither options of this command nor of `accelerate launch`. "
            "Run with --help to list the options."
        )


def _is_number(string: str) -> bool:
    try:
        float(string)
    except ValueError:
        return False
    return True

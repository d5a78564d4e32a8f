"""`trl env`: print the environment (versions, accelerators, accelerate config) for bug reports."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version(distribution: str) -> str:
    # importlib.metadata only: importing deepspeed, vllm or bitsandbytes can take seconds or initialise CUDA.
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def _trl_version() -> str:
    import trl

    text = trl.__version__
    checkout = Path(trl.__file__).resolve().parent.parent
    if (checkout / ".git").exists():  # only a source checkout, never a site-packages folder inside someone's repo
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "--short=7", "HEAD"],
                cwd=checkout,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
        if sha:
            text += f"+{sha}"
    return text


def _accelerators() -> str:
    import torch

    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count()))
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return ", ".join(torch.xpu.get_device_name(index) for index in range(torch.xpu.device_count()))
    if torch.backends.mps.is_available():
        return "MPS"
    try:
        version("torch-neuronx")
        return "Neuron"
    except PackageNotFoundError:
        pass
    return "cpu"


def _accelerate_config() -> str | dict:
    try:
        from accelerate.commands.config import default_config_file, load_config_from_file
    except ImportError:
        return "not found"
    if not os.path.isfile(default_config_file):
        return "not found"
    try:
        return load_config_from_file(default_config_file).to_dict()
    except Exception as error:  # a broken config file is worth reporting, not crashing on
        return f"unreadable ({error})"


def get_env_info() -> dict[str, str | dict]:
    """Collect the environment report as an ordered mapping of label -> value.

    Example:
        ```python
        >>> from trl.scripts.env import get_env_info
        >>> get_env_info()["Python version"]
        '3.11.7'
        ```
    """
    import torch

    return {
        "Platform": platform.platform(),
        "Python version": platform.python_version(),
        "TRL version": _trl_version(),
        "PyTorch version": torch.__version__,
        "accelerator(s)": _accelerators(),
        "Transformers version": _version("transformers"),
        "Accelerate version": _version("accelerate"),
        "Accelerate config": _accelerate_config(),
        "Datasets version": _version("datasets"),
        "HF Hub version": _version("huggingface_hub"),
        "bitsandbytes version": _version("bitsandbytes"),
        "DeepSpeed version": _version("deepspeed"),
        "Liger-Kernel version": _version("liger-kernel"),
        "PEFT version": _version("peft"),
        "vLLM version": _version("vllm"),
    }


def format_env_info(info: dict[str, str | dict]) -> str:
    """Format [`get_env_info`]'s mapping as the copy-paste bullet list.

    Example:
        ```python
        >>> print(format_env_info({"Python version": "3.11.7"}))
        <BLANKLINE>
        Copy-paste the following information when reporting an issue:
        <BLANKLINE>
        - Python version: 3.11.7
        <BLANKLINE>
        ```
    """
    lines = ["", "Copy-paste the following information when reporting an issue:", ""]
    for label, value in info.items():
        if isinstance(value, dict):
            lines.append(f"- {label}:")
            lines += [f"  - {key}: {item}" for key, item in value.items()]
        else:
            lines.append(f"- {label}: {value}")
    lines.append("")
    return "\n".join(lines)


def print_env() -> None:
    """Print the environment report for bug reports.

    Example:
        ```python
        >>> from trl.scripts.env import print_env
        >>> print_env()
        ```
    """
    print(format_env_info(get_env_info()))


def main(argv: list[str] | None = None) -> None:
    """`trl env`: print the environment report.

    Example:
        ```python
        >>> main([])
        ```
    """
    import argparse

    parser = argparse.ArgumentParser(prog="trl env", description="Print the environment, to paste into bug reports.")
    parser.parse_args(argv)
    print_env()


if __name__ == "__main__":
    main()

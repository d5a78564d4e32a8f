"""The life of a training-script process: quiet logging, the `__main__` entry, saving at the end, and leaving a
multi-process run without freeing its gloo group (see `close_processes`)."""

from __future__ import annotations

import logging
import os
import sys

from ..cli.parser import check_launch_leftovers


def init_zero_verbose() -> None:
    """Show only errors: set the Python, transformers and datasets loggers to ERROR and route warnings to logging.

    Handy in scripts whose output is read by other programs.

    Example:
        ```python
        >>> from trl import init_zero_verbose
        >>> init_zero_verbose()
        ```
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    logging.captureWarnings(True)  # warnings become WARNING log records, which the ERROR level hides
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        import datasets

        datasets.utils.logging.set_verbosity_error()
    except ImportError:
        pass


def finish_training(trainer, training_args, dataset_name: str | None = None) -> None:
    """Save, optionally push, and close a run (see [`close_processes`])."""
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
    close_processes(trainer)


# Process groups kept alive by `close_processes` until the script leaves with `os._exit` (see there).
_RELEASED_GROUPS: list = []


def close_processes(trainer) -> None:
    """Under several processes, leave together and release the process group.

    The group itself is kept alive, and [`run_script`] then ends the process with `os._exit`. Freeing a gloo group
    joins its worker threads while holding the GIL, and a worker may still be finishing a collective whose tensors
    need the GIL to be freed. That deadlocks: seen with py-spy in 2-process `trl sft` runs under CPU load, about 1
    in 10, where DDP's reducer released the group when `main` returned. At interpreter exit the same race aborts
    instead ("terminate called without an active exception").
    """
    import torch

    trainer.accelerator.wait_for_everyone()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        _RELEASED_GROUPS.append(torch.distributed.group.WORLD)
    if hasattr(trainer, "end"):  # transformers>=5.18: closes trackers, destroys the process group
        trainer.end()
    if distributed:
        trainer.accelerator.free_memory()
        trainer.model_wrapped = trainer.model
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _leave_after_distributed_run() -> None:
    """End a process whose group [`close_processes`] released: run the exit handlers (trackers such as wandb finish
    their run there, logging flushes), flush the streams, then `os._exit(0)`, so that no gloo group is freed (see
    there). Does nothing in a single-process run."""
    if not _RELEASED_GROUPS:
        return
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_script(make_parser, main) -> None:
    """The `__main__` entry of a training script (run directly or by `accelerate launch`): parse `sys.argv` with
    `make_parser()` and call `main(*parsed)`. Config-file keys that are `accelerate launch` options (the `trl` CLI
    forwards them to the launcher) are tolerated; unknown command-line arguments are an error.

    Example:
        ```python
        >>> if __name__ == "__main__":
        ...     run_script(make_parser, main)
        ```
    """
    parser = make_parser()
    *parsed, config_leftovers, cli_leftovers = parser.parse_args_and_config(
        return_remaining_strings=True, separate_remaining_strings=True
    )
    if cli_leftovers:
        parser.error(f"unrecognized arguments: {' '.join(cli_leftovers)}")
    check_launch_leftovers(config_leftovers)
    main(*parsed)
    _leave_after_distributed_run()

"""Bad inputs to the `trl` command, one row each, run in-process (`trl.cli.main`) in a fresh current directory with
the network blocked: an unknown command or flag, a missing file, a config value that would train nothing, a dataset
with the wrong columns, a reward function that is not one. `trl --version` is the row that goes ahead."""

import contextlib
import io

import pytest

import trl
from trl.cli import main

from ..cli.conftest import network_attempts  # noqa: F401 (a fixture: every connection outside this machine fails)
from ..cli.test_grpo_cli import workdir  # noqa: F401 (a fixture: a current directory holding my_rewards.py)
from .harness import check, error, ok


class CliExit(Exception):
    """`trl` stopped with a non-zero exit status (an argparse usage error); the message is the status and the last
    line of stderr (argparse's error line, after the usage)."""


class Env:
    """The row's current directory (holding `my_rewards.py`), a tiny model folder `./model` made on demand, and
    `run(*argv)`: `trl` in-process, its stdout returned; an exit with a non-zero status raises `CliExit`."""

    def __init__(self, workdir, network_attempts):  # noqa: F811
        self.workdir = workdir
        self.network_attempts = network_attempts

    def model(self):
        from trl.models.tiny import save_tiny_model

        if not (self.workdir / "model").exists():
            save_tiny_model(self.workdir / "model", num_hidden_layers=1)
        return "./model"

    def run(self, *argv):
        stdout, stderr = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                main(list(argv))
        except SystemExit as exit_info:
            if exit_info.code not in (0, None):
                last = stderr.getvalue().strip().splitlines()[-1:]
                raise CliExit(f"exit status {exit_info.code}: {''.join(last)}") from None
        return stdout.getvalue()


@pytest.fixture
def env(workdir, network_attempts):  # noqa: F811
    return Env(workdir, network_attempts)


COMMON = ["--output_dir", "out", "--max_steps", "1", "--report_to", "none"]


def _run(*argv):
    return lambda env: env.run(*argv)


def _train(command, data=None, rows=None, *extra):
    """`trl <command>` on the tiny model folder and `data` (written from `rows` as JSON lines when given)."""
    def build(env):
        if rows is not None:
            (env.workdir / data).write_text("".join(f"{row}\n" for row in rows))
        return env.run(command, "--model_name_or_path", env.model(), "--dataset_name", data, *COMMON, *extra)

    return build


def _missing_model(env):
    (env.workdir / "train.jsonl").write_text('{"text": "hello"}\n')
    return env.run("sft", "--model_name_or_path", "./modle", "--dataset_name", "train.jsonl", *COMMON)


def _grpo(*reward_funcs):
    """`trl grpo` with these reward functions; what the command would load is never reached."""
    def build(env):
        return env.run("grpo", "--model_name_or_path", str(env.workdir / "never-loaded"), "--dataset_name",
                       "never-loaded.jsonl", "--output_dir", str(env.workdir / "out"), "--report_to", "none",
                       *(["--reward_funcs", *reward_funcs] if reward_funcs else []))

    return build


def _no_network(env, outcome):
    assert env.network_attempts == []


def _names_the_path(name, where):
    def then(env, outcome):
        message = str(outcome.error)
        assert repr(name) in message and str(env.workdir / where) in message, message
        assert f"current directory is {env.workdir}" in message, message
        assert env.network_attempts == []

    return then


def _lists_the_accepted_forms(env, outcome):
    message = str(outcome.error)
    for name in ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward", "module.function",
                 "sequence-classification"):
        assert name in message
    assert "get_soft_overlong_punishment" not in message  # factories are not offered as reward functions


def _prints_the_version(env, outcome):
    assert outcome.value.strip() == f"trl {trl.__version__}"


WRONG_COLUMNS = ['{"foo": "x"}', '{"foo": "y"}']

CASES = [
    # ---- the command line ----
    error("unknown command", _run("bogus"),
          r"exit status 2: trl: error: argument COMMAND: invalid choice: 'bogus' \(choose from 'sft'", CliExit),
    error("unknown flag", _run("sft", "--model_name_or_path", "m", "--max_lenght", "8"), r"exit status 2: trl sft: error: Unknown argument\(s\) \['--max_lenght'\]: they are neither options of this command nor "
          r"of `accelerate launch`", CliExit),
    error("missing --config file", _run("sft", "--config", "nope.yaml"),
          r"Cannot read config file 'nope\.yaml': \[Errno 2\] No such file or directory"),
    error("--learning_rate 0", _run("sft", "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "out",
                                    "--learning_rate", "0"),
          r"`learning_rate` must be positive; got 0\.0: the weights would never move"),
    error("--max_steps 0", _run("sft", "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "out",
                                "--max_steps", "0"),
          r"`max_steps=0` trains for no step\. Set a positive `max_steps`"),
    ok("trl --version", _run("--version"), then=_prints_the_version),
    # ---- files and folders ----
    error("missing dataset file", lambda env: env.run("sft", "--model_name_or_path", env.model(), "--dataset_name",
                                                      "data/train.jsonl", *COMMON),
          r"Dataset 'data/train\.jsonl' does not exist \(looked for ", FileNotFoundError,
          then=_names_the_path("data/train.jsonl", "data/train.jsonl")),
    error("missing model folder", _missing_model,
          r"Model './modle' does not exist \(looked for ", FileNotFoundError, then=_names_the_path("./modle", "modle")),
    error("dataset with the wrong columns (sft)", _train("sft", "train.jsonl", WRONG_COLUMNS),
          r"Could not recognise the dataset format from its columns \['foo'\]", then=_no_network),
    error("dataset with the wrong columns (dpo)", _train("dpo", "train.jsonl", WRONG_COLUMNS),
          r"Could not recognise the dataset format from its columns \['foo'\]", then=_no_network),
    # ---- reward functions of `trl grpo` ----
    error("unknown --reward_funcs name", _grpo("think_format_reward", "acuracy_reward"),
          r"Unknown reward function 'acuracy_reward'", then=_lists_the_accepted_forms),
    error("reward factory trl.rewards.get_repetition_penalty_reward", _grpo("trl.rewards.get_repetition_penalty_reward"),
          r"factory .* Wrap it in a module function"),
    # as in the reference's script, this factory is built with its parameters (1280, 256): the command goes on to
    # the data, which does not exist here
    error("reward factory get_soft_overlong_punishment is built", _grpo("get_soft_overlong_punishment"),
          r"Dataset 'never-loaded.jsonl' does not exist", FileNotFoundError),
    error("reward from a missing module", _grpo("no_such_module.reward"),
          r"no module 'no_such_module'.*current directory"),
    error("reward missing from its module", _grpo("my_rewards.missing"), r"module 'my_rewards' .* has no 'missing'"),
    error("reward that is not a function", _grpo("my_rewards.not_a_function"), r"not a function", TypeError),
    error("no reward", _grpo(), r"needs a reward"),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_cli_input(case, env):
    check(case, env)

"""A local data file or model folder that does not exist is named, with the absolute path looked for and the current
directory, without a Hub lookup; a name that may be a Hub id is still looked up there, and when that fails the
error also says that no local file or folder of that name exists. Also `trl --version` (the console script; in-process
it is a row of tests/bad_inputs/test_cli.py, as are the missing paths of a `trl sft` run)."""

import os
import subprocess
import sys

import pytest

import trl
from trl.models.loading import (
    apply_chat_template_path,
    create_model_from_path,
    create_reward_model_from_path,
    load_processing_class,
)
from trl.scripts.utils import DatasetConfig, DatasetMixtureConfig, get_dataset, load_dataset_from_name


def _assert_names(message: str, name: str, looked_for, cwd) -> None:
    assert repr(name) in message, message
    assert str(looked_for) in message, message
    assert f"current directory is {cwd}" in message, message


# A string that can only be a path: a missing one is an immediate FileNotFoundError, with no network call.
PATH_LIKE_DATA = ["./missing.jsonl", "missing.jsonl", "data/sub/train.parquet", "../missing-data", "missing.csv"]


@pytest.mark.parametrize("name", PATH_LIKE_DATA)
def test_missing_local_dataset_is_named(name, tmp_path, monkeypatch, network_attempts):
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        load_dataset_from_name(name)
    _assert_names(str(error.value), name, os.path.normpath(workdir / name), workdir)
    assert network_attempts == []


def test_missing_absolute_and_home_dataset_paths(tmp_path, monkeypatch, network_attempts):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, looked_for in [(str(tmp_path / "nope"), tmp_path / "nope"), ("~/nope.jsonl", tmp_path / "nope.jsonl")]:
        with pytest.raises(FileNotFoundError, match="does not exist") as error:
            load_dataset_from_name(name)
        assert str(looked_for) in str(error.value)
    assert network_attempts == []


def test_missing_data_files_of_a_builder_are_named(tmp_path, monkeypatch, network_attempts):
    monkeypatch.chdir(tmp_path)
    mixture = DatasetMixtureConfig(datasets=[DatasetConfig(path="json", data_files=["missing.jsonl"])])
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        get_dataset(mixture)
    _assert_names(str(error.value), "missing.jsonl", tmp_path / "missing.jsonl", tmp_path)
    assert network_attempts == []


@pytest.mark.parametrize("name", ["org/missing-dataset", "missing_dataset"])
def test_hub_like_dataset_name_says_no_local_folder(name, tmp_path, monkeypatch, offline_hub):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConnectionError, match="Couldn't reach") as error:  # the Hub's own error is kept
        load_dataset_from_name(name)
    message = str(error.value)
    assert "no local file or folder" in message
    _assert_names(message, name, tmp_path / name, tmp_path)


PATH_LIKE_MODELS = ["./missing-model", "models/qwen/step-100", "/nonexistent/model", "..\\model"]


@pytest.mark.parametrize("name", PATH_LIKE_MODELS)
@pytest.mark.parametrize("load", [create_model_from_path, create_reward_model_from_path, load_processing_class])
def test_missing_local_model_is_named(load, name, tmp_path, monkeypatch, network_attempts):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        load(name)
    _assert_names(str(error.value), name, os.path.normpath(tmp_path / name), tmp_path)
    assert network_attempts == []


def test_missing_chat_template_tokenizer_is_named(tmp_path, monkeypatch, network_attempts):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        apply_chat_template_path(None, None, "./templates/chatml")
    _assert_names(str(error.value), "./templates/chatml", tmp_path / "templates" / "chatml", tmp_path)
    assert network_attempts == []


@pytest.mark.parametrize("load", [create_model_from_path, load_processing_class])
def test_hub_like_model_name_says_no_local_folder(load, tmp_path, monkeypatch, offline_hub):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError) as error:
        load("org/missing-model")
    message = str(error.value)
    assert "no local folder" in message
    _assert_names(message, "org/missing-model", tmp_path / "org" / "missing-model", tmp_path)


def test_trl_version():
    command = [sys.executable, "-c", "from trl.cli import main; main()", "--version"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"trl {trl.__version__}"

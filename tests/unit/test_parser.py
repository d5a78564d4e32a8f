"""TrlParser (YAML config, env export, unknown keys), ModelConfig helpers and dataset mixtures."""

import json
from dataclasses import dataclass, field

import pytest
import yaml

from trl.scripts.utils import (
    DatasetConfig,
    DatasetMixtureConfig,
    ScriptArguments,
    TrlParser,
    check_launch_leftovers,
    get_dataset,
    load_dataset_from_name,
)
from trl.trainer.model_config import ModelConfig, get_kbit_device_map, get_peft_config, get_quantization_config


@dataclass
class _TrainArgs:
    learning_rate: float = field(default=1e-3, metadata={"help": "lr"})
    max_steps: int = field(default=10, metadata={"help": "steps"})
    run_name: str | None = field(default=None, metadata={"help": "name"})
    packing: bool = field(default=False, metadata={"help": "pack"})
    tags: list[str] | None = field(default=None, metadata={"help": "tags"})


@pytest.fixture
def write_yaml(tmp_path):
    def write(content: dict, name: str = "config.yaml") -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(content, sort_keys=False))
        return str(path)

    return write


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


# ----------------------------------------------------------------------------------------------------- TrlParser


def test_yaml_keys_become_defaults_and_cli_overrides(write_yaml):
    config = write_yaml({"learning_rate": 5e-5, "max_steps": 3, "run_name": "from-yaml", "tags": ["a", "b"]})
    parser = TrlParser((ScriptArguments, _TrainArgs))
    script_args, train_args = parser.parse_args_and_config(["--config", config, "--max_steps", "7"])
    assert train_args.learning_rate == 5e-5
    assert train_args.max_steps == 7  # the command line wins
    assert train_args.run_name == "from-yaml"
    assert train_args.tags == ["a", "b"]
    assert script_args.dataset_train_split == "train"


def test_yaml_values_are_converted_to_the_field_type(write_yaml):
    # YAML 1.1 reads "1e-5" as a string and 2024 as an int; both must reach the field with the field's type.
    config = write_yaml({"learning_rate": "1e-5", "dataset_config": 2024, "packing": True})
    script_args, train_args = TrlParser((ScriptArguments, _TrainArgs)).parse_args_and_config(["--config=" + config])
    assert train_args.learning_rate == 1e-5
    assert script_args.dataset_config == "2024"
    assert train_args.packing is True


def test_config_defaults_do_not_leak_into_the_next_parse(write_yaml):
    parser = TrlParser(_TrainArgs)
    (first,) = parser.parse_args_and_config(["--config", write_yaml({"max_steps": 3})])
    (second,) = parser.parse_args_and_config([])
    assert (first.max_steps, second.max_steps) == (3, 10)


def test_env_mapping_is_exported(write_yaml, monkeypatch):
    monkeypatch.delenv("TRL_TEST_PARSER_VAR", raising=False)
    config = write_yaml({"env": {"TRL_TEST_PARSER_VAR": 42}, "max_steps": 1})
    (train_args,) = TrlParser(_TrainArgs).parse_args_and_config(["--config", config])
    import os

    assert os.environ["TRL_TEST_PARSER_VAR"] == "42"
    assert train_args.max_steps == 1


def test_unknown_yaml_key_raises_naming_it(write_yaml):
    config = write_yaml({"max_steps": 1, "learnig_rate": 1e-4})
    with pytest.raises(ValueError, match="learnig_rate"):
        TrlParser(_TrainArgs).parse_args_and_config(["--config", config])


def test_unknown_keys_returned_as_remaining_strings(write_yaml):
    config = write_yaml({"num_processes": 2, "multi_gpu": True})
    parser = TrlParser(_TrainArgs)
    train_args, remaining = parser.parse_args_and_config(
        ["--config", config, "--max_steps", "4", "--main_process_port", "1234"], return_remaining_strings=True
    )
    assert train_args.max_steps == 4
    assert remaining == ["--num_processes", "2", "--multi_gpu", "--main_process_port", "1234"]

    _, from_config, from_cli = parser.parse_args_and_config(
        ["--config", config, "--main_process_port", "1234"], return_remaining_strings=True,
        separate_remaining_strings=True,
    )
    assert from_config == ["--num_processes", "2", "--multi_gpu"]
    assert from_cli == ["--main_process_port", "1234"]


def test_unknown_cli_arg_raises_unless_allowed():
    parser = TrlParser(_TrainArgs)
    with pytest.raises(ValueError, match="--bogus"):
        parser.parse_args_and_config(["--bogus", "1"])
    with pytest.warns(UserWarning, match="--bogus"):
        (train_args,) = parser.parse_args_and_config(["--bogus", "1"], fail_with_unknown_args=False)
    assert train_args.max_steps == 10


def test_abbreviations_are_not_accepted():
    # An abbreviation must not capture an `accelerate launch` option such as --max_restarts.
    with pytest.raises(ValueError, match="--max_st"):
        TrlParser(_TrainArgs).parse_args_and_config(["--max_st", "3"])


def test_field_named_config_is_forbidden():
    @dataclass
    class WithConfig:
        config: str = "x"

    with pytest.raises(ValueError, match="'config'"):
        TrlParser(WithConfig)


def test_subparsers_get_config_defaults(write_yaml):
    import argparse

    root = TrlParser(prog="tool")
    subparsers = root.add_subparsers(dest="command", parser_class=TrlParser)
    subparsers.add_parser("train", dataclass_types=_TrainArgs)
    config = write_yaml({"max_steps": 5})
    (namespace,) = root.parse_args_and_config(["train", "--config", config])
    assert isinstance(namespace, argparse.Namespace)
    assert namespace.command == "train" and namespace.max_steps == 5


def test_sft_parser_reads_yaml(write_yaml):
    from trl.scripts.sft import make_parser

    config = write_yaml(
        {
            "model_name_or_path": "some/model",
            "max_length": 64,
            "packing": True,
            "lora_target_modules": "all-linear",
            "datasets": [{"path": "json", "data_files": "a.jsonl", "columns": ["messages"]}],
            "report_to": "none",
        }
    )
    script_args, training_args, model_args, dataset_args = make_parser().parse_args_and_config(
        ["--config", config, "--max_steps", "2", "--use_peft", "--lora_r", "4"]
    )
    assert training_args.max_length == 64 and training_args.packing and training_args.max_steps == 2
    assert model_args.model_name_or_path == "some/model" and model_args.use_peft and model_args.lora_r == 4
    assert model_args.lora_target_modules == "all-linear"
    assert dataset_args.datasets == [DatasetConfig(path="json", data_files="a.jsonl", columns=["messages"])]
    assert script_args.dataset_name is None


def test_check_launch_leftovers():
    check_launch_leftovers([])
    check_launch_leftovers(["--num_processes", "2", "--multi_gpu", "--main_process_port=29501"])
    check_launch_leftovers(["--accelerate_config", "zero2"])
    with pytest.raises(ValueError, match="--max_lenght"):
        check_launch_leftovers(["--max_lenght", "8"])
    with pytest.raises(ValueError, match="stray"):
        check_launch_leftovers(["stray"])


# -------------------------------------------------------------------------------------------------- ModelConfig


def test_model_config_defaults():
    args = ModelConfig()
    assert (args.model_revision, args.dtype, args.lora_r, args.lora_alpha, args.lora_dropout) == (
        "main", "float32", 16, 32, 0.05,
    )
    assert args.lora_task_type == "CAUSAL_LM" and args.bnb_4bit_quant_type == "nf4"
    assert not (args.use_peft or args.load_in_8bit or args.load_in_4bit or args.use_rslora or args.use_dora)


def test_model_config_8bit_and_4bit_are_exclusive():
    with pytest.raises(ValueError, match="mutually exclusive"):
        ModelConfig(load_in_8bit=True, load_in_4bit=True)


def test_model_config_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig(dtype="fp8")


def test_lora_target_modules_accepts_string_or_list():
    assert ModelConfig(lora_target_modules="all-linear").lora_target_modules == "all-linear"
    assert ModelConfig(lora_target_modules=["all-linear"]).lora_target_modules == "all-linear"
    assert ModelConfig(lora_target_modules=["q_proj", "v_proj"]).lora_target_modules == ["q_proj", "v_proj"]


def test_get_peft_config():
    pytest.importorskip("peft")
    from peft import LoraConfig

    assert get_peft_config(ModelConfig()) is None
    config = get_peft_config(
        ModelConfig(use_peft=True, lora_r=8, lora_alpha=16, lora_target_modules=["q_proj", "v_proj"], use_rslora=True)
    )
    assert isinstance(config, LoraConfig)
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (8, 16, 0.05, "none")
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert config.use_rslora and config.task_type == "CAUSAL_LM"
    assert get_peft_config(ModelConfig(use_peft=True, lora_target_modules="all-linear")).target_modules == "all-linear"


def test_get_quantization_config():
    import torch

    assert get_quantization_config(ModelConfig()) is None
    config = get_quantization_config(ModelConfig(load_in_4bit=True, dtype="bfloat16", use_bnb_nested_quant=True))
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    config = get_quantization_config(ModelConfig(load_in_8bit=True))
    assert config.load_in_8bit and not config.load_in_4bit


def test_get_kbit_device_map_on_cpu():
    import torch

    if not torch.cuda.is_available():
        assert get_kbit_device_map() is None


# ---------------------------------------------------------------------------------------------- dataset loading


def test_load_dataset_from_local_file_and_saved_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    path = _jsonl(tmp_path / "rows.jsonl", [{"text": str(i)} for i in range(5)])
    dataset = load_dataset_from_name(path)
    assert list(dataset) == ["train"] and dataset["train"]["text"] == ["0", "1", "2", "3", "4"]
    assert len(load_dataset_from_name(path, split="train")) == 5

    DatasetDict({"train": Dataset.from_dict({"a": [1, 2]}), "test": Dataset.from_dict({"a": [3]})}).save_to_disk(
        tmp_path / "saved"
    )
    saved = load_dataset_from_name(str(tmp_path / "saved"))
    assert sorted(saved) == ["test", "train"] and saved["test"]["a"] == [3]
    with pytest.raises(ValueError, match="validation"):
        load_dataset_from_name(str(tmp_path / "saved"), split="validation")


@pytest.fixture
def two_files(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}", "extra": i} for i in range(100)])
    b = _jsonl(tmp_path / "b.jsonl", [{"text": f"b{i}", "other": "x"} for i in range(50)])
    return a, b


def test_get_dataset_concatenates_and_selects_columns(two_files):
    a, b = two_files
    mixture = DatasetMixtureConfig(
        datasets=[
            {"path": "json", "data_files": a, "columns": ["text"]},
            {"path": b, "columns": ["text"]},  # a file path works as `path` too
        ]
    )
    dataset = get_dataset(mixture)
    assert list(dataset) == ["train"]
    assert dataset["train"].column_names == ["text"]
    assert len(dataset["train"]) == 150
    assert dataset["train"][0]["text"] == "a0" and dataset["train"][100]["text"] == "b0"


def test_get_dataset_fractions_are_normalised_and_capped(two_files):
    a, b = two_files
    # Weights 3:1 -> 0.75/0.25. Capacity: a allows N = 100/0.75 = 133.3, b allows 50/0.25 = 200, so N = 133.3:
    # a gives round(0.75 * 133.3) = 100 rows, b gives round(0.25 * 133.3) = round(33.3) = 33 rows.
    mixture = DatasetMixtureConfig(
        datasets=[
            DatasetConfig(path=a, columns=["text"], fraction=3.0),
            DatasetConfig(path=b, columns=["text"], fraction=1.0),
        ]
    )
    train = get_dataset(mixture)["train"]
    assert len(train) == 133
    texts = train["text"]
    assert texts[:100] == [f"a{i}" for i in range(100)] and texts[100:] == [f"b{i}" for i in range(33)]

    # Equal weights: b (50 rows) caps the mixture at N = 100, so 50 rows each.
    mixture = DatasetMixtureConfig(
        datasets=[{"path": a, "columns": ["text"], "fraction": 0.5}, {"path": b, "columns": ["text"], "fraction": 0.5}]
    )
    assert len(get_dataset(mixture)["train"]) == 100


def test_get_dataset_test_split(two_files):
    a, _ = two_files
    dataset = get_dataset(DatasetMixtureConfig(datasets=[{"path": a}], test_split_size=0.1))
    assert sorted(dataset) == ["test", "train"]
    assert (len(dataset["train"]), len(dataset["test"])) == (90, 10)
    dataset = get_dataset(DatasetMixtureConfig(datasets=[{"path": a}], test_split_size=25))
    assert len(dataset["test"]) == 25


def test_mixture_validation(two_files):
    a, b = two_files
    with pytest.raises(ValueError, match="every dataset"):
        DatasetMixtureConfig(datasets=[{"path": a, "fraction": 0.5}, {"path": b}])
    with pytest.raises(ValueError, match="streaming"):
        DatasetMixtureConfig(datasets=[{"path": a, "fraction": 1.0}], streaming=True)
    with pytest.raises(ValueError, match="'path'"):
        DatasetMixtureConfig(datasets=[{"data_files": a}])
    with pytest.raises(ValueError, match="missing_column"):
        get_dataset(DatasetMixtureConfig(datasets=[{"path": a, "columns": ["missing_column"]}]))
    with pytest.raises(ValueError, match="empty"):
        get_dataset(DatasetMixtureConfig())


def test_generation_compile_parses_from_the_command_line():
    from trl import GRPOConfig

    parser = TrlParser((GRPOConfig,))
    for flag, expected in (([], "auto"), (["--generation_compile", "false"], False),
                           (["--generation_compile", "True"], True), (["--generation_compile", "auto"], "auto")):
        config = parser.parse_args_into_dataclasses(["--output_dir", "out", *flag])[0]
        assert config.generation_compile == expected, flag
    with pytest.raises(ValueError, match="generation_compile"):
        parser.parse_args_into_dataclasses(["--output_dir", "out", "--generation_compile", "sometimes"])

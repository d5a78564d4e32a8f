"""The `trl` command: help, `trl env`, launcher dispatch, and short end-to-end `trl sft` runs. Bad command lines are
rows of tests/bad_inputs/test_cli.py."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import trl
from trl.cli import TRAINING_COMMANDS, main, resolve_accelerate_config


SFT_TRAINER = Path(trl.__file__).parent / "trainer" / "sft_trainer.py"
needs_sft_trainer = pytest.mark.skipif(not SFT_TRAINER.exists(), reason="needs trl/trainer/sft_trainer.py")
SHORT_RUN = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none", "--logging_steps", "1",
             "--save_strategy", "no", "--max_length", "64"]


def _trl(*args: str) -> subprocess.CompletedProcess:
    # The `trl` console script of this interpreter's environment; its entry point directly when it is not installed.
    script = Path(sys.executable).parent / "trl"
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from trl.cli import main; main()"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)


def test_trl_help_lists_commands():
    result = _trl("--help")
    assert result.returncode == 0, result.stderr
    for command in ("sft", "env"):
        assert command in result.stdout


def test_trl_sft_help_shows_every_option_group():
    result = _trl("sft", "--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--max_length", "--packing", "--lora_r", "--dataset_name", "--datasets", "--test_split_size",
                 "--model_name_or_path", "--load_in_4bit", "--learning_rate", "--config", "--accelerate_config"):
        assert flag in result.stdout, flag


@pytest.mark.parametrize("command", sorted(TRAINING_COMMANDS))
def test_script_run_directly_shows_the_command_help(command):
    # `python trl/scripts/<command>.py --help` is `trl <command> --help` but for the program name and the launcher
    # group (only the `trl` command launches)
    from trl.cli import format_command_help

    script = Path(trl.__file__).parent / "scripts" / f"{command}.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Example: trl {command} ")
    assert "most used options:" in result.stdout and "launcher:" not in result.stdout
    parser = __import__(TRAINING_COMMANDS[command][0], fromlist=["make_parser"]).make_parser(prog=f"{command}.py")
    assert result.stdout.strip() == format_command_help(parser, command).strip()


def test_trl_env_reports_versions():
    from importlib.metadata import version

    result = _trl("env")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Copy-paste the following information when reporting an issue:" in out
    assert f"- TRL version: {trl.__version__}" in out
    assert f"- Transformers version: {version('transformers')}" in out
    assert f"- Accelerate version: {version('accelerate')}" in out
    assert f"- Datasets version: {version('datasets')}" in out
    assert "- Accelerate config:" in out and "- PyTorch version:" in out and "- accelerator(s):" in out
    for name in ("bitsandbytes", "DeepSpeed", "Liger-Kernel", "PEFT", "vLLM"):
        assert f"- {name} version: " in out


def test_shipped_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    for name in ("single_gpu", "multi_gpu", "zero1", "zero2", "zero3", "fsdp1", "fsdp2"):
        config = load_config_from_file(resolve_accelerate_config(name))
        assert config.mixed_precision == "bf16"
        assert config.num_processes == (1 if name == "single_gpu" else 8)
    with pytest.raises(ValueError, match="zero4"):
        resolve_accelerate_config("zero4")


def test_launcher_args_relaunch_through_accelerate(monkeypatch, tmp_path):
    import accelerate.commands.launch as launch

    calls = []
    monkeypatch.setattr(launch, "launch_command", calls.append)
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": "m", "dataset_name": "d", "num_machines": 1}))
    main(["sft", "--config", str(config), "--max_steps", "2", "--num_processes", "2", "--accelerate_config", "zero2"])

    (args,) = calls
    assert args.config_file == resolve_accelerate_config("zero2")
    assert args.num_processes == 2 and args.num_machines == 1
    assert Path(args.training_script).name == "sft.py"
    # The script gets its own arguments back, without the launcher's.
    assert args.training_script_args == ["--config", str(config), "--max_steps", "2"]


def test_no_launcher_args_run_in_process(monkeypatch):
    import importlib

    module = importlib.import_module(TRAINING_COMMANDS["sft"][0])
    received = []
    monkeypatch.setattr(module, "main", lambda *args: received.append(args))
    main(["sft", "--model_name_or_path", "m", "--dataset_name", "d", "--lora_r", "4"])
    ((script_args, training_args, model_args, dataset_args),) = received
    assert script_args.dataset_name == "d" and model_args.lora_r == 4 and dataset_args.datasets == []


# --------------------------------------------------------------------------------------- end-to-end `trl sft` runs


@pytest.fixture
def tiny_model_and_data(tmp_path):
    from trl.data.tiny import tiny_task_dataset
    from trl.models.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "model", num_hidden_layers=2)
    data = tmp_path / "train.jsonl"
    tiny_task_dataset("conversational", num_rows=16).to_json(str(data))
    return str(model), str(data)


@needs_sft_trainer
def test_trl_sft_from_flags(tiny_model_and_data, tmp_path):
    model, data = tiny_model_and_data
    output_dir = tmp_path / "out"
    main(["sft", "--model_name_or_path", model, "--dataset_name", data, "--output_dir", str(output_dir), *SHORT_RUN])
    assert (output_dir / "config.json").exists()
    assert any(output_dir.glob("*.safetensors"))


@needs_sft_trainer
def test_trl_sft_from_yaml(tiny_model_and_data, tmp_path):
    model, data = tiny_model_and_data
    output_dir = tmp_path / "out"
    config = tmp_path / "sft.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": model,
                "datasets": [{"path": data, "columns": ["messages"]}],
                "output_dir": str(output_dir),
                "max_steps": 2,
                "per_device_train_batch_size": 2,
                "report_to": "none",
                "logging_steps": 1,
                "save_strategy": "no",
                "max_length": 64,
            }
        )
    )
    main(["sft", "--config", str(config)])
    assert (output_dir / "config.json").exists()


@pytest.mark.slow
@needs_sft_trainer
def test_trl_sft_relaunches_through_accelerate(tiny_model_and_data, tmp_path):
    # Launcher keys in the YAML (`num_processes`, `cpu`) go to `accelerate launch`; the re-launched script ignores them.
    model, data = tiny_model_and_data
    config = tmp_path / "sft.yaml"
    config.write_text(
        yaml.safe_dump({"model_name_or_path": model, "dataset_name": data, "num_processes": 1, "cpu": True})
    )
    result = _trl("sft", "--config", str(config), "--output_dir", str(tmp_path / "out"), *SHORT_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "config.json").exists()


@needs_sft_trainer
@pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
def test_trl_sft_two_processes_on_cpu(tiny_model_and_data, tmp_path, streaming):
    """`--num_processes 2` really starts 2 ranks on a CPU-only machine (gloo) and exits cleanly (a rank used to hang
    now and then at exit, freeing the gloo group: see `trl.scripts.utils.close_processes`)."""
    model, data = tiny_model_and_data
    out = tmp_path / "out"
    result = _trl("sft", "--model_name_or_path", model, "--dataset_name", data, "--output_dir", str(out),
                  "--max_steps", "1", "--per_device_train_batch_size", "4", "--report_to", "none",
                  "--logging_steps", "1", "--save_strategy", "no", "--num_processes", "2",
                  *(["--dataset_streaming", "true"] if streaming else []))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "config.json").exists()
    if streaming:
        return
    # 16 rows, 4 per rank and step: one step is 8 rows, i.e. half an epoch only if 2 ranks ran
    epochs = [line for line in result.stdout.splitlines() + result.stderr.splitlines() if "'epoch'" in line]
    assert any("'epoch': '0.5'" in line for line in epochs), epochs[-3:]

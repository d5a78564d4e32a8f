"""The run report (`trl.report`, `ReportCallback`): files after 2-step tiny SFT and GRPO runs, the path without
matplotlib, the end-of-run summary, and the first lines of `trl <command> --help`."""

import json
import sys

import pytest
from transformers import TrainerState

from trl import GRPOTrainer, SFTConfig, SFTTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import tiny_model, tiny_tokenizer
from trl.report import MISSING_MATPLOTLIB, plotted_metrics, run_summary, write_report
from trl.trainer.callbacks import ReportCallback

from ..trainers.sft_one_step import SMALL
from ..trainers.test_grpo_trainer import _config as grpo_config
from ..trainers.test_grpo_trainer import vowels


def _sft(tmp_path, callback, **overrides):
    values = {"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 4,
              "learning_rate": 5e-3, "logging_steps": 1, "report_to": "none", "save_strategy": "no", "max_length": 64,
              "seed": 0}
    values.update(overrides)
    trainer = SFTTrainer(model=tiny_model(seed=0, **SMALL), args=SFTConfig(**values), callbacks=[callback],
                         train_dataset=tiny_task_dataset("conversational", "train", num_rows=8),
                         processing_class=tiny_tokenizer())
    assert ReportCallback.attach(trainer) is callback  # the one given is bound, not a second one added
    return trainer


def test_sft_run_writes_the_report_and_prints_the_summary(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    trainer = _sft(tmp_path, ReportCallback())
    trainer.train()
    report = tmp_path / "out" / "report"
    assert json.loads((report / "log_history.json").read_text()) == trainer.state.log_history
    pngs = {path.name for path in report.glob("*.png")}
    assert {"loss.png", "learning_rate.png", "grad_norm.png", "mean_token_accuracy.png"} <= pngs, pngs
    assert all((report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    assert not (report / "completions.html").exists() and not (report / "plots_missing.txt").exists()
    out = capsys.readouterr().out
    assert "Training finished: 2 steps in " in out and " tokens/s" in out
    assert f"report: {report}" in out and "loss " in out


def test_report_is_written_at_each_save(tmp_path):
    callback = ReportCallback()
    trainer = _sft(tmp_path, callback, save_strategy="steps", save_steps=1, max_steps=1)
    written = []
    callback._write = lambda args, state: written.append(state.global_step)  # on_save, then on_train_end
    trainer.train()
    assert written == [1, 1]


def test_grpo_run_writes_reward_plots_and_a_completions_page(tmp_path):
    pytest.importorskip("matplotlib")
    callback = ReportCallback()
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=vowels, callbacks=[callback],
                          args=grpo_config(tmp_path, log_completions=True, num_completions_to_print=1),
                          train_dataset=tiny_task_dataset("prompt_only", "train", num_rows=16),
                          processing_class=tiny_tokenizer())
    ReportCallback.attach(trainer)
    trainer.train()
    report = tmp_path / "out" / "report"
    pngs = {path.name for path in report.glob("*.png")}
    assert {"loss.png", "reward.png", "reward_std.png", "rewards_vowels_mean.png"} <= pngs, pngs
    page = (report / "completions.html").read_text()
    assert page.count("<tr>") == 1 + 2 * 8  # header, then 8 completions of each of the 2 steps
    assert "<th>vowels</th>" in page and "<th>advantage</th>" in page


def test_without_matplotlib_the_json_and_a_note_are_written(tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib.figure` raises ImportError
    trainer = _sft(tmp_path, ReportCallback())
    trainer.train()
    report = tmp_path / "out" / "report"
    assert (report / "log_history.json").exists() and not list(report.glob("*.png"))
    assert (report / "plots_missing.txt").read_text().strip() == MISSING_MATPLOTLIB
    assert "pip install trl[report]" in MISSING_MATPLOTLIB
    assert MISSING_MATPLOTLIB in capsys.readouterr().out


def test_only_the_main_process_writes(tmp_path):
    state = TrainerState()
    state.is_world_process_zero = False
    args = SFTConfig(output_dir=str(tmp_path), report_to="none")
    ReportCallback().on_train_end(args, state, None)
    assert not (tmp_path / "report").exists()


def test_key_metrics_of_each_trainer_and_the_summary():
    history = [
        {"step": 1, "loss": 0.7, "learning_rate": 1e-3, "grad_norm": 2.0, "rewards/margins": 0.1, "logps": -3.0,
         "num_tokens": 1000.0},
        {"step": 2, "loss": 0.5, "learning_rate": 5e-4, "grad_norm": 1.0, "rewards/margins": 0.4, "num_tokens": 3000.0},
        {"step": 2, "eval_loss": 0.6, "eval_accuracy": 0.75},
        {"step": 2, "train_runtime": 10.0, "train_loss": 0.6},
    ]
    assert plotted_metrics(history) == ["loss", "learning_rate", "grad_norm", "rewards/margins", "accuracy"]
    assert run_summary(history, 2, "out/report").splitlines() == [
        "Training finished: 2 steps in 0m10s, 300 tokens/s",
        "  loss 0.5, rewards/margins 0.4",
        "  eval loss 0.6, accuracy 0.75",
        "  report: out/report",
    ]


def test_write_report_escapes_completions(tmp_path):
    rows = [{"step": 1, "prompt": "<b>2+2</b>", "completion": "4 & done", "reward": 1.0}]
    written = write_report(str(tmp_path), [], rows)
    with open(written["completions"]) as file:
        page = file.read()
    assert "&lt;b&gt;2+2&lt;/b&gt;" in page and "4 &amp; done" in page and "<td class=\"n\">1</td>" in page


@pytest.mark.parametrize("command", ["sft", "dpo", "kto", "grpo", "rloo", "reward"])
def test_help_starts_with_an_example_and_the_most_used_options(command, capsys):
    from trl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"Example: trl {command} --model_name_or_path ")
    assert lines[2] == f"usage: trl {command} [--config FILE] [OPTION ...]"
    first = lines[lines.index("most used options:"):]
    first = first[: 3 + first[3:].index("")]  # the section ends at its first blank line after the description
    flags = [line.split()[0] for line in first if line.startswith("  --")]
    assert flags[:4] == ["--model_name_or_path", "--dataset_name", "--output_dir", "--num_train_epochs"]
    assert {"--max_steps", "--learning_rate", "--per_device_train_batch_size", "--use_peft", "--lora_r"} <= set(flags)
    text = "\n".join(lines)
    groups = ["ModelConfig options:", "DatasetMixtureConfig options:", "launcher:"]
    assert all(group in text for group in groups) and text.index("most used options:") < text.index(groups[0])
    assert text.count("--learning_rate LEARNING_RATE") == 2  # listed first, and again in the config's group

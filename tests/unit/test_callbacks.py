"""Callbacks: BEMA against hand-computed updates and a saved, loadable average; completions logged to a CSV; the rich
panel's grouped metrics; Weave logging through its EvaluationLogger (a stand-in module: weave needs a W&B server);
clear errors without an eval dataset, without rich and without weave."""

import io
import sys
import types

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, TrainerControl, TrainerState

from trl import (
    BEMACallback,
    LogCompletionsCallback,
    RichProgressCallback,
    SFTConfig,
    SFTTrainer,
    WeaveCallback,
    import_utils,
)
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import tiny_model, tiny_tokenizer
from trl.trainer.callbacks import _group_metrics

from ..trainers.sft_one_step import SMALL


def _sft(tmp_path, callbacks=(), eval_form="prompt_completion", **overrides):
    values = {"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 4,
              "per_device_eval_batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "report_to": "none",
              "save_strategy": "no", "max_length": 64, "seed": 0, "disable_tqdm": True}
    values.update(overrides)
    eval_dataset = tiny_task_dataset(eval_form, "test", num_rows=3) if eval_form else None
    return SFTTrainer(model=tiny_model(seed=0, **SMALL), args=SFTConfig(**values), callbacks=list(callbacks),
                      train_dataset=tiny_task_dataset("prompt_completion", "train", num_rows=8),
                      eval_dataset=eval_dataset, processing_class=tiny_tokenizer())


# ---------------------------------------------------------------- BEMA


class _TwoParams(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.0))
        self.b = torch.nn.Parameter(torch.tensor(0.0))

    def set(self, a, b):
        with torch.no_grad():
            self.a.fill_(a)
            self.b.fill_(b)


def _drive(callback, model, weights_by_step):
    """Feed the callback the weights `weights_by_step[step]` at each step (step 0 = train begin); return the BEMA
    weights after each step as (a, b), or None before averaging starts."""
    state, args, control = TrainerState(), types.SimpleNamespace(output_dir=None), TrainerControl()
    seen = {}
    for step, (a, b) in sorted(weights_by_step.items()):
        model.set(a, b)
        state.global_step = step
        if step == 0:
            callback.on_train_begin(args, state, control, model=model)
        else:
            callback.on_step_end(args, state, control, model=model)
        weights = callback.bema_state_dict()
        seen[step] = None if weights is None else (weights["a"].item(), weights["b"].item())
    return seen


def test_bema_matches_hand_computed_updates():
    # lag=1, multiplier=1, ema_power=bias_power=1: beta_t = alpha_t = 1 / (1 + t); theta_0 = (1, 2)
    # t=1: theta=(3,2): EMA = (1,2)/2 + (3,2)/2 = (2,2);        BEMA = ((3,2)-(1,2))/2 + (2,2) = (3, 2)
    # t=2: theta=(4,5): EMA = 2/3 (2,2) + 1/3 (4,5) = (8/3, 3); BEMA = ((4,5)-(1,2))/3 + EMA = (11/3, 4)
    # t=3: theta=(1,-1): EMA = 3/4 (8/3,3) + 1/4 (1,-1) = (9/4, 2); BEMA = ((1,-1)-(1,2))/4 + EMA = (9/4, 5/4)
    callback = BEMACallback(update_freq=1, ema_power=1.0, bias_power=1.0, lag=1, multiplier=1.0)
    seen = _drive(callback, _TwoParams(), {0: (1, 2), 1: (3, 2), 2: (4, 5), 3: (1, -1)})
    expected = {0: (1, 2), 1: (3, 2), 2: (11 / 3, 4), 3: (9 / 4, 5 / 4)}
    for step, (a, b) in expected.items():
        assert seen[step] == pytest.approx((a, b), rel=1e-6, abs=1e-6), step


def test_bema_burn_in_frequency_and_minimum_ema_weight():
    # update_after=1: theta_0 = weights at step 1 = (2, 0); update_freq=2: updates at steps 3 and 5 (t = 2, 4)
    # lag=3, ema_power=1: beta_t = 1/(3+t) = 1/5, 1/7, both clipped to min_ema_multiplier=0.25; bias_power=0: alpha=1
    # t=2: theta=(6,4): EMA = 0.75 (2,0) + 0.25 (6,4) = (3, 1);           BEMA = (6,4)-(2,0) + (3,1) = (7, 5)
    # t=4: theta=(2,8): EMA = 0.75 (3,1) + 0.25 (2,8) = (2.75, 2.75);     BEMA = (2,8)-(2,0) + EMA = (2.75, 10.75)
    callback = BEMACallback(update_freq=2, ema_power=1.0, bias_power=0.0, lag=3, update_after=1,
                            min_ema_multiplier=0.25)
    seen = _drive(callback, _TwoParams(),
                  {0: (9, 9), 1: (2, 0), 2: (100, 100), 3: (6, 4), 4: (-50, 7), 5: (2, 8)})
    assert seen[0] is None  # before update_after nothing is averaged
    assert seen[1] == seen[2] == pytest.approx((2, 0))
    assert seen[3] == seen[4] == pytest.approx((7, 5))
    assert seen[5] == pytest.approx((2.75, 10.75))
    assert callback.ema_beta(0) == pytest.approx(1 / 3) and callback.ema_beta(2) == 0.25
    assert callback.bias_alpha(10) == 1.0


def test_bema_default_schedule():
    callback = BEMACallback()  # lag 10, ema_power 0.5, bias_power 0.2
    assert callback.ema_beta(6) == pytest.approx(16 ** -0.5) == 0.25
    assert callback.bias_alpha(22) == pytest.approx(32 ** -0.2) == 0.5


@pytest.mark.parametrize("kwargs, match", [({"update_freq": 0}, "update_freq"), ({"lag": 0}, "lag"),
                                           ({"min_ema_multiplier": 1.5}, "min_ema_multiplier"),
                                           ({"update_after": -1}, "update_after"),
                                           ({"ema_power": -0.5}, "ema_power=-0.5"),
                                           ({"bias_power": -1.0}, "bias_power=-1.0")])
def test_bema_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BEMACallback(**kwargs)


def test_bema_apply_to_copies_the_average():
    callback = BEMACallback(update_freq=1, ema_power=1.0, bias_power=1.0, lag=1)
    target = _TwoParams()
    assert callback.apply_to(target) is False  # nothing averaged yet
    _drive(callback, _TwoParams(), {0: (1, 2), 1: (3, 2), 2: (4, 5)})
    assert callback.apply_to(target) is True
    assert (target.a.item(), target.b.item()) == pytest.approx((11 / 3, 4))
    with pytest.raises(ValueError, match="parameters that the BEMA weights do not"):
        callback.apply_to(torch.nn.Linear(1, 1))


def test_bema_sft_run_saves_a_loadable_average(tmp_path):
    callback = BEMACallback(update_freq=1, lag=1)
    trainer = _sft(tmp_path, [callback], eval_form=None, max_steps=3)
    initial = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    bema = callback.bema_state_dict()
    final = dict(trainer.model.named_parameters())
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(bema[name], initial[name]) and not torch.equal(bema[name], final[name].detach())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "bema")
    for key, value in loaded.named_parameters():
        torch.testing.assert_close(value, bema[key].to(value.dtype), rtol=0, atol=0)
    assert (tmp_path / "out" / "bema" / "tokenizer_config.json").exists()


def test_bema_warns_when_the_run_ends_before_any_update(tmp_path):
    """With the default update_freq=400 a short run never updates the average: the saved "BEMA" weights would be the
    initial ones, so training ends with a warning naming the fix."""
    callback = BEMACallback()  # update_freq=400
    trainer = _sft(tmp_path, [callback], eval_form=None, max_steps=2)
    initial = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    with pytest.warns(UserWarning, match=r"no averaging update: training ran 2 steps.*update_freq=400.*Lower"):
        trainer.train()
    assert callback.num_updates == 0
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(callback.bema_state_dict()[name], initial[name])
    updated = BEMACallback(update_freq=1)
    _drive(updated, _TwoParams(), {0: (1, 2), 1: (3, 2), 2: (4, 5)})
    assert updated.num_updates == 2


# ---------------------------------------------------------------- LogCompletionsCallback


def test_log_completions_writes_the_cumulative_table(tmp_path):
    import pandas as pd

    trainer = _sft(tmp_path, eval_form="prompt_completion", max_steps=4)
    callback = LogCompletionsCallback(trainer, GenerationConfig(max_new_tokens=4, do_sample=False), num_prompts=2,
                                      freq=2)
    trainer.add_callback(callback)
    trainer.train()
    frame = pd.read_csv(tmp_path / "out" / "completions.csv", keep_default_na=False)
    assert list(frame.columns) == ["step", "prompt", "completion"]
    assert frame["step"].tolist() == [2, 2, 4, 4]
    prompts = list(tiny_task_dataset("prompt_completion", "test", num_rows=2)["prompt"])
    assert frame["prompt"].tolist() == prompts * 2
    assert len(callback.table) == 4


def _completions_run(output_dir, num_prompts=3):
    """One SFT step with a learning rate too small to change a float32 weight, so that one process and two (which see
    other batches) generate from the same weights; completions logged at step 1."""
    trainer = _sft(output_dir, eval_form="prompt_completion", max_steps=1, learning_rate=1e-12,
                   per_device_train_batch_size=2, gradient_checkpointing=False)
    trainer.add_callback(LogCompletionsCallback(trainer, GenerationConfig(max_new_tokens=5, do_sample=False),
                                                num_prompts=num_prompts, freq=1))
    trainer.train()
    return trainer


@pytest.mark.slow  # two more interpreters: ~50 s on a loaded 2-core machine
def test_log_completions_over_two_processes_equal_one_process(tmp_path):
    """3 prompts over 2 gloo processes (one gets the last prompt twice, dropped after gathering): the same table."""
    import os
    import subprocess
    from pathlib import Path

    single = _completions_run(tmp_path / "single")
    expected = (tmp_path / "single" / "out" / "completions.csv").read_text()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.unit.test_callbacks", str(tmp_path / "ddp")]
    result = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ddp" / "out" / "completions.csv").read_text() == expected
    assert len(single.callback_handler.callbacks[-1].table) == 3


def test_log_completions_applies_the_chat_template_to_conversational_prompts(tmp_path):
    trainer = _sft(tmp_path, eval_form="conversational_prompt_completion")
    callback = LogCompletionsCallback(trainer, num_prompts=1)
    assert "<|im_start|>assistant" in callback._prompts[0] and "sort:" in callback._prompts[0]


def test_prompts_from_each_kind_of_eval_rows(tmp_path):
    from trl import DPOConfig, DPOTrainer
    from trl.data.prompts import tokenize_prompt
    from trl.trainer.callbacks import _eval_prompt_ids

    tokenizer = tiny_tokenizer()
    raw = tiny_task_dataset("preference", "test", num_rows=2)
    expected = [tokenize_prompt(row, tokenizer, True) for row in raw]
    # a `prompt` column as the user gave it
    holder = types.SimpleNamespace(eval_dataset=raw, processing_class=tokenizer)
    assert _eval_prompt_ids(holder, None, "x") == expected
    # DPO's prepared rows (`prompt_ids`)
    trainer = DPOTrainer(model=tiny_model(seed=0, **SMALL), processing_class=tokenizer,
                         args=DPOConfig(output_dir=str(tmp_path), report_to="none", max_steps=1),
                         train_dataset=tiny_task_dataset("preference", "train", num_rows=4), eval_dataset=raw)
    assert "prompt" not in trainer.eval_dataset.column_names
    assert LogCompletionsCallback(trainer)._prompt_ids == expected
    # SFT's prepared prompt-completion rows (the tokens before the completion mask)
    sft = _sft(tmp_path, eval_form="conversational_prompt_completion")
    assert LogCompletionsCallback(sft, num_prompts=2)._prompt_ids == expected


def test_log_completions_needs_an_eval_dataset_with_prompts(tmp_path):
    with pytest.raises(ValueError, match="needs an eval dataset"):
        LogCompletionsCallback(_sft(tmp_path, eval_form=None))
    with pytest.raises(ValueError, match=r"needs eval rows with a prompt.*\['input_ids'"):
        LogCompletionsCallback(_sft(tmp_path, eval_form="text"))
    with pytest.raises(ValueError, match=r"not packed.*'seq_lengths'"):
        LogCompletionsCallback(_sft(tmp_path, eval_form="prompt_completion", packing=True))
    empty = types.SimpleNamespace(eval_dataset=tiny_task_dataset("prompt_completion", "test", num_rows=0),
                                  processing_class=tiny_tokenizer())
    with pytest.raises(ValueError, match="the eval dataset is empty"):
        LogCompletionsCallback(empty)
    several = types.SimpleNamespace(eval_dataset={"a": empty.eval_dataset}, processing_class=tiny_tokenizer())
    with pytest.raises(TypeError, match=r"needs one eval dataset; the trainer has several \(\['a'\]\)"):
        LogCompletionsCallback(several)
    with pytest.raises(TypeError, match=r"LogCompletionsCallback needs the trainer.*got NoneType"):
        LogCompletionsCallback(None)


# ---------------------------------------------------------------- RichProgressCallback


def test_group_metrics():
    logs = {"loss": 1.0, "rewards/chosen": 0.5, "completions/mean_length": 3.0, "rewards/margins": 0.1, "epoch": 1,
            "eval_loss": 2.0, "eval_rewards/chosen": 0.2}
    assert _group_metrics(logs) == {"metrics": {"loss": 1.0, "epoch": 1},
                                    "rewards": {"chosen": 0.5, "margins": 0.1},
                                    "completions": {"mean_length": 3.0},
                                    "eval": {"loss": 2.0},
                                    "eval_rewards": {"chosen": 0.2}}


def test_rich_progress_shows_the_grouped_metrics(tmp_path):
    from rich.console import Console

    callback = RichProgressCallback()
    buffer = io.StringIO()
    callback.console = Console(file=buffer, width=120, force_terminal=False)
    trainer = _sft(tmp_path, [callback], eval_form="prompt_completion", max_steps=2, eval_strategy="steps",
                   eval_steps=2)
    trainer.log({"rewards/chosen": 0.25, "completions/mean_length": 7.0})  # what a preference/online trainer logs
    trainer.train()
    out = buffer.getvalue()
    last_panel = out[out.rindex("╭"):]
    assert any("rewards" in line and "chosen" in line and "0.25" in line for line in last_panel.splitlines())
    assert any("completions" in line and "mean_length" in line for line in last_panel.splitlines())
    for text in ("train", "metrics", "loss", "rewards", "chosen", "completions", "mean_length", "eval ", "2/2"):
        assert text in out, text


def test_rich_missing_gives_an_install_hint(monkeypatch):
    monkeypatch.setattr(import_utils, "is_rich_available", lambda: False)
    with pytest.raises(ImportError, match=r"RichProgressCallback needs the `rich` package.*pip install rich"):
        RichProgressCallback()


# ---------------------------------------------------------------- WeaveCallback


def test_weave_missing_gives_an_install_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(import_utils, "is_weave_available", lambda: False)
    with pytest.raises(ImportError, match=r"WeaveCallback needs the `weave` package.*pip install weave"):
        WeaveCallback(trainer=None)


class _FakeWeave(types.ModuleType):
    """Records what WeaveCallback sends through weave's documented EvaluationLogger API."""

    def __init__(self):
        super().__init__("weave")
        self.events = []
        self.client = None
        fake = self

        class Prediction:
            def __init__(self, inputs, output):
                self.record = {"inputs": inputs, "output": output, "scores": {}, "finished": False}
                fake.events.append(self.record)

            def log_score(self, scorer, score):
                self.record["scores"][scorer] = score

            def finish(self):
                self.record["finished"] = True

        class EvaluationLogger:
            def __init__(self, model=None, dataset=None):
                fake.events.append({"evaluation": (model, dataset)})

            def log_prediction(self, inputs, output):
                return Prediction(inputs, output)

            def log_summary(self, summary=None):
                fake.events.append({"summary": summary})

        self.EvaluationLogger = EvaluationLogger

    def init(self, project):
        self.client = f"client:{project}"
        return self.client

    def get_client(self):
        return self.client


@pytest.mark.parametrize("with_scorers", [False, True])
def test_weave_logs_predictions_and_scores(monkeypatch, tmp_path, with_scorers):
    fake = _FakeWeave()
    monkeypatch.setitem(sys.modules, "weave", fake)
    monkeypatch.setattr(import_utils, "is_weave_available", lambda: True)
    trainer = _sft(tmp_path, eval_form="prompt_completion", max_steps=1)
    scorers = {"length": lambda prompt, completion: float(len(completion))} if with_scorers else None
    callback = WeaveCallback(trainer, project_name="team/project", scorers=scorers, num_prompts=2, model_name="tiny",
                             generation_config=GenerationConfig(max_new_tokens=3, do_sample=False))
    trainer.add_callback(callback)
    trainer.evaluate()
    assert fake.client == "client:team/project"
    assert fake.events[0] == {"evaluation": ("tiny", "eval_dataset")}
    predictions = fake.events[1:3]
    prompts = list(tiny_task_dataset("prompt_completion", "test", num_rows=2)["prompt"])
    assert [p["inputs"]["prompt"] for p in predictions] == prompts
    assert all(p["finished"] and isinstance(p["output"], str) for p in predictions)
    summary = fake.events[3]["summary"]
    assert summary["num_predictions"] == 2 and summary["step"] == 0
    if with_scorers:
        lengths = [float(len(p["output"])) for p in predictions]
        assert [p["scores"]["length"] for p in predictions] == lengths
        assert summary["length/mean"] == pytest.approx(sum(lengths) / 2)
    else:
        assert all(p["scores"] == {} for p in predictions) and "length/mean" not in summary


def test_weave_warns_when_training_runs_no_evaluation(monkeypatch, tmp_path):
    fake = _FakeWeave()
    monkeypatch.setitem(sys.modules, "weave", fake)
    monkeypatch.setattr(import_utils, "is_weave_available", lambda: True)
    trainer = _sft(tmp_path, eval_form="prompt_completion", max_steps=1)  # eval_strategy="no"
    trainer.add_callback(WeaveCallback(trainer, project_name="team/project", num_prompts=1,
                                       generation_config=GenerationConfig(max_new_tokens=2, do_sample=False)))
    with pytest.warns(UserWarning, match=r"eval_strategy='no' runs none during training"):
        trainer.train()
    assert fake.events == []  # indeed nothing was logged


def test_weave_rejects_a_scorer_that_is_not_callable(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "weave", _FakeWeave())
    monkeypatch.setattr(import_utils, "is_weave_available", lambda: True)
    with pytest.raises(TypeError, match="Scorer 'x' must be a callable"):
        WeaveCallback(_sft(tmp_path), scorers={"x": 1.0})


if __name__ == "__main__":  # the 2-process half of test_log_completions_over_two_processes_equal_one_process
    import os
    from pathlib import Path

    from trl.scripts.utils import close_processes

    trainer = _completions_run(Path(sys.argv[1]))
    assert trainer.accelerator.num_processes == 2
    close_processes(trainer)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown of the gloo group (see tests/trainers/sft_one_step.py)

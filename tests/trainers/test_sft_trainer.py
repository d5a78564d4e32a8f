"""SFTTrainer on tiny models: a few CPU steps each; loss finite and falling, parameters moved, metrics logged."""

import json

import pytest
import torch
from datasets import Dataset

from trl import SFTConfig, SFTTrainer
from trl.data.tiny import tiny_task_dataset
from trl.guards import TrainingWillNotLearnError
from trl.models.tiny import save_tiny_model, tiny_model, tiny_tokenizer

from .sft_one_step import SMALL


METRICS = {"loss", "entropy", "mean_token_accuracy", "num_tokens", "grad_norm", "learning_rate", "epoch"}


def _config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4, learning_rate=5e-3,
                  logging_steps=1, report_to="none", save_strategy="no", max_length=128, seed=0)
    values.update(overrides)
    return SFTConfig(**values)


def _train(tmp_path, dataset, model=None, **overrides):
    model = model if model is not None else tiny_model(seed=0, **SMALL)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(model=model, args=_config(tmp_path, **overrides), train_dataset=dataset,
                         processing_class=tiny_tokenizer())
    trainer.train()
    return trainer, before


def _assert_trained(trainer, before):
    logs = [log for log in trainer.state.log_history if "loss" in log]
    losses = [log["loss"] for log in logs]
    assert all(torch.isfinite(torch.tensor(losses)))
    if trainer.args.loss_type == "nll":  # DFT's -p*log(p) first rises as p grows from ~1/V towards 1/e
        assert losses[-1] < losses[0]
    else:
        assert logs[-1]["entropy"] < logs[0]["entropy"]
    assert METRICS <= set(logs[0]), set(logs[0])
    assert 0.0 <= logs[-1]["mean_token_accuracy"] <= 1.0 and logs[-1]["entropy"] > 0
    assert logs[-1]["num_tokens"] > logs[0]["num_tokens"] > 0  # cumulative
    model = trainer.accelerator.unwrap_model(trainer.model)
    moved = [n for n, p in model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]
    assert moved, "no parameter changed"
    return logs


@pytest.mark.parametrize(
    "form", ["conversational", "prompt_completion", "conversational_prompt_completion", "text"]
)
def test_formats_train(tmp_path, form):
    trainer, before = _train(tmp_path, tiny_task_dataset(form, num_rows=32))
    _assert_trained(trainer, before)


@pytest.mark.parametrize(
    "overrides",
    [
        {"assistant_only_loss": True},
        {"packing": True, "packing_strategy": "bfd"},
        {"packing": True, "packing_strategy": "wrapped", "max_length": 64},
        {"padding_free": True},
        {"loss_type": "dft"},
        {"gradient_checkpointing": True},
        {"gradient_accumulation_steps": 2},
        {"activation_offloading": True},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_options_train(tmp_path, overrides):
    trainer, before = _train(tmp_path, tiny_task_dataset("conversational", num_rows=32), **overrides)
    _assert_trained(trainer, before)


def test_sharegpt_and_tokenized_datasets(tmp_path):
    sharegpt = Dataset.from_list(
        [{"conversations": [{"from": "human", "value": f"say {i}"}, {"from": "gpt", "value": f"{i} {i}"}]}
         for i in range(16)]
    )
    trainer, before = _train(tmp_path, sharegpt)
    _assert_trained(trainer, before)
    tok = tiny_tokenizer()
    tokenized = Dataset.from_list([{"input_ids": tok(f"count {i} {i + 1} {i + 2}")["input_ids"]} for i in range(16)])
    trainer, before = _train(tmp_path / "tok", tokenized)
    _assert_trained(trainer, before)


def test_model_from_local_folder_and_defaults(tmp_path, monkeypatch):
    """The quick start: `SFTTrainer(model=path, train_dataset=ds)` with no args and no processing class."""
    path = save_tiny_model(tmp_path / "tiny-qwen3", **SMALL)
    monkeypatch.chdir(tmp_path)
    trainer = SFTTrainer(model=str(path), train_dataset=tiny_task_dataset(num_rows=8))
    assert trainer.args.output_dir == "tiny-qwen3-SFT"
    assert trainer.args.bf16 is False  # no bf16-capable accelerator here: the default must still run
    assert trainer.args.gradient_checkpointing and trainer.args.logging_steps == 10
    assert trainer.processing_class.eos_token == "<|im_end|>"
    assert next(trainer.model.parameters()).dtype == torch.float32
    trainer.args.max_steps = 2
    trainer.train()


def test_training_arguments_are_converted(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none", per_device_train_batch_size=2)
    trainer = SFTTrainer(model=tiny_model(**SMALL), args=args, train_dataset=tiny_task_dataset(num_rows=4),
                         processing_class=tiny_tokenizer())
    assert isinstance(trainer.args, SFTConfig) and trainer.args.max_steps == 1


def test_eval_metrics_and_save(tmp_path):
    trainer = SFTTrainer(model=tiny_model(**SMALL), processing_class=tiny_tokenizer(),
                         args=_config(tmp_path, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4),
                         train_dataset=tiny_task_dataset(num_rows=16),
                         eval_dataset={"a": tiny_task_dataset(split="test", num_rows=8)})
    trainer.train()
    evals = [log for log in trainer.state.log_history if "eval_a_loss" in log]
    assert len(evals) == 2
    assert {"eval_a_entropy", "eval_a_mean_token_accuracy", "eval_a_num_tokens"} <= set(evals[0]), evals[0]
    trainer.save_model()
    out = tmp_path / "out"
    assert (out / "model.safetensors").exists() and "SFT" in (out / "README.md").read_text()
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation.get("pad_token_id") != generation.get("eos_token_id")


@pytest.mark.parametrize("trainer_name", ["sft", "dpo"])
def test_tokenizer_without_pad_does_not_save_pad_equal_eos(tmp_path, trainer_name):
    """A tokenizer with no pad token pads with eos; transformers' train() then copies that pad id into the generation
    config. Neither the checkpoints nor the final model may keep pad == eos there (transformers#48016)."""
    from trl import DPOConfig, DPOTrainer

    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    model = tiny_model(**SMALL)
    model.generation_config.pad_token_id = None
    common = dict(max_steps=2, save_strategy="steps", save_steps=1, report_to="none")
    if trainer_name == "sft":
        trainer = SFTTrainer(model=model, processing_class=tokenizer, args=_config(tmp_path, **common),
                             train_dataset=tiny_task_dataset(num_rows=8))
    else:
        trainer = DPOTrainer(model=model, processing_class=tokenizer, train_dataset=tiny_task_dataset("preference", num_rows=8),
                             args=DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, **common))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    pad_before = model.config.pad_token_id  # not eos: prepare_tokenizer mirrors pad into the config only then
    assert pad_before != tokenizer.eos_token_id
    for folder in (out / "checkpoint-1", out / "checkpoint-2", out):
        generation = json.loads((folder / "generation_config.json").read_text())
        assert generation.get("pad_token_id") is None, (folder, generation)
        config = json.loads((folder / "config.json").read_text())
        assert config.get("pad_token_id") == pad_before, (folder, config.get("pad_token_id"))
    assert model.generation_config.pad_token_id is None and model.config.pad_token_id == pad_before


def test_model_that_comes_with_pad_equal_eos_is_warned_about_and_left_alone(tmp_path):
    # (a tokenizer with its own pad token would replace the model's pad id at construction: here it pads with eos)
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    model = tiny_model(**SMALL)
    eos = tokenizer.eos_token_id
    model.generation_config.pad_token_id = eos
    trainer = SFTTrainer(model=model, processing_class=tokenizer, args=_config(tmp_path, max_steps=1),
                         train_dataset=tiny_task_dataset(num_rows=4))
    with pytest.warns(UserWarning, match="pad_token_id == eos_token_id"):
        trainer.train()
    assert model.generation_config.pad_token_id == eos


@pytest.mark.parametrize("enforce", [True, False])
def test_zero_gradient_for_the_first_steps_stops_the_run(tmp_path, enforce):
    class ZeroLoss(SFTTrainer):  # a loss that no weight can change: its gradient is exactly 0, its value is not
        def compute_loss(self, *args, **kwargs):
            loss = super().compute_loss(*args, **kwargs)
            return loss.detach() + 0.0 * loss

    trainer = ZeroLoss(model=tiny_model(**SMALL), processing_class=tiny_tokenizer(), train_dataset=tiny_task_dataset(num_rows=32),
                       args=_config(tmp_path, max_steps=5, guards=enforce))
    if enforce:
        with pytest.raises(TrainingWillNotLearnError, match=r"exactly zero for 3 optimiser steps in a row \(up to step 3\) "
                                                            r"while the loss was not"):
            trainer.train()
        assert trainer.state.global_step == 2  # stopped in the third step
    else:
        with pytest.warns(UserWarning, match="exactly zero"):
            trainer.train()
        assert trainer.state.global_step == 5


def test_eval_loss_is_token_mean(tmp_path):
    """Evaluation loss of one batch equals the naive mean NLL of its trained tokens."""
    dataset = tiny_task_dataset("prompt_completion", num_rows=4)
    model = tiny_model(seed=0, **SMALL)
    trainer = SFTTrainer(model=model, args=_config(tmp_path, per_device_eval_batch_size=4),
                         train_dataset=dataset, eval_dataset=dataset, processing_class=tiny_tokenizer())
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(4)])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    naive = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
    assert trainer.evaluate()["eval_loss"] == pytest.approx(naive.item(), rel=1e-5)


def test_lora_adapters_train_save_and_reload(tmp_path):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = tiny_model(seed=0, **SMALL)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(model=model, args=_config(tmp_path, learning_rate=5e-2),
                         train_dataset=tiny_task_dataset(num_rows=16), processing_class=tiny_tokenizer(),
                         peft_config=config)
    trainer.train()
    wrapped = trainer.model
    assert isinstance(wrapped, peft.PeftModel)
    lora = {n: p for n, p in wrapped.named_parameters() if "lora_B" in n}
    assert lora and all(p.abs().sum() > 0 for p in lora.values())  # lora_B starts at zero: it moved
    for name, param in wrapped.get_base_model().named_parameters():
        if "lora_" not in name:  # the base weights are frozen
            torch.testing.assert_close(param, base[name.replace(".base_layer", "")])
    trainer.save_model()
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    reloaded = peft.PeftModel.from_pretrained(tiny_model(seed=0, **SMALL), str(tmp_path / "out"))
    ids = torch.tensor([[1, 5, 9, 12]])
    wrapped.eval()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, wrapped(input_ids=ids).logits)


def test_reference_formula_dft(tmp_path):
    """DFT: the logged loss is the mean of -p*log p over the trained tokens (detached p)."""
    from .sft_one_step import one_step

    loss, _, trainer = one_step(tmp_path, 8, 1, loss_type="dft")
    collated = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    model = tiny_model(seed=0, **SMALL)
    with torch.no_grad():
        logps = model(input_ids=collated["input_ids"], attention_mask=collated["attention_mask"]).logits.log_softmax(-1)
    targets = collated["labels"][:, 1:]
    mask = targets != -100
    token_logps = logps[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask]
    assert loss == pytest.approx((-(token_logps.exp() * token_logps)).mean().item(), rel=1e-5)


def test_pretokenized_rows_are_truncated_and_packed(tmp_path):
    rows = Dataset.from_list([{"input_ids": list(range(5, 5 + n))} for n in (3, 40, 7, 9, 2)])
    trainer = SFTTrainer(model=tiny_model(**SMALL), args=_config(tmp_path, max_length=16), train_dataset=rows,
                         processing_class=tiny_tokenizer())
    assert [len(r) for r in trainer.train_dataset["input_ids"]] == [3, 16, 7, 9, 2]
    trainer = SFTTrainer(model=tiny_model(**SMALL), args=_config(tmp_path, max_length=16, packing=True),
                         train_dataset=rows, processing_class=tiny_tokenizer())
    assert sorted(sum(trainer.train_dataset["seq_lengths"], [])) == [2, 3, 7, 9, 16]
    assert len(trainer.train_dataset) == 3


@pytest.mark.parametrize("overrides", [{"packing": True}, {"packing": True, "padding_free": True, "pad_to_multiple_of": 32},
                                       {"padding_free": True, "pad_to_multiple_of": 16}],
                         ids=["packed", "packed-padding_free", "padding_free-multiple"])
def test_num_tokens_counts_real_tokens_not_padding(tmp_path, overrides):
    # Six documents (45 tokens) with max_length 16: bfd packs them as 10+6, 9+7, 8+5, so the padded batch is 3 x 16 =
    # 48 tokens of which 3 are padding; one step sees every row, and num_tokens must be the 45 real tokens.
    lengths = (10, 9, 8, 7, 6, 5)
    rows = Dataset.from_list([{"input_ids": list(range(5, 5 + n))} for n in lengths])
    trainer, _ = _train(tmp_path, rows, max_length=16, max_steps=1, per_device_train_batch_size=8, **overrides)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].numel() > sum(lengths)  # the batch does hold padding
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs[-1]["num_tokens"] == sum(lengths)


def test_moe_aux_loss_is_added_and_logged(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "qwen3_moe", vocab_size=448, hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_experts=4,
        num_experts_per_tok=2, router_aux_loss_coef=0.01, pad_token_id=3, eos_token_id=2,
    )
    torch.manual_seed(0)
    trainer, before = _train(tmp_path, tiny_task_dataset(num_rows=16), model=AutoModelForCausalLM.from_config(config))
    logs = _assert_trained(trainer, before)
    assert logs[0]["aux_loss"] > 0
    with pytest.raises(ValueError, match="not a mixture-of-experts"):
        _train(tmp_path, tiny_task_dataset(num_rows=4), router_aux_loss_coef=0.1)


def test_nan_loss_stops_the_run(tmp_path):
    from trl.guards import TrainingWillNotLearnError

    model = tiny_model(**SMALL)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(TrainingWillNotLearnError, match="loss is nan at step 1"):
        _train(tmp_path, tiny_task_dataset(num_rows=8), model=model)


def test_eval_loss_is_exact_and_evaluations_do_not_leak(tmp_path):
    """The eval loss is the token mean over the whole eval set, whatever the eval batch size; predict() and earlier
    evaluations do not leak into the next evaluation."""
    data = tiny_task_dataset("prompt_completion", "test", num_rows=10)
    results = []
    for batch_size in (1, 3, 10):
        trainer = SFTTrainer(model=tiny_model(seed=0, **SMALL), args=_config(tmp_path, per_device_eval_batch_size=batch_size),
                             train_dataset=data, eval_dataset=data, processing_class=tiny_tokenizer())
        first = trainer.evaluate()
        trainer.predict(trainer.eval_dataset)
        second = trainer.evaluate()
        assert second["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-9)
        assert second["eval_num_tokens"] == first["eval_num_tokens"]
        results.append(first["eval_loss"])
    assert results[0] == pytest.approx(results[1], rel=1e-6) and results[0] == pytest.approx(results[2], rel=1e-6)


def test_resume_from_checkpoint_is_exact(tmp_path):
    data = tiny_task_dataset(num_rows=32)

    def run(output_dir, resume=None, max_steps=4):
        trainer = SFTTrainer(model=tiny_model(seed=0, **SMALL), processing_class=tiny_tokenizer(), train_dataset=data,
                             args=_config(tmp_path, output_dir=str(output_dir), max_steps=max_steps,
                                          save_strategy="steps", save_steps=2))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "part", resume=str(tmp_path / "full" / "checkpoint-2"))
    full_logs = [log for log in full.state.log_history if "loss" in log]
    resumed_logs = [log for log in resumed.state.log_history if "loss" in log]
    assert resumed_logs[-1]["loss"] == pytest.approx(full_logs[-1]["loss"], rel=1e-6)
    assert resumed_logs[-1]["num_tokens"] == full_logs[-1]["num_tokens"]
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_chat_template_from_another_tokenizer_trains_its_new_tokens_under_lora(tmp_path):
    """`chat_template_path` pointing at a tokenizer with extra tokens: the tokens are added, and under LoRA their
    randomly initialised embeddings are trainable (otherwise the model could never learn them)."""
    peft = pytest.importorskip("peft")
    source = tiny_tokenizer()
    source.add_special_tokens({"additional_special_tokens": ["<|turn_end|>"]})
    source.chat_template = (
        "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|turn_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    source.eos_token = "<|turn_end|>"
    source.save_pretrained(tmp_path / "source")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=tiny_model(seed=0, **SMALL), processing_class=tiny_tokenizer(), peft_config=config,
                         args=_config(tmp_path, chat_template_path=str(tmp_path / "source"), learning_rate=5e-2),
                         train_dataset=tiny_task_dataset(num_rows=16))
    new_id = trainer.processing_class.convert_tokens_to_ids("<|turn_end|>")
    assert trainer.processing_class.eos_token == "<|turn_end|>"
    embed = trainer.model.get_input_embeddings()
    before = embed(torch.tensor([new_id])).detach().clone()
    trainer.train()
    assert not torch.allclose(embed(torch.tensor([new_id])), before), "the new token's embedding did not train"


def test_selective_checkpointing_trains_as_full_checkpointing(tmp_path):
    """`gradient_checkpointing_kwargs={"selective": True}` (the reference's SFT option): the layers checkpoint
    selectively, and the run ends with the same weights as full checkpointing."""
    from trl.models.helpers import _decoder_layers

    data = tiny_task_dataset("conversational", num_rows=16)
    full, _ = _train(tmp_path / "full", data, gradient_checkpointing=True, max_steps=2)
    selective, before = _train(tmp_path / "selective", data, gradient_checkpointing=True, max_steps=2,
                               gradient_checkpointing_kwargs={"selective": True})
    _assert_trained(selective, before)
    layers = _decoder_layers(selective.model)
    assert layers and all("context_fn" in layer._gradient_checkpointing_func.keywords for layer in layers)
    for (name, p), q in zip(selective.model.named_parameters(), full.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_selective_checkpointing_without_checkpointing_warns(tmp_path):
    with pytest.warns(UserWarning, match="has no effect with checkpointing off"):
        SFTTrainer(model=tiny_model(seed=0, **SMALL), processing_class=tiny_tokenizer(),
                   train_dataset=tiny_task_dataset("conversational", num_rows=4),
                   args=_config(tmp_path, gradient_checkpointing=False,
                                gradient_checkpointing_kwargs={"selective": True}))


@pytest.mark.slow  # compiling takes about a minute on a CPU
def test_torch_compile_trains_packed_rows_as_eager(tmp_path):
    """`torch_compile=True` (the model compiled by transformers) with the fused LM head and packing: the same losses as
    the eager run."""
    data = tiny_task_dataset("conversational", num_rows=16)
    runs = []
    for compile_ in (False, True):
        trainer, before = _train(tmp_path / str(compile_), data, torch_compile=compile_, packing=True, max_steps=2,
                                 gradient_checkpointing=False)
        runs.append([log["loss"] for log in trainer.state.log_history if "loss" in log])
    assert runs[1] == pytest.approx(runs[0], rel=1e-4)


def test_checkpoints_of_moe_and_vision_models_resume_every_weight(tmp_path):
    """transformers>=5 saves MoE experts (and renamed vision-language modules) in the original checkpoint layout,
    which the Trainer's resume (`load_state_dict`) would miss with only a warning; checkpoints are written under the
    model's own names, so resuming restores every weight and `from_pretrained` reads them too."""
    from transformers import AutoModelForCausalLM

    from .sft_one_step import tiny_moe_model

    def trainer(output_dir):
        return SFTTrainer(model=tiny_moe_model(seed=0), processing_class=tiny_tokenizer(),
                          train_dataset=tiny_task_dataset("conversational", num_rows=16),
                          args=_config(tmp_path, output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=4,
                                       save_strategy="steps", save_steps=1))

    trained = trainer(tmp_path / "a")
    trained.train()
    weights = {n: p.detach().clone() for n, p in trained.model.named_parameters()}
    resumed = trainer(tmp_path / "b")
    resumed._load_from_checkpoint(str(tmp_path / "a" / "checkpoint-1"))
    assert any("experts" in n for n in weights)
    for name, param in resumed.model.named_parameters():
        assert torch.equal(param, weights[name]), name
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "checkpoint-1")
    for name, param in reloaded.named_parameters():
        assert torch.equal(param, weights[name]), name

"""DPO and KTO on vision preference data with the three tiny VLM styles (trl/models/tiny_vlm.py,
trl/data/vision.py): trains a few steps, the reference stays put, the images reach the loss, the collators mask
image tokens and the loss equals a naive full-logits reference."""

import pytest
import torch
from datasets import Dataset

pytest.importorskip("PIL")
from PIL import Image

from trl import DPOConfig, DPOTrainer
from trl.models.tiny_vlm import TINY_VLM_STYLES, tiny_vlm
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0), "yellow": (255, 255, 0)}
NAMES = list(COLOURS)


def _preference_rows(n=8, size=(28, 28)):
    return [{"prompt": [{"role": "user", "content": "What colour is this?"}],
             "chosen": [{"role": "assistant", "content": NAMES[i % 4]}],
             "rejected": [{"role": "assistant", "content": NAMES[(i + 1) % 4]}],
             "images": [Image.new("RGB", size, COLOURS[NAMES[i % 4]])]} for i in range(n)]


def _dpo_config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2, learning_rate=5e-3,
                  logging_steps=1, report_to="none", save_strategy="no", max_length=128, seed=0)
    values.update(overrides)
    return DPOConfig(**values)


@pytest.mark.parametrize("style", TINY_VLM_STYLES)
def test_dpo_vlm_trains(tmp_path, style):
    model, processor = tiny_vlm(style)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DPOTrainer(model=model, processing_class=processor, args=_dpo_config(tmp_path),
                         train_dataset=Dataset.from_list(_preference_rows()))
    ref_before = {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor([log["loss"] for log in logs])))
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected", "entropy", "num_tokens"} <= set(logs[0])
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any(n.startswith("lm_head") for n in moved)
    assert [n for n in moved if "vision" in n or "visual" in n or "projector" in n or "connector" in n]
    assert all(torch.equal(p, ref_before[n]) for n, p in trainer.ref_model.named_parameters())


@pytest.mark.parametrize("style", TINY_VLM_STYLES)
def test_vision_preference_collator_masks(style):
    _, processor = tiny_vlm(style)
    batch = DataCollatorForVisionPreference(processor)(_preference_rows(2))
    assert batch["input_ids"].shape[0] == 4
    decode = processor.tokenizer.decode
    sides = [decode(batch["input_ids"][i][batch["completion_mask"][i].bool()]) for i in range(4)]
    assert [s.split("<|im_end|>")[0] for s in sides] == ["red", "blue", "blue", "green"]  # chosen, then rejected
    assert not (batch["completion_mask"].bool() & (batch["input_ids"] == processor.image_token_id)).any()


@pytest.mark.parametrize("style", TINY_VLM_STYLES)
def test_dpo_vlm_loss_equals_a_naive_full_logits_reference(tmp_path, style):
    model, processor = tiny_vlm(style)
    model = model.double()
    rows = _preference_rows(2, size=(56, 28))
    trainer = DPOTrainer(model=model, processing_class=processor, args=_dpo_config(tmp_path, beta=0.5),
                         train_dataset=Dataset.from_list(_preference_rows(4)))
    with torch.no_grad():  # a different policy than the reference, so the loss is not log 2
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = trainer.data_collator(rows)
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}
    model.eval()
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))

        def sequence_logps(m):
            inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
            if style != "qwen2_vl":
                inputs.pop("mm_token_type_ids")
            logps = torch.log_softmax(m(**inputs).logits[:, :-1], -1)
            token = logps.gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
            return (token * batch["completion_mask"][:, 1:]).sum(-1)

        policy, ref = sequence_logps(model), sequence_logps(trainer.ref_model)
    margin = (policy[:2] - ref[:2]) - (policy[2:] - ref[2:])
    reference = -torch.nn.functional.logsigmoid(0.5 * margin).mean()
    torch.testing.assert_close(ours, reference, rtol=1e-7, atol=1e-7)  # float64 models


def test_dpo_vlm_rejects_precompute(tmp_path):
    model, processor = tiny_vlm("llava")
    with pytest.raises(ValueError, match="precompute_ref_log_probs"):
        DPOTrainer(model=model, processing_class=processor, args=_dpo_config(tmp_path, precompute_ref_log_probs=True),
                   train_dataset=Dataset.from_list(_preference_rows(2)))


# ---- KTO ----------------------------------------------------------------------------------------------------------------


def _unpaired_rows(n=8):
    return [{"prompt": [{"role": "user", "content": "What colour is this?"}],
             "completion": [{"role": "assistant", "content": NAMES[(i // 2 + i % 2) % 4]}], "label": i % 2 == 0,
             "images": [Image.new("RGB", (28, 28), COLOURS[NAMES[(i // 2) % 4]])]} for i in range(n)]


@pytest.mark.parametrize("style", TINY_VLM_STYLES)
def test_kto_vlm_trains(tmp_path, style):
    from trl import KTOConfig, KTOTrainer

    model, processor = tiny_vlm(style)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = KTOConfig(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2, learning_rate=5e-3,
                     logging_steps=1, report_to="none", save_strategy="no", max_length=128, seed=0)
    trainer = KTOTrainer(model=model, processing_class=processor, args=args,
                         train_dataset=Dataset.from_list(_unpaired_rows()))
    ref_before = {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor([log["loss"] for log in logs])))
    assert {"kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "entropy", "num_tokens"} <= set(logs[0])
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert [n for n in moved if "vision" in n or "visual" in n or "projector" in n or "connector" in n]
    assert all(torch.equal(p, ref_before[n]) for n, p in trainer.ref_model.named_parameters())


def test_vision_unpaired_collator_pairs_kl_completions_within_the_batch():
    from trl.trainer.kto_trainer import DataCollatorForVisionUnpairedPreference

    _, processor = tiny_vlm("qwen2_vl")
    rows = _unpaired_rows(3)
    batch = DataCollatorForVisionUnpairedPreference(processor)(rows)
    decode = processor.tokenizer.decode
    completions = [decode(batch["input_ids"][i][batch["completion_mask"][i].bool()]).split("<|im_end|>")[0]
                   for i in range(6)]
    own = [r["completion"][0]["content"] for r in rows]
    assert completions == own + [own[-1], own[0], own[1]]  # prompt i with the completion of row i-1
    assert batch["label"].tolist() == [True, False, True]
    assert batch["image_grid_thw"].shape[0] == 6  # each sequence keeps its own row's image


def test_kto_vlm_refuses_paired_rows(tmp_path):
    from trl import KTOConfig, KTOTrainer

    model, processor = tiny_vlm("llava")
    args = KTOConfig(output_dir=str(tmp_path / "out"), report_to="none")
    with pytest.raises(ValueError, match="unpair_preference_dataset"):
        KTOTrainer(model=model, processing_class=processor, args=args,
                   train_dataset=Dataset.from_list(_preference_rows(2)))


# ---- text models: content blocks --------------------------------------------------------------------------------------


def test_dpo_and_kto_text_blocks_render_as_strings(tmp_path):
    from trl import KTOConfig, KTOTrainer
    from trl.models.tiny import tiny_model, tiny_tokenizer

    def blocks(text):
        return [{"type": "text", "text": text}]

    rows = [{"prompt": [{"role": "user", "content": blocks("What colour?")}],
             "chosen": [{"role": "assistant", "content": blocks("red")}],
             "rejected": [{"role": "assistant", "content": blocks("blue")}]}] * 4
    strings = [{"prompt": [{"role": "user", "content": "What colour?"}],
                "chosen": [{"role": "assistant", "content": "red"}],
                "rejected": [{"role": "assistant", "content": "blue"}]}] * 4
    kwargs = dict(model=tiny_model(num_hidden_layers=1), processing_class=tiny_tokenizer(), args=_dpo_config(tmp_path))
    ours = DPOTrainer(train_dataset=Dataset.from_list(rows), **kwargs).train_dataset[0]
    assert ours == DPOTrainer(train_dataset=Dataset.from_list(strings), **kwargs).train_dataset[0]
    unpaired = [{"prompt": r["prompt"], "completion": r["chosen"], "label": i % 2 == 0} for i, r in enumerate(rows)]
    unpaired[3] = {**unpaired[3], "completion": [{"role": "assistant", "content": [{"type": "image"}]}]}
    with pytest.raises(ValueError, match=r"Row 3 of the train dataset: message 0 of column 'completion'.*'image' block"):
        KTOTrainer(model=tiny_model(num_hidden_layers=1), processing_class=tiny_tokenizer(),
                   args=KTOConfig(output_dir=str(tmp_path / "kto"), report_to="none"),
                   train_dataset=Dataset.from_list(unpaired))


def test_reward_text_blocks_render_as_strings(tmp_path):
    """The reward data path (the same preference preparation as DPO) renders text content blocks as strings."""
    from transformers import AutoModelForSequenceClassification

    from trl import RewardConfig, RewardTrainer
    from trl.models.tiny import tiny_model, tiny_tokenizer

    def blocks(text):
        return [{"type": "text", "text": text}]

    def rows(content):
        return [{"prompt": [{"role": "user", "content": content("What colour?")}],
                 "chosen": [{"role": "assistant", "content": content("red")}],
                 "rejected": [{"role": "assistant", "content": content("blue")}]}] * 4

    config = tiny_model(num_hidden_layers=1).config
    config.num_labels = 1
    prepared = [
        RewardTrainer(model=AutoModelForSequenceClassification.from_config(config), processing_class=tiny_tokenizer(),
                      args=RewardConfig(output_dir=str(tmp_path), report_to="none"),
                      train_dataset=Dataset.from_list(rows(content))).train_dataset[0]
        for content in (blocks, lambda text: text)
    ]
    assert prepared[0] == prepared[1]

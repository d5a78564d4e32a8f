"""SFT of vision-language models (trl/data/vision.py) on the three tiny VLM styles of trl/models/tiny_vlm.py, plus the
text-model side of the contract: content blocks rendered or refused, image data with a text model refused."""

import io

import pytest
import torch
from datasets import Dataset

pytest.importorskip("PIL")
from PIL import Image

from trl import SFTConfig, SFTTrainer
from trl.data.collators import IGNORE_INDEX
from trl.models.tiny import tiny_model, tiny_tokenizer
from trl.models.tiny_vlm import TINY_VLM_STYLES, tiny_vlm
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

METRICS = {"loss", "entropy", "mean_token_accuracy", "num_tokens", "grad_norm", "learning_rate", "epoch"}
COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0), "yellow": (255, 255, 0)}


def _image(colour: str, size=(28, 28)):
    return Image.new("RGB", size, COLOURS[colour])


def _messages_rows(n=8, size=(28, 28)):
    names = list(COLOURS)
    return [{"messages": [{"role": "user", "content": "What colour is this?"},
                          {"role": "assistant", "content": names[i % 4]}],
             "images": [_image(names[i % 4], size)]} for i in range(n)]


def _config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3,
                  logging_steps=1, report_to="none", save_strategy="no", max_length=128, seed=0)
    values.update(overrides)
    return SFTConfig(**values)


def _labelled(batch, processor, row=0):
    return processor.tokenizer.decode([t for t in batch["labels"][row].tolist() if t != IGNORE_INDEX])


# ---- text models ------------------------------------------------------------------------------------------------------


def test_text_blocks_are_joined_for_a_string_template(tmp_path):
    blocks = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "What "},
                                                          {"type": "text", "text": "colour?"}]},
                            {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}] * 4
    strings = [{"messages": [{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "red"}]}] * 4
    tokenizer = tiny_tokenizer()
    kwargs = dict(model=tiny_model(num_hidden_layers=1), processing_class=tokenizer, args=_config(tmp_path))
    ours = SFTTrainer(train_dataset=Dataset.from_list(blocks), **kwargs)
    plain = SFTTrainer(train_dataset=Dataset.from_list(strings), **kwargs)
    assert ours.train_dataset[0]["input_ids"] == plain.train_dataset[0]["input_ids"]


def test_image_block_with_a_text_tokenizer_names_the_row(tmp_path):
    rows = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}] * 2
    rows.append({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "colour?"}]},
                              {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]})
    with pytest.raises(ValueError, match=r"Row 2 of the train dataset: message 0 .*'image' block.*processor"):
        SFTTrainer(model=tiny_model(num_hidden_layers=1), processing_class=tiny_tokenizer(), args=_config(tmp_path),
                   train_dataset=Dataset.from_list(rows))


def test_image_column_with_a_text_model_still_raises(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "colour?"}, {"role": "assistant", "content": "red"}],
             "images": [_image("red")]}] * 2
    with pytest.raises(ValueError, match="'images' column"):
        SFTTrainer(model=tiny_model(num_hidden_layers=1), processing_class=tiny_tokenizer(), args=_config(tmp_path),
                   train_dataset=Dataset.from_list(rows))


# ---- vision-language models ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", TINY_VLM_STYLES)
def test_vlm_trains(tmp_path, style):
    model, processor = tiny_vlm(style)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(model=model, processing_class=processor, args=_config(tmp_path),
                         train_dataset=Dataset.from_list(_messages_rows()))
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor([log["loss"] for log in logs])))
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert METRICS <= set(logs[0])
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any(n.startswith("lm_head") for n in moved)
    vision = [n for n in moved if "vision" in n or "multi_modal_projector" in n or "visual" in n or "connector" in n]
    assert vision, "the vision tower / projector got no gradient: the images did not reach the loss"


@pytest.mark.parametrize("style", TINY_VLM_STYLES)
def test_image_tokens_never_enter_the_labels(style):
    _, processor = tiny_vlm(style)
    batch = DataCollatorForVisionLanguageModeling(processor)(_messages_rows(2, size=(56, 40)))
    image_ids = {processor.image_token_id}
    ids, labels = batch["input_ids"], batch["labels"]
    assert any((ids == t).any() for t in image_ids)
    for t in image_ids:
        assert not (labels == t).any()
    assert not (labels[batch["mm_token_type_ids"] != 0] != IGNORE_INDEX).any()
    # everything else of a language-modelling row is trained
    text = _labelled(batch, processor)
    assert "What colour is this?" in text and "red<|im_end|>" in text


@pytest.mark.parametrize("style", TINY_VLM_STYLES)
def test_assistant_and_completion_only(style):
    _, processor = tiny_vlm(style)
    rows = _messages_rows(2)
    batch = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(rows)
    assert _labelled(batch, processor, 0) == "red<|im_end|>" and _labelled(batch, processor, 1) == "blue<|im_end|>"
    prompt_completion = [{"prompt": r["messages"][:1], "completion": r["messages"][1:], "image": r["images"][0]}
                         for r in rows]
    batch = DataCollatorForVisionLanguageModeling(processor)(prompt_completion)
    # the completion as the text path marks it (trl.data.tokenize): from the assistant text on
    assert _labelled(batch, processor, 0).startswith("red<|im_end|>")
    assert "colour" not in _labelled(batch, processor, 0)
    full = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=False)(prompt_completion)
    assert "What colour is this?" in _labelled(full, processor, 0)


@pytest.mark.parametrize("style", TINY_VLM_STYLES)
def test_loss_equals_a_naive_full_logits_reference(tmp_path, style):
    model, processor = tiny_vlm(style)
    model = model.double()
    rows = _messages_rows(3, size=(56, 28))
    rows[1]["messages"][1]["content"] = "a much longer answer than the others"
    trainer = SFTTrainer(model=model, processing_class=processor, args=_config(tmp_path, assistant_only_loss=True),
                         train_dataset=Dataset.from_list(rows))
    batch = trainer.data_collator(rows)
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}
    model.eval()
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "token_counts")}
        if style != "qwen2_vl":
            inputs.pop("mm_token_type_ids")
        logits = model(**inputs).logits  # (B, T, V)
    labels = batch["labels"][:, 1:]
    reference = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                  ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(ours, reference, rtol=1e-7, atol=1e-7)  # float64 model


def test_qwen2_vl_grids_follow_the_rows():
    _, processor = tiny_vlm("qwen2_vl")
    rows = [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"},
                                                       {"type": "image"}]},
                          {"role": "assistant", "content": "two"}], "images": [_image("red", (56, 56)),
                                                                               _image("blue", (28, 28))]},
            {"messages": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "red"}],
             "images": [_image("green", (56, 28))]}]
    batch = DataCollatorForVisionLanguageModeling(processor)(rows)
    grids = batch["image_grid_thw"]
    assert grids.tolist() == [[1, 4, 4], [1, 2, 2], [1, 2, 4]]  # one grid per image, in row order
    assert batch["pixel_values"].shape[0] == int(grids.prod(-1).sum())
    per_row = (batch["input_ids"] == processor.image_token_id).sum(-1).tolist()
    assert per_row == [(16 + 4) // 4, 8 // 4]  # 2x2 patches merge into one token


@pytest.mark.parametrize("form", ["path", "bytes"])
def test_images_as_paths_or_bytes(tmp_path, form):
    _, processor = tiny_vlm("llava")
    path = tmp_path / "red.png"
    _image("red").save(path)
    value = str(path) if form == "path" else path.read_bytes()
    rows = [{"messages": _messages_rows(1)[0]["messages"], "images": [value]}]
    pil_rows = _messages_rows(1)
    ours, reference = DataCollatorForVisionLanguageModeling(processor)(rows), \
        DataCollatorForVisionLanguageModeling(processor)(pil_rows)
    torch.testing.assert_close(ours["pixel_values"], reference["pixel_values"])
    assert torch.equal(ours["input_ids"], reference["input_ids"])
    buffer = io.BytesIO()
    _image("red").save(buffer, format="PNG")
    assert Dataset.from_list([{"images": [buffer.getvalue()]}])[0]["images"][0] == buffer.getvalue()


def test_truncation_through_an_image_is_an_error_at_construction(tmp_path):
    model, processor = tiny_vlm("qwen2_vl")
    question = {"type": "text", "text": "A long question before the picture: what colour is it?"}
    rows = [{"messages": [{"role": "user", "content": [question, {"type": "image"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
             "images": [_image("red", (56, 56))]}] * 2
    short = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour? " * 9}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
             "images": [_image("red")]}
    with pytest.raises(ValueError, match=r"row 0 \(.*image tokens run to position \d+, past max_length=20"):
        SFTTrainer(model=model, processing_class=processor, args=_config(tmp_path, max_length=20),
                   train_dataset=Dataset.from_list(rows))
    # a later row is named by its index in the dataset when its batch is collated
    trainer = SFTTrainer(model=model, processing_class=processor, args=_config(tmp_path, max_length=20),
                         train_dataset=Dataset.from_list([short, short] + rows))
    with pytest.raises(ValueError, match=r"^row 2 \('A long question"):
        trainer.data_collator([trainer.train_dataset[1], trainer.train_dataset[2]])
    # short rows are cut at max_length (keep_start) when no image token is past it
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert batch["input_ids"].shape[1] == 20 and batch["labels"].shape[1] == 20


@pytest.mark.parametrize("setting", [dict(packing=True), dict(padding_free=True), dict(truncation_mode="keep_end")])
def test_vlm_rejects_packing_and_padding_free(tmp_path, setting):
    model, processor = tiny_vlm("llava")
    name = next(iter(setting))
    with pytest.raises(ValueError, match=name):
        SFTTrainer(model=model, processing_class=processor, args=_config(tmp_path, **setting),
                   train_dataset=Dataset.from_list(_messages_rows(2)))


def test_vlm_from_a_local_folder_loads_its_processor(tmp_path):
    from trl.models.tiny_vlm import save_tiny_vlm

    path = save_tiny_vlm(tmp_path / "tiny-llava", "llava")
    trainer = SFTTrainer(model=str(path), args=_config(tmp_path, max_steps=1),
                         train_dataset=Dataset.from_list(_messages_rows(4)))
    assert type(trainer.processing_class).__name__ == "LlavaProcessor"
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))


@pytest.mark.parametrize("style", TINY_VLM_STYLES)
def test_rows_without_images_and_standard_text(style):
    _, processor = tiny_vlm(style)
    rows = _messages_rows(1) + [{"messages": [{"role": "user", "content": "No picture here"},
                                              {"role": "assistant", "content": "fine"}], "images": []}]
    batch = DataCollatorForVisionLanguageModeling(processor)(rows)
    assert "No picture here" in _labelled(batch, processor, 1)
    placeholder = "<|vision_start|><|image_pad|><|vision_end|>" if style == "qwen2_vl" else processor.image_token
    batch = DataCollatorForVisionLanguageModeling(processor)([{"text": placeholder + "A red square.",
                                                              "image": _image("red")}])
    assert _labelled(batch, processor) == "A red square.<|im_end|>"  # eos appended, image tokens untrained


def test_vlm_evaluates_and_names_a_placeholder_mismatch(tmp_path):
    model, processor = tiny_vlm("idefics3")
    trainer = SFTTrainer(model=model, processing_class=processor, args=_config(tmp_path),
                         train_dataset=Dataset.from_list(_messages_rows(4)),
                         eval_dataset=Dataset.from_list(_messages_rows(4)))
    metrics = trainer.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"])) and "eval_mean_token_accuracy" in metrics
    two_placeholders = [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                                   {"type": "text", "text": "colour?"}]},
                                      {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
                         "images": [_image("red")]}]
    with pytest.raises(ValueError, match=r"row 0 of the batch .*2 empty image placeholder\(s\) but 1 image"):
        DataCollatorForVisionLanguageModeling(processor)(two_placeholders)


def test_text_blocks_pass_through_a_template_that_renders_them():
    from trl.data.vision import template_renders_blocks, text_block_messages
    from trl.models.tiny_vlm import chat_template

    tokenizer = tiny_tokenizer()
    assert not template_renders_blocks(tokenizer)
    tokenizer.chat_template = chat_template("llava")  # renders string content and text blocks alike
    assert template_renders_blocks(tokenizer)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert text_block_messages(messages, tokenizer) is messages


def test_gradient_accumulation_does_not_change_the_step(tmp_path):
    """Rows with images of different sizes (Qwen2-VL: different grids) in one batch of 4, or in 2 micro-batches of 2:
    the same update, since the loss is normalised by the tokens of the whole step."""
    rows = _messages_rows(4)
    for i, size in enumerate([(56, 56), (28, 28), (56, 28), (28, 56)]):
        rows[i]["images"] = [_image(list(COLOURS)[i], size)]
    rows[2]["messages"][1]["content"] = "a longer answer to weigh this row more"
    params = []
    for batch_size, steps in ((4, 1), (2, 2)):
        model, processor = tiny_vlm("qwen2_vl")
        model = model.double()
        args = _config(tmp_path, max_steps=1, per_device_train_batch_size=batch_size, gradient_accumulation_steps=steps,
                       optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0)
        trainer = SFTTrainer(model=model, processing_class=processor, args=args, train_dataset=Dataset.from_list(rows))
        trainer.train()
        params.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for name, value in params[0].items():
        torch.testing.assert_close(value, params[1][name], rtol=1e-9, atol=1e-10, msg=name)


def test_vlm_with_a_lora_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    model, processor = tiny_vlm("qwen2_vl")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(model=model, processing_class=processor, args=_config(tmp_path, max_steps=2),
                         train_dataset=Dataset.from_list(_messages_rows()),
                         peft_config=peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor([log["loss"] for log in logs])))
    named = dict(trainer.model.named_parameters())
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in named.items())  # lora_B starts at zero
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in named.items()
            if "lora_" not in n}
    frozen = [n for n in before if n in base]
    assert len(frozen) == len(before)  # every original weight found, and none of them moved
    assert all(torch.equal(base[n], before[n]) for n in frozen)

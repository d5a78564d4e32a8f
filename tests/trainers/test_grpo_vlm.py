"""GRPO and RLOO with images (trl/generation/vision.py, trl/data/vision.py) on the tiny VLM styles of
trl/models/tiny_vlm.py: training moves the policy, generation conditions on each row's image (equal to
`model.generate` on the same processed inputs), the training forward's log-probs equal the sampling ones, image tokens
are never sampled, the rewards get the images, and what stays unsupported is refused at construction."""

import pytest
import torch
from datasets import Dataset

pytest.importorskip("PIL")
from PIL import Image

from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.generation.base import SamplingConfig
from trl.generation.vision import VisionRollouts, suppressed_token_ids
from trl.models.tiny_vlm import tiny_vlm

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0), "yellow": (255, 255, 0)}
STYLES = ["qwen2_vl", "llava", "idefics3"]


def _rows(n=4, sizes=((28, 28),), column="image", blocks=True):
    names = list(COLOURS)
    rows = []
    for i in range(n):
        image = Image.new("RGB", sizes[i % len(sizes)], COLOURS[names[i % 4]])
        content = [{"type": "image"}, {"type": "text", "text": "What colour?"}] if blocks else "What colour?"
        rows.append({"prompt": [{"role": "user", "content": content}],
                     column: image if column == "image" else [image], "answer": names[i % 4]})
    return rows


def _config(tmp_path, cls=GRPOConfig, **overrides):
    values = {"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 4,
              "num_generations": 2, "max_completion_length": 6, "learning_rate": 1e-2, "logging_steps": 1,
              "report_to": "none", "save_strategy": "no", "seed": 0, "guards": False}
    values.update(overrides)
    return cls(**values)


def length_reward(completions, **kwargs):
    return [float(len(c[-1]["content"])) for c in completions]


def text_hash_reward(completions, **kwargs):
    """Differs between almost any two completions (so no group has one reward)."""
    return [float(sum(map(ord, c[-1]["content"])) % 97) for c in completions]


def _trainer(tmp_path, style="qwen2_vl", cls=GRPOTrainer, config_cls=GRPOConfig, rows=None, reward=length_reward,
             **overrides):
    model, processor = tiny_vlm(style)
    return cls(model=model, processing_class=processor, reward_funcs=reward,
               args=_config(tmp_path, config_cls, **overrides), train_dataset=Dataset.from_list(rows or _rows()))


@pytest.mark.parametrize("style", STYLES)
def test_grpo_trains_with_images(tmp_path, style):
    received = []

    def colour_reward(completions, image, answer, **kwargs):
        received.append((image, answer))
        return [float(a in c[-1]["content"]) + len(c[-1]["content"]) / 10 for c, a in zip(completions, answer)]

    trainer = _trainer(tmp_path, style, reward=colour_reward, beta=0.1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = {k for entry in trainer.state.log_history for k in entry}
    assert {"loss", "kl", "entropy", "reward", "completions/mean_length", "rewards/colour_reward/mean"} <= logs
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert all(torch.isfinite(torch.tensor(losses)))
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert any("lm_head" in n for n in moved)
    # the rewards got each completion's PIL image (the dataset's own column) next to the other columns
    images, answers = received[0]
    assert all(isinstance(im, Image.Image) for im in images)
    assert [im.getpixel((0, 0)) for im in images] == [COLOURS[a] for a in answers]


def test_rloo_trains_with_images_and_evaluates(tmp_path):
    # top_k: sampling is filtered, so the old log-probs of the KL penalty are recomputed by a vision forward
    model, processor = tiny_vlm("llava")
    trainer = RLOOTrainer(model=model, processing_class=processor, reward_funcs=text_hash_reward,
                          args=_config(tmp_path, RLOOConfig, top_k=50, num_iterations=2),
                          train_dataset=Dataset.from_list(_rows()), eval_dataset=Dataset.from_list(_rows(2)))
    reference = {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    assert all(torch.equal(p, reference[n]) for n, p in trainer.ref_model.named_parameters())
    assert "kl" in {k for entry in trainer.state.log_history for k in entry}
    metrics = trainer.evaluate()
    assert "eval_reward" in metrics and torch.isfinite(torch.tensor(metrics["eval_loss"]))


def _rows_in_sampler_layout(trainer, rows=4, n=2):
    data = trainer.train_dataset
    return [data[i] for i in range(rows) for _ in range(n)]


@pytest.mark.parametrize("style", STYLES)
def test_training_logps_equal_sampling_logps(tmp_path, style):
    # Qwen2-VL: two image sizes (grids of 4 and 16 patches) in one batch; every style: rows with the same prompt ids
    # but different images side by side, so a prompt prefilled with the wrong image would show here
    sizes = ((28, 28), (56, 56)) if style == "qwen2_vl" else ((28, 28),)
    trainer = _trainer(tmp_path, style, rows=_rows(4, sizes), max_completion_length=8)
    trainer.model.float()
    rows = _rows_in_sampler_layout(trainer)
    rollout = trainer._sample(rows, torch.Generator().manual_seed(0), mode="train")
    logps, entropy, _ = trainer._forward_logps(trainer.model, rollout)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(logps[mask], rollout.sampling_logps[mask], atol=1e-5, rtol=0)
    assert torch.isfinite(entropy[mask]).all()
    # the rows' images differ, so their prompts' next-token distributions do too
    assert len({tuple(r) for r in rollout.prompt_ids.tolist()}) < len({im for im in rollout.columns["_vision_image"]})


@pytest.mark.parametrize("style", ["qwen2_vl", "llava", "idefics3"])
def test_greedy_generation_equals_model_generate(style):
    model, processor = tiny_vlm(style, seed=1)
    model.eval()
    vision = VisionRollouts(processor, "GRPOTrainer")
    rows = _rows(2, ((28, 28), (56, 56)) if style == "qwen2_vl" else ((28, 28),))
    from trl.data.vision import vision_prompt_ids

    rows = [{**row, "prompt_ids": vision_prompt_ids(row, processor)} for row in rows]
    sampling = SamplingConfig(max_completion_length=6, eos_token_ids=(2,), pad_token_id=3, do_sample=False)
    rollout = vision.generate(model, [rows[0], rows[0], rows[1]], sampling)
    for i, row in enumerate([rows[0], rows[0], rows[1]]):
        text = rollout.columns["_vision_text"][i]
        image = row["image"]
        inputs = processor(text=[text], images=[[image]], return_tensors="pt", add_special_tokens=False,
                           **({"return_mm_token_type_ids": True} if style == "qwen2_vl" else {}))
        expected = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=2, pad_token_id=3,
                                  suppress_tokens=vision.suppress)[0, inputs["input_ids"].shape[1]:]
        got = rollout.completion_ids[i, : int(rollout.completion_mask[i].sum())]
        assert got.tolist() == expected.tolist()[: len(got)] and len(got) == len(expected)


@pytest.mark.parametrize("style", ["qwen2_vl", "llava", "idefics3"])
def test_image_tokens_are_never_sampled(tmp_path, style):
    trainer = _trainer(tmp_path, style, max_completion_length=8)
    suppress = suppressed_token_ids(trainer.processing_class)
    assert trainer.processing_class.image_token_id in suppress
    head = trainer.model.get_output_embeddings()
    with torch.no_grad():  # make the image tokens by far the likeliest next tokens
        head.weight[suppress] = head.weight[suppress] * 0 + 5 * head.weight.abs().max()
    rows = _rows_in_sampler_layout(trainer)
    rollout = trainer._sample(rows, torch.Generator().manual_seed(0), mode="train")
    sampled = rollout.completion_ids[rollout.completion_mask.bool()]
    assert not torch.isin(sampled, torch.tensor(suppress)).any()
    # and the training forward scores them under the same suppressed distribution
    logps, _, _ = trainer._forward_logps(trainer.model, rollout)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(logps[mask], rollout.sampling_logps[mask], atol=1e-5, rtol=0)


def test_log_completions_records_the_image(tmp_path):
    trainer = _trainer(tmp_path, "llava", log_completions=True, max_steps=1)
    trainer.train()
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "out" / "completions" / "completions_00001.parquet")
    assert frame["image"].str.match(r"row \d+ \([0-9a-f]{12}\)").all()
    assert frame["prompt"].str.contains("What colour?").all()


def test_images_column_and_string_content(tmp_path):
    trainer = _trainer(tmp_path, "llava", rows=_rows(4, column="images", blocks=False), max_steps=1)
    # one placeholder per image at the start of the user message: the prompt holds the image's 4 tokens
    ids = trainer.train_dataset[0]["prompt_ids"]
    assert ids.count(trainer.processing_class.image_token_id) == 4
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


@pytest.mark.parametrize("setting, match", [
    ({"tools": [lambda x: x]}, "tools"),
    ({"rollout_func": lambda prompts, trainer: {}}, "rollout_func"),
])
def test_unsupported_settings_are_refused(tmp_path, setting, match):
    model, processor = tiny_vlm("llava")
    with pytest.raises(ValueError, match=f"multimodal processor.*{match}"):
        GRPOTrainer(model=model, processing_class=processor, reward_funcs=length_reward, args=_config(tmp_path),
                    train_dataset=Dataset.from_list(_rows()), **setting)


def test_bad_vision_data_is_refused(tmp_path):
    model, processor = tiny_vlm("llava")
    standard = [{"prompt": "What colour?", "image": row["image"]} for row in _rows()]
    with pytest.raises(ValueError, match="Row 0 of the train dataset: a vision prompt must be conversational"):
        GRPOTrainer(model=model, processing_class=processor, reward_funcs=length_reward, args=_config(tmp_path),
                    train_dataset=Dataset.from_list(standard))
    no_images = [{"prompt": row["prompt"]} for row in _rows()]
    with pytest.raises(ValueError, match="no 'image' or 'images' column"):
        GRPOTrainer(model=model, processing_class=processor, reward_funcs=length_reward, args=_config(tmp_path),
                    train_dataset=Dataset.from_list(no_images))
    streamed = Dataset.from_list(_rows()).to_iterable_dataset()
    with pytest.raises(TypeError, match="streaming and other datasets are not supported with images"):
        GRPOTrainer(model=model, processing_class=processor, reward_funcs=length_reward,
                    args=_config(tmp_path, max_steps=1), train_dataset=streamed)
    two_blocks = [{**row, "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                                  {"type": "text", "text": "?"}]}]} for row in _rows()]
    with pytest.raises(ValueError, match="Row 0 of the train dataset"):
        GRPOTrainer(model=model, processing_class=processor, reward_funcs=length_reward, args=_config(tmp_path),
                    train_dataset=Dataset.from_list(two_blocks))


def test_vlm_loaded_from_a_folder(tmp_path):
    from trl.models.tiny_vlm import save_tiny_vlm

    path = save_tiny_vlm(tmp_path / "vlm", "llava")
    trainer = GRPOTrainer(model=str(path), reward_funcs=length_reward, args=_config(tmp_path, max_steps=1),
                          train_dataset=Dataset.from_list(_rows()))
    assert trainer._vision is not None
    assert type(trainer.processing_class).__name__.endswith("Processor")  # the processor was loaded, not a tokenizer
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert {"loss", "reward", "completions/mean_length"} <= {k for e in trainer.state.log_history for k in e}
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_remove_unused_columns_keeps_the_images(tmp_path):
    seen = []

    def reward(completions, **kwargs):
        seen.append(sorted(kwargs))
        return length_reward(completions)

    trainer = _trainer(tmp_path, "llava", reward=reward, remove_unused_columns=True, max_steps=1)
    trainer.train()
    assert "image" in seen[0] and "answer" not in seen[0] and not any(k.startswith("_vision") for k in seen[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"args": __import__("types").SimpleNamespace(use_vllm=True)}, "use_vllm"),
    ({"scores_rewards": False}, "only GRPO and RLOO"),
    ({"environment_factory": object}, "environment_factory"),
])
def test_check_supported_names_what_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VisionRollouts.check_supported("SomeTrainer", **kwargs)
    VisionRollouts.check_supported("GRPOTrainer")  # the plain setup goes ahead


@pytest.mark.parametrize("style", ["qwen2_vl", "idefics3"])
def test_two_images_per_row_of_different_sizes(tmp_path, style):
    # Qwen2-VL: rows with 2 and 4 `image_grid_thw` rows' worth of patches each; Idefics3: tiles padded per row
    rows = []
    for i, colour in enumerate(COLOURS):
        second = Image.new("RGB", (56, 28) if i % 2 else (28, 56), (9, 9, 9))
        rows.append({"prompt": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"},
                                                             {"type": "image"}, {"type": "text", "text": "?"}]}],
                     "images": [Image.new("RGB", (28, 28), COLOURS[colour]), second]})
    trainer = _trainer(tmp_path, style, rows=rows, max_completion_length=8)
    rollout = trainer._sample(_rows_in_sampler_layout(trainer), torch.Generator().manual_seed(0), mode="train")
    logps, _, _ = trainer._forward_logps(trainer.model, rollout.select([1, 2, 5, 6]).trim())  # rows of 3 prompts
    mask = rollout.select([1, 2, 5, 6]).trim().completion_mask.bool()
    torch.testing.assert_close(logps[mask], rollout.select([1, 2, 5, 6]).trim().sampling_logps[mask], atol=1e-5,
                               rtol=0)


def test_lora_with_beta_scores_the_reference_without_adapters(tmp_path):
    pytest.importorskip("peft")
    from peft import LoraConfig

    model, processor = tiny_vlm("qwen2_vl")
    trainer = GRPOTrainer(model=model, processing_class=processor, reward_funcs=text_hash_reward,
                          args=_config(tmp_path, beta=0.1, max_steps=1, max_completion_length=8),
                          train_dataset=Dataset.from_list(_rows()),
                          peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    rows = _rows_in_sampler_layout(trainer)
    rollout = trainer._sample(rows, torch.Generator().manual_seed(0), mode="train")
    logps, _, _ = trainer._forward_logps(trainer.model, rollout)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(logps[mask], rollout.sampling_logps[mask], atol=1e-5, rtol=0)
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert "kl" in trainer.state.log_history[0]
    assert any(not torch.equal(p, lora[n]) for n, p in trainer.model.named_parameters() if "lora_B" in n)


def test_text_model_renders_text_blocks_and_names_an_image_block(tmp_path):
    """A text model's prompts given as text content blocks are rendered as the equivalent strings; an image block
    without a vision-language processor is an error naming the row."""
    from trl.models.tiny import tiny_model, tiny_tokenizer

    def trainer(prompts):
        return GRPOTrainer(model=tiny_model(num_hidden_layers=1), processing_class=tiny_tokenizer(),
                           reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
                           args=_config(tmp_path), train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))

    blocks = [[{"role": "user", "content": [{"type": "text", "text": "What "}, {"type": "text", "text": "colour?"}]}]]
    strings = [[{"role": "user", "content": "What colour?"}]]
    assert trainer(blocks * 4).train_dataset["prompt_ids"] == trainer(strings * 4).train_dataset["prompt_ids"]
    with_image = blocks * 3 + [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]]
    with pytest.raises(ValueError, match=r"Row 3 of the train dataset: message 0 of column 'prompt'"):
        trainer(with_image)


def test_two_processes_train_with_images_in_sync(tmp_path):
    """Under DDP (2 gloo processes, each with its own prompts and images) the training forward goes through the
    wrapper, so gradients are averaged: both ranks end with the same, moved, weights."""
    from .sft_one_step import run_two_ranks

    prefix = str(tmp_path / "vlm")
    run_two_ranks("vlm_ddp_steps.py", prefix)
    ranks = [torch.load(f"{prefix}.{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["world_size"] == 2
    assert any("lm_head" in n for n in ranks[0]["moved"]) and any("visual" in n for n in ranks[0]["moved"])
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name


def test_resume_with_images_repeats_the_uninterrupted_run(tmp_path):
    """The rollout buffer holds the rows' PIL images; a checkpoint stores them as lossless PNG bytes (read back with
    weights_only=True), so a run stopped in the middle of a generation batch resumes exactly."""
    import warnings

    def run(resume=None):
        trainer = _trainer(tmp_path, "qwen2_vl", max_steps=3, per_device_train_batch_size=2, steps_per_generation=2,
                           save_strategy="steps", save_steps=1, output_dir=str(tmp_path / "out"))
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # neither "cannot store safely" nor "start afresh"
            warnings.filterwarnings("ignore", message=".*(pin_memory|processor|slow|fast).*")
            trainer.train(resume_from_checkpoint=resume)
        return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}

    full = run()
    resumed = run(resume=str(tmp_path / "out" / "checkpoint-1"))
    for step in (2, 3):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-7)


def test_images_survive_the_checkpoint_format():
    from trl import checkpoints

    images = [Image.new("RGB", (5, 3), (10, 20, 30)), Image.new("L", (2, 2), 7)]
    plain = checkpoints.images_to_plain({"columns": {"image": images, "answer": ["red", "blue"]}})
    assert checkpoints.find_unsafe(plain) is None
    back = checkpoints.plain_to_images(plain)["columns"]
    assert back["answer"] == ["red", "blue"]
    assert [(im.mode, im.size, list(im.getdata())) for im in back["image"]] == [
        (im.mode, im.size, list(im.getdata())) for im in images]

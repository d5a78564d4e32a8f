"""Tiny vision-language models with random weights, built offline: the test and demo models of `trl.data.vision`.

Three styles, one per way a processor turns an image into tokens:

| style       | model                              | image tokens                                                      |
|-------------|------------------------------------|-------------------------------------------------------------------|
| `"qwen2_vl"`| `Qwen2VLForConditionalGeneration`  | grid-based: `image_grid_thw` patches merged 2x2, as many tokens as the image's size needs |
| `"idefics3"`| `Idefics3ForConditionalGeneration` | image splitting: a grid of tiles plus a global view, each `image_seq_len` tokens with row/col tags |
| `"llava"`   | `LlavaForConditionalGeneration`    | fixed patches: every image is resized to one size and gives a fixed number of tokens |

Each processor is assembled from the bundled tokenizer (`trl/assets/tokenizer`, with the family's image special tokens
added), the family's image processor with a small configuration, and a chat template from `trl/assets/vlm/` (ChatML
turns; string content or content blocks; an image block renders as the family's image placeholder). The text models
are 2 layers, hidden 64, so a few training steps take well under a second on a CPU.

Example:
    ```python
    >>> from trl.models.tiny_vlm import tiny_vlm
    >>> model, processor = tiny_vlm("qwen2_vl")
    >>> type(model).__name__, type(processor).__name__
    ('Qwen2VLForConditionalGeneration', 'TinyQwen2VLProcessor')
    ```
"""

from __future__ import annotations

from pathlib import Path

from .tiny import ASSETS_DIR, tiny_tokenizer

TINY_VLM_STYLES = ("qwen2_vl", "idefics3", "llava")
TEMPLATES_DIR = ASSETS_DIR / "vlm"
_VOCAB_SIZE = 512  # the bundled tokenizer's 415 tokens plus the image tokens, rounded up
_TEXT = dict(vocab_size=_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=2048, eos_token_id=2, pad_token_id=3, bos_token_id=None,
             tie_word_embeddings=False)
IMAGE_SIZE = 28  # the vision towers' patch size is 14: a 28x28 image is 2x2 patches


def chat_template(style: str) -> str:
    """The chat template of a tiny VLM style, read from `trl/assets/vlm/<style>.jinja`."""
    _check_style(style)
    return (TEMPLATES_DIR / f"{style}.jinja").read_text()


def _check_style(style: str) -> None:
    if style not in TINY_VLM_STYLES:
        raise ValueError(f"Unknown tiny VLM style {style!r}; expected one of {TINY_VLM_STYLES}.")


def _tokenizer(tokens: list[str]):
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
    return tokenizer


def tiny_vlm_processor(style: str = "qwen2_vl"):
    """The processor of a tiny VLM style (see the module docstring), assembled offline.

    Example:
        ```python
        >>> processor = tiny_vlm_processor("llava")
        >>> processor.image_token
        '<image>'
        ```
    """
    _check_style(style)
    return _PROCESSORS[style]()


def _qwen2_vl_processor():
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class TinyQwen2VLProcessor(Qwen2VLProcessor):
        """`Qwen2VLProcessor` without its video processor (which needs torchvision): images only."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    tokenizer = _tokenizer(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    # 28x28 .. 56x56 pixels: 4 to 16 patches of 14x14, merged 2x2 into 1 to 4 tokens
    image_processor = Qwen2VLImageProcessorPil(min_pixels=IMAGE_SIZE**2, max_pixels=(2 * IMAGE_SIZE) ** 2,
                                               patch_size=14, merge_size=2, temporal_patch_size=2)
    return TinyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=chat_template("qwen2_vl"))


def _idefics3_processor():
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    rows_cols = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tokenizer = _tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *rows_cols])
    # an image up to 56 pixels is split into tiles of 28 (2x2 at most) plus the global 28x28 view; each tile is 2x2
    # patches, pixel-shuffled by 2 into one token
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": 2 * IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE},
        do_resize=True,
    )
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=1,
                             chat_template=chat_template("idefics3"))


def _llava_processor():
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = _tokenizer(["<image>"])
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    # CLIP adds a CLS token (+1) that the "default" feature strategy drops again: 2x2 patches = 4 tokens per image
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=chat_template("llava"))


_PROCESSORS = {"qwen2_vl": _qwen2_vl_processor, "idefics3": _idefics3_processor, "llava": _llava_processor}


def tiny_vlm_config(style: str = "qwen2_vl", processor=None):
    """The `PretrainedConfig` of a tiny VLM style, with the image token ids of `processor` (built when not given)."""
    _check_style(style)
    processor = processor if processor is not None else tiny_vlm_processor(style)
    tokenizer = processor.tokenizer
    if style == "qwen2_vl":
        from transformers import Qwen2VLConfig

        text = dict(_TEXT, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
        return Qwen2VLConfig(
            text_config=text,
            vision_config=dict(depth=1, embed_dim=32, hidden_size=_TEXT["hidden_size"], num_heads=2, patch_size=14,
                               spatial_merge_size=2, temporal_patch_size=2),
            image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
            vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
            tie_word_embeddings=False,
        )
    if style == "idefics3":
        from transformers import Idefics3Config

        return Idefics3Config(
            text_config=dict(_TEXT, model_type="llama"),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=IMAGE_SIZE, patch_size=14),
            image_token_id=processor.image_token_id, scale_factor=2, tie_word_embeddings=False,
        )
    from transformers import LlavaConfig

    return LlavaConfig(
        text_config=dict(_TEXT, model_type="llama"),
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=14, projection_dim=32),
        image_token_id=processor.image_token_id, vision_feature_select_strategy="default", vision_feature_layer=-1,
        projector_hidden_act="gelu", tie_word_embeddings=False,
    )


def tiny_vlm(style: str = "qwen2_vl", seed: int = 0):
    """A tiny VLM of `style` with random weights, and its processor.

    Args:
        style (`str`, *optional*, defaults to `"qwen2_vl"`): one of `"qwen2_vl"`, `"idefics3"`, `"llava"`.
        seed (`int`, *optional*, defaults to `0`): seed for the random initialisation.

    Returns:
        `(model, processor)`.

    Example:
        ```python
        >>> model, processor = tiny_vlm("idefics3")
        >>> processor.image_seq_len
        1
        ```
    """
    import torch
    import transformers

    processor = tiny_vlm_processor(style)
    config = tiny_vlm_config(style, processor)
    model_class = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "idefics3": "Idefics3ForConditionalGeneration",
                   "llava": "LlavaForConditionalGeneration"}[style]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_class)(config)
    model.generation_config.eos_token_id = _TEXT["eos_token_id"]
    model.generation_config.pad_token_id = _TEXT["pad_token_id"]
    return model, processor


def save_tiny_vlm(path: str | Path, style: str = "qwen2_vl", seed: int = 0) -> Path:
    """Write a tiny VLM and its processor to `path`, so that it loads like any local checkpoint."""
    path = Path(path)
    model, processor = tiny_vlm(style, seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path

"""Tokenizers for template-family tests: the bundled tiny tokenizer with the test chat templates of
`tests/data/chat_templates/` (written in the style of the vendors' published templates, not copies)."""

from pathlib import Path

from trl.models.tiny import tiny_tokenizer

CHAT_TEMPLATES_DIR = Path(__file__).resolve().parent / "data" / "chat_templates"
LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
)


def chat_template(name: str) -> str:
    """The text of `tests/data/chat_templates/<name>.jinja`."""
    return (CHAT_TEMPLATES_DIR / f"{name}.jinja").read_text()


def qwen2_5_style_tokenizer():
    """Tiny tokenizer (already ChatML: `<|im_start|>`, eos `<|im_end|>`) with the Qwen2.5-style tool template."""
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = chat_template("qwen2_5_style")
    return tokenizer


def qwen3_style_tokenizer():
    """Tiny tokenizer with the Qwen3-style template (tools plus `<think>` reasoning)."""
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = chat_template("qwen3_style")
    return tokenizer


def llama3_style_tokenizer():
    """Tiny tokenizer with Llama 3's special tokens (bos `<|begin_of_text|>`, eos `<|eot_id|>`) and the
    Llama-3.1-style JSON tool template."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(list(LLAMA3_SPECIAL_TOKENS), special_tokens=True)
    tokenizer.bos_token = "<|begin_of_text|>"
    tokenizer.eos_token = "<|eot_id|>"
    tokenizer.chat_template = chat_template("llama3_1_style")
    return tokenizer

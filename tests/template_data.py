"""Tokenizers for template-family tests: the bundled tiny tokenizer with a family's special tokens, bos/eos as the
vendor sets them, and a chat template.

Two kinds of templates live in `tests/data/chat_templates/`:

- `real/<name>.jinja`: the vendors' published templates, verbatim (the `chat_template` of the model repository's
  tokenizer config or `chat_template.jinja`), each with a one-line Jinja comment naming the model repository and the
  public copy it was taken from. `real_chat_template(name)` returns the template without that comment, byte for byte
  what the vendor publishes. `REAL_TOKENIZERS` maps each name to a function building its tokenizer.
- `<name>_style.jinja`: test templates we wrote in a vendor's style (not copies), used by the older tests.
"""

from pathlib import Path

from trl.models.tiny import tiny_tokenizer

CHAT_TEMPLATES_DIR = Path(__file__).resolve().parent / "data" / "chat_templates"
REAL_TEMPLATES_DIR = CHAT_TEMPLATES_DIR / "real"
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


def real_chat_template(name: str) -> str:
    """The vendor's template `tests/data/chat_templates/real/<name>.jinja`, without its one-line source comment."""
    text = (REAL_TEMPLATES_DIR / f"{name}.jinja").read_text()
    header, rest = text.split("\n", 1)
    assert header.startswith("{#-") and header.endswith("-#}"), f"{name}.jinja must start with its source comment"
    return rest


def real_template_source(name: str) -> str:
    """The source comment of `real/<name>.jinja` (model repository and where the copy was taken from)."""
    return (REAL_TEMPLATES_DIR / f"{name}.jinja").read_text().split("\n", 1)[0][4:-4]


def family_tokenizer(template: str, tokens=(), bos: str | None = None, eos: str | None = None):
    """The tiny tokenizer with `tokens` added as special tokens, `bos`/`eos` set and `template` as chat template."""
    tokenizer = tiny_tokenizer()
    new = [token for token in tokens if token not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    if bos is not None:
        tokenizer.bos_token = bos
    if eos is not None:
        tokenizer.eos_token = eos
    tokenizer.chat_template = template
    return tokenizer


# -- vendor-style test templates (ours) -------------------------------------------------------------------------------


def qwen2_5_style_tokenizer():
    """Tiny tokenizer (already ChatML: `<|im_start|>`, eos `<|im_end|>`) with the Qwen2.5-style tool template."""
    return family_tokenizer(chat_template("qwen2_5_style"))


def qwen3_style_tokenizer():
    """Tiny tokenizer with the Qwen3-style template (tools plus `<think>` reasoning)."""
    return family_tokenizer(chat_template("qwen3_style"))


def llama3_style_tokenizer():
    """Tiny tokenizer with Llama 3's special tokens (bos `<|begin_of_text|>`, eos `<|eot_id|>`) and the
    Llama-3.1-style JSON tool template."""
    return family_tokenizer(chat_template("llama3_1_style"), LLAMA3_SPECIAL_TOKENS, "<|begin_of_text|>", "<|eot_id|>")


# -- the vendors' templates -------------------------------------------------------------------------------------------

QWEN_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
DEEPSEEK_TOKENS = (
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
)
GPT_OSS_TOKENS = (
    "<|startoftext|>",
    "<|start|>",
    "<|message|>",
    "<|channel|>",
    "<|constrain|>",
    "<|end|>",
    "<|call|>",
    "<|return|>",
)
GLM4_MOE_TOKENS = (
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "<tool_response>",
    "</tool_response>",
)
GEMMA_TOKENS = ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")
PHI3_TOKENS = ("<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
COHERE_TOKENS = (
    "<BOS_TOKEN>",
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|START_THINKING|>",
    "<|END_THINKING|>",
    "<|START_ACTION|>",
    "<|END_ACTION|>",
    "<|START_RESPONSE|>",
    "<|END_RESPONSE|>",
    "<|START_TOOL_RESULT|>",
    "<|END_TOOL_RESULT|>",
)
LFM2_TOKENS = (
    "<|startoftext|>",
    "<|tool_list_start|>",
    "<|tool_list_end|>",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
    "<|tool_response_start|>",
    "<|tool_response_end|>",
    "<think>",
    "</think>",
)


def qwen3_tokenizer():
    """Qwen3 (Qwen/Qwen3-0.6B): ChatML, eos `<|im_end|>`, no bos, `<think>` and `<tool_call>` tokens."""
    return family_tokenizer(real_chat_template("qwen3"), QWEN_TOKENS, eos="<|im_end|>")


def llama3_2_tokenizer():
    """Llama 3.2 (meta-llama/Llama-3.2-3B-Instruct): bos `<|begin_of_text|>`, eos `<|eot_id|>`."""
    return family_tokenizer(real_chat_template("llama3_2"), LLAMA3_SPECIAL_TOKENS, "<|begin_of_text|>", "<|eot_id|>")


def deepseek_r1_distill_tokenizer():
    """DeepSeek-R1-Distill-Qwen-32B: bos `<｜begin▁of▁sentence｜>`, eos `<｜end▁of▁sentence｜>`, DeepSeek's tool
    tokens."""
    return family_tokenizer(
        real_chat_template("deepseek_r1_distill"), DEEPSEEK_TOKENS, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    )


def gpt_oss_tokenizer():
    """GPT-OSS (openai/gpt-oss-120b, harmony format): bos `<|startoftext|>`, eos `<|return|>`; a turn also ends with
    `<|call|>` (tool call) or `<|end|>`."""
    return family_tokenizer(real_chat_template("gpt_oss"), GPT_OSS_TOKENS, "<|startoftext|>", "<|return|>")


def glm4_moe_tokenizer():
    """GLM-4-MoE (zai-org/GLM-4.6): eos `<|endoftext|>` (a turn ends at the next `<|user|>`/`<|observation|>`), no
    bos (the template writes `[gMASK]<sop>`)."""
    return family_tokenizer(real_chat_template("glm4_moe"), GLM4_MOE_TOKENS, eos="<|endoftext|>")


def gemma2_tokenizer():
    """Gemma 2 (google/gemma-2-2b-it): bos `<bos>`, eos `<eos>`; turns end with `<end_of_turn>`."""
    return family_tokenizer(real_chat_template("gemma2"), GEMMA_TOKENS, "<bos>", "<eos>")


def phi3_5_tokenizer():
    """Phi-3.5 (microsoft/Phi-3.5-mini-instruct): bos `<s>`, eos `<|endoftext|>`; turns end with `<|end|>`."""
    return family_tokenizer(real_chat_template("phi3_5"), PHI3_TOKENS, "<s>", "<|endoftext|>")


def cohere2_tokenizer():
    """Cohere 2 (CohereForAI/c4ai-command-r7b-12-2024, its `tool_use` template): bos `<BOS_TOKEN>`, eos
    `<|END_OF_TURN_TOKEN|>`."""
    return family_tokenizer(real_chat_template("cohere2"), COHERE_TOKENS, "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>")


def lfm2_5_tokenizer():
    """LFM2.5 (LiquidAI/LFM2.5-8B-A1B): ChatML, bos `<|startoftext|>`, eos `<|im_end|>`, Python-style tool calls."""
    return family_tokenizer(real_chat_template("lfm2_5"), LFM2_TOKENS, "<|startoftext|>", "<|im_end|>")


def qwen2_5_tokenizer():
    """Qwen2.5 (Qwen/Qwen2.5-7B-Instruct): ChatML, eos `<|im_end|>`, no bos, `<tool_call>` tokens."""
    return family_tokenizer(real_chat_template("qwen2_5"), QWEN_TOKENS, eos="<|im_end|>")


def gemma3_tokenizer():
    """Gemma 3 (google/gemma-3-4b-it): bos `<bos>`, eos `<eos>`; turns end with `<end_of_turn>`."""
    return family_tokenizer(real_chat_template("gemma3"), (*GEMMA_TOKENS, "<start_of_image>"), "<bos>", "<eos>")


NEMOTRON3_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")


def llama3_3_tokenizer():
    """Llama 3.3 (meta-llama/Llama-3.3-70B-Instruct, the Llama 3.1 tool format with `builtin_tools`): bos
    `<|begin_of_text|>`, eos `<|eot_id|>`."""
    return family_tokenizer(real_chat_template("llama3_3"), LLAMA3_SPECIAL_TOKENS, "<|begin_of_text|>", "<|eot_id|>")


def nemotron3_tokenizer():
    """Nemotron 3 (nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16): ChatML, eos `<|im_end|>`, no bos in the template,
    XML-style `<tool_call><function=...>` calls."""
    return family_tokenizer(real_chat_template("nemotron3"), NEMOTRON3_TOKENS, eos="<|im_end|>")


def command_r_plus_tokenizer():
    """Command R+ (CohereForAI/c4ai-command-r-plus, its `tool_use` template): bos `<BOS_TOKEN>`, eos
    `<|END_OF_TURN_TOKEN|>`."""
    return family_tokenizer(real_chat_template("command_r_plus"), COHERE_TOKENS, "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>")


def gemma1_tokenizer():
    """Gemma 1 (google/gemma-7b-it): bos `<bos>` (the template writes none), eos `<eos>`; turns end with
    `<end_of_turn>`."""
    return family_tokenizer(real_chat_template("gemma1"), GEMMA_TOKENS, "<bos>", "<eos>")


def phi3_mini_tokenizer():
    """Phi-3-mini (microsoft/Phi-3-mini-4k-instruct, May 2024 template): bos `<s>`, eos `<|endoftext|>`; turns end
    with `<|end|>`, and every user turn is followed by the assistant header."""
    return family_tokenizer(real_chat_template("phi3_mini"), PHI3_TOKENS, "<s>", "<|endoftext|>")


def command_r_plus_default_tokenizer():
    """Command R+ (CohereForAI/c4ai-command-r-plus, its `default` template, no tools): bos `<BOS_TOKEN>`, eos
    `<|END_OF_TURN_TOKEN|>`."""
    return family_tokenizer(real_chat_template("command_r_plus_default"), COHERE_TOKENS, "<BOS_TOKEN>",
                            "<|END_OF_TURN_TOKEN|>")


def deepseek_v3_tokenizer():
    """DeepSeek-V3 (deepseek-ai/DeepSeek-V3, December 2024): bos `<｜begin▁of▁sentence｜>`, eos
    `<｜end▁of▁sentence｜>`, DeepSeek's tool tokens."""
    return family_tokenizer(
        real_chat_template("deepseek_v3"), DEEPSEEK_TOKENS, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    )


def lfm2_tokenizer():
    """LFM2 (LiquidAI/LFM2-8B-A1B): ChatML, bos `<|startoftext|>`, eos `<|im_end|>`; the template lists tools but
    renders assistant messages by their content only (calls are text the model writes)."""
    return family_tokenizer(real_chat_template("lfm2"), LFM2_TOKENS, "<|startoftext|>", "<|im_end|>")


def llama3_1_tokenizer():
    """Llama 3.1 (meta-llama/Llama-3.1-8B-Instruct): bos `<|begin_of_text|>`, eos `<|eot_id|>`."""
    return family_tokenizer(real_chat_template("llama3_1"), LLAMA3_SPECIAL_TOKENS, "<|begin_of_text|>", "<|eot_id|>")


def phi3_mini_with_system_tokenizer():
    """Phi-3-mini (microsoft/Phi-3-mini-4k-instruct, the revision with system turns): bos `<s>`, eos
    `<|endoftext|>`; turns end with `<|end|>`."""
    return family_tokenizer(real_chat_template("phi3_mini_with_system"), PHI3_TOKENS, "<s>", "<|endoftext|>")


OLMO3_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def olmo3_1_instruct_tokenizer():
    """OLMo 3.1 Instruct (allenai/Olmo-3.1-32B-Instruct): ChatML, eos `<|endoftext|>` (the template ends the last
    assistant message with it, earlier ones with `<|im_end|>\\n`), no bos, tool calls in `<function_calls>`."""
    return family_tokenizer(real_chat_template("olmo3_1_instruct"), OLMO3_TOKENS, eos="<|endoftext|>")


def deepseek_v3_1_tokenizer():
    """DeepSeek-V3.1 (deepseek-ai/DeepSeek-V3.1): bos `<｜begin▁of▁sentence｜>`, eos `<｜end▁of▁sentence｜>`, DeepSeek's
    tool tokens; calls written `name<｜tool▁sep｜>arguments` with the arguments concatenated as a string (JSON-string
    arguments), thinking off unless `thinking` / `enable_thinking` is passed."""
    return family_tokenizer(
        real_chat_template("deepseek_v3_1"), DEEPSEEK_TOKENS, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    )


REAL_TOKENIZERS = {
    "qwen2_5": qwen2_5_tokenizer,
    "qwen3": qwen3_tokenizer,
    "llama3_2": llama3_2_tokenizer,
    "deepseek_r1_distill": deepseek_r1_distill_tokenizer,
    "gpt_oss": gpt_oss_tokenizer,
    "glm4_moe": glm4_moe_tokenizer,
    "gemma2": gemma2_tokenizer,
    "gemma3": gemma3_tokenizer,
    "phi3_5": phi3_5_tokenizer,
    "cohere2": cohere2_tokenizer,
    "lfm2_5": lfm2_5_tokenizer,
    "llama3_3": llama3_3_tokenizer,
    "nemotron3": nemotron3_tokenizer,
    "command_r_plus": command_r_plus_tokenizer,
    "gemma1": gemma1_tokenizer,
    "phi3_mini": phi3_mini_tokenizer,
    "command_r_plus_default": command_r_plus_default_tokenizer,
    "deepseek_v3": deepseek_v3_tokenizer,
    "lfm2": lfm2_tokenizer,
    "llama3_1": llama3_1_tokenizer,
    "phi3_mini_with_system": phi3_mini_with_system_tokenizer,
    "olmo3_1_instruct": olmo3_1_instruct_tokenizer,
    "deepseek_v3_1": deepseek_v3_1_tokenizer,
}
"""Real template name (`tests/data/chat_templates/real/<name>.jinja`) -> function building its tokenizer."""

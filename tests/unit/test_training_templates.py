"""Training templates generated from each family's template (`trl.training_templates`,
`trl.chat_template_utils.get_training_chat_template`): byte-identical renderings, prefix preservation across tool
turns, generation-marker masks equal to the turn-by-turn prefix masks, and SFT with `assistant_only_loss` on a
Qwen3-style template."""

import warnings

import pytest
import torch
from datasets import Dataset

import tests.template_data as template_data
from trl.agents.multi_turn import check_tool_turns
from trl.chat_template_utils import (
    get_training_chat_template,
    has_generation_markers,
    is_chat_template_prefix_preserving,
    supports_tool_calling,
)
from trl.data.tokenize import assistant_mask, assistant_mask_by_prefix, end_of_turn_ids, render_ids
from trl.template_families import detect_family, with_json_string_arguments
from trl.training_templates import (
    CONVERSATIONS,
    TemplateEdit,
    _assistant_turns,
    _cut_after_end_of_turn,
    _is_prefix_preserving,
    same_up_to_closing,
    training_template,
    wrap_turn_by_turn,
)


# (test id, tokenizer builder name in tests/template_data.py, family, whether the original is prefix-preserving).
# Builders of the real vendor templates are used when tests/template_data.py has them.
FAMILY_TOKENIZERS = [
    ("qwen3-style", "qwen3_style_tokenizer", "qwen3", False),
    ("qwen2.5-style", "qwen2_5_style_tokenizer", "chatml", True),
    ("llama3.1-style", "llama3_style_tokenizer", "llama3", True),
    # the vendors' real templates (tests/data/chat_templates/real/); DeepSeek-R1-Distill, Nemotron 3, Command R+'s
    # tool_use template and OLMo 3 are refused (see below)
    ("real-qwen2_5", "qwen2_5_tokenizer", "chatml", True),
    ("real-qwen3", "qwen3_tokenizer", "qwen3", False),
    ("real-llama3_2", "llama3_2_tokenizer", "llama3", True),
    ("real-gpt_oss", "gpt_oss_tokenizer", "gpt_oss", False),
    ("real-glm4_moe", "glm4_moe_tokenizer", "glm4_moe", False),
    ("real-cohere2", "cohere2_tokenizer", "cohere2", False),
    ("real-lfm2_5", "lfm2_5_tokenizer", "lfm2", False),
    ("real-gemma2", "gemma2_tokenizer", "gemma", True),
    ("real-gemma3", "gemma3_tokenizer", "gemma", True),
    ("real-phi3_5", "phi3_5_tokenizer", "phi3", False),
    ("real-llama3_3", "llama3_3_tokenizer", "llama3", True),
    ("real-gemma1", "gemma1_tokenizer", "gemma", True),
    ("real-phi3_mini", "phi3_mini_tokenizer", "phi3", True),
    ("real-command_r_plus_default", "command_r_plus_default_tokenizer", "command_r", True),
    ("real-deepseek_v3", "deepseek_v3_tokenizer", "deepseek", True),
    ("real-lfm2", "lfm2_tokenizer", "lfm2", True),
    ("real-llama3_1", "llama3_1_tokenizer", "llama3", True),
    ("real-phi3_mini_with_system", "phi3_mini_with_system_tokenizer", "phi3", False),
    # thinking off (its default); with thinking on no template can be byte-identical and prefix-preserving (below)
    ("real-deepseek_v3_1", "deepseek_v3_1_tokenizer", "deepseek", True),
]
CASES = [pytest.param(builder, family, prefix, id=name) for name, builder, family, prefix in FAMILY_TOKENIZERS
         if hasattr(template_data, builder)]
# Families whose original drops what earlier assistant turns generated (reasoning / analysis, GPT-OSS's <|return|>):
# their training template renders each earlier turn as the original renders it when it is the final turn.
KEEPS_EARLIER_TURNS = {"qwen3", "glm4_moe", "lfm2", "gpt_oss"}
# Families whose original writes text after the last message only (Phi-3.5: eos; Cohere 2: an assistant header even
# without a generation prompt), which the training template leaves out.
DROPS_CLOSING_TEXT = {"phi3", "cohere2"}
# Families whose assistant turn has no end-of-turn token of its own (GLM: the next <|user|>/<|observation|> ends it).
NO_END_OF_TURN = {"glm4_moe"}


def _tokenizers(builder):
    original = getattr(template_data, builder)()
    training = getattr(template_data, builder)()
    training.chat_template = get_training_chat_template(original)
    return original, training


def _eos_ids(tokenizer):
    """End-of-turn ids: eos, the token ending a plain assistant turn, and the family's (GPT-OSS's <|call|>)."""
    family = detect_family(tokenizer)
    return end_of_turn_ids(tokenizer) | {tokenizer.convert_tokens_to_ids(t) for t in family.end_of_turn
                                         if t in tokenizer.get_vocab()}


def _render(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def _renders(tokenizer, messages, kwargs):
    try:
        return _render(tokenizer, messages, **kwargs)
    except Exception:
        return None


def _renderable(tokenizer, messages, kwargs):
    """The messages as the template renders them: with tool-call arguments as JSON strings where it rejects dicts
    (DeepSeek's templates concatenate them; the agent loop and the verification retry the same way), or None where
    it renders neither."""
    for candidate in (messages, with_json_string_arguments(messages)):
        if _renders(tokenizer, candidate, kwargs) is not None:
            return candidate
    return None


@pytest.mark.parametrize("builder, family, prefix", CASES)
def test_family_and_markers(builder, family, prefix):
    original, training = _tokenizers(builder)
    assert detect_family(original).name == family
    assert is_chat_template_prefix_preserving(original) is prefix
    assert has_generation_markers(training.chat_template)
    # LFM2.5's has markers (and is not prefix-preserving)
    assert has_generation_markers(original.chat_template) is (builder == "lfm2_5_tokenizer")
    assert is_chat_template_prefix_preserving(training)
    assert get_training_chat_template(training) is None  # already prefix-preserving with markers


@pytest.mark.parametrize("builder, family, prefix", CASES)
@pytest.mark.parametrize("name, messages, kwargs", CONVERSATIONS, ids=[c[0] for c in CONVERSATIONS])
def test_renders_byte_identically(builder, family, prefix, name, messages, kwargs):
    original, training = _tokenizers(builder)
    messages = _renderable(original, messages, kwargs)
    if messages is None:
        pytest.skip("the original template cannot render this conversation")
    expected = _render(original, messages, **kwargs)
    rendered = _render(training, messages, **kwargs)
    end_of_turn = tuple(detect_family(original).end_of_turn)
    if not _is_prefix_preserving(original, messages, kwargs, end_of_turn):
        # the deliberate difference: each earlier assistant turn is rendered as the original renders it when it is
        # the final turn (with its reasoning, analysis, empty think block, ...)
        assert family in KEEPS_EARLIER_TURNS, rendered
        assert rendered != expected
        turns = _assistant_turns(original, messages, kwargs, training.chat_template, end_of_turn)
        assistant_turns = [k for k, m in enumerate(messages) if m["role"] == "assistant" and k > 0]
        position = 0
        for k, turn in zip(assistant_turns, turns, strict=True):  # in order, each as the original's final turn
            as_last = _render(original, messages[: k + 1], **{**kwargs, "add_generation_prompt": False})
            assert as_last.endswith(turn) or _cut_after_end_of_turn(as_last, end_of_turn).endswith(turn), k
            position = rendered.index(turn, position) + len(turn)
        return
    if family in DROPS_CLOSING_TEXT and not kwargs.get("add_generation_prompt") and rendered != expected:
        # (Phi-3-mini's May 2024 template writes no closing text: it renders identically)
        assert same_up_to_closing(rendered, expected, end_of_turn)
        assert expected[len(rendered):] in ("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>", original.eos_token)
        return
    assert rendered == expected


def test_deepseek_r1_distill_is_refused_with_the_reason():
    tokenizer = template_data.deepseek_r1_distill_tokenizer()
    with pytest.raises(ValueError, match=r"'deepseek'.*generation prompt opens a '<think>\\n' block"):
        get_training_chat_template(processing_class=tokenizer)
    # why no template can be byte-identical to it and prefix-preserving: its rendering of [user] with the generation
    # prompt is not a prefix of its rendering of [user, assistant], so a template equal to it on both is not
    # prefix-preserving
    user, answer = {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}
    prompt = _render(tokenizer, [user], add_generation_prompt=True)
    full = _render(tokenizer, [user, answer])
    assert prompt.endswith("<｜Assistant｜><think>\n") and full.endswith("<｜Assistant｜>Hello.<｜end▁of▁sentence｜>")
    assert not full.startswith(prompt)
    # with reasoning too: the reasoning is dropped, so no rendering of an assistant turn contains '<think>\n'
    thought = {"role": "assistant", "content": "<think>\nSay hello.\n</think>\n\nHello."}
    assert not _render(tokenizer, [user, thought]).startswith(prompt)


def test_deepseek_v3_1_training_template_is_for_thinking_off():
    """DeepSeek-V3.1's template, thinking off (its default), is prefix-preserving: every assistant turn after a user
    message follows the generation prompt '<｜Assistant｜></think>', reasoning is split off every turn (the last one
    too), and after tool results there is no header. Its training template renders it byte-identically (tool rounds
    with JSON-string arguments included) and trains each turn after the prompt's '</think>'. With thinking on the
    generation prompt is '<｜Assistant｜><think>', which no rendered assistant turn continues, so no template
    byte-identical to it is prefix-preserving there: the training template renders prompts, and raises on an
    assistant turn."""
    original, training = _tokenizers("deepseek_v3_1_tokenizer")
    conversations = {c[0]: c[1:] for c in CONVERSATIONS}
    messages, kwargs = conversations["two tool calls in one turn"]
    messages = with_json_string_arguments(messages)
    assert _render(training, messages, **kwargs) == _render(original, messages, **kwargs)
    ids, mask = assistant_mask(training, messages, end_of_turn_ids(training), kwargs)
    assert training.decode([t for t, m in zip(ids, mask) if m]) == (
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>'
        "<｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>"
        "It is 22C in Paris.<｜end▁of▁sentence｜>"
    )
    # reasoning in the content is dropped from every turn, the final one included: nothing is rewritten later
    messages = conversations["reasoning inline in content"][0]
    rendered = _render(training, messages)
    assert rendered == _render(original, messages) and "Add the numbers." not in rendered
    assert "<｜User｜>What is 2 + 2?<｜Assistant｜></think>\n\n4.<｜end▁of▁sentence｜>" in rendered
    assert _render(original, messages[:2]).endswith("<｜Assistant｜></think>\n\n4.<｜end▁of▁sentence｜>")
    # thinking on
    user, answer = {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}
    prompt = _render(original, [user], add_generation_prompt=True, enable_thinking=True)
    assert prompt.endswith("<｜Assistant｜><think>")
    assert _render(training, [user], add_generation_prompt=True, enable_thinking=True) == prompt
    for turn in (answer, {**answer, "content": "<think>Greet.</think>Hello."}):
        full = _render(original, [user, turn], enable_thinking=True)
        assert full.endswith("<｜Assistant｜></think>Hello.<｜end▁of▁sentence｜>") and not full.startswith(prompt)
        with pytest.raises(Exception, match="not prefix-preserving at message 1"):
            _render(training, [user, turn], enable_thinking=True)


def test_nemotron3_is_refused_with_the_reason():
    tokenizer = template_data.nemotron3_tokenizer()
    with pytest.raises(ValueError, match=r"'nemotron3'.*generation prompt is not a prefix of it"):
        get_training_chat_template(processing_class=tokenizer)
    # the reason, checked on the original: a turn without reasoning does not follow the thinking generation prompt
    user, answer = {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}
    prompt = _render(tokenizer, [user], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    assert not _render(tokenizer, [user, answer]).startswith(prompt)
    assert _render(tokenizer, [user, answer]).endswith("<|im_start|>assistant\n<think></think>Hello.<|im_end|>\n")


def test_olmo3_is_refused_with_the_reason():
    tokenizer = template_data.olmo3_1_instruct_tokenizer()
    with pytest.raises(ValueError, match=r"'olmo3'.*ends the last assistant message with eos_token"):
        get_training_chat_template(processing_class=tokenizer)
    # why no template can be byte-identical to it and prefix-preserving: the last assistant turn ends with eos, the
    # same turn followed by a user message (or a tool result) with <|im_end|>\n, so the rendering of a conversation
    # that ends with an assistant turn is not a prefix of its continuation
    user, answer = {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}
    again = {"role": "user", "content": "Bye?"}
    short, long = _render(tokenizer, [user, answer]), _render(tokenizer, [user, answer, again])
    assert short.endswith("<|im_start|>assistant\nHello.<|endoftext|>")
    assert "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye?<|im_end|>\n" in long
    assert not long.startswith(short)
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    calling = {"role": "assistant", "content": "", "tool_calls": [call]}
    tools = {"tools": [template_data_tool()]}
    short = _render(tokenizer, [user, calling], **tools)
    long = _render(tokenizer, [user, calling, {"role": "tool", "content": "22C"}], **tools)
    assert short.endswith('<function_calls>get_weather(city="Paris")</function_calls><|endoftext|>')
    assert long.endswith('</function_calls><|im_end|>\n<|im_start|>environment\n22C<|im_end|>\n')
    assert not long.startswith(short)
    # the generation prompt is a prefix of a single assistant turn (prompt-completion data renders as the original)
    assert short.startswith(_render(tokenizer, [user], add_generation_prompt=True, **tools))
    assert not is_chat_template_prefix_preserving(tokenizer)


def test_command_r_plus_is_refused_with_the_reason():
    tokenizer = template_data.command_r_plus_tokenizer()
    with pytest.raises(ValueError, match=r"'command_r'.*Command R\+'s tool_use template"):
        get_training_chat_template(processing_class=tokenizer)
    # with a tool list it renders, but its closing instruction follows the last message only
    tools = {"tools": [template_data_tool()]}
    user, answer = {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}
    short = _render(tokenizer, [user], **tools)
    assert short.endswith("if it takes no parameters\n    }\n]```<|END_OF_TURN_TOKEN|>")
    assert not _render(tokenizer, [user, answer], **tools).startswith(short)


def template_data_tool():
    return {"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "description": "The city."}}, "required": ["city"]}}}


@pytest.mark.parametrize("builder, family, prefix", CASES)
def test_family_edits_match_the_template(builder, family, prefix):
    """Every edit of the family matches its (real) template, or the template is the variant its `unless` names (Phi-3-mini
    writes no eos): none is a silent no-op."""
    from trl.training_templates import FAMILY_EDITS

    template = getattr(template_data, builder)().chat_template
    for edit in FAMILY_EDITS.get(family, ()):
        template = edit.apply(template)  # raises if no pattern matches


@pytest.mark.parametrize("builder", ["qwen3_style_tokenizer", "qwen3_tokenizer"])
def test_qwen3_deliberate_difference_keeps_earlier_reasoning(builder):
    original, training = _tokenizers(builder)
    messages = dict((c[0], c[1]) for c in CONVERSATIONS)["reasoning in earlier turns"]
    assert "Add the numbers." not in _render(original, messages)
    rendered = _render(training, messages)
    assert "<|im_start|>assistant\n<think>\nAdd the numbers.\n</think>\n\n4.<|im_end|>\n" in rendered
    # the rest is the original's text: removing the kept reasoning gives the original rendering back
    assert rendered.replace("<think>\nAdd the numbers.\n</think>\n\n", "") == _render(original, messages)


@pytest.mark.parametrize("builder, family, prefix", CASES)
@pytest.mark.parametrize("rounds", [1, 2])
def test_prefix_preserving_across_tool_turns(builder, family, prefix, rounds):
    original, training = _tokenizers(builder)
    if not supports_tool_calling(original):
        pytest.skip("the template does not render tool calls")
    eos = sorted(_eos_ids(training))
    if family not in NO_END_OF_TURN:  # the tool loop cuts a turn at its end-of-turn token; GLM's turns have none
        check_tool_turns(training, eos)
    if family == "qwen3":  # its empty think block of the latest turn goes once a tool result follows
        with pytest.raises(ValueError, match="prefix-preserving"):
            check_tool_turns(original, eos)
    # rendering a multi-round tool conversation turn by turn only appends text
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    for _ in range(rounds):
        messages += [{"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": "22C"}]
    messages.append({"role": "assistant", "content": "22C."})
    messages = _renderable(original, messages, {})  # DeepSeek-V3.1: arguments as JSON strings
    previous = ""
    for k in range(1, len(messages) + 1):
        current = _render(training, messages[:k])
        assert current.startswith(previous), k
        if k < len(messages) and messages[k]["role"] == "assistant":
            prompt = _render(training, messages[:k], add_generation_prompt=True)
            assert prompt.startswith(current)
            current = prompt
        previous = current


def _closing_ids(tokenizer, family):
    """GLM: the next turn's header tokens, which end an assistant turn that has no end-of-turn token of its own."""
    if family not in NO_END_OF_TURN:
        return set()
    return {tokenizer.convert_tokens_to_ids(t) for t in ("<|user|>", "<|observation|>")}


def _mask_by_assistant_turns(tokenizer, messages, eos, kwargs, closing=frozenset()):
    """Ids and assistant mask from token renderings at each assistant turn: the tokens an assistant turn adds after
    the generation prompt, up to its last end-of-turn token, are marked; every rendering must extend the previous.
    A turn without an end-of-turn token also gets the `closing` token that directly follows it marked (GLM)."""
    def ids(msgs, **options):
        return list(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, **kwargs, **options)["input_ids"])

    full = ids(messages)
    mask = [0] * len(full)
    for k, message in enumerate(messages):
        if message["role"] == "assistant":
            header, current = ids(messages[:k], add_generation_prompt=True), ids(messages[: k + 1])
            assert current[: len(header)] == header and full[: len(current)] == current
            end = max((i + 1 for i in range(len(header), len(current)) if current[i] in eos), default=len(current))
            if end == len(current) and not any(t in eos for t in current[len(header):]) and (
                    len(full) > end and full[end] in closing):
                end += 1
            mask[len(header):end] = [1] * (end - len(header))
    return full, mask


@pytest.mark.parametrize("builder, family, prefix", CASES)
@pytest.mark.parametrize("name, messages, kwargs", CONVERSATIONS, ids=[c[0] for c in CONVERSATIONS])
def test_marker_masks_equal_prefix_masks(builder, family, prefix, name, messages, kwargs):
    original, training = _tokenizers(builder)
    messages = _renderable(original, messages, kwargs)
    if messages is None or messages[-1]["role"] != "assistant":
        pytest.skip("not a training conversation for this template")
    eos = _eos_ids(training)
    closing = _closing_ids(training, family)
    ids, mask = assistant_mask(training, messages, eos, kwargs)  # from the generation markers
    assert (ids, mask) == _mask_by_assistant_turns(training, messages, eos, kwargs, closing)
    consecutive_tools = any(a["role"] == b["role"] == "tool" for a, b in zip(messages, messages[1:]))
    if not consecutive_tools:  # per message, our prefix method applies (a round of tool results renders as one)
        assert (ids, mask) == assistant_mask_by_prefix(training, messages, eos, kwargs)
    if prefix:  # the original has no markers: rendered turn by turn it gives the same ids and mask
        assert (ids, mask) == _mask_by_assistant_turns(original, messages, _eos_ids(original), kwargs)
    # every assistant span ends with an end-of-turn token; GLM's turns have none: the next turn's header that ends
    # them (<|user|>, <|observation|>) is trained with them, and the final turn, which nothing follows, is closed by
    # tokenize_sft_example (test_glm_turns_are_closed_by_the_next_header)
    assert mask.count(1) > 0
    ends = [i for i in range(len(mask) - 1) if mask[i] and not mask[i + 1]]
    assert all(ids[i] in eos for i in ends)
    if closing:
        assert all(ids[i] in closing for i in ends)


def test_glm_turns_are_closed_by_the_next_header():
    """GLM-4-MoE's assistant turns have no end-of-turn token: the next <|user|> / <|observation|> ends them (GLM's
    generation config lists both as eos). They are end-of-turn ids (generation stops there), they are trained with
    the turn they close, and a conversation that ends with an assistant turn gets the one the model would generate
    appended, so that a trained GLM learns to end its answers."""
    from trl.data.tokenize import closing_tokens, tokenize_sft_example

    original, training = _tokenizers("glm4_moe_tokenizer")
    user, observation = (training.convert_tokens_to_ids(t) for t in ("<|user|>", "<|observation|>"))
    for tokenizer in (original, training):
        assert closing_tokens(tokenizer) == {"user": user, "tool": observation}
        assert {user, observation} <= end_of_turn_ids(tokenizer)
    messages = dict((c[0], c[1]) for c in CONVERSATIONS)["tool call and result"]
    tools = [dict((c[0], c[2]) for c in CONVERSATIONS)["tool call and result"]["tools"][0]]
    for tokenizer in (original, training):  # the prefix method and the generation markers agree
        eos = end_of_turn_ids(tokenizer)
        row = {"messages": messages, "tools": tools}
        out = tokenize_sft_example(row, tokenizer, kind="language_modeling", conversational=True,
                                   assistant_only_loss=True, eos_token_id=tokenizer.eos_token_id, eos_ids=eos)
        ids, mask = out["input_ids"], out["assistant_masks"]
        assert ids[:-1] == render_ids(tokenizer, messages, {"tools": tools})
        assert ids[-1] == user and mask[-1] == 1  # appended: the final answer is followed by the next user turn
        trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
        assert trained == (
            "\n<think></think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
            "</tool_call><|observation|>\n<think></think>\nIt is 22C in Paris.<|user|>"
        )
    # a final tool-calling turn is closed by <|observation|>, as the model ends it before the tool results
    out = tokenize_sft_example(
        {"prompt": messages[:1], "completion": messages[1:2], "tools": tools}, training, kind="prompt_completion",
        conversational=True, eos_token_id=training.eos_token_id, eos_ids=end_of_turn_ids(training))
    assert out["input_ids"][-1] == observation and out["completion_mask"][-1] == 1


# (Command R+'s tool_use template cannot render the tool-less probe conversations at all)
@pytest.mark.parametrize("name", [n for n in template_data.REAL_TOKENIZERS if n not in ("glm4_moe", "command_r_plus")])
def test_closing_tokens_only_for_templates_without_end_of_turn(name):
    """Every other template ends its assistant turns with a token of its own: nothing is added or appended."""
    from trl.data.tokenize import closing_tokens, tokenize_sft_example

    tokenizer = template_data.REAL_TOKENIZERS[name]()
    assert closing_tokens(tokenizer) == {}
    messages = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]
    out = tokenize_sft_example({"messages": messages}, tokenizer, kind="language_modeling", conversational=True,
                               eos_token_id=tokenizer.eos_token_id, eos_ids=end_of_turn_ids(tokenizer))
    assert out["input_ids"] == render_ids(tokenizer, messages)


def test_qwen3_masks_train_reasoning_and_tool_calls():
    original, training = _tokenizers("qwen3_style_tokenizer")
    messages = dict((c[0], c[1:]) for c in CONVERSATIONS)["reasoning with tool calls"]
    ids, mask = assistant_mask(training, messages[0], end_of_turn_ids(training), messages[1])
    trained = training.decode([t for t, m in zip(ids, mask) if m])
    assert trained == (
        '<think>\nI need the weather tool.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_call><|im_end|><think>\nThe tool said 22C.\n</think>\n\nIt is 22C in Paris.'
        "<|im_end|>"
    )


def test_qwen3_thinking_disabled_leaves_the_empty_think_block_in_the_prompt():
    original, training = _tokenizers("qwen3_style_tokenizer")
    messages = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]
    prompt = _render(training, messages[:1], add_generation_prompt=True, enable_thinking=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids, mask = assistant_mask(training, messages, end_of_turn_ids(training), {"enable_thinking": False})
    assert training.decode([t for t, m in zip(ids, mask) if m]) == "Hello.<|im_end|>"


def test_unknown_qwen3_variant_names_the_edit():
    family = detect_family("<|im_start|><think>")
    with pytest.raises(ValueError, match="keeps the reasoning of assistant turns"):
        training_template("{{ '<|im_start|>' }}<think>", family)
    with pytest.raises(ValueError, match="variant we do not know"):
        TemplateEdit("does x", (r"nothing here",), "").apply("template")


def test_wrapper_refuses_a_template_that_rewrites_earlier_turns():
    tokenizer = template_data.qwen3_style_tokenizer()
    tokenizer.chat_template = wrap_turn_by_turn(tokenizer.chat_template, ("<|im_end|>",))  # without Qwen3's edits
    messages = dict((c[0], c[1]) for c in CONVERSATIONS)["reasoning in earlier turns"]
    with pytest.raises(Exception, match="not prefix-preserving at message 3"):
        _render(tokenizer, messages)


# -- SFT ---------------------------------------------------------------------------------------------------------------


def _qwen3_reasoning_rows(n=8):
    rows = []
    for i in range(n):
        rows.append({"messages": [
            {"role": "system", "content": "Answer with a number."},
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": f"{2 * i}.", "reasoning_content": f"Add {i} to {i}."},
            {"role": "user", "content": f"And {i} + 1?"},
            {"role": "assistant", "content": f"<think>\nAdd one.\n</think>\n\n{i + 1}."},
        ]})
    return rows


@pytest.mark.parametrize("builder", ["qwen3_style_tokenizer", "qwen3_tokenizer"])
def test_sft_assistant_only_loss_on_qwen3_reasoning(tmp_path, builder):
    from trl import SFTConfig, SFTTrainer
    from trl.models.tiny import tiny_model

    from ..trainers.sft_one_step import SMALL

    tokenizer = getattr(template_data, builder)()
    original_template = tokenizer.chat_template
    rows = _qwen3_reasoning_rows()
    model = tiny_model(seed=0, **SMALL)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
                     learning_rate=5e-3, logging_steps=1, report_to="none", save_strategy="no", max_length=256,
                     seed=0, assistant_only_loss=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer)
    announced = [w for w in caught if "training template" in str(w.message)]
    assert len(announced) == 1 and "qwen3" in str(announced[0].message)
    assert tokenizer.chat_template == original_template  # the user's tokenizer is not changed

    # the dataset's mask is the mask our turn-by-turn rendering computes with the training template
    training = getattr(template_data, builder)()
    training.chat_template = get_training_chat_template(tokenizer)
    eos = end_of_turn_ids(training)
    for row, prepared in zip(rows, trainer.train_dataset):
        ids, mask = assistant_mask_by_prefix(training, row["messages"], eos)
        assert prepared["input_ids"] == ids and prepared["assistant_masks"] == mask
    first = trainer.train_dataset[0]
    trained = tokenizer.decode([t for t, m in zip(first["input_ids"], first["assistant_masks"]) if m])
    assert trained == "<think>\nAdd 0 to 0.\n</think>\n\n0.<|im_end|><think>\nAdd one.\n</think>\n\n1.<|im_end|>"

    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters() if n in before)


def test_gpt_oss_two_calls_as_one_call_per_message():
    """Harmony's two calls of one round, written as two assistant messages with one call each (the vendor template
    renders only the first call of a message): the training template renders them byte-identically and appends only."""
    original, training = _tokenizers("gpt_oss_tokenizer")
    weather = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    time = {"type": "function", "function": {"name": "get_time", "arguments": {}}}
    messages = [
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "content": "", "tool_calls": [weather]}, {"role": "tool", "content": "22C"},
        {"role": "assistant", "content": "", "tool_calls": [time]}, {"role": "tool", "content": "12:00"},
        {"role": "assistant", "content": "22C at noon."},
    ]
    assert _render(training, messages) == _render(original, messages)
    previous = ""
    for k in range(1, len(messages) + 1):
        current = _render(training, messages[:k])
        assert current.startswith(previous), k
        previous = current
    out = training.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    trained = training.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m])
    assert trained == (
        ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
        " to=functions.get_time<|channel|>commentary json<|message|>{}<|call|>"
        + "<|channel|>final<|message|>22C at noon.<|return|>"
    )

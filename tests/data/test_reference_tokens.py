"""DPO, KTO and Reward tokenise as the reference does: a completion is the full rendering minus the prompt rendering,
so ChatML's "\\n" after `<|im_end|>` stays in the completion. Checked against template strings rendered by hand, and
GRPO's reward-model scoring is checked to score the very sequence reward training trained on."""

from datasets import Dataset

from trl.data.preference import PreferenceDataOptions, prepare_preference_dataset
from trl.data.unpaired import prepare_unpaired_dataset
from trl.models.tiny import tiny_tokenizer
from trl.rewards.scoring import reward_input_ids

OPTIONS = PreferenceDataOptions(max_length=256)

CHAT_ROW = {
    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "sort: c a b"}],
    "chosen": [{"role": "assistant", "content": "a b c"}],
    "rejected": [{"role": "assistant", "content": "c b a"}],
}
TEXT_ROW = {"prompt": "sort: c a b\nanswer:", "chosen": " a b c", "rejected": " c b a"}

# ChatML, written out by hand
CHAT_PROMPT = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nsort: c a b<|im_end|>\n<|im_start|>assistant\n"
CHAT_COMPLETIONS = {"chosen": "a b c<|im_end|>\n", "rejected": "c b a<|im_end|>\n"}


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _expected(tok, row, conversational):
    """(prompt_ids, {side: completion_ids}) from hand-rendered strings: full rendering minus prompt rendering."""
    if conversational:
        prompt = CHAT_PROMPT
        full = {side: prompt + CHAT_COMPLETIONS[side] for side in ("chosen", "rejected")}
        eos = []
    else:
        prompt = row["prompt"]
        full = {side: prompt + row[side] for side in ("chosen", "rejected")}
        eos = [tok.eos_token_id]  # standard text gets eos appended
    prompt_ids = _ids(tok, prompt)
    completions = {}
    for side, text in full.items():
        ids = _ids(tok, text) + eos
        assert ids[: len(prompt_ids)] == prompt_ids
        completions[side] = ids[len(prompt_ids):]
    return prompt_ids, completions


def test_paired_tokens_equal_the_reference_rendering():
    tok = tiny_tokenizer()
    for row, conversational in ((CHAT_ROW, True), (TEXT_ROW, False)):
        prepared, _ = prepare_preference_dataset(Dataset.from_list([row]), tok, OPTIONS, "DPOTrainer")
        prompt_ids, completions = _expected(tok, row, conversational)
        assert prepared[0]["prompt_ids"] == prompt_ids
        assert prepared[0]["chosen_ids"] == completions["chosen"]
        assert prepared[0]["rejected_ids"] == completions["rejected"]
    assert tok.decode(prepared[0]["chosen_ids"]) == " a b c<|im_end|>"  # text: completion + eos
    chat, _ = prepare_preference_dataset(Dataset.from_list([CHAT_ROW]), tok, OPTIONS, "DPOTrainer")
    assert tok.decode(chat[0]["chosen_ids"]) == "a b c<|im_end|>\n"  # the "\n" after <|im_end|> is kept


def test_implicit_prompt_tokens_equal_the_reference_rendering():
    tok = tiny_tokenizer()
    implicit = {side: CHAT_ROW["prompt"] + CHAT_ROW[side] for side in ("chosen", "rejected")}
    prepared, _ = prepare_preference_dataset(Dataset.from_list([implicit]), tok, OPTIONS, "RewardTrainer")
    prompt_ids, completions = _expected(tok, CHAT_ROW, True)
    assert prepared[0]["prompt_ids"] == prompt_ids
    assert prepared[0]["chosen_ids"] == completions["chosen"]
    assert prepared[0]["rejected_ids"] == completions["rejected"]


def test_unpaired_tokens_equal_the_reference_rendering():
    tok = tiny_tokenizer()
    for row, conversational in ((CHAT_ROW, True), (TEXT_ROW, False)):
        rows = [{"prompt": row["prompt"], "completion": row["chosen"], "label": True},
                {"prompt": row["prompt"], "completion": row["rejected"], "label": False}]
        prepared, _ = prepare_unpaired_dataset(Dataset.from_list(rows), tok, OPTIONS, "KTOTrainer")
        prompt_ids, completions = _expected(tok, row, conversational)
        assert [r["prompt_ids"] for r in prepared] == [prompt_ids, prompt_ids]
        assert [r["completion_ids"] for r in prepared] == [completions["chosen"], completions["rejected"]]


def test_reward_model_scoring_renders_as_reward_training():
    """GRPO scores a (prompt, completion) with the ids RewardTrainer trained that pair's side on, so the reward is
    read at the same final token (ChatML's "\\n" for conversations, eos for text)."""
    tok = tiny_tokenizer()
    for row, conversational in ((CHAT_ROW, True), (TEXT_ROW, False)):
        prepared, _ = prepare_preference_dataset(Dataset.from_list([row]), tok, OPTIONS, "RewardTrainer")
        for side in ("chosen", "rejected"):
            trained = prepared[0]["prompt_ids"] + prepared[0][f"{side}_ids"]
            assert reward_input_ids(tok, row["prompt"], row[side], conversational) == trained
            prompt_ids, completions = _expected(tok, row, conversational)
            assert trained == prompt_ids + completions[side]
    # a string completion next to a conversational prompt is one assistant message, as the scorer receives it
    assert reward_input_ids(tok, CHAT_ROW["prompt"], "a b c", True) == _ids(tok, CHAT_PROMPT + "a b c<|im_end|>\n")


def test_reward_model_scoring_uses_the_rows_tools_as_reward_training_does():
    """A row's `tools` column changes the rendering (the tools list in the system turn): reward training renders with
    it, so GRPO's scoring of that row must too."""
    from trl.chat_template_utils import chatml_training_chat_template

    tok = tiny_tokenizer()
    tok.chat_template = chatml_training_chat_template
    schema = {"type": "function", "function": {"name": "lookup", "description": "Look a key up.",
                                               "parameters": {"type": "object", "properties": {}}}}
    row = {**CHAT_ROW, "tools": [schema]}
    options = PreferenceDataOptions(max_length=1024)  # the tools list makes the prompt ~275 tokens
    prepared, _ = prepare_preference_dataset(Dataset.from_list([row]), tok, options, "RewardTrainer")
    trained = prepared[0]["prompt_ids"] + prepared[0]["chosen_ids"]
    assert '"name": "lookup"' in tok.decode(trained)
    scored = reward_input_ids(tok, row["prompt"], row["chosen"], True, {"tools": [schema]})
    assert scored == trained
    assert reward_input_ids(tok, row["prompt"], row["chosen"], True) != trained  # without the row's tools: not it

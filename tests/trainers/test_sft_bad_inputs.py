"""Bad inputs to `SFTTrainer` fail at construction (or at `SFTConfig` construction), with an exception that names the
offending value and says how to fix it."""

import warnings

import pytest
from datasets import Dataset

from trl import SFTConfig, SFTTrainer
from trl.guards import TrainingWillNotLearnError
from trl.models.tiny import tiny_model, tiny_tokenizer


USER = [{"role": "user", "content": "sort: c a b"}]
ASSISTANT = [{"role": "assistant", "content": "a b c"}]
CONVERSATIONS = [{"messages": USER + ASSISTANT}, {"messages": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "hello"}]}]
PROMPT_COMPLETION = [{"prompt": "sort: c a b\nanswer:", "completion": " a b c"},
                     {"prompt": "sort: b a\nanswer:", "completion": " a b"}]

# ChatML, but the assistant turn ends with <|endoftext|> instead of the eos token <|im_end|>.
WRONG_END_OF_TURN = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}{{- '<|im_start|>assistant\\n' + message['content'] + '<|endoftext|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Ends assistant turns with no special token at all: nothing tells the model to stop.
NO_END_OF_TURN = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}{{- '<|im_start|>assistant\\n' + message['content'] + '\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Drops the <think> block of every assistant message but the last (like Qwen3): not prefix-preserving.
THINK_STRIPPING = (
    "{%- for message in messages %}{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and not loop.last %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(autouse=True)
def _quiet_progress_bars():
    import datasets

    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


@pytest.fixture
def model():
    return tiny_model(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32)


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def config(tmp_path):
    def make(**kwargs):
        return SFTConfig(output_dir=str(tmp_path), report_to="none", **kwargs)

    return make


@pytest.fixture
def build(model, tokenizer, config):
    """Construct an SFTTrainer on the tiny model and tokenizer; `args` may be given, else built from `config_kwargs`."""

    def make(rows_or_dataset, args=None, **kwargs):
        config_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in SFTConfig.__dataclass_fields__}
        dataset = rows_or_dataset if not isinstance(rows_or_dataset, list) else Dataset.from_list(rows_or_dataset)
        kwargs.setdefault("processing_class", tokenizer)
        return SFTTrainer(model=kwargs.pop("model", model), args=args or config(**config_kwargs),
                          train_dataset=dataset, **kwargs)

    return make


# ---- the dataset --------------------------------------------------------------------------------------------------


class TestDatasetFormat:
    def test_unknown_columns(self, build):
        with pytest.raises(ValueError, match=r"columns \['foo'\].*Rename your columns, or pass `formatting_func`"):
            build([{"foo": "bar"}])

    def test_preference_dataset(self, build):
        rows = [{"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}]
        with pytest.raises(ValueError, match=r"SFTTrainer does not accept a standard preference dataset \(columns "
                                             r"\['chosen', 'prompt', 'rejected'\]\)\. It accepts: language modeling, "
                                             r"prompt completion"):
            build(rows)

    def test_completion_list_while_prompt_string(self, build):
        rows = [{"prompt": "sort: c a b", "completion": ASSISTANT}]
        with pytest.raises(TypeError, match=r"Column 'prompt' must hold a list of \{'role', 'content'\} messages in a "
                                            r"conversational dataset; got str: sort: c a b"):
            build(rows)

    def test_messages_as_a_string(self, build):
        rows = [{"messages": "user: hi assistant: hello"}]
        with pytest.raises(TypeError, match=r"Column 'messages' must hold a list of \{'role', 'content'\} messages; "
                                            r"got str: user: hi assistant: hello\. Put plain text in a 'text' column"):
            build(rows)

    def test_no_chat_template_on_conversational_data(self, build, tokenizer):
        tokenizer.chat_template = None
        with pytest.raises(ValueError, match=r"train dataset is conversational but the tokenizer \w+ has no chat "
                                             r"template\. Set `SFTConfig\(chat_template_path=\.\.\.\)`"):
            build(CONVERSATIONS)

    def test_with_transform(self, build):
        dataset = Dataset.from_list(PROMPT_COMPLETION).with_transform(lambda batch: batch)
        with pytest.raises(ValueError, match=r"built with `with_transform`.*Apply the transform with `map`"):
            build(dataset)

    def test_invalid_tools_json(self, build):
        rows = [{"messages": USER + ASSISTANT, "tools": "[]"}, {"messages": USER + ASSISTANT, "tools": '[{"name": '}]
        with pytest.raises(ValueError, match=r"Column 'tools' holds a string that is not valid JSON: '\[\{\"name\": '"
                                             r".*Store the tools as a list of JSON schemas"):
            build(rows)

    def test_bad_eval_dataset(self, build):
        with pytest.raises(ValueError, match=r"columns \['foo'\]"):
            build(PROMPT_COMPLETION, eval_dataset=Dataset.from_list([{"foo": "bar"}]))

    @pytest.mark.parametrize("column", ["image", "images"])
    def test_image_column(self, build, model, column):
        model.config._name_or_path = "org/text-only"
        rows = [{**row, column: None} for row in PROMPT_COMPLETION]
        with pytest.raises(ValueError, match=rf"SFTTrainer got an {column!r} column in its train dataset, but it "
                                             rf"trains Qwen3ForCausalLM \('org/text-only'\) on text only.*remove the "
                                             rf"{column!r} column.*vision-language model"):
            build(rows)

    def test_image_column_in_a_streamed_eval_dataset(self, build):
        stream = Dataset.from_list([{"text": "abc", "image": None}]).to_iterable_dataset()
        with pytest.raises(ValueError, match=r"'image' column in its eval dataset"):
            build(PROMPT_COMPLETION, eval_dataset=stream)

    @pytest.mark.parametrize("split", ["train_dataset", "eval_dataset"])
    def test_list_of_dicts(self, model, tokenizer, config, split):
        datasets = {"train_dataset": Dataset.from_list(PROMPT_COMPLETION), split: PROMPT_COMPLETION}
        name = split.split("_")[0]
        with pytest.raises(TypeError, match=rf"SFTTrainer got a list of 2 dicts as its {name} dataset.*"
                                            r"`datasets\.Dataset\.from_list\(rows\)`"):
            SFTTrainer(model=model, args=config(), processing_class=tokenizer, **datasets)

    def test_message_without_content(self, build):
        rows = [CONVERSATIONS[0], {"messages": [{"role": "user"}] + ASSISTANT}]
        with pytest.raises(ValueError, match=r"Row 1 of the train dataset: message 0 of column 'messages' has no "
                                             r"'content': \{'role': 'user'"):  # Arrow stores the missing key as None
            build(rows)

    @pytest.mark.parametrize("rows", [PROMPT_COMPLETION + [{"prompt": "sort: a\nanswer:", "completion": None}],
                                      [{"prompt": USER, "completion": ASSISTANT}, {"prompt": USER, "completion": None}]],
                             ids=["standard", "conversational"])
    def test_none_completion(self, build, rows):
        with pytest.raises(TypeError, match=rf"Row {len(rows) - 1} of the train dataset is malformed\. Column "
                                            r"'completion' must hold .* got NoneType: None"):
            build(rows)


# ---- rows that would train nothing --------------------------------------------------------------------------------


class TestNothingToLearn:
    LONG_PROMPT = {"prompt": "sort: " + " ".join("qwertyuiopasdfghjklzxcvbnm") + "\nanswer:", "completion": " a"}

    def test_prompt_longer_than_max_length(self, build, tokenizer):
        prompt_tokens = len(tokenizer(self.LONG_PROMPT["prompt"])["input_ids"])
        assert prompt_tokens > 16
        with pytest.raises(TrainingWillNotLearnError, match=rf"1 of 3 train rows lose every trained token to truncation "
                                                            rf"at max_length=16 \(e\.g\. rows \[1\]; the longest prompt "
                                                            rf"has {prompt_tokens} tokens\)\. Raise max_length above "
                                                            rf"{prompt_tokens}.*guards=False"):
            build([PROMPT_COMPLETION[0], self.LONG_PROMPT, PROMPT_COMPLETION[1]], max_length=16)

    def test_prompt_longer_than_max_length_without_guards(self, build, tokenizer):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = build([PROMPT_COMPLETION[0], self.LONG_PROMPT, PROMPT_COMPLETION[1]], max_length=16,
                            guards=False)
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        assert any(m.startswith("1 of 3 train rows lose every trained token to truncation at max_length=16") and
                   "Raise max_length above" in m for m in messages), messages
        assert "Dropped 1 of 3 train rows with no loss token left." in messages
        assert len(trainer.train_dataset) == 2
        texts = [tokenizer.decode(row["input_ids"]) for row in trainer.train_dataset]
        assert texts == ["sort: c a b\nanswer: a b c<|im_end|>", "sort: b a\nanswer: a b<|im_end|>"]

    def test_empty_completion(self, build):
        rows = [{"prompt": USER, "completion": ASSISTANT}, {"prompt": USER, "completion": []}]
        with pytest.raises(TrainingWillNotLearnError, match=r"1 of 2 train rows have no token that enters the loss "
                                                            r"\(e\.g\. rows \[1\]\).*Fix or filter those rows"):
            build(rows)

    def test_no_assistant_turn_under_assistant_only_loss(self, build):
        rows = [CONVERSATIONS[0], {"messages": USER}]
        with pytest.raises(TrainingWillNotLearnError, match=r"1 of 2 train rows have no token .*rows \[1\]"):
            build(rows, assistant_only_loss=True)

    def test_plain_text_documents_longer_than_max_length_train(self, build):
        """Language-model text cut by max_length never reaches its eos: ordinary pretraining-style data, no error."""
        rows = [{"text": "sort the letters c a b and then sort b a " * 8}] * 2
        trainer = build(rows, max_length=16)
        assert [len(ids) for ids in trainer.train_dataset["input_ids"]] == [16, 16]

    def test_end_of_turn_token_never_trained(self, build, tokenizer):
        tokenizer.chat_template = NO_END_OF_TURN
        with pytest.raises(TrainingWillNotLearnError, match=r"None of the 2 train rows trains the end-of-turn token "
                                                            r"'<\|im_end\|>'.*set SFTConfig\.eos_token to the "
                                                            r"template's end-of-turn token"):
            build(CONVERSATIONS, assistant_only_loss=True)

    def test_template_end_of_turn_other_than_eos_is_trained_and_stops_generation(self, build, tokenizer):
        """A template that ends assistant turns with <|endoftext|> while eos is <|im_end|> (a base model with a chat
        template): that token is trained, and generation learns to stop at it."""
        tokenizer.chat_template = WRONG_END_OF_TURN
        with pytest.warns(UserWarning, match=r"ends assistant turns with \['<\|endoftext\|>'\]"):
            trainer = build(CONVERSATIONS, assistant_only_loss=True)
        assert len(trainer.train_dataset) == 2
        endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        assert endoftext in trainer.model.generation_config.eos_token_id

    def test_not_prefix_preserving_template(self, build, tmp_path):
        template = tmp_path / "think.jinja"
        template.write_text(THINK_STRIPPING)
        thinking = {"role": "assistant", "content": "<think>\nsorting</think>\na b c"}
        rows = [{"messages": USER + [thinking] + [{"role": "user", "content": "again"}] + ASSISTANT}]
        with pytest.raises(ValueError, match=r"not prefix-preserving at turn 2 \(role 'user'\).*Use a template with "
                                             r"\{% generation %\} markers"):
            build(rows, assistant_only_loss=True, chat_template_path=str(template))


# ---- options that do not fit the data -----------------------------------------------------------------------------


class TestOptions:
    def test_assistant_only_loss_on_standard_data(self, build):
        with pytest.raises(ValueError, match=r"`assistant_only_loss=True` needs conversational data \(messages with "
                                             r"roles\); the train dataset is standard prompt-completion"):
            build(PROMPT_COMPLETION, assistant_only_loss=True)

    def test_formatting_func_returning_a_list(self, build):
        with pytest.raises(TypeError, match=r"`formatting_func` must return one string per row; it returned list\. "
                                            r"Return the formatted text"):
            build(PROMPT_COMPLETION, formatting_func=lambda row: [row["prompt"] + row["completion"]])

    def test_formatting_func_with_completion_only_loss(self, build):
        with pytest.raises(ValueError, match=r"`formatting_func` turns rows into plain text.*remove "
                                             r"`completion_only_loss=True` or the formatting function"):
            build(PROMPT_COMPLETION, completion_only_loss=True, formatting_func=lambda row: row["prompt"])

    @pytest.mark.parametrize("args", [{"output_dir": "out"}, "out"], ids=["dict", "str"])
    def test_args_of_a_wrong_type(self, build, args):
        with pytest.raises(TypeError, match=rf"`args` must be an? SFTConfig or TrainingArguments; got "
                                            rf"{type(args).__name__}\."):
            build(PROMPT_COMPLETION, args=args)

    def test_padding_free_with_a_custom_collator(self, build):
        with pytest.raises(ValueError, match=r"`padding_free=True` needs the default collator"):
            build(PROMPT_COMPLETION, padding_free=True, data_collator=lambda rows: rows)


class TestConfig:
    def test_unknown_packing_strategy(self, config):
        with pytest.raises(ValueError, match=r"Unknown `packing_strategy` 'ffd'; expected one of \('bfd', 'bfd_split', "
                                             r"'wrapped'\)"):
            config(packing=True, packing_strategy="ffd")

    def test_unknown_loss_type(self, config):
        with pytest.raises(ValueError, match=r"Unknown `loss_type` 'sigmoid'; expected one of \('nll', 'dft'\)"):
            config(loss_type="sigmoid")

    def test_unknown_truncation_mode(self, config):
        with pytest.raises(ValueError, match=r"Unknown `truncation_mode` 'middle'; expected one of \('keep_start', "
                                             r"'keep_end'\)"):
            config(truncation_mode="middle")

    @pytest.mark.parametrize("max_length", [0, -5])
    def test_max_length_not_positive(self, config, max_length):
        with pytest.raises(ValueError, match=rf"`max_length` must be a positive integer or None; got {max_length}\."):
            config(max_length=max_length)

    def test_packing_without_max_length(self, config):
        with pytest.raises(ValueError, match=r"`packing=True` needs `max_length` \(the block length\); got "
                                             r"max_length=None"):
            config(packing=True, max_length=None)

    def test_pad_to_multiple_of_not_positive(self, config):
        with pytest.raises(ValueError, match=r"`pad_to_multiple_of` must be positive; got 0\."):
            config(pad_to_multiple_of=0)

    def test_dataset_kwargs_unknown_key(self, config):
        with pytest.raises(ValueError, match=r"`dataset_kwargs` only accepts 'skip_prepare_dataset'; got unknown keys "
                                             r"\['add_special_tokens'\]"):
            config(dataset_kwargs={"add_special_tokens": False, "skip_prepare_dataset": False})

    def test_dataset_kwargs_unknown_key_as_json(self, config):
        with pytest.raises(ValueError, match=r"got unknown keys \['append_concat_token'\]"):
            config(dataset_kwargs='{"append_concat_token": true}')


# ---- PEFT ---------------------------------------------------------------------------------------------------------


class TestPeft:
    def test_lm_head_in_target_modules(self, build):
        peft = pytest.importorskip("peft")
        lora = peft.LoraConfig(r=2, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM")
        with pytest.raises(ValueError, match=r"An adapter on `lm_head` is not supported.*Remove 'lm_head' from "
                                             r"target_modules \(use modules_to_save=\['lm_head'\]"):
            build(PROMPT_COMPLETION, peft_config=lora)

    def test_peft_model_plus_peft_config(self, build, model):
        peft = pytest.importorskip("peft")
        lora = peft.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
        peft_model = peft.get_peft_model(model, lora)
        with pytest.raises(ValueError, match=r"`model` is already a PeftModel and `peft_config` was also given\. Pass "
                                             r"either a PeftModel .* or a base model with `peft_config`, not both"):
            build(PROMPT_COMPLETION, model=peft_model, peft_config=lora)

    def test_peft_config_of_a_wrong_type(self, build):
        pytest.importorskip("peft")
        with pytest.raises(TypeError, match=r"`peft_config` must be a peft\.PeftConfig \(e\.g\. LoraConfig\); got dict"):
            build(PROMPT_COMPLETION, peft_config={"r": 8})


def test_a_good_input_builds(build):
    """The fixtures themselves are fine: the same rows and options build a trainer without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        trainer = build(PROMPT_COMPLETION)
    assert trainer.train_dataset.column_names == ["input_ids", "completion_mask"]

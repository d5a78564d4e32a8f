"""Bad inputs to `SFTTrainer`, one row each: most fail at construction (or at `SFTConfig` construction) with an
exception that names the offending value and says how to fix it; a few warn; some unusual but legitimate inputs (text
documents longer than `max_length`, ShareGPT `human`/`gpt` roles) go ahead."""

import pytest
from datasets import Dataset

from trl import SFTConfig, SFTTrainer
from trl.guards import TrainingWillNotLearnError
from trl.models.tiny import tiny_model, tiny_tokenizer

from ..unit.test_tokenize import THINK_STRIPPING  # drops earlier turns' <think> blocks, like Qwen3
from .harness import check, error, ok, warn


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



class Env:
    """The tiny model and tokenizer of one row, its `tmp_path`, and how to build an `SFTTrainer` from them."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.model = tiny_model(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                                num_key_value_heads=1, head_dim=32)
        self.tokenizer = tiny_tokenizer()

    def config(self, **kwargs):
        return SFTConfig(output_dir=str(self.tmp_path), report_to="none", **kwargs)

    def build(self, rows_or_dataset, args=None, **kwargs):
        """An SFTTrainer on the tiny model and tokenizer; `args` may be given, else built from the config kwargs."""
        config_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in SFTConfig.__dataclass_fields__}
        dataset = rows_or_dataset if not isinstance(rows_or_dataset, list) else Dataset.from_list(rows_or_dataset)
        kwargs.setdefault("processing_class", self.tokenizer)
        return SFTTrainer(model=kwargs.pop("model", self.model), args=args or self.config(**config_kwargs),
                          train_dataset=dataset, **kwargs)


def _build(rows, **kwargs):
    return lambda env: env.build(rows, **kwargs)


def _template(template, rows, **kwargs):
    def build(env):
        env.tokenizer.chat_template = template
        return env.build(rows, **kwargs)

    return build


def _config(**kwargs):
    return lambda env: env.config(**kwargs)


def _peft(make_lora, rows=None, wrap=False):
    def build(env):
        peft = pytest.importorskip("peft")
        lora = make_lora(peft)
        model = peft.get_peft_model(env.model, peft.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")) \
            if wrap else env.model
        return env.build(rows or PROMPT_COMPLETION, model=model, peft_config=lora)

    return build


def _datasets(**datasets):
    def build(env):
        return SFTTrainer(model=env.model, args=env.config(), processing_class=env.tokenizer,
                          **{"train_dataset": Dataset.from_list(PROMPT_COMPLETION), **datasets})

    return build


def _image_rows(column):
    def build(env):
        env.model.config._name_or_path = "org/text-only"
        return env.build([{**row, column: None} for row in PROMPT_COMPLETION])

    return build


def _not_prefix_preserving(env):
    template = env.tmp_path / "think.jinja"
    template.write_text(THINK_STRIPPING)
    thinking = {"role": "assistant", "content": "<think>\nsorting</think>\na b c"}
    rows = [{"messages": USER + [thinking] + [{"role": "user", "content": "again"}] + ASSISTANT}]
    return env.build(rows, assistant_only_loss=True, chat_template_path=str(template))


def _trains_two_steps(rows, **kwargs):
    def build(env):
        trainer = env.build(rows, max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1,
                            save_strategy="no", **kwargs)
        trainer.train()
        return trainer

    return build


LONG_PROMPT = {"prompt": "sort: " + " ".join("qwertyuiopasdfghjklzxcvbnm") + "\nanswer:", "completion": " a"}
LONG_PROMPT_ROWS = [PROMPT_COMPLETION[0], LONG_PROMPT, PROMPT_COMPLETION[1]]
MOSTLY_LONG_PROMPT_ROWS = [LONG_PROMPT, LONG_PROMPT, PROMPT_COMPLETION[1]]
LONG_PROMPT_TOKENS = len(tiny_tokenizer()(LONG_PROMPT["prompt"])["input_ids"])
assert LONG_PROMPT_TOKENS > 16
NONE_STANDARD = PROMPT_COMPLETION + [{"prompt": "sort: a\nanswer:", "completion": None}]
NONE_CONVERSATIONAL = [{"prompt": USER, "completion": ASSISTANT}, {"prompt": USER, "completion": None}]
SHAREGPT = [{"conversations": [{"from": "human", "value": f"say {i}"}, {"from": "gpt", "value": f"{i} {i}"}]}
            for i in range(4)]


def _long_prompt_kept_rows(env, outcome):
    assert any(m.startswith("1 of 3 train rows lose every trained token to truncation at max_length=16") and
               "Raise max_length above" in m for m in outcome.warnings), outcome.warnings
    assert "Dropped 1 of 3 train rows with no loss token left." in outcome.warnings
    trainer = outcome.value
    assert len(trainer.train_dataset) == 2
    texts = [env.tokenizer.decode(row["input_ids"]) for row in trainer.train_dataset]
    assert texts == ["sort: c a b\nanswer: a b c<|im_end|>", "sort: b a\nanswer: a b<|im_end|>"]


def _cut_at_max_length(env, outcome):
    assert [len(ids) for ids in outcome.value.train_dataset["input_ids"]] == [16, 16]


def _end_of_turn_trained(env, outcome):
    trainer = outcome.value
    assert len(trainer.train_dataset) == 2
    endoftext = env.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert endoftext in trainer.model.generation_config.eos_token_id


def _sharegpt_roles(env, outcome):
    text = env.tokenizer.decode(outcome.value.train_dataset[0]["input_ids"])
    assert "<|im_start|>user\nsay 0" in text and "<|im_start|>assistant\n0 0" in text, text
    assert "human" not in text and "gpt" not in text


def _no_user_warning(env, outcome):
    assert not outcome.warnings, outcome.warnings
    assert outcome.value.train_dataset.column_names == ["input_ids", "completion_mask"]


CASES = [
    # ---- the dataset ----
    error("unknown columns", _build([{"foo": "bar"}]),
          r"columns \['foo'\].*Rename your columns, or pass `formatting_func`"),
    error("preference dataset", _build([{"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}]),
          r"SFTTrainer does not accept a standard preference dataset \(columns \['chosen', 'prompt', 'rejected'\]\)\. "
          r"It accepts: language modeling, prompt completion"),
    error("completion list while prompt string", _build([{"prompt": "sort: c a b", "completion": ASSISTANT}]),
          r"Column 'prompt' must hold a list of \{'role', 'content'\} messages in a conversational dataset; got str: "
          r"sort: c a b", TypeError),
    error("messages as a string", _build([{"messages": "user: hi assistant: hello"}]),
          r"Column 'messages' must hold a list of \{'role', 'content'\} messages; got str: user: hi assistant: "
          r"hello\. Put plain text in a 'text' column", TypeError),
    error("no chat template on conversational data", _template(None, CONVERSATIONS),
          r"train dataset is conversational but the tokenizer \w+ has no chat template\. Set "
          r"`SFTConfig\(chat_template_path=\.\.\.\)`"),
    error("dataset built with with_transform",
          lambda env: env.build(Dataset.from_list(PROMPT_COMPLETION).with_transform(lambda batch: batch)),
          r"built with `with_transform`.*Apply the transform with `map`"),
    error("tools column not JSON",
          _build([{"messages": USER + ASSISTANT, "tools": "[]"}, {"messages": USER + ASSISTANT, "tools": '[{"name": '}]),
          r"Column 'tools' holds a string that is not valid JSON: '\[\{\"name\": '.*Store the tools as a list of JSON "
          r"schemas"),
    error("bad eval dataset", _build(PROMPT_COMPLETION, eval_dataset=Dataset.from_list([{"foo": "bar"}])),
          r"columns \['foo'\]"),
    *[error(f"{column} column", _image_rows(column),
            rf"SFTTrainer got an {column!r} column in its train dataset, but it trains Qwen3ForCausalLM "
            rf"\('org/text-only'\) on text only.*remove the {column!r} column.*vision-language model")
      for column in ("image", "images")],
    error("image column in a streamed eval dataset",
          _build(PROMPT_COMPLETION, eval_dataset=Dataset.from_list([{"text": "abc", "image": None}]).to_iterable_dataset()),
          r"'image' column in its eval dataset"),
    *[error(f"list of dicts as {split}", _datasets(**{split: PROMPT_COMPLETION}),
            rf"SFTTrainer got a list of 2 dicts as its {split.split('_')[0]} dataset.*`datasets\.Dataset\.from_list\(rows\)`",
            TypeError) for split in ("train_dataset", "eval_dataset")],
    error("dict of columns", _datasets(train_dataset={"prompt": ["a"], "completion": ["b"]}),
          r"SFTTrainer got a dict of columns \['completion', 'prompt'\] as its train dataset.*"
          r"`datasets\.Dataset\.from_dict\(columns\)`", TypeError),
    error("message without content", _build([CONVERSATIONS[0], {"messages": [{"role": "user"}] + ASSISTANT}]),
          r"Row 1 of the train dataset: message 0 of column 'messages' has no 'content': \{'role': 'user'"),
    error("None completion (standard)", _build(NONE_STANDARD),
          rf"Row {len(NONE_STANDARD) - 1} of the train dataset is malformed\. Column 'completion' must hold .* got "
          r"NoneType: None", TypeError),
    error("None completion (conversational)", _build(NONE_CONVERSATIONAL),
          rf"Row {len(NONE_CONVERSATIONAL) - 1} of the train dataset is malformed\. Column 'completion' must hold .* "
          r"got NoneType: None", TypeError),
    error("model path that does not exist", lambda env: env.build(PROMPT_COMPLETION, model="./no/such/model"),
          r"Model './no/such/model' does not exist \(looked for .*; the current directory is ", FileNotFoundError),
    ok("ShareGPT human/gpt roles", _trains_two_steps(SHAREGPT), then=_sharegpt_roles),
    # ---- rows that would train nothing ----
    # a few rows cut to nothing are dropped with a warning; most of them stop the run (issue 10)
    warn("prompt longer than max_length in one row of three", _build(LONG_PROMPT_ROWS, max_length=16),
         rf"1 of 3 train rows lose every trained token to truncation at max_length=16 \(e\.g\. rows \[1\]; the longest "
         rf"prompt has {LONG_PROMPT_TOKENS} tokens\): they are dropped\. Raise max_length above {LONG_PROMPT_TOKENS}",
         then=_long_prompt_kept_rows),
    error("prompt longer than max_length in most rows", _build(MOSTLY_LONG_PROMPT_ROWS, max_length=16),
          rf"2 of 3 train rows lose every trained token to truncation at max_length=16 \(e\.g\. rows \[0, 1\]; the "
          rf"longest prompt has {LONG_PROMPT_TOKENS} tokens\)\. Raise max_length above {LONG_PROMPT_TOKENS}.*guards=False",
          TrainingWillNotLearnError),
    warn("prompt longer than max_length in most rows, guards off",
         _build(MOSTLY_LONG_PROMPT_ROWS, max_length=16, guards=False),
         r"2 of 3 train rows lose every trained token to truncation at max_length=16.*With guards=False they are dropped"),
    error("empty completion", _build([{"prompt": USER, "completion": ASSISTANT}, {"prompt": USER, "completion": []}]),
          r"1 of 2 train rows have no token that enters the loss \(e\.g\. rows \[1\]\).*Fix or filter those rows",
          TrainingWillNotLearnError),
    error("no assistant turn under assistant_only_loss",
          _build([CONVERSATIONS[0], {"messages": USER}], assistant_only_loss=True),
          r"1 of 2 train rows have no token .*rows \[1\]", TrainingWillNotLearnError),
    ok("plain text documents longer than max_length", _build([{"text": "sort the letters c a b and then sort b a " * 8}] * 2,
                                                              max_length=16), then=_cut_at_max_length),
    ok("plain text documents longer than max_length train",
       _trains_two_steps([{"text": "sort the letters c a b and then sort b a " * 8}] * 2, max_length=16)),
    error("end-of-turn token never trained", _template(NO_END_OF_TURN, CONVERSATIONS, assistant_only_loss=True),
          r"None of the 2 train rows trains the end-of-turn token '<\|im_end\|>'.*set SFTConfig\.eos_token to the "
          r"template's end-of-turn token", TrainingWillNotLearnError),
    warn("template end of turn other than eos", _template(WRONG_END_OF_TURN, CONVERSATIONS, assistant_only_loss=True),
         r"ends assistant turns with \['<\|endoftext\|>'\]", then=_end_of_turn_trained),
    error("not prefix-preserving template", _not_prefix_preserving,  # and no training template renders like it
          r"could not make a training template that renders byte-identically.*Pass a template with "
          r"\{% generation %\} markers"),
    # ---- options that do not fit the data ----
    error("assistant_only_loss on standard data", _build(PROMPT_COMPLETION, assistant_only_loss=True),
          r"`assistant_only_loss=True` needs conversational data \(messages with roles\); the train dataset is standard "
          r"prompt-completion"),
    error("formatting_func returning a list",
          _build(PROMPT_COMPLETION, formatting_func=lambda row: [row["prompt"] + row["completion"]]),
          r"`formatting_func` must return one string per row; it returned list\. Return the formatted text", TypeError),
    error("formatting_func with completion_only_loss",
          _build(PROMPT_COMPLETION, completion_only_loss=True, formatting_func=lambda row: row["prompt"]),
          r"`formatting_func` turns rows into plain text.*remove `completion_only_loss=True` or the formatting function"),
    *[error(f"args of a wrong type ({kind})", _build(PROMPT_COMPLETION, args=args),
            rf"`args` must be an? SFTConfig or TrainingArguments; got {type(args).__name__}\.", TypeError)
      for kind, args in (("dict", {"output_dir": "out"}), ("str", "out"))],
    error("padding_free with a custom collator",
          _build(PROMPT_COMPLETION, padding_free=True, data_collator=lambda rows: rows),
          r"`padding_free=True` needs the default collator"),
    # ---- the config (the shared checks are in test_configs.py) ----
    error("unknown packing_strategy", _config(packing=True, packing_strategy="ffd"),
          r"Unknown `packing_strategy` 'ffd'; expected one of \('bfd', 'bfd_split', 'wrapped'\)"),
    error("unknown loss_type", _config(loss_type="sigmoid"),
          r"Unknown `loss_type` 'sigmoid'; expected one of \('nll', 'dft'\)"),
    error("unknown truncation_mode", _config(truncation_mode="middle"),
          r"Unknown `truncation_mode` 'middle'; expected one of \('keep_start', 'keep_end'\)"),
    *[error(f"max_length={n}", _config(max_length=n), rf"`max_length` must be a positive integer or None; got {n}\.")
      for n in (0, -5)],
    error("packing without max_length", _config(packing=True, max_length=None),
          r"`packing=True` needs `max_length` \(the block length\); got max_length=None"),
    error("pad_to_multiple_of=0", _config(pad_to_multiple_of=0), r"`pad_to_multiple_of` must be positive; got 0\."),
    error("dataset_kwargs unknown key", _config(dataset_kwargs={"add_special_tokens": False, "skip_prepare_dataset": False}),
          r"`dataset_kwargs` only accepts 'skip_prepare_dataset'; got unknown keys \['add_special_tokens'\]"),
    error("dataset_kwargs unknown key as JSON", _config(dataset_kwargs='{"append_concat_token": true}'),
          r"got unknown keys \['append_concat_token'\]"),
    # ---- PEFT ----
    error("lm_head in target_modules",
          _peft(lambda peft: peft.LoraConfig(r=2, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM")),
          r"An adapter on `lm_head` is not supported.*Remove 'lm_head' from target_modules \(use "
          r"modules_to_save=\['lm_head'\]"),
    error("PeftModel plus peft_config",
          _peft(lambda peft: peft.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"), wrap=True),
          r"`model` is already a PeftModel and `peft_config` was also given\. Pass either a PeftModel .* or a base model "
          r"with `peft_config`, not both"),
    error("peft_config of a wrong type", _peft(lambda peft: {"r": 8}),
          r"`peft_config` must be a peft\.PeftConfig \(e\.g\. LoraConfig\); got dict", TypeError),
    # ---- the fixtures themselves are fine: the same rows and options build a trainer without a warning ----
    ok("a good input builds", _build(PROMPT_COMPLETION), then=_no_user_warning),
]


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


@pytest.mark.parametrize("case", CASES)
def test_bad_sft_input(case, env):
    check(case, env)

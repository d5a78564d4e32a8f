"""trl.experimental: the import warning, the deprecated aliases, and trl.experimental.utils."""

import subprocess
import sys

import pytest
import torch
from datasets import Dataset, DatasetDict

from trl.models.tiny import tiny_config, tiny_tokenizer

from .helpers import SMALL, small_model


def _run(code: str, silence: str | None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    if silence is not None:
        env["TRL_EXPERIMENTAL_SILENCE"] = silence
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, env=env, check=False,
                          timeout=120)


def test_import_warns_unless_silenced():
    code = ("import warnings\nwith warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter('always')\n"
            "    import trl.experimental\nfrom trl.import_utils import TRLExperimentalWarning\n"
            "print(sum(issubclass(x.category, TRLExperimentalWarning) for x in w))")
    loud, quiet, quiet_true, loud_zero = _run(code, None), _run(code, "1"), _run(code, "true"), _run(code, "0")
    for out in (loud, quiet, quiet_true, loud_zero):
        assert out.returncode == 0, out.stderr
    assert loud.stdout.strip() == "1" and quiet.stdout.strip() == "0"
    # the same values as trl.import_utils.experimental_warnings_silenced (which the stable trainers' warnings use)
    assert quiet_true.stdout.strip() == "0" and loud_zero.stdout.strip() == "1"


def test_subpackages_are_lazy():
    out = _run("import sys, trl.experimental as e\nprint('trl.experimental.orpo' in sys.modules, 'orpo' in dir(e))",
               "1")
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_deprecated_aliases_warn_and_are_the_stable_classes(tmp_path):
    import trl
    from trl.experimental.kto import KTOConfig, KTOTrainer

    with pytest.warns(FutureWarning, match=r"from trl import KTOConfig"):
        config = KTOConfig(output_dir=str(tmp_path), report_to="none")
    assert isinstance(config, trl.KTOConfig) and issubclass(KTOTrainer, trl.KTOTrainer)
    from trl.experimental.distillation import DistillationConfig
    from trl.trainer.distillation_config import DistillationConfig as Stable

    with pytest.warns(FutureWarning, match=r"from trl import DistillationConfig"):
        assert isinstance(DistillationConfig(output_dir=str(tmp_path), report_to="none"), Stable)


def test_create_reference_model_is_frozen_and_silent():
    import warnings

    from trl.experimental.utils import create_reference_model

    model = small_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = create_reference_model(model)
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))
    assert next(ref.parameters()).data_ptr() != next(model.parameters()).data_ptr()


def test_truncate_dataset():
    from trl.experimental.utils import truncate_dataset

    ds = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "attention_mask": [[1, 1, 1], [1, 1]], "label": [0, 1]})
    out = truncate_dataset(ds, 2)
    assert out["input_ids"][:] == [[1, 2], [4, 5]] and out["attention_mask"][:] == [[1, 1], [1, 1]]
    assert out["label"][:] == [0, 1]
    both = truncate_dataset(DatasetDict(train=ds, test=ds), 1)
    assert both["test"]["input_ids"][:] == [[1], [4]]
    with pytest.raises(ValueError, match=r"positive integer; got 0"):
        truncate_dataset(ds, 0)


def test_dpo_data_collator_with_padding():
    from trl.experimental.utils import DPODataCollatorWithPadding

    batch = DPODataCollatorWithPadding(pad_token_id=9)([
        {"prompt_input_ids": [1, 2], "chosen_input_ids": [3], "chosen_labels": [3], "chosen_attention_mask": [1],
         "ref_chosen_logps": -1.0, "prompt": "a"},
        {"prompt_input_ids": [4], "chosen_input_ids": [5, 6], "chosen_labels": [5, 6], "chosen_attention_mask": [1, 1],
         "ref_chosen_logps": -2.0, "prompt": "b"},
    ])
    assert batch["prompt_input_ids"].tolist() == [[1, 2], [9, 4]]  # prompts left-padded
    assert batch["chosen_input_ids"].tolist() == [[3, 9], [5, 6]]  # the rest right-padded
    assert batch["chosen_labels"].tolist() == [[3, -100], [5, 6]]
    assert batch["chosen_attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert batch["ref_chosen_logps"].tolist() == [-1.0, -2.0] and batch["prompt"] == ["a", "b"]


def test_data_collator_for_chatml():
    from trl.experimental.utils import DataCollatorForChatML

    tok = tiny_tokenizer()
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo there"}]
    batch = DataCollatorForChatML(tok)([{"messages": conv}, {"messages": [conv[0] | {"content": "hello you"},
                                                                          conv[1] | {"content": "x"}]}])
    full = tok.apply_chat_template(conv, tokenize=False)
    prompt = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    assert tok.decode(row) == full
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert tok.decode(labelled) == full[len(prompt):]  # the completion: the last message and what closes it
    p = batch["prompts"][0][batch["prompt_attention_mask"][0].bool()]
    assert tok.decode(p) == prompt
    assert batch["attention_mask"][1, 0] == 0 or batch["attention_mask"][0, 0] == 0  # left padding
    with pytest.raises(ValueError, match=r"at least two messages"):
        DataCollatorForChatML(tok)([{"messages": conv[:1]}])


def test_get_reward_reads_the_last_response_token():
    from transformers import AutoModelForSequenceClassification

    from trl.experimental.utils import get_reward

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(**SMALL, num_labels=1, pad_token_id=0)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [5, 6, 7, 10, 11, 12, 13]])
    with torch.no_grad():
        logits, scores, lengths = get_reward(model, ids, pad_token_id=0, context_length=3)
        alone = [model(input_ids=ids[i : i + 1, : n + 1]).logits[0, 0] for i, n in enumerate([4, 6])]
    assert lengths.tolist() == [4, 6] and logits.shape == (2, 7, 1)
    torch.testing.assert_close(scores, torch.stack(alone), rtol=1e-5, atol=1e-5)


def test_prepare_peft_model():
    peft = pytest.importorskip("peft")
    from trl.experimental.utils import prepare_peft_model

    wrapped = prepare_peft_model(small_model(), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert isinstance(wrapped, peft.PeftModel)
    with pytest.raises(TypeError, match=r"peft.PeftConfig"):
        prepare_peft_model(small_model(), {"r": 2})

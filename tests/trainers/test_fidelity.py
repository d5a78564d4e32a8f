"""Fidelity table: the first-step loss of each offline trainer and loss type on a fixed tiny model and batch, pinned to
an independent naive implementation written here.

The naive side tokenises the raw rows itself (standard rows: prompt, then prompt + completion + eos; conversational
rows: the tokenizer's chat template, the completion being the full rendering minus the prompt's), runs
float64 copies of the models on each sequence alone (no padding, full logits), and applies the textbook formula of
each loss (as each trainer's module docstring states it). It never calls `trl.losses` or a trainer's scoring code, so
a drift in tokenisation, masking, log-prob gathering, reduction or a loss formula fails exactly one row. The trainer
side is `trainer.compute_loss` on the first batch of `get_train_dataloader()`, with the whole dataset in that batch
(so row order does not matter).
"""

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer
from trl.models.tiny import tiny_model, tiny_tokenizer

from .sft_one_step import SMALL

RTOL = 1e-5  # fp32 trainer against the float64 naive value
BETA = 0.1

PAIRS = [
    {"prompt": "sort: c a b\nanswer:", "chosen": " a b c", "rejected": " c b a b"},
    {"prompt": "reverse: a b\nanswer:", "chosen": " b a", "rejected": " a"},
    {"prompt": "sort: d c\nanswer:", "chosen": " c d", "rejected": " d d c"},
    {"prompt": "copy: e f g\nanswer:", "chosen": " e f g", "rejected": " e g"},
]


def _chat(row: dict) -> dict:
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"].strip()}],
            "rejected": [{"role": "assistant", "content": row["rejected"].strip()}]}


DATA = {"standard": PAIRS, "conversational": [_chat(row) for row in PAIRS]}


def _args(tmp_path, config_cls, **overrides):
    values = {"output_dir": str(tmp_path / "out"), "max_steps": 1, "per_device_train_batch_size": len(PAIRS),
              "report_to": "none", "save_strategy": "no", "max_length": 128, "seed": 0, "gradient_checkpointing": False}
    values.update(overrides)
    return config_cls(**values)


def _trainer_loss(trainer) -> float:
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch, num_items_in_batch=None))


# ----------------------------------------------------------------------------------------------------------------------
# The naive side: plain tokenisation, one unpadded float64 forward per sequence.


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _prompt_completion_ids(tok, prompt, completion) -> tuple[list[int], list[int]]:
    """prompt ids and completion ids, the completion being the full rendering minus the prompt's: text + eos for
    standard rows; for conversations, the chat template's whole rendering (text after the end-of-turn token
    included) minus the prompt's rendering with the generation prompt."""
    if isinstance(prompt, list):
        prompt_ids = _ids(tok, tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
        full = _ids(tok, tok.apply_chat_template(prompt + completion, tokenize=False))
    else:
        prompt_ids = _ids(tok, prompt)
        full = _ids(tok, prompt + completion + tok.eos_token)
    assert full[: len(prompt_ids)] == prompt_ids
    return prompt_ids, full[len(prompt_ids):]


def _token_logps(model64, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """log p(completion token | everything before it), float64, one value per completion token."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model64(input_ids=ids).logits[0].double()
    logps = torch.log_softmax(logits[:-1], dim=-1)
    targets = ids[0, 1:]
    per_token = logps[torch.arange(len(targets)), targets]
    return per_token[len(prompt_ids) - 1:]


def _f64(model):
    return copy.deepcopy(model).double().eval()


# ----------------------------------------------------------------------------------------------------------------------
# SFT


def test_sft_prompt_completion(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_model(seed=0, **SMALL)
    rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS]
    model64 = _f64(model)
    logps = torch.cat([_token_logps(model64, *_prompt_completion_ids(tok, r["prompt"], r["completion"])) for r in rows])
    expected = float(-logps.mean())  # the mean NLL over every completion token of the batch

    trainer = SFTTrainer(model=model, args=_args(tmp_path, SFTConfig), train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    assert _trainer_loss(trainer) == pytest.approx(expected, rel=RTOL)


# ----------------------------------------------------------------------------------------------------------------------
# DPO: every loss type, on the same pairs, policy and reference.


def _logsig(x):
    return F.logsigmoid(torch.as_tensor(x, dtype=torch.float64))


def _sig(x):
    return torch.sigmoid(torch.as_tensor(x, dtype=torch.float64))


def _naive_dpo(loss_type: str, s: dict, beta: float = BETA, eps: float = 0.0, tau: float = 0.05) -> float:
    """The per-pair losses averaged over the batch, from the summed log-probs `s[name]` (tensors over pairs) and the
    completion lengths."""
    hc = s["pc"] - s["rc"]  # chosen log-ratio
    hr = s["pr"] - s["rr"]  # rejected log-ratio
    z = beta * (hc - hr)
    if loss_type == "sigmoid":
        losses = -(1 - eps) * _logsig(z) - eps * _logsig(-z)
    elif loss_type == "robust":
        losses = (-(1 - eps) * _logsig(z) + eps * _logsig(-z)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - z)
    elif loss_type == "ipo":
        avg = (hc / s["lc"]) - (hr / s["lr"])
        losses = (avg - 1 / (2 * beta)) ** 2
    elif loss_type == "sigmoid_norm":
        zn = beta * (hc / s["lc"] - hr / s["lr"])
        losses = -_logsig(zn)
    elif loss_type == "exo_pair":
        e = eps or 1e-3
        losses = _sig(z) * (_logsig(z) - math.log(1 - e)) + _sig(-z) * (_logsig(-z) - math.log(e))
    elif loss_type == "nca_pair":
        losses = -_logsig(beta * hc) - 0.5 * _logsig(-beta * hc) - 0.5 * _logsig(-beta * hr)
    elif loss_type == "bco_pair":
        delta = torch.cat([beta * hc, beta * hr]).mean()  # the running mean after its first update
        losses = -_logsig(beta * hc - delta) - _logsig(-(beta * hr - delta))
    elif loss_type == "sppo_hard":
        losses = (hc - 1 / (2 * beta)) ** 2 + (hr + 1 / (2 * beta)) ** 2
    elif loss_type == "aot":
        delta = torch.sort(s["pc"] - s["pr"]).values - torch.sort(s["rc"] - s["rr"]).values
        losses = -_logsig(beta * delta)
    elif loss_type == "aot_unpaired":
        delta = torch.sort(hc).values - torch.sort(hr).values
        losses = -_logsig(beta * delta)
    elif loss_type == "apo_zero":
        losses = (1 - _sig(beta * hc)) + _sig(beta * hr)
    elif loss_type == "apo_down":
        losses = _sig(beta * hc) + (1 - _sig(beta * (hc - hr)))
    elif loss_type == "discopop":
        weight = _sig(z / tau)
        losses = -_logsig(z) * (1 - weight) + torch.exp(-z) * weight
    elif loss_type == "sft":
        losses = -s["pc"] / s["lc"]
    else:
        raise AssertionError(loss_type)
    return float(losses.mean())


DPO_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
             "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


@functools.cache
def _dpo_sums(form: str) -> dict:
    tok = tiny_tokenizer()
    policy64, ref64 = _f64(tiny_model(seed=0, **SMALL)), _f64(tiny_model(seed=1, **SMALL))
    sums = {k: [] for k in ("pc", "pr", "rc", "rr", "lc", "lr")}
    for row in DATA[form]:
        for side, (p_key, r_key, l_key) in (("chosen", ("pc", "rc", "lc")), ("rejected", ("pr", "rr", "lr"))):
            prompt_ids, completion_ids = _prompt_completion_ids(tok, row["prompt"], row[side])
            sums[p_key].append(float(_token_logps(policy64, prompt_ids, completion_ids).sum()))
            sums[r_key].append(float(_token_logps(ref64, prompt_ids, completion_ids).sum()))
            sums[l_key].append(float(len(completion_ids)))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in sums.items()}


@pytest.mark.parametrize("form, loss_type", [("standard", t) for t in DPO_TYPES] + [("conversational", "sigmoid")])
def test_dpo(tmp_path, form, loss_type):
    eps = 0.1 if loss_type == "robust" else 0.0
    expected = _naive_dpo(loss_type, _dpo_sums(form), eps=eps)
    args = _args(tmp_path, DPOConfig, loss_type=loss_type, beta=BETA, label_smoothing=eps)
    trainer = DPOTrainer(model=tiny_model(seed=0, **SMALL), ref_model=tiny_model(seed=1, **SMALL), args=args,
                         train_dataset=Dataset.from_list(DATA[form]), processing_class=tiny_tokenizer())
    assert _trainer_loss(trainer) == pytest.approx(expected, rel=RTOL)


# ----------------------------------------------------------------------------------------------------------------------
# KTO: unpaired rows; `kto`'s KL term uses the mismatched completions the data pipeline assigned to each row.


def _unpaired(form: str) -> list[dict]:
    return [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
            for p in DATA[form] for side in ("chosen", "rejected")]


@pytest.mark.parametrize("form, loss_type", [("standard", "kto"), ("standard", "apo_zero_unpaired"),
                                             ("conversational", "kto")])
def test_kto(tmp_path, form, loss_type):
    tok = tiny_tokenizer()
    unpaired = _unpaired(form)
    args = _args(tmp_path, KTOConfig, loss_type=loss_type, beta=BETA, per_device_train_batch_size=len(unpaired),
                 desirable_weight=1.0, undesirable_weight=1.0)
    trainer = KTOTrainer(model=tiny_model(seed=0, **SMALL), ref_model=tiny_model(seed=1, **SMALL), args=args,
                         train_dataset=Dataset.from_list(unpaired), processing_class=tok)
    policy64, ref64 = _f64(tiny_model(seed=0, **SMALL)), _f64(tiny_model(seed=1, **SMALL))

    def logratio(prompt_ids, completion_ids):
        return float(_token_logps(policy64, prompt_ids, completion_ids).sum()
                     - _token_logps(ref64, prompt_ids, completion_ids).sum())

    kl = 0.0
    if loss_type == "kto":  # mean over the batch of the KL sequences' log-ratios, clamped at 0; never differentiated
        prepared = trainer.train_dataset
        kl = max(sum(logratio(r["prompt_ids"], r["kl_completion_ids"]) for r in prepared) / len(prepared), 0.0)
    losses = []
    for row in unpaired:
        h = logratio(*_prompt_completion_ids(tok, row["prompt"], row["completion"]))
        if row["label"]:
            losses.append(1 - 1 / (1 + math.exp(-BETA * (h - kl))))
        else:
            losses.append(1 - 1 / (1 + math.exp(-BETA * (kl - h))))
    expected = sum(losses) / len(losses)
    assert _trainer_loss(trainer) == pytest.approx(expected, rel=RTOL)


# ----------------------------------------------------------------------------------------------------------------------
# Reward: each side scored at its final token.


@pytest.mark.parametrize("form", ["standard", "conversational"])
def test_reward(tmp_path, form):
    from transformers import AutoModelForSequenceClassification

    from trl import RewardConfig, RewardTrainer
    from trl.models.tiny import tiny_config

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("qwen3", num_labels=1, **SMALL))
    with torch.no_grad():  # a larger head, so the margins (and a wrong scoring token) move the loss well off log 2
        model.score.weight.normal_(std=1.0)
    model64 = _f64(model)

    def score(prompt, completion) -> float:  # at the final token of the full rendering
        prompt_ids, completion_ids = _prompt_completion_ids(tok, prompt, completion)
        with torch.no_grad():
            hidden = model64.model(input_ids=torch.tensor([prompt_ids + completion_ids])).last_hidden_state[0, -1]
            return float(model64.score(hidden.double()))

    rows = DATA[form]
    margins = torch.tensor([score(r["prompt"], r["chosen"]) - score(r["prompt"], r["rejected"]) for r in rows],
                           dtype=torch.float64)
    expected = float(-F.logsigmoid(margins).mean())
    trainer = RewardTrainer(model=model, args=_args(tmp_path, RewardConfig), train_dataset=Dataset.from_list(rows),
                            processing_class=tok)
    assert _trainer_loss(trainer) == pytest.approx(expected, rel=RTOL)

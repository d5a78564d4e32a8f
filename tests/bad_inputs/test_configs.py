"""Bad config values, for every trainer's config: each is an error at construction naming the field and the fix."""

import numpy as np
import pytest

from trl import DPOConfig, GRPOConfig, KTOConfig, RewardConfig, RLOOConfig, SFTConfig

from .harness import check, error, ok


CONFIGS = [SFTConfig, DPOConfig, KTOConfig, RewardConfig, GRPOConfig, RLOOConfig]


def _make(**kwargs):
    def build(env):
        return env(report_to="none", **kwargs)

    return build


# Shared by every config (`_BaseConfig`): runs that would do nothing, or fail at their first step.
COMMON = [
    error("learning_rate=0", _make(learning_rate=0), r"`learning_rate` must be positive; got 0: the weights would "
                                                       r"never move"),
    error("learning_rate<0", _make(learning_rate=-1e-5), r"`learning_rate` must be positive; got -1e-05: the weights "
                                                           r"would move up the loss"),
    error("learning_rate as str", _make(learning_rate="1e-5"), r"`learning_rate` must be a number; got str '1e-5'",
          TypeError),
    error("max_steps=0", _make(max_steps=0), r"`max_steps=0` trains for no step\. Set a positive `max_steps`"),
    error("num_train_epochs=0", _make(num_train_epochs=0), r"`num_train_epochs=0` with no `max_steps` trains for no "
                                                             r"step"),
    error("num_train_epochs<0", _make(num_train_epochs=-1), r"`num_train_epochs=-1` with no `max_steps`"),
    ok("num_train_epochs=0 with max_steps", _make(num_train_epochs=0, max_steps=3)),
    error("fp16 on a CPU", _make(fp16=True, use_cpu=True), r"`fp16=True` needs a GPU .* silently train in float32\. Leave `fp16` "
                                             r"off"),
    ok("bf16 on a CPU", _make(bf16=True, use_cpu=True)),
    error("gradient_accumulation_steps=0", _make(gradient_accumulation_steps=0),
          r"`gradient_accumulation_steps` must be a positive integer; got 0\."),
    error("per_device_train_batch_size=0", _make(per_device_train_batch_size=0),
          r"`per_device_train_batch_size` must be a positive integer; got 0\."),
    error("per_device_eval_batch_size=-1", _make(per_device_eval_batch_size=-1),
          r"`per_device_eval_batch_size` must be a positive integer; got -1\."),
    error("seed as str", _make(seed="42"), r"`seed` must be an integer; got str '42' \(e\.g\. `seed=42`", TypeError),
    error("seed as float", _make(seed=4.2), r"`seed` must be an integer; got float 4\.2", TypeError),
    ok("numpy seed and learning rate (from a sweep script)", _make(seed=np.int64(3), learning_rate=np.float32(1e-5))),
    error("gradient_accumulation_steps as str", _make(gradient_accumulation_steps="2"),
          r"`gradient_accumulation_steps` must be an integer; got str '2'", TypeError),
    error("model_init_kwargs not JSON", _make(model_init_kwargs="{dtype: float32}"),
          r"`model_init_kwargs` must be a dict or a JSON object string; got '\{dtype: float32\}'"),
    error("model_init_kwargs a list", _make(model_init_kwargs=["dtype"]), r"`model_init_kwargs` must be a dict; got "
                                                                          r"list", TypeError),
    error("router_aux_loss_coef<0", _make(router_aux_loss_coef=-0.1), r"`router_aux_loss_coef` must be >= 0; got "
                                                                      r"-0\.1"),
]

PER_CONFIG = {
    SFTConfig: [
        error("unknown loss_type", _make(loss_type="sigmoid"), r"Unknown `loss_type` 'sigmoid'; expected one of "
                                                               r"\('nll', 'dft'\)"),
        error("unknown packing_strategy", _make(packing=True, packing_strategy="ffd"),
              r"Unknown `packing_strategy` 'ffd'; expected one of \('bfd', 'bfd_split', 'wrapped'\)"),
        error("unknown truncation_mode", _make(truncation_mode="middle"), r"Unknown `truncation_mode` 'middle'"),
        error("max_length=0", _make(max_length=0), r"`max_length` must be a positive integer or None; got 0\."),
        error("max_length<0", _make(max_length=-5), r"`max_length` must be a positive integer or None; got -5\."),
        error("packing without max_length", _make(packing=True, max_length=None),
              r"`packing=True` needs `max_length` \(the block length\); got max_length=None"),
        error("pad_to_multiple_of=0", _make(pad_to_multiple_of=0), r"`pad_to_multiple_of` must be positive; got 0\."),
        error("dataset_kwargs unknown key", _make(dataset_kwargs={"add_special_tokens": False}),
              r"`dataset_kwargs` only accepts 'skip_prepare_dataset'; got unknown keys \['add_special_tokens'\]"),
        error("dataset_kwargs unknown key as JSON", _make(dataset_kwargs='{"append_concat_token": true}'),
              r"got unknown keys \['append_concat_token'\]"),
    ],
    DPOConfig: [
        error("unknown loss_type", _make(loss_type=["sigmoidd"]), r"sigmoidd"),
        error("loss_weights of another length", _make(loss_type=["sigmoid", "sft"], loss_weights=[1.0]),
              r"loss_weights"),
        error("sync_ref_model with precompute", _make(sync_ref_model=True, precompute_ref_log_probs=True),
              r"`sync_ref_model=True` updates the reference during training, so its log-probs cannot be "
              r"precomputed"),
        error("ref_model_mixup_alpha>1", _make(ref_model_mixup_alpha=1.5), r"`ref_model_mixup_alpha` must be in "
                                                                            r"\[0, 1\]; got 1\.5"),
        error("ref_model_sync_steps=0", _make(ref_model_sync_steps=0), r"`ref_model_sync_steps` must be positive"),
        error("precompute_ref_batch_size=0", _make(precompute_ref_batch_size=0),
              r"`precompute_ref_batch_size` must be positive; got 0\."),
    ],
    KTOConfig: [
        error("unknown loss_type", _make(loss_type="sigmoid"), r"sigmoid"),
        error("ref_model_sync_steps=0", _make(ref_model_sync_steps=0), r"`ref_model_sync_steps` must be positive"),
    ],
    GRPOConfig: [
        error("unknown loss_type", _make(loss_type="ppo"), r"ppo"),
        error("num_generations=1", _make(num_generations=1), r"num_generations"),
        error("guard_patience=0", _make(guard_patience=0), r"`guard_patience` must be >= 1; got 0\."),
    ],
    RLOOConfig: [
        error("num_generations=1", _make(num_generations=1), r"num_generations"),
        error("guard_patience=0", _make(guard_patience=0), r"`guard_patience` must be >= 1; got 0\."),
    ],
    RewardConfig: [],
}

ROWS = [pytest.param(cls, *p.values, id=f"{cls.__name__}-{p.id}") for cls in CONFIGS
        for p in COMMON + PER_CONFIG[cls]]


@pytest.mark.parametrize(("config_class", "case"), ROWS)
def test_bad_config(config_class, case, tmp_path):
    def env(**kwargs):
        return config_class(output_dir=str(tmp_path), **kwargs)

    check(case, env)

"""Dict config fields given as JSON object strings (command line, YAML) through one parser,
`trl.trainer.base_config.dict_field`: the model's, the teacher's and the online trainers' generation fields; and the
online trainers' sampling numbers given as strings."""

import pytest

from trl.trainer.base_config import dict_field
from trl.trainer.distillation_config import DistillationConfig
from trl.trainer.grpo_config import GRPOConfig


def test_dict_field():
    assert dict_field('{"dtype": "bfloat16"}', "x") == {"dtype": "bfloat16"}
    assert dict_field({"a": 1}, "x") == {"a": 1} and dict_field(None, "x") is None
    with pytest.raises(ValueError, match=r"`x` must be a dict or a JSON object string; got '\{a: 1\}'"):
        dict_field("{a: 1}", "x")
    with pytest.raises(TypeError, match=r"`x` must be a dict; got int \(3\)"):
        dict_field("3", "x")


@pytest.mark.parametrize("config_class, name", [
    (DistillationConfig, "teacher_model_init_kwargs"), (DistillationConfig, "model_init_kwargs"),
    (GRPOConfig, "generation_kwargs"), (GRPOConfig, "chat_template_kwargs"),
])
def test_config_fields_parse_json_and_refuse_what_is_not_a_dict(tmp_path, config_class, name):
    assert getattr(config_class(output_dir=str(tmp_path), **{name: '{"a": 1}'}), name) == {"a": 1}
    with pytest.raises(TypeError, match=rf"`{name}` must be a dict; got list"):  # generation_kwargs took it before
        config_class(output_dir=str(tmp_path), **{name: "[1, 2]"})


@pytest.mark.parametrize("config_class", [DistillationConfig, GRPOConfig])
@pytest.mark.parametrize("name", ["temperature", "top_p", "repetition_penalty"])
def test_sampling_numbers_given_as_strings_are_named(tmp_path, config_class, name):
    """A string sampling parameter was a bare "'>' not supported" TypeError (distillation) or accepted until the
    trainer compared it (GRPO)."""
    with pytest.raises(TypeError, match=rf"`{name}` must be a number; got str '0.7'"):
        config_class(output_dir=str(tmp_path), **{name: "0.7"})

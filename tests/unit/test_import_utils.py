"""trl.import_utils: availability checks (find_spec + minimum versions), install hints, the experimental warning."""

import importlib.metadata
import warnings

import pytest

from trl import import_utils
from trl.import_utils import TRLExperimentalWarning, is_package_available, require, suppress_experimental_warning


@pytest.fixture(autouse=True)
def _fresh_caches():
    import_utils.is_package_available.cache_clear()
    import_utils.package_version.cache_clear()
    import_utils.is_vllm_available.cache_clear()
    yield
    import_utils.is_package_available.cache_clear()
    import_utils.package_version.cache_clear()
    import_utils.is_vllm_available.cache_clear()


def test_installed_and_missing_packages():
    # installed in the test environment (pyproject's `test` extra): rich, peft, math-verify, latex2sympy2-extended
    assert import_utils.is_rich_available() and import_utils.is_peft_available()
    assert import_utils.is_math_verify_available() and import_utils.is_latex2sympy2_extended_available()
    assert not is_package_available("surely_not_a_package_xyz")
    assert not is_package_available("surely_not_a_package_xyz.sub")  # a missing parent is "not available"


def test_every_documented_check_exists_and_answers_a_bool():
    names = ["aiohttp", "bitsandbytes", "comet", "deepspeed", "flash_attn", "harbor", "jmespath", "kernels",
             "latex2sympy2_extended", "liger_kernel", "llm_blender", "math_verify", "matplotlib", "mergekit", "openenv",
             "openreward", "peft", "requests", "rich", "unsloth", "vllm", "wandb", "weave"]
    for name in names:
        assert isinstance(getattr(import_utils, f"is_{name}_available")(), bool), name


def test_minimum_versions_come_from_the_metadata(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda d: "0.12.9" if d == "peft" else real(d))
    assert not import_utils.is_peft_available()  # below the 0.13.0 minimum
    import_utils.is_package_available.cache_clear()
    import_utils.package_version.cache_clear()
    monkeypatch.setattr(importlib.metadata, "version", lambda d: "0.13.0.post1" if d == "peft" else real(d))
    assert import_utils.is_peft_available()


def test_parse_version():
    assert import_utils._parse_version("0.18.6.post1") == (0, 18, 6)
    assert import_utils._parse_version("1.2rc1") == (1, 2)
    assert import_utils._parse_version("2.13.0+cpu") == (2, 13, 0)


def test_answers_are_cached(monkeypatch):
    calls = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: calls.append(name) or real(name))
    for _ in range(3):
        import_utils.is_rich_available()
    assert calls == ["rich"]


def test_vllm_outside_the_supported_range_warns(monkeypatch):
    monkeypatch.setattr(import_utils, "is_package_available", lambda module, *a, **k: module == "vllm")
    monkeypatch.setattr(import_utils, "package_version", lambda d: "0.40.1")
    with pytest.warns(UserWarning, match=r"vllm 0.40.1 is installed.*0.22 to 0.31"):
        assert import_utils.is_vllm_available()
    import_utils.is_vllm_available.cache_clear()
    monkeypatch.setattr(import_utils, "package_version", lambda d: "0.25.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert import_utils.is_vllm_available()


def test_require_raises_with_the_install_hint(monkeypatch):
    require("rich", "RichProgressCallback")  # installed: nothing happens
    monkeypatch.setattr(import_utils, "is_weave_available", lambda: False)
    with pytest.raises(ImportError, match=r"WeaveCallback needs the `weave` package.*pip install weave.*trl\[weave\]"):
        require("weave", "WeaveCallback")
    with pytest.raises(ValueError, match="No availability check for 'nope'"):
        require("nope", "x")


def test_experimental_warning_and_its_suppression(monkeypatch):
    assert issubclass(TRLExperimentalWarning, UserWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with suppress_experimental_warning():
            warnings.warn("hidden", TRLExperimentalWarning)
            warnings.warn("shown", UserWarning)
    assert [str(w.message) for w in caught] == ["shown"]
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    assert import_utils.experimental_warnings_silenced()
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "0")
    assert not import_utils.experimental_warnings_silenced()

"""`use_liger_kernel=True` (trl/trainer/base_config.py `liger_kernel_config`): a clear error without liger-kernel or
on the CPU; Liger's loss kernels stay off so that its patching keeps the fused LM head's forward (checked against the
real liger-kernel when it is installed, in a subprocess: Liger patches transformers' modelling modules globally)."""

import subprocess
import sys
import textwrap

import pytest

import trl.import_utils
from trl import GRPOConfig, SFTConfig
from trl.trainer import base_config


def test_missing_liger_kernel_names_the_install(monkeypatch):
    monkeypatch.setattr(trl.import_utils, "is_liger_kernel_available", lambda: False)
    with pytest.raises(ImportError, match=r'use_liger_kernel=True.*pip install "liger-kernel>=0.8.2"'):
        SFTConfig(output_dir="out", use_liger_kernel=True)


def test_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(trl.import_utils, "is_liger_kernel_available", lambda: True)
    monkeypatch.setattr(base_config, "_triton_device_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA, ROCm or XPU GPU: Liger.s kernels are Triton GPU kernels"):
        GRPOConfig(output_dir="out", use_liger_kernel=True)


def test_loss_kernels_are_turned_off_and_the_rest_kept(monkeypatch):
    monkeypatch.setattr(trl.import_utils, "is_liger_kernel_available", lambda: True)
    monkeypatch.setattr(base_config, "_triton_device_available", lambda: True)
    config = SFTConfig(output_dir="out", use_liger_kernel=True, bf16=False)
    assert config.liger_kernel_config == {"fused_linear_cross_entropy": False, "cross_entropy": False}
    with pytest.warns(UserWarning, match="asks for fused_linear_cross_entropy: turned off"):
        config = SFTConfig(output_dir="out", use_liger_kernel=True, bf16=False,
                           liger_kernel_config='{"rms_norm": false, "fused_linear_cross_entropy": true}')
    assert config.liger_kernel_config == {"rms_norm": False, "fused_linear_cross_entropy": False,
                                          "cross_entropy": False}
    assert SFTConfig(output_dir="out").liger_kernel_config is None  # untouched when Liger is off


@pytest.mark.skipif(not trl.import_utils.is_liger_kernel_available(),
                    reason='liger-kernel is not installed (pip install "liger-kernel>=0.8.2")')
def test_real_liger_patching_keeps_the_fused_head():
    script = textwrap.dedent("""
        from unittest import mock
        from transformers.integrations.liger import apply_liger_kernel
        import trl.trainer.base_config as base_config
        from trl import SFTConfig
        from trl.models.tiny import tiny_model
        from trl.ops.fused_head import add_fused_lm_head

        with mock.patch.object(base_config, "_triton_device_available", lambda: True):
            config = SFTConfig(output_dir="out", use_liger_kernel=True, bf16=False)
        model = add_fused_lm_head(tiny_model("qwen3"))
        fused = model.forward
        apply_liger_kernel(model, config.liger_kernel_config)  # what Trainer.train() runs
        assert model.forward == fused, "Liger replaced the fused-head forward"
        for module in (model.model.norm, model.model.layers[0].mlp):  # its other kernels are applied
            assert module.forward.__func__.__module__.startswith("liger_kernel"), module.forward
        apply_liger_kernel(model, None)  # Liger's own defaults replace the forward: what the config prevents
        assert model.forward != fused
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]

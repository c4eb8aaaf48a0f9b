"""PEFT models in the TVD trainers: the chunked path equals the logits path, or is refused before training."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny import tiny_model, train_tiny

TVD = dict(gamma=0.5, min_weight=0.1, label_smoothing=0.1)


def _peft(setup: str):
    extra = {"modules_to_save": ["lm_head"]} if setup == "modules_to_save" else {}
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], **extra))
    torch.manual_seed(1)
    for module in model.modules():  # non-zero LoRA B so that the adapters change the output from the first step
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.1)
    return model


@pytest.mark.parametrize("setup", ["lora_qv", "modules_to_save"])
def test_chunked_equals_logits_with_peft(tmp_path, setup):
    logits = train_tiny("llama", str(tmp_path / "a"), per_device_batch=8, grad_accum=1, max_steps=2,
                        tvd={**TVD, "loss_impl": "logits"}, model=_peft(setup))  # fmt: skip
    chunked = train_tiny("llama", str(tmp_path / "b"), per_device_batch=8, grad_accum=1, max_steps=2,
                         tvd={**TVD, "loss_impl": "chunked"}, model=_peft(setup))  # fmt: skip
    a = [r["loss"] for r in logits[0] if "loss" in r]
    b = [r["loss"] for r in chunked[0] if "loss" in r]
    assert len(a) == len(b) == 2 and all(abs(x - y) <= 1e-5 * abs(y) for x, y in zip(a, b)), (a, b)
    trained = [k for k in chunked[1] if "lora_" in k or "modules_to_save" in k]
    assert trained and max((chunked[1][k] - logits[1][k]).abs().max().item() for k in trained) < 1e-5
    if setup == "modules_to_save":  # the trained copy of lm_head moved, the frozen original did not
        copy = next(k for k in trained if "modules_to_save" in k and k.endswith("weight"))
        original = copy.replace("modules_to_save.default", "original_module")
        assert (chunked[1][copy] - chunked[1][original]).abs().max() > 0


def test_lora_on_the_head_is_refused_before_training(tmp_path):
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="loss_impl='chunked' cannot be used: .*PEFT adapter layer"):
        train_tiny("llama", str(tmp_path), per_device_batch=8, grad_accum=1, max_steps=1,
                   tvd={**TVD, "loss_impl": "chunked"}, model=model)  # fmt: skip
    assert not any(p.name.startswith("checkpoint-") for p in tmp_path.iterdir()) if tmp_path.exists() else True

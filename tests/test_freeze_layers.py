"""--freeze_layers N (and --cache_frozen_outputs): the embeddings and the first N blocks stop training; the cache of
their outputs gives the same logits and gradients as the frozen model without it."""

from __future__ import annotations

import pytest
import torch
from tiny import PAD, tiny_model

from hf_tvd_loss.tasks.arguments import ModelArguments
from hf_tvd_loss.tasks.modeling import freeze_layers


def _batch():
    torch.manual_seed(3)
    ids = torch.randint(3, 50, (4, 7))
    mask = torch.ones_like(ids)
    for row, length in enumerate((7, 5, 3, 6)):  # right padding of different lengths
        ids[row, length:], mask[row, length:] = PAD, 0
    return ids, mask


def test_freeze_layers_freezes_embeddings_and_lower_blocks_only():
    model = tiny_model("llama_cls")
    summary = freeze_layers(model, ModelArguments(freeze_layers=1))
    assert summary["freeze_layers"] == 1 and summary["blocks"] == 2 and not summary["cache_frozen_outputs"]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert not any(name.startswith(("model.embed_tokens", "model.layers.0.")) for name in trainable)
    assert any(name.startswith("model.layers.1.") for name in trainable) and "score.weight" in trainable
    assert summary["trainable_parameters"] == sum(model.get_parameter(n).numel() for n in trainable)
    assert freeze_layers(tiny_model("bert_cls"), ModelArguments(freeze_layers=2))["blocks"] == 2  # encoders too
    assert freeze_layers(model, ModelArguments()) is None


@pytest.mark.parametrize(
    ("kwargs", "family", "message"),
    [
        ({"freeze_layers": 3}, "llama_cls", "from 1 to the model's 2 blocks"),
        ({"freeze_layers": 0}, "llama_cls", "from 1 to the model's 2 blocks"),
        ({"cache_frozen_outputs": True}, "llama_cls", "needs --freeze_layers"),
        ({"freeze_layers": 1, "cache_frozen_outputs": True}, "bert_cls", "decoder-only"),
    ],
)
def test_freeze_layers_refusals(kwargs, family, message):
    with pytest.raises(ValueError, match=message):
        freeze_layers(tiny_model(family), ModelArguments(**kwargs))


def test_freeze_layers_refuses_a_model_without_blocks():
    model = tiny_model("llama_cls")
    model.config.num_hidden_layers = 5  # no ModuleList of that length
    with pytest.raises(ValueError, match="no stack of config.num_hidden_layers"):
        freeze_layers(model, ModelArguments(freeze_layers=1))


def test_cache_of_frozen_outputs_gives_the_same_logits_and_gradients():
    ids, mask = _batch()
    labels = torch.tensor([0, 1, 2, 3]) % tiny_model("llama_cls").config.num_labels
    plain, cached = tiny_model("llama_cls"), tiny_model("llama_cls")
    freeze_layers(plain, ModelArguments(freeze_layers=1))
    freeze_layers(cached, ModelArguments(freeze_layers=1, cache_frozen_outputs=True))
    calls = []
    cached.model.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))
    results = []
    for model in (plain, cached, cached):  # the cached model: once filling the cache, once reading it
        model.train()
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        results.append((out.logits.detach(), model.model.layers[1].mlp.down_proj.weight.grad.clone()))
    assert len(calls) == 1  # the frozen block ran only while the cache was filled
    for logits, grad in results[1:]:
        torch.testing.assert_close(logits, results[0][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-5, atol=1e-6)
    # a row met again in a batch of another width (less padding) reads the same cached states
    alone = cached(input_ids=ids[2:3, :3], attention_mask=mask[2:3, :3]).logits
    torch.testing.assert_close(alone[0], results[0][0][2], rtol=1e-5, atol=1e-6)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="right-padded"):
        cached(input_ids=ids.flip(1), attention_mask=mask.flip(1))


def test_cache_refuses_dropout_in_the_frozen_blocks():
    model = tiny_model("llama_cls")
    model.config.attention_dropout = 0.1
    with pytest.raises(ValueError, match="dropout"):
        freeze_layers(model, ModelArguments(freeze_layers=1, cache_frozen_outputs=True))

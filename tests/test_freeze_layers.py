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


def test_freeze_options_through_the_classification_script_and_a_seeded_new_head(tmp_path):
    """The task layer applies --freeze_layers / --cache_frozen_outputs and records them; a head the checkpoint lacks
    is initialised from --seed, whatever the process drew before."""
    import os

    from test_classification_task import QUICK, _jsonl
    from test_scripts import _read, _script
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hf_tvd_loss.tasks import get_task
    from hf_tvd_loss.tasks.run import prepare

    rows = [{"sentence": f"the {w} is here today", "label": ["a", "b", "c"][i % 3]}
            for i, w in enumerate(["cat", "dog", "bird", "fish", "cow", "hen"] * 6)]  # fmt: skip
    files = ["--train_file", _jsonl(tmp_path / "train.jsonl", rows),
             "--validation_file", _jsonl(tmp_path / "val.jsonl", rows[:9])]  # fmt: skip
    out = str(tmp_path / "frozen")
    _script("finetune_classification").main([*QUICK, *files, "--output_dir", out, "--do_predict", "false",
                                             "--model_type", "llama", "--freeze_layers", "1",
                                             "--cache_frozen_outputs", "true"])  # fmt: skip
    info = _read(os.path.join(out, "run_info.json"))
    assert info["freeze_layers"] == 1 and info["cache_frozen_outputs"] is True

    base = str(tmp_path / "base")  # a causal LM checkpoint: loading it as a classifier creates a new score head
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = _read(os.path.join(out, "config.json"))
    lm = LlamaForCausalLM(LlamaConfig(**{k: config[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "pad_token_id", "bos_token_id", "eos_token_id")}))  # fmt: skip
    lm.save_pretrained(base)
    tokenizer.save_pretrained(base)
    heads = []
    for draws in (0, 5):
        torch.rand(draws)  # what the process drew before must not matter
        argv = [*QUICK, *files, "--output_dir", str(tmp_path / f"p{draws}"), "--do_predict", "false",
                "--model_name_or_path", base, "--seed", "7"]  # fmt: skip
        heads.append(prepare(get_task("classification"), argv).model.score.weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=0)

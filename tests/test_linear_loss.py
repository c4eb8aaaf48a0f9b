"""The fused linear γ-CE against gamma_cross_entropy on materialised logits, and the output-head resolver
against real tiny transformers models (built from configs, no downloads)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from hf_tvd_loss import gamma_cross_entropy, gamma_cross_entropy_with_stats
from hf_tvd_loss.heads import loss_in_output_head, resolve_output_head, verify_output_head
from hf_tvd_loss.ops import linear_gamma_cross_entropy, linear_gamma_cross_entropy_with_stats
from hf_tvd_loss.ops.reference import gamma_cross_entropy_reference

V, D = 53, 12


def _materialised_logits(hidden, weight, bias=None, logit_scale=1.0, softcap=None):
    """What a transformers model computes: lm_head in the inputs' dtype, then bias and softcapping."""
    logits = F.linear(hidden * logit_scale if logit_scale != 1.0 else hidden, weight)
    if bias is not None:
        logits = logits.float() + bias.float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits.float() / softcap)
    return logits


def _inputs(shape, dtype, *, seed, bias=False, ignore="some"):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(*shape, D, generator=g) * 2).to(dtype).requires_grad_()
    weight = (torch.randn(V, D, generator=g) * 0.5).to(dtype).requires_grad_()
    b = (torch.randn(V, generator=g)).requires_grad_() if bias else None
    labels = torch.randint(0, V, shape, generator=g)
    if ignore == "some":
        labels[torch.rand(shape, generator=g) < 0.3] = -100
    elif ignore == "prefix":
        labels[..., :2] = -100
    elif ignore == "all":
        labels.fill_(-100)
    return hidden, weight, b, labels


def _grads(out, tensors, upstream):
    tensors = [t for t in tensors if t is not None]
    return torch.autograd.grad(out, tensors, upstream)


# γ × reduction × dtype, with the other options rotating so that every combination of them is hit somewhere.
_OPTIONS = [
    dict(min_weight=0.0, label_smoothing=0.0, ignore="none", shift=False, bias=False, scale=1.0, cap=None, chunk=None),
    dict(min_weight=0.3, label_smoothing=0.1, ignore="some", shift=True, bias=True, scale=0.25, cap=None, chunk=5),
    dict(min_weight=0.2, label_smoothing=0.0, ignore="prefix", shift=True, bias=False, scale=1.0, cap=2.0, chunk=7),
    dict(min_weight=0.0, label_smoothing=0.1, ignore="some", shift=False, bias=True, scale=0.5, cap=1.5, chunk=16),
]
_CASES = [
    (gamma, reduction, dtype, _OPTIONS[i % len(_OPTIONS)])
    for i, (gamma, reduction, dtype) in enumerate(
        itertools.product((0.0, 0.1, 1.0), ("mean", "sum", "none"), (torch.float32, torch.bfloat16))
    )
]


@pytest.mark.parametrize(("gamma", "reduction", "dtype", "opts"), _CASES)
def test_matches_materialised_logits(gamma, reduction, dtype, opts):
    hidden, weight, bias, labels = _inputs((3, 11), dtype, seed=len(str(opts)) + int(gamma * 10), bias=opts["bias"])
    if opts["ignore"] != "none":
        labels[:, ::4] = -100
    kwargs = dict(
        gamma=gamma,
        min_weight=opts["min_weight"],
        label_smoothing=opts["label_smoothing"],
        shift_labels=opts["shift"],
        reduction=reduction,
    )
    expected = gamma_cross_entropy(
        _materialised_logits(hidden, weight, bias, opts["scale"], opts["cap"]), labels, **kwargs
    )
    got = linear_gamma_cross_entropy(
        hidden,
        weight,
        labels,
        bias=bias,
        logit_scale=opts["scale"],
        final_logit_softcapping=opts["cap"],
        chunk_size=opts["chunk"],
        **kwargs,
    )
    assert got.dtype == torch.float32 and got.shape == expected.shape
    upstream = torch.rand_like(expected) + 0.5 if reduction == "none" else torch.tensor(1.7)
    expected_grads = _grads(expected, (hidden, weight, bias), upstream)
    got_grads = _grads(got, (hidden, weight, bias), upstream)

    # fp32: same math, different summation order. bf16: the logits are rounded to bf16 by the matmul in
    # both paths; gradients are bf16 (one rounding step ≈ 0.4 %), so compare relative to the largest entry.
    loss_tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, rtol=loss_tol, atol=loss_tol)
    grad_tol = 1e-5 if dtype == torch.float32 else 2e-2
    for name, g_got, g_exp in zip(("hidden", "weight", "bias"), got_grads, expected_grads):
        assert g_got.dtype == g_exp.dtype, name
        scale = g_exp.float().abs().max().clamp(min=1e-6)
        err = ((g_got.float() - g_exp.float()).abs().max() / scale).item()
        assert err < grad_tol, f"{name} gradient relative error {err:.2e}"


def test_fp32_matches_float64_reference_across_chunk_sizes():
    hidden, weight, _, labels = _inputs((2, 23), torch.float32, seed=3)
    kwargs = dict(gamma=0.1, min_weight=0.3, label_smoothing=0.1, shift_labels=True)
    expected = gamma_cross_entropy_reference(F.linear(hidden.double(), weight.double()), labels, **kwargs)
    grads = []
    for chunk in (1, 4, 7, 46, 1000):  # 46 = N, 7 and 4 do not divide N = 46
        loss = linear_gamma_cross_entropy(hidden, weight, labels, chunk_size=chunk, **kwargs)
        torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
        grads.append(torch.autograd.grad(loss, (hidden, weight)))
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    for got in grads:
        for g, e in zip(got, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_stats_and_num_items_match_logits_version():
    hidden, weight, bias, labels = _inputs((4, 9), torch.float32, seed=5, bias=True)
    kwargs = dict(gamma=0.8, min_weight=0.2, label_smoothing=0.1, shift_labels=True, num_items_in_batch=100)
    loss, stats = linear_gamma_cross_entropy_with_stats(hidden, weight, labels, bias=bias, chunk_size=6, **kwargs)
    ref_loss, ref_stats = gamma_cross_entropy_with_stats(F.linear(hidden, weight, bias), labels, **kwargs)
    torch.testing.assert_close(loss, ref_loss)
    for field in ("objective_sum", "nll_sum", "weight_sum", "num_tokens"):
        torch.testing.assert_close(getattr(stats, field), getattr(ref_stats, field), rtol=1e-5, atol=1e-5)
        assert not getattr(stats, field).requires_grad
    # num_items_in_batch is the denominator, not the scored-token count.
    torch.testing.assert_close(loss * 100, stats.objective_sum, rtol=1e-5, atol=1e-5)


def test_all_ignored_gives_zero_loss_and_zero_grads():
    hidden, weight, bias, labels = _inputs((2, 5), torch.float32, seed=1, bias=True, ignore="all")
    loss = linear_gamma_cross_entropy(hidden, weight, labels, bias=bias, gamma=0.1, label_smoothing=0.1)
    assert loss.item() == 0.0
    for g in torch.autograd.grad(loss, (hidden, weight, bias)):
        assert torch.count_nonzero(g) == 0


def test_frozen_weight_and_no_grad_paths():
    hidden, weight, _, labels = _inputs((2, 8), torch.float32, seed=2)
    weight = weight.detach()  # e.g. LoRA: lm_head frozen, only the hidden states need a gradient
    expected = gamma_cross_entropy(F.linear(hidden, weight), labels, gamma=0.1)
    got = linear_gamma_cross_entropy(hidden, weight, labels, gamma=0.1, chunk_size=3)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, hidden)[0], torch.autograd.grad(expected, hidden)[0])
    with torch.no_grad():
        evaluated = linear_gamma_cross_entropy(hidden, weight, labels, gamma=0.1)
    assert not evaluated.requires_grad
    torch.testing.assert_close(evaluated, expected.detach())


def test_second_backward_is_refused():
    hidden, weight, _, labels = _inputs((2, 4), torch.float32, seed=4)
    loss = linear_gamma_cross_entropy(hidden, weight, labels, gamma=0.1)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(weight=torch.randn(V, D + 1)), "does not match hidden size"),
        (dict(weight=torch.randn(V, D, dtype=torch.float64)), "same dtype"),
        (dict(bias=torch.randn(V + 1)), "bias shape"),
        (dict(logit_scale=0.0), "logit_scale"),
        (dict(final_logit_softcapping=-1.0), "final_logit_softcapping"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(impl="triton"), "impl must be one of"),
        (dict(impl="cce"), "impl='cce' is not available"),
        (dict(impl="liger"), "impl='liger' is not available"),
        (dict(gamma=1.5), "gamma must be in"),
        (dict(label_smoothing=1.0), "label_smoothing"),
        (dict(reduction="avg"), "reduction must be one of"),
        (dict(labels=torch.full((2, 3), V)), r"labels must be in \[0, 53\)"),
        (dict(labels=torch.zeros(2, 4, dtype=torch.long)), "hidden shape"),
        (dict(labels=torch.zeros(2, 3)), "integer tensor"),
    ],
)
def test_bad_input_raises_value_error(change, message):
    kwargs = dict(hidden=torch.randn(2, 3, D), weight=torch.randn(V, D), labels=torch.zeros(2, 3, dtype=torch.long))
    kwargs.update(gamma=0.1)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        linear_gamma_cross_entropy(**kwargs)


def test_auto_impl_uses_torch_on_cpu():
    hidden, weight, _, labels = _inputs((2, 6), torch.float32, seed=6)
    auto = linear_gamma_cross_entropy(hidden, weight, labels, gamma=0.1, impl="auto")
    torch_impl = linear_gamma_cross_entropy(hidden, weight, labels, gamma=0.1, impl="torch")
    assert torch.equal(auto, torch_impl)


# ----------------------------------------------------------------------------------------------- heads


def _extra_model(family: str) -> torch.nn.Module:
    from tiny import PAD, VOCAB
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        MarianConfig,
        MarianMTModel,
        Qwen2Config,
        Qwen2ForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(0)
    if family == "gemma2":
        # A small softcap so that it changes the logits noticeably.
        config = Gemma2Config(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=64, final_logit_softcapping=0.5,
            pad_token_id=PAD, bos_token_id=1, eos_token_id=2, attn_implementation="eager",
        )  # fmt: skip
        return Gemma2ForCausalLM(config)
    if family == "qwen2":
        config = Qwen2Config(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
            tie_word_embeddings=True,
        )  # fmt: skip
        return Qwen2ForCausalLM(config)
    if family == "t5_untied":
        config = T5Config(
            vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            dropout_rate=0.0, pad_token_id=PAD, eos_token_id=2, decoder_start_token_id=PAD, tie_word_embeddings=False,
        )  # fmt: skip
        return T5ForConditionalGeneration(config)
    if family == "marian":
        config = MarianConfig(
            vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=PAD, eos_token_id=2,
            decoder_start_token_id=PAD, forced_eos_token_id=None,
        )  # fmt: skip
        return MarianMTModel(config)
    raise ValueError(family)


def _model(family: str) -> torch.nn.Module:
    from tiny import tiny_model

    model = tiny_model(family) if family in ("llama", "gpt2", "t5", "bart") else _extra_model(family)
    if hasattr(model, "final_logits_bias"):
        with torch.no_grad():  # zero at init: make it matter
            model.final_logits_bias.normal_()
    return model.eval()


def _batch(model) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    input_ids = torch.randint(3, vocab, (2, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    if model.config.is_encoder_decoder:
        labels = torch.randint(3, vocab, (2, 7), generator=g)
        labels[1, 5:] = -100
    else:
        labels = input_ids.clone()
        labels[:, :3] = -100  # a prompt
        labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _param_grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def _model_inputs(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    return inputs


def _chunked_loss(model, batch, **kwargs):
    """The loss computed inside the output head's forward, as the trainer does it."""
    head = resolve_output_head(model)
    inputs = _model_inputs(getattr(model, "get_base_model", lambda: model)(), batch)
    verify_output_head(model, head, inputs)

    def loss_fn(hidden, **head_args):
        assert hidden.shape == (*batch["labels"].shape, head_args["weight"].shape[1])
        return linear_gamma_cross_entropy_with_stats(
            hidden, labels=batch["labels"], chunk_size=5, shift_labels=head.shift_labels, **kwargs, **head_args
        )

    loss, _, outputs = loss_in_output_head(model, head, inputs, loss_fn)
    assert outputs.logits.numel() <= model.config.vocab_size  # a placeholder, not [tokens, vocab] logits
    return loss


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5", "t5_untied", "bart", "marian", "gemma2", "qwen2"])
def test_head_reproduces_model_logits_loss(family):
    model = _model(family)
    batch = _batch(model)
    head = resolve_output_head(model)
    assert head.model_class == type(model).__name__
    assert head.shift_labels is (not model.config.is_encoder_decoder)
    kwargs = dict(gamma=0.1, min_weight=0.2, label_smoothing=0.1)

    logits = model(**_model_inputs(model, batch)).logits
    expected = gamma_cross_entropy(logits, batch["labels"], shift_labels=head.shift_labels, **kwargs)
    expected_grads = _param_grads(model, expected)

    got = _chunked_loss(model, batch, **kwargs)
    got_grads = _param_grads(model, got)

    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for (name, _), g, e in zip(model.named_parameters(), got_grads, expected_grads):
        if e is None:
            assert g is None or torch.count_nonzero(g) == 0, name
            continue
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_head_settings_per_architecture():
    # T5 scales the hidden states before its head: the head's input already carries it, nothing to add after.
    assert resolve_output_head(_model("t5")).logit_scale == 1.0
    assert resolve_output_head(_model("gemma2")).final_logit_softcapping == 0.5
    bart = _model("bart")
    assert resolve_output_head(bart).bias_after is bart.final_logits_bias
    assert resolve_output_head(_model("llama")).bias_after is None


def test_verification_catches_an_unknown_transformation():
    model = _model("gemma2")
    head = resolve_output_head(model)
    head.final_logit_softcapping = None  # as if the resolver did not know about the model's soft-capping
    with pytest.raises(ValueError, match="Gemma2ForCausalLM: its logits differ from"):
        verify_output_head(model, head, _model_inputs(model, _batch(model)))


@pytest.mark.parametrize("peft_setup", ["lora_qv", "modules_to_save"])
def test_head_through_peft_matches_logits(peft_setup):
    from peft import LoraConfig, get_peft_model

    extra = {"modules_to_save": ["lm_head"]} if peft_setup == "modules_to_save" else {}
    model = get_peft_model(
        _model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, **extra)
    )
    for module in model.modules():  # non-zero LoRA B so that the adapter changes the output
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight)
    if peft_setup == "modules_to_save":  # the trained copy differs from the frozen original
        with torch.no_grad():
            model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    batch = _batch(model.get_base_model())
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = gamma_cross_entropy(logits, batch["labels"], gamma=0.5, shift_labels=True)
    got = _chunked_loss(model, batch, gamma=0.5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert any(p.shape[0] == model.config.vocab_size for p in trained) == (peft_setup == "modules_to_save")
    for g, e in zip(torch.autograd.grad(got, trained), torch.autograd.grad(expected, trained)):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_refusals_name_the_model_and_the_reason():
    from peft import LoraConfig, get_peft_model
    from tiny import tiny_model
    from transformers import LlamaForSequenceClassification

    classifier = LlamaForSequenceClassification(tiny_model("llama").config)
    with pytest.raises(ValueError, match="LlamaForSequenceClassification has no output embedding"):
        resolve_output_head(classifier)

    lora_head = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="LlamaForCausalLM: its output head is a PEFT adapter layer"):
        resolve_output_head(lora_head)

    # wrappers that rename or hide the class are seen through: DataParallel, and FSDP2's FSDP<Class> naming
    assert resolve_output_head(torch.nn.DataParallel(tiny_model("gpt2"))).model_class == "GPT2LMHeadModel"

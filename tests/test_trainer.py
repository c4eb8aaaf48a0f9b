"""TVDTrainer / TVDSeq2SeqTrainer on tiny models built from configs (CPU, no downloads)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from tiny import VOCAB, collator, tiny_dataset, tiny_model, train_tiny
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Seq2SeqTrainingArguments, Trainer, TrainingArguments

from hf_tvd_loss import TVDArguments, TVDLoss, TVDSeq2SeqTrainer, TVDTrainer, gamma_cross_entropy_with_stats

TVD = dict(gamma=0.5, min_weight=0.1, label_smoothing=0.1)


def train_losses(history: list[dict], key: str = "loss") -> list[float]:
    return [row[key] for row in history if key in row and "eval_loss" not in row]


def assert_same_training(run_a, run_b, *, loss_rtol=1e-3, param_atol=1e-4, keys=("loss", "nll")):
    (hist_a, state_a, _), (hist_b, state_b, _) = run_a, run_b
    for key in keys:
        a, b = train_losses(hist_a, key), train_losses(hist_b, key)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert abs(x - y) <= loss_rtol * abs(y), (key, a, b)
    worst = max((state_a[name] - state_b[name]).abs().max().item() for name in state_b)
    assert worst <= param_atol, f"final parameters differ by {worst}"


@pytest.mark.parametrize("family", ["llama", "t5", "bart"])
def test_gradient_accumulation_is_exact(family, tmp_path):
    """Batch 16 = 8 × 2 accumulation = 4 × 4 accumulation, in logged losses and final parameters."""
    full = train_tiny(family, str(tmp_path / "a"), per_device_batch=16, grad_accum=1, tvd=TVD)
    for batch, accum in [(8, 2), (4, 4)]:
        run = train_tiny(family, str(tmp_path / f"{batch}"), per_device_batch=batch, grad_accum=accum, tvd=TVD)
        assert_same_training(run, full)
    # parameters really moved (a loss that gave no gradient would also be "equal")
    initial = tiny_model(family).state_dict()
    assert max((full[1][k] - initial[k]).abs().max().item() for k in initial) > 1e-3


def test_matches_stock_trainer_at_gamma_zero(tmp_path):
    """γ=0, b=0, ε=0 is cross-entropy: same losses and parameters as the stock Trainer, step for step."""
    ours = train_tiny("llama", str(tmp_path / "ours"), per_device_batch=8, grad_accum=2, tvd=dict(gamma=0.0))
    stock = train_tiny("llama", str(tmp_path / "stock"), per_device_batch=8, grad_accum=2, stock=True)
    assert_same_training(ours, stock, loss_rtol=1e-5, param_atol=1e-5, keys=("loss",))


def test_tvd_loss_as_compute_loss_func(tmp_path):
    """The compute_loss_func callable trains the stock Trainer exactly like TVDTrainer (Llama counts right)."""
    from transformers import Trainer as StockTrainer

    args = TVDArguments(**TVD)
    ours = train_tiny("llama", str(tmp_path / "ours"), per_device_batch=4, grad_accum=2, tvd=TVD)
    model = tiny_model("llama")
    stock_args = TrainingArguments(
        output_dir=str(tmp_path / "stock"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
        max_steps=3, learning_rate=1e-2, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1e9,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0, data_seed=0,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = StockTrainer(
        model=model, args=stock_args, train_dataset=tiny_dataset("llama"), data_collator=collator("llama"),
        compute_loss_func=TVDLoss(args),
    )  # fmt: skip
    trainer.train()
    a = train_losses(ours[0])
    b = train_losses(trainer.state.log_history)
    assert a == pytest.approx(b, rel=1e-5)


def test_tvd_loss_refuses_the_causal_shift_on_an_encoder_decoder_output():
    """Issue 21: TVDLoss(shift_labels=True) on a T5's Seq2SeqLMOutput would score each logit against the next
    label without a word; the output says it is an encoder-decoder's, so it is refused; shift_labels=False works,
    and so does the default, which reads the layout from the outputs."""
    model = tiny_model("t5")
    batch = collator("t5")(list(tiny_dataset("t5", n=2)))
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=batch["labels"]))  # fmt: skip
    with pytest.raises(ValueError, match=r"encoder-decoder's output \(Seq2SeqLMOutput\).*shift_labels=False"):
        TVDLoss(shift_labels=True)(outputs, batch["labels"])
    loss = TVDLoss(shift_labels=False)(outputs, batch["labels"])
    assert torch.isfinite(loss) and TVDLoss()(outputs, batch["labels"]).item() == loss.item()
    with pytest.raises(ValueError, match=r"cannot tell from a tuple whether labels are shifted"):
        TVDLoss()(tuple(outputs.values()), batch["labels"])


def test_logged_metrics_and_exact_eval_loss(tmp_path):
    history, _, trainer = train_tiny("llama", str(tmp_path), per_device_batch=4, grad_accum=2, tvd=TVD)
    rows = [row for row in history if "loss" in row]
    assert len(rows) == 3
    for row in rows:
        assert {"loss", "nll", "tvd_weight_mean", "gamma", "perplexity"} <= set(row)
        assert row["gamma"] == 0.5
        assert 0.1 - 1e-6 <= row["tvd_weight_mean"] <= 1.0
        assert row["nll"] > row["loss"] > 0  # weights ≤ 1 shrink the NLL term
        assert row["perplexity"] == pytest.approx(math.exp(row["nll"]), rel=1e-9)

    dataset = tiny_dataset("llama", n=20, seed=1)
    metrics = trainer.evaluate(dataset)
    # exact: Σ token losses / Σ tokens over the whole set, recomputed by hand in one batch
    batch = collator("llama")(list(dataset))
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    _, stats = gamma_cross_entropy_with_stats(logits, batch["labels"], shift_labels=True, **TVD)
    count = stats.num_tokens.item()
    assert metrics["eval_loss"] == pytest.approx(stats.objective_sum.item() / count, rel=1e-5)
    assert metrics["eval_nll"] == pytest.approx(stats.nll_sum.item() / count, rel=1e-5)
    assert metrics["eval_tvd_weight_mean"] == pytest.approx(stats.weight_sum.item() / count, rel=1e-5)
    assert metrics["eval_gamma"] == 0.5
    assert any("eval_nll" in row for row in trainer.state.log_history)
    # predict() uses the test_ prefix
    assert "test_nll" in trainer.predict(dataset).metrics


def test_seq2seq_predict_with_generate_still_reports_gamma_ce(tmp_path):
    dataset = tiny_dataset("t5", n=12, seed=2)

    def make(generate: bool):
        args = Seq2SeqTrainingArguments(
            output_dir=str(tmp_path / str(generate)), per_device_eval_batch_size=4, report_to="none",
            use_cpu=True, predict_with_generate=generate, generation_max_length=6, disable_tqdm=True,
        )  # fmt: skip
        # With compute_metrics, evaluate() asks for predictions, so predict_with_generate really generates.
        return TVDSeq2SeqTrainer(
            model=tiny_model("t5"), args=args, data_collator=collator("t5"), tvd_args=TVDArguments(**TVD),
            compute_metrics=lambda p: {"predicted_rows": float(len(p.predictions))},
        )  # fmt: skip

    plain = make(False).evaluate(dataset)
    trainer = make(True)
    encoder_calls = []
    trainer.model.get_encoder().register_forward_hook(lambda *_: encoder_calls.append(1))
    generated = trainer.evaluate(dataset)
    for key in ("eval_loss", "eval_nll", "eval_tvd_weight_mean"):
        assert generated[key] == pytest.approx(plain[key], rel=1e-6), key
    assert generated["eval_nll"] > generated["eval_loss"]
    assert generated["eval_predicted_rows"] == 12
    # per batch: one teacher-forced pass (the γ-CE loss) and one generate, no second teacher-forced pass
    assert len(encoder_calls) == 2 * 3


def test_linear_gamma_schedule_logged_and_resumed(tmp_path):
    tvd = dict(gamma=0.8, gamma_schedule="linear", gamma_start=0.0, gamma_schedule_steps=4)
    extra = dict(save_strategy="steps", save_steps=2)
    history, _, _ = train_tiny(
        "llama", str(tmp_path / "run"), per_device_batch=4, grad_accum=1, max_steps=6, tvd=tvd, extra_args=extra
    )
    gammas = train_losses(history, "gamma")
    # the value logged at step k is the one used for that step (computed at global_step k-1)
    assert gammas == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 0.8])

    # resume from the step-2 checkpoint: the schedule continues, the later losses are the same
    from transformers import TrainingArguments as _TA  # noqa: F401  (imported for symmetry with train_tiny)

    resumed_hist, _, _ = _resume(tmp_path / "run", "checkpoint-2", tvd)
    assert train_losses(resumed_hist, "gamma") == pytest.approx(gammas[2:])
    assert train_losses(resumed_hist) == pytest.approx(train_losses(history)[2:], rel=1e-5)


def _resume(run_dir, checkpoint, tvd):
    args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=4, max_steps=6, learning_rate=1e-2,
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1e9, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = TVDTrainer(
        model=tiny_model("llama", seed=123), args=args, train_dataset=tiny_dataset("llama"),
        data_collator=collator("llama"), tvd_args=TVDArguments(**tvd),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=str(run_dir / checkpoint))
    history = [row for row in trainer.state.log_history if row.get("step", 0) > 2]
    return history, None, trainer


def test_peft_lora_model(tmp_path):
    peft = pytest.importorskip("peft")  # peft is part of the dev extra installed by .ci/run
    model = peft.get_peft_model(
        tiny_model("llama"), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    before = {k: v.clone() for k, v in model.named_parameters()}
    history, _, trainer = train_tiny("llama", str(tmp_path), per_device_batch=4, grad_accum=2, tvd=TVD, model=model)
    after = dict(trainer.model.named_parameters())
    lora_moved = [k for k in before if "lora_B" in k and not torch.equal(before[k], after[k])]
    frozen_same = all(torch.equal(before[k], after[k]) for k in before if "lora_" not in k)
    assert lora_moved and frozen_same
    assert all(math.isfinite(x) for x in train_losses(history))


def test_bf16_and_gradient_checkpointing(tmp_path):
    extra = dict(bf16=True, activation_checkpointing=True)
    history, state, _ = train_tiny("llama", str(tmp_path), per_device_batch=4, grad_accum=2, tvd=TVD, extra_args=extra)
    losses = train_losses(history)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    initial = tiny_model("llama").state_dict()
    assert max((state[k].float() - initial[k]).abs().max().item() for k in initial) > 1e-3


def test_gpt2_counts_shifted_tokens(tmp_path):
    """GPT-2's loss_type is None in transformers 5.23, so the stock count includes the unshifted first label;
    ours does not: 8 × 2 accumulation equals batch 16."""
    full = train_tiny("gpt2", str(tmp_path / "a"), per_device_batch=16, grad_accum=1, tvd=TVD)
    accum = train_tiny("gpt2", str(tmp_path / "b"), per_device_batch=8, grad_accum=2, tvd=TVD)
    assert_same_training(accum, full)


def _trainer_kwargs(tmp_path, **training):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **training)
    return dict(model=tiny_model("llama"), args=args, train_dataset=tiny_dataset("llama", n=8))


def test_refuses_conflicting_configuration(tmp_path):
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        TVDTrainer(**_trainer_kwargs(tmp_path, label_smoothing_factor=0.1), tvd_args=TVDArguments())
    with pytest.raises(ValueError, match="tvd_args must be a TVDArguments"):
        TVDTrainer(**_trainer_kwargs(tmp_path), tvd_args={"gamma": 0.1})
    with pytest.raises(ValueError, match="compute_loss_func"):
        TVDTrainer(**_trainer_kwargs(tmp_path), compute_loss_func=TVDLoss(), tvd_args=TVDArguments())
    with pytest.raises(ValueError, match="gamma_schedule must be 'constant'"):
        TVDLoss(TVDArguments(gamma_schedule="linear"))


def test_refuses_training_arguments_it_would_not_apply(tmp_path):
    """liger-kernel's model patches (γ-CE reads logits; on CPU the Triton kernels fail at the first step), label
    fields the loss never reads, and a Triton backend of the chunked loss on a device it cannot run on: refused when
    the trainer is built, and again at train() for arguments changed since."""
    with pytest.raises(ValueError, match="use_liger_kernel cannot be used with a TVD trainer"):
        TVDTrainer(**_trainer_kwargs(tmp_path, use_liger_kernel=True), tvd_args=TVDArguments())
    with pytest.raises(ValueError, match=r"label_names \['target_ids'\]"):
        TVDTrainer(**_trainer_kwargs(tmp_path, label_names=["target_ids"]), tvd_args=TVDArguments())
    with pytest.raises(ValueError, match="chunked_backend='cce'.*CUDA"):
        TVDTrainer(**_trainer_kwargs(tmp_path), tvd_args=TVDArguments(loss_impl="chunked", chunked_backend="cce"))
    trainer = TVDTrainer(**_trainer_kwargs(tmp_path, label_names=["labels"]), tvd_args=TVDArguments())
    trainer.args.use_liger_kernel = True
    with pytest.raises(ValueError, match="use_liger_kernel"):
        trainer.train()
    # a target field the loss reads, but the batches do not carry: refused at the first step
    trainer = TVDTrainer(**_trainer_kwargs(tmp_path, label_names=["shift_labels"], max_steps=1),
                         tvd_args=TVDArguments(), data_collator=collator("llama"))  # fmt: skip
    with pytest.raises(ValueError, match="the batches have no shift_labels field"):
        trainer.train()


def test_refuses_batches_without_labels_and_models_without_lm_head(tmp_path):
    from transformers import LlamaModel

    trainer = TVDTrainer(**_trainer_kwargs(tmp_path), tvd_args=TVDArguments())
    batch = {"input_ids": torch.randint(3, 60, (2, 5))}
    with pytest.raises(ValueError, match="need `labels`"):
        trainer.compute_loss(trainer.model, batch)
    headless = LlamaModel(tiny_model("llama").config)
    with pytest.raises(ValueError, match="LlamaModel has neither a language-modelling head"):  # refused when built
        TVDTrainer(
            model=headless, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
            tvd_args=TVDArguments(),
        )  # fmt: skip


def test_stock_trainer_is_untouched():
    """Subclassing does not leak: the stock Trainer keeps its own compute_loss."""
    assert Trainer.compute_loss is not TVDTrainer.compute_loss
    assert TVDTrainer.loss_is_scaled_for_ga is True


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5", "bart"])
def test_gamma_zero_loss_equals_models_own_loss_and_labels_stay_out(family, tmp_path):
    """At γ=0 compute_loss equals the model's own cross-entropy (so shifting / decoder inputs are right),
    and the model is called without labels (no second, wasted cross-entropy)."""
    model = tiny_model(family).eval()
    batch = collator(family)(list(tiny_dataset(family, n=6, seed=3)))
    with torch.no_grad():
        own = model(**batch).loss
    seen: list[set] = []
    original_forward = model.forward

    def spy(*args, **kwargs):
        seen.append(set(kwargs))
        return original_forward(*args, **kwargs)

    model.forward = spy
    seq2seq = family in ("t5", "bart")
    args_cls = Seq2SeqTrainingArguments if seq2seq else TrainingArguments
    args = args_cls(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer_cls = TVDSeq2SeqTrainer if seq2seq else TVDTrainer
    trainer = trainer_cls(model=model, args=args, tvd_args=TVDArguments(gamma=0.0))
    with torch.no_grad():
        ours = trainer.compute_loss(model, batch)
    assert ours.item() == pytest.approx(own.item(), rel=1e-6)
    assert seen and all("labels" not in kwargs for kwargs in seen)


def test_focal_baseline_same_normalisation(tmp_path):
    focal = dict(loss_type="focal", focal_gamma=2.0, label_smoothing=0.1)
    full = train_tiny("llama", str(tmp_path / "a"), per_device_batch=16, grad_accum=1, tvd=focal)
    accum = train_tiny("llama", str(tmp_path / "b"), per_device_batch=4, grad_accum=4, tvd=focal)
    assert_same_training(accum, full)
    rows = [row for row in full[0] if "loss" in row]
    assert all("nll" in row and "tvd_weight_mean" in row and "gamma" not in row for row in rows)
    gce = train_tiny("llama", str(tmp_path / "c"), per_device_batch=16, grad_accum=1, tvd=dict(gamma=0.0))
    assert train_losses(full[0])[0] < train_losses(gce[0])[0]  # (1-p)^2 < 1 shrinks the loss


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5", "bart"])
def test_chunked_loss_impl_trains_like_the_logits_path(family, tmp_path):
    """loss_impl='chunked' never builds the logits in training, and trains the same."""
    chunked_tvd = {**TVD, "loss_impl": "chunked", "chunked_backend": "torch"}
    logits_run = train_tiny(family, str(tmp_path / "a"), per_device_batch=8, grad_accum=2, tvd=TVD)
    chunked_run = train_tiny(family, str(tmp_path / "b"), per_device_batch=8, grad_accum=2, tvd=chunked_tvd)
    assert chunked_run[2]._tvd_head is not None and chunked_run[2]._tvd_head[1].verified  # really used
    assert_same_training(chunked_run, logits_run, loss_rtol=1e-5)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operator returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("impl", ["logits", "chunked"])
def test_chunked_path_builds_no_full_logits(tmp_path, impl, monkeypatch):
    from tiny import collator as make_collator

    import hf_tvd_loss.ops.common as common

    # a vocabulary larger than every other dimension of the tiny model, and chunks of 4 token rows, so that a
    # [tokens, vocab] tensor stands out from everything else
    vocab = 8 * VOCAB
    monkeypatch.setattr(common, "CHUNK_ELEMENTS", 4 * vocab)
    kwargs = _trainer_kwargs(tmp_path)
    config = kwargs["model"].config
    config.vocab_size = vocab
    kwargs["model"] = type(kwargs["model"])(config)
    trainer = TVDTrainer(**kwargs, tvd_args=TVDArguments(gamma=0.1, loss_impl=impl, chunked_backend="torch"))
    batch = make_collator("llama")(list(tiny_dataset("llama", n=8)))
    tokens = batch["input_ids"].numel()  # more tokens than hidden units: [V, d] weight gradients stay below half
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch)  # first use: resolves and checks the head
    with _LargestTensor() as spy:
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
    assert trainer.model.lm_head.weight.grad is not None and trainer.model.lm_head.weight.grad.abs().sum() > 0
    full_logits = tokens * vocab
    if impl == "logits":
        assert spy.largest >= full_logits  # the spy sees the logits when they exist
    else:
        assert spy.largest < full_logits / 2


def test_chunked_focal_equals_logits_focal(tmp_path):
    focal = dict(loss_type="focal", focal_gamma=2.0)
    run = train_tiny("llama", str(tmp_path / "a"), per_device_batch=8, grad_accum=1, max_steps=2,
                     tvd={**focal, "loss_impl": "chunked"})  # fmt: skip
    reference = train_tiny("llama", str(tmp_path / "b"), per_device_batch=8, grad_accum=1, max_steps=2, tvd=focal)
    assert run[2]._tvd_head is not None
    assert_same_training(run, reference, loss_rtol=1e-5)


def test_chunked_refuses_with_the_reason(tmp_path):
    from peft import LoraConfig, get_peft_model
    from tiny import collator as make_collator

    kwargs = _trainer_kwargs(tmp_path)
    kwargs["model"] = get_peft_model(kwargs["model"], LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    trainer = TVDTrainer(**kwargs, tvd_args=TVDArguments(gamma=0.1, loss_impl="chunked"))
    batch = make_collator("llama")(list(tiny_dataset("llama", n=2)))
    with pytest.raises(ValueError, match="loss_impl='chunked' cannot be used: LlamaForCausalLM: its output head is a "
                       "PEFT adapter layer"):  # fmt: skip
        trainer.compute_loss(trainer.model, batch)


def test_model_without_lm_head_is_refused_at_construction(tmp_path):
    from transformers import GPT2Model

    kwargs = _trainer_kwargs(tmp_path)
    kwargs["model"] = GPT2Model(tiny_model("gpt2").config)
    with pytest.raises(ValueError, match="GPT2Model has neither a language-modelling head"):
        TVDTrainer(**kwargs, tvd_args=TVDArguments())


def test_resume_with_other_loss_settings_is_refused_naming_them(tmp_path):
    """A checkpoint records its loss settings; resuming with others is refused before training unless asked for."""
    from hf_tvd_loss.callbacks import read_checkpoint_marker

    def trainer(max_steps, **tvd):
        kwargs = _trainer_kwargs(tmp_path, per_device_train_batch_size=4, max_steps=max_steps, save_steps=2,
                                 disable_tqdm=True)  # fmt: skip
        return TVDTrainer(**kwargs, data_collator=collator("llama"), tvd_args=TVDArguments(**tvd))

    trainer(2, gamma=0.1, min_weight=0.3).train()
    checkpoint = str(tmp_path / "checkpoint-2")
    assert read_checkpoint_marker(checkpoint)["tvd_args"]["gamma"] == 0.1
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(
        ValueError, match=r"gamma 0\.1 -> 0\.8; min_weight 0\.3 -> 0\.2\. .*allow_loss_change_on_resume"
    ):
        trainer(4, gamma=0.8).train(resume_from_checkpoint=True)
    assert sorted(os.listdir(tmp_path)) == before  # nothing trained or written
    # how the loss is computed and logged may change; the same objective resumes
    trainer(4, gamma=0.1, min_weight=0.3, loss_impl="chunked", extra_metrics=True).train(resume_from_checkpoint=True)
    assert os.path.isdir(tmp_path / "checkpoint-4")
    # a deliberate change of objective
    trainer(6, gamma=0.8, allow_loss_change_on_resume=True).train(resume_from_checkpoint=True)
    assert read_checkpoint_marker(str(tmp_path / "checkpoint-6"))["tvd_args"]["gamma"] == 0.8


def test_a_training_step_with_no_scored_label_is_refused(tmp_path):
    """Issue 21: a step whose labels are all -100 trained on loss 0 without a word."""
    unscored = tiny_dataset("llama", n=8).map(lambda row: {"labels": [-100] * len(row["labels"])})
    kwargs = _trainer_kwargs(tmp_path, max_steps=1, per_device_train_batch_size=4)
    kwargs["train_dataset"] = unscored
    trainer = TVDTrainer(**kwargs, data_collator=collator("llama"), tvd_args=TVDArguments(gamma=0.1))
    with pytest.raises(ValueError, match="training step 1 has no scored target: every label of its 1 batch"):
        trainer.train()


@pytest.mark.parametrize("count", [0, -3, float("nan")])
def test_a_hand_given_num_items_in_batch_must_be_positive(count):
    logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    with pytest.raises(ValueError, match="num_items_in_batch must be a positive count"):
        gamma_cross_entropy_with_stats(logits, labels, gamma=0.1, num_items_in_batch=count)


def test_a_bare_tvd_trainer_trains_a_model_built_from_a_config(tmp_path):
    """Issue 22: the old bare default (γ 0.1, b 0) gave grad_norm 0.0002 on a fresh Llama against cross-entropy's
    1.1. The default is now TaiLr's LM setting (γ 1e-7, b 0.2), which the studies found as safe as cross-entropy."""
    assert (TVDArguments().gamma, TVDArguments().min_weight, TVDArguments().label_smoothing) == (1e-7, 0.2, 0.0)
    trainer = TVDTrainer(**_trainer_kwargs(tmp_path))
    batch = collator("llama")(list(tiny_dataset("llama", n=8)))
    norms = {}
    for name in ("tvd", "stock"):
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(trainer.model, batch) if name == "tvd" else trainer.model(**batch).loss
        loss.backward()
        norms[name] = float(torch.nn.utils.get_total_norm([p.grad for p in trainer.model.parameters()]))
    assert norms["tvd"] == pytest.approx(norms["stock"], rel=1e-3) and norms["stock"] > 0.1


def test_create_model_card_records_the_loss(tmp_path):
    """Issue 22.5: the library's card (create_model_card, which push_to_hub calls) says which loss made the model,
    in its text and in its metadata; a second call replaces the section instead of adding one."""
    from huggingface_hub import ModelCard

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1)
    tvd = TVDArguments(gamma=0.8, min_weight=0.2, label_smoothing=0.1, gamma_schedule="linear", gamma_start=0.0,
                       gamma_schedule_steps=10)  # fmt: skip
    trainer = TVDTrainer(model=tiny_model("llama"), args=args, train_dataset=tiny_dataset("llama", n=4),
                         data_collator=collator("llama"), tvd_args=tvd)  # fmt: skip
    trainer.create_model_card(model_name="tiny", tags=["mine"])
    trainer.create_model_card(model_name="tiny")
    card = ModelCard.load(os.path.join(str(tmp_path), "README.md"))
    assert {"mine", "hf_tvd_loss", "tailr"} <= set(card.data.tags)
    assert card.data.hf_tvd_loss == {
        "loss_type": "gamma_ce", "label_smoothing": 0.1, "normalization": "token", "gamma": 0.8, "min_weight": 0.2,
        "gamma_schedule": "linear", "gamma_start": 0.0, "gamma_schedule_ratio": None, "gamma_schedule_steps": 10,
    }  # fmt: skip
    assert card.text.count("## Loss (hf_tvd_loss)") == 1
    assert "| γ (gamma) | 0.8 |" in card.text and "| ε (label_smoothing) | 0.1 |" in card.text
    assert "linear from 0.0 to 0.8 (steps 10 of training)" in card.text
    assert card.text.index("## Loss (hf_tvd_loss)") < card.text.index("## Training procedure")

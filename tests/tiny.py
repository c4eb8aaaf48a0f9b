"""Tiny models built from configs and a synthetic token dataset, shared by the trainer tests and the
multi-process worker. No downloads."""

from __future__ import annotations

import torch
from datasets import Dataset

VOCAB = 64
PAD = 0
NUM_CLASSES = 5
# Classifiers: a sequence classifier (BERT-style, and Llama-style with last-token pooling) and a token classifier.
CLASSIFIERS = ("bert_cls", "llama_cls", "bert_tok")


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny randomly initialised model of ``family`` in {llama, gpt2, t5, bart} or :data:`CLASSIFIERS`, dropout
    off."""
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        BertConfig,
        BertForSequenceClassification,
        BertForTokenClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
        )  # fmt: skip
        return LlamaForCausalLM(config)
    if family == "gpt2":
        config = GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
        )  # fmt: skip
        return GPT2LMHeadModel(config)
    if family == "t5":
        config = T5Config(
            vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            dropout_rate=0.0, pad_token_id=PAD, eos_token_id=2, decoder_start_token_id=PAD,
        )  # fmt: skip
        return T5ForConditionalGeneration(config)
    if family == "bart":
        config = BartConfig(
            vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=PAD, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
        )  # fmt: skip
        return BartForConditionalGeneration(config)
    if family in ("bert_cls", "bert_tok"):
        config = BertConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            classifier_dropout=0.0, num_labels=NUM_CLASSES, pad_token_id=PAD,
        )  # fmt: skip
        return (BertForSequenceClassification if family == "bert_cls" else BertForTokenClassification)(config)
    if family == "llama_cls":
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
            num_labels=NUM_CLASSES,
        )  # fmt: skip
        return LlamaForSequenceClassification(config)
    raise ValueError(f"unknown family {family!r}")


def is_seq2seq(family: str) -> bool:
    return family in ("t5", "bart")


def tiny_dataset(family: str, n: int = 32, seed: int = 0) -> Dataset:
    """Variable-length sequences (so that per-token normalisation matters); causal rows mask a prompt."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(4, 17, (1,), generator=g))
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        if family in CLASSIFIERS:
            if family == "bert_tok":  # a tag per token, some positions not scored
                tags = torch.randint(0, NUM_CLASSES, (length,), generator=g).tolist()
                label = [-100 if i % 5 == 0 else t for i, t in enumerate(tags)]
            else:  # a class per example, a function of the text so that it can be learnt
                label = sum(ids) % NUM_CLASSES
            rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": label})
        elif is_seq2seq(family):
            target_len = int(torch.randint(2, 12, (1,), generator=g))
            target = torch.randint(3, VOCAB, (target_len,), generator=g).tolist()
            rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": target + [2]})
        else:
            prompt = int(torch.randint(0, length // 2, (1,), generator=g))
            rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * prompt + ids[prompt:]})
    return Dataset.from_list(rows)


def collator(family: str):
    """Pads inputs with PAD and labels with -100 (no decoder_input_ids: the trainer must build them)."""

    def collate(features: list[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key, pad in (("input_ids", PAD), ("attention_mask", 0), ("labels", -100)):
            if not isinstance(features[0][key], list):  # a sequence classifier's label, one per example
                batch[key] = torch.tensor([f[key] for f in features])
                continue
            longest = max(len(f[key]) for f in features)
            batch[key] = torch.tensor([f[key] + [pad] * (longest - len(f[key])) for f in features])
        return batch

    return collate


def train_tiny(
    family: str,
    output_dir: str,
    *,
    per_device_batch: int,
    grad_accum: int,
    tvd: dict | None = None,
    stock: bool = False,
    max_steps: int = 3,
    n: int = 32,
    learning_rate: float = 1e-2,
    extra_args: dict | None = None,
    model=None,
    callbacks: list | None = None,
    weight_rule=None,
    dataset=None,
) -> tuple[list[dict], dict[str, torch.Tensor], object]:
    """Train a tiny model; returns (log_history, final state_dict on CPU, trainer)."""
    from transformers import Seq2SeqTrainingArguments, Trainer, TrainingArguments

    from hf_tvd_loss import TVDArguments, TVDSeq2SeqTrainer, TVDTrainer

    seq2seq = is_seq2seq(family)
    args_cls = Seq2SeqTrainingArguments if seq2seq else TrainingArguments
    settings = dict(
        output_dir=output_dir,
        per_device_train_batch_size=per_device_batch,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=grad_accum,
        max_steps=max_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1e9,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    settings.update(extra_args or {})
    args = args_cls(**settings)
    model = model if model is not None else tiny_model(family)
    kwargs = dict(
        model=model, args=args, train_dataset=tiny_dataset(family, n=n) if dataset is None else dataset, data_collator=collator(family),
        callbacks=callbacks,
    )  # fmt: skip
    if stock:
        trainer = Trainer(**kwargs)
    else:
        trainer_cls = TVDSeq2SeqTrainer if seq2seq else TVDTrainer
        rule = {} if weight_rule is None else {"weight_rule": weight_rule}
        trainer = trainer_cls(**kwargs, tvd_args=TVDArguments(**(tvd or {})), **rule)
    trainer.train()
    state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    return trainer.state.log_history, state, trainer

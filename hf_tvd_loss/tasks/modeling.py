"""Tokenizer training and model building: a pretrained model's config, or a new model from a config whose vocabulary
and special tokens come from the tokenizer.

Tokenizers trained on the training data: BPE (``tokenizers``, a ``PreTrainedTokenizerFast``) or SentencePiece
(the ``sentencepiece`` library's unigram model in a ``MarianTokenizer``, the way Marian/OPUS-MT models ship it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .cli import key_value_keys, repeated_keys

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from .arguments import ModelArguments
    from .base import Task

__all__ = [
    "SPECIAL_TOKENS",
    "auto_model_class",
    "build_model_from_config",
    "freeze_layers",
    "max_positions",
    "resolve_config",
    "train_sentencepiece_tokenizer",
    "train_tokenizer",
    "transformer_blocks",
]

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_tokenizer(
    texts: Iterator[str], vocab_size: int, model_max_length: int | None = None, kind: str = "bpe"
) -> PreTrainedTokenizerBase:
    """A byte-fallback-free BPE tokenizer (``tokenizers``) trained on ``texts``, as a ``PreTrainedTokenizerFast``;
    with ``kind="sentencepiece"``, :func:`train_sentencepiece_tokenizer` instead.

    Metaspace pre-tokenisation (as SentencePiece) so that decoding restores the spaces; every encoded sequence ends
    with ``</s>``. Special tokens: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3.
    """
    if kind == "sentencepiece":
        return train_sentencepiece_tokenizer(texts, vocab_size, model_max_length)
    if kind != "bpe":
        raise ValueError(f"tokenizer_type must be 'bpe' or 'sentencepiece', got {kind!r}")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False
    )
    backend.train_from_iterator(texts, trainer=trainer)
    eos = SPECIAL_TOKENS["eos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, backend.token_to_id(eos))]
    )
    extra = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **extra, **SPECIAL_TOKENS)


def train_sentencepiece_tokenizer(
    texts: Iterator[str], vocab_size: int, model_max_length: int | None = None
) -> PreTrainedTokenizerBase:
    """A SentencePiece unigram model trained on ``texts`` (``sentencepiece.SentencePieceTrainer``), wrapped in a
    ``MarianTokenizer`` (source and target share the model and the vocabulary, as in a joint-vocabulary Marian model).

    ``vocab_size`` is an upper bound (a small corpus gives fewer pieces). Special tokens: ``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2; no bos (Marian starts decoding with the pad token). Every encoded sequence ends with ``</s>``.
    """
    import io
    import json
    import os
    import tempfile
    import warnings

    import sentencepiece
    from transformers import MarianTokenizer

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=(t.replace("\n", " ") for t in texts),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        max_sentence_length=1 << 16,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        num_threads=max(1, min(4, os.cpu_count() or 1)),
        minloglevel=2,
    )  # fmt: skip
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    with tempfile.TemporaryDirectory() as folder:
        spm_file, vocab_file = os.path.join(folder, "spm.model"), os.path.join(folder, "vocab.json")
        with open(spm_file, "wb") as f:
            f.write(model.getvalue())
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        extra = {"model_max_length": model_max_length} if model_max_length else {"model_max_length": int(1e30)}
        with warnings.catch_warnings():  # Marian's optional Moses punctuation normaliser (sacremoses): not used here
            warnings.filterwarnings("ignore", message=".*sacremoses")
            return MarianTokenizer(source_spm=spm_file, target_spm=spm_file, vocab=vocab_file, **extra)


def auto_model_class(task: Task[Any, Any]) -> Any:
    """The ``transformers`` auto class named by the task (e.g. ``AutoModelForSeq2SeqLM``)."""
    import transformers

    return getattr(transformers, task.auto_model_class)


def resolve_config(
    task: Task[Any, Any], model_args: ModelArguments
) -> tuple[PretrainedConfig, str | None, Task[Any, Any]]:
    """The model config (pretrained or from scratch), with overrides, and the task set up for that model.

    Returns the config, the ``config_overrides`` applied to it (the given ones, or the task's tiny sizes
    (:meth:`~.base.Task.scratch_overrides`) for a model built from scratch without overrides) and
    ``task.for_config(config)`` (a ``ValueError`` when the model lacks the head the task needs). Reads
    ``model_args`` without changing it.
    """
    from transformers import AutoConfig

    hub_kwargs = {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "trust_remote_code": model_args.trust_remote_code,
    }
    name = model_args.model_name_or_path or model_args.config_name
    if name:
        try:
            config = AutoConfig.from_pretrained(name, **hub_kwargs)
        except (OSError, ValueError) as err:
            option = "model_name_or_path" if model_args.model_name_or_path else "config_name"
            raise ValueError(f"{option} {name!r}: no model config could be loaded ({err})") from err
    else:
        try:
            config = AutoConfig.for_model(model_args.model_type)
        except ValueError as err:
            raise ValueError(f"model_type {model_args.model_type!r} is not a known transformers model type") from err
    overrides = model_args.config_overrides
    if overrides is None and not name:
        # The task's default model is tiny (the offline default run), and so are a few common decoder-only types
        # for pair tasks; any other model keeps its own sizes.
        overrides = task.scratch_overrides(model_args.model_type)
    if overrides:
        repeated = repeated_keys(key_value_keys(overrides))
        if repeated:  # update_from_string would apply each in turn, the last silently winning
            raise ValueError(
                f"config_overrides {overrides!r}: {', '.join(repeated)} given more than once; give each key once"
            )
        try:
            config.update_from_string(overrides)
        except ValueError as err:
            raise ValueError(f"config_overrides {overrides!r}: {err}") from err
    return config, overrides, task.for_config(config, f" ({name or model_args.model_type})")


def max_positions(config: PretrainedConfig) -> int | None:
    """The number of positions the config allows (None: no such limit, e.g. relative positions)."""
    for attribute in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attribute, None)
        if isinstance(value, int):
            return value
    return None


def build_model_from_config(
    task: Task[Any, Any], config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    """A freshly initialised model whose vocabulary and special tokens are the tokenizer's."""
    config.vocab_size = len(tokenizer)
    if hasattr(config, "decoder_vocab_size"):  # Marian keeps a separate decoder vocabulary size
        config.decoder_vocab_size = len(tokenizer)
    config.pad_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    if getattr(config, "is_encoder_decoder", False):
        # the bos token where there is one; else the pad token, as Marian and T5 start decoding
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
        config.decoder_start_token_id = start
        if hasattr(config, "forced_eos_token_id"):
            config.forced_eos_token_id = tokenizer.eos_token_id
    return auto_model_class(task).from_config(config)


# ------------------------------------------------------------------------------------------------ frozen lower layers
# Caches of frozen blocks' outputs, shared by the runs of one process (a loss study trains many runs on the same
# inputs): fingerprint of the frozen weights → {input token ids (bytes) → hidden states [length, hidden]}.
_PREFIX_CACHES: dict[str, dict[bytes, Any]] = {}


def transformer_blocks(model: PreTrainedModel) -> Any:
    """The model's stack of transformer blocks: the first ``ModuleList`` with ``config.num_hidden_layers`` entries
    (``model.layers`` of Llama-style decoders, ``encoder.layer`` of BERT, ``h`` of GPT-2); None if there is none."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    if not isinstance(count, int):
        return None
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    return None


def freeze_layers(model: PreTrainedModel, model_args: ModelArguments) -> dict[str, Any] | None:
    """Apply ``--freeze_layers`` (and ``--cache_frozen_outputs``) to a loaded or built model; returns what was done
    (None when nothing is frozen). A ``ValueError`` names why a model or setting is refused."""
    n = model_args.freeze_layers
    if n is None:
        if model_args.cache_frozen_outputs:
            raise ValueError("cache_frozen_outputs caches the frozen blocks' outputs: it needs --freeze_layers N")
        return None
    blocks = transformer_blocks(model)
    if blocks is None:
        raise ValueError(
            f"freeze_layers {n}: {type(model).__name__} has no stack of config.num_hidden_layers transformer blocks "
            "to freeze"
        )
    if not 1 <= n <= len(blocks):
        raise ValueError(f"freeze_layers must be from 1 to the model's {len(blocks)} blocks, got {n}")
    frozen = [model.get_input_embeddings(), *blocks[:n]]
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ValueError(f"freeze_layers {n} leaves no parameter to train")
    summary = {
        "freeze_layers": n,
        "blocks": len(blocks),
        "trainable_parameters": trainable,
        "parameters": sum(p.numel() for p in model.parameters()),
        "cache_frozen_outputs": bool(model_args.cache_frozen_outputs),
    }
    if model_args.cache_frozen_outputs:
        _install_prefix_cache(model, blocks, n, frozen)
    return summary


def _frozen_fingerprint(modules: list[Any], n: int) -> str:
    import hashlib

    digest = hashlib.sha1(str(n).encode())
    for module in modules:
        for parameter in module.parameters():
            digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _install_prefix_cache(model: PreTrainedModel, blocks: Any, n: int, frozen: list[Any]) -> None:
    import torch

    config = model.config
    if getattr(config, "is_encoder_decoder", False) or blocks is not getattr(model.base_model, "layers", None):
        raise ValueError(
            "cache_frozen_outputs needs a decoder-only model whose blocks are model.layers (Llama, Qwen, Mistral, "
            f"SmolLM, ...): {type(model).__name__}'s outputs depend on later tokens or could not be reached"
        )
    dropout = [name for name in ("attention_dropout", "hidden_dropout", "resid_pdrop", "attn_pdrop")
               if float(getattr(config, name, 0.0) or 0.0) > 0]  # fmt: skip
    dropout += [type(m).__name__ for b in frozen for m in b.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    if dropout:
        raise ValueError(f"cache_frozen_outputs: the frozen blocks use dropout ({', '.join(dropout)}), so their "
                         "training outputs are random and cannot be reused")  # fmt: skip
    store = _PREFIX_CACHES.setdefault(_frozen_fingerprint(frozen, n), {})
    state: dict[str, Any] = {"keys": None, "lengths": None, "hit": False}

    def capture(module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        state["keys"] = None
        if ids is None or kwargs.get("inputs_embeds") is not None or kwargs.get("past_key_values") is not None:
            return  # not a plain forward over token ids: no caching
        rows, width = ids.shape
        if mask is None:
            lengths = torch.full((rows,), width, dtype=torch.long)
        else:
            lengths = mask.long().sum(1).cpu()
            right_padded = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
            if not torch.equal(right_padded, mask.bool().cpu()):
                raise ValueError("cache_frozen_outputs needs right-padded inputs (tokenizer.padding_side 'right')")
        ids = ids.cpu()
        state["keys"] = [ids[i, : int(lengths[i])].numpy().tobytes() for i in range(rows)]
        state["lengths"] = lengths
        state["hit"] = all(key in store for key in state["keys"])

    def cached_block(index: int, forward: Any) -> Any:
        def run(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            keys = state["keys"]
            if keys is not None and state["hit"]:
                if index > 0:
                    return hidden_states  # the first frozen block returned the cached output of the last
                out = torch.zeros_like(hidden_states)
                for i, key in enumerate(keys):
                    out[i, : int(state["lengths"][i])] = store[key]
                return out
            out = forward(hidden_states, *args, **kwargs)
            if keys is not None and index == n - 1:
                tensor = out[0] if isinstance(out, tuple) else out
                for i, key in enumerate(keys):
                    store[key] = tensor[i, : int(state["lengths"][i])].detach().to("cpu", copy=True)
            return out

        return run

    model.base_model.register_forward_pre_hook(capture, with_kwargs=True)
    for index, block in enumerate(blocks[:n]):
        block.forward = cached_block(index, block.forward)

"""Pretrained backbones (the frozen networks the adapters sit on) and tiny random ones for tests.

``load_backbone`` accepts a packaged model name (``minilm-l6``, ``smollm2-135m``; see
:mod:`bara_pyro.assets`), a local ``from_pretrained`` folder or a hub id, and returns the model
with a tokenizer that can pad: causal LMs without a pad token pad with their EOS token, and
``model.config.pad_token_id`` always equals ``tokenizer.pad_token_id``.
"""

from __future__ import annotations

import os
import warnings

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from .assets import resolve_model
from .models.errors import ConfigError

__all__ = ["BACKBONE_KINDS", "load_backbone", "tiny_backbone"]

BACKBONE_KINDS = ("sequence_classification", "causal_lm")
TINY_ARCHS = ("bert", "llama", "smollm2-135m")
# random weights at a real model's shapes (speed measurements without a download); the vocabulary is the tokenizer's
FULL_SIZE_SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0),
}
TINY_DEFAULT_VOCAB = 128


def _check_kind(kind: str) -> None:
    if kind not in BACKBONE_KINDS:
        raise ValueError(f"unknown backbone kind {kind!r}; expected one of {BACKBONE_KINDS}")


def _ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token (EOS for decoders) and make the model config agree with it."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {model.config.name_or_path!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


HEAD_INIT_SEED = 0  # a fresh classification head's initialisation (load_backbone), as tiny_backbone's default


def load_backbone(
    name_or_path: str | os.PathLike,
    kind: str,
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a pretrained backbone and its tokenizer.

    :param name_or_path: packaged name, local folder or hub id (see :func:`bara_pyro.assets.resolve_model`).
    :param kind: ``"sequence_classification"`` (a fresh linear head on the pooled output, ``num_labels``
        outputs, default 2, initialised from seed :data:`HEAD_INIT_SEED` without touching the global RNG
        state, so every run and ensemble member starts from the same head and a run trains the same in any
        process; the run's seed varies the adapters and the data order) or ``"causal_lm"`` (next-token
        logits, used for multiple-choice scoring).
    :param num_labels: number of classes for ``"sequence_classification"``; must be ``None`` for ``"causal_lm"``.
    :param dtype: parameter dtype.
    :returns: ``(model, tokenizer)``; the model is not switched to ``eval()`` here.
    """
    _check_kind(kind)
    folder = resolve_model(name_or_path)
    try:
        return _load_pretrained(folder, kind, num_labels, dtype)
    except OSError as exc:  # the hub client's "not a local folder and not a reachable repo id", a missing file
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(f"cannot load model {os.fspath(name_or_path)!r} (a packaged name, a local from_pretrained "
                          f"folder or a reachable hub id): {reason}") from None


def _load_pretrained(folder: str, kind: str, num_labels: int | None, dtype: torch.dtype):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if kind == "sequence_classification":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(HEAD_INIT_SEED)
            model = _from_pretrained(AutoModelForSequenceClassification, folder,
                                     num_labels=2 if num_labels is None else num_labels, dtype=dtype)
    else:
        if num_labels is not None:
            raise ValueError("num_labels is only meaningful for kind='sequence_classification'")
        model = _from_pretrained(AutoModelForCausalLM, folder, dtype=dtype)
    _ensure_pad_token(model, tokenizer)
    return model, tokenizer


def _from_pretrained(auto_class, folder: str, **kwargs) -> PreTrainedModel:
    """``auto_class.from_pretrained`` without transformers' load report, which lists the fresh task head as
    missing (the head is new by design and trained with the adapters); a weight missing from the pretrained
    network itself (under ``base_model_prefix``) is named in one warning."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = auto_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    prefix = model.base_model_prefix + "."
    missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith(prefix))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        warnings.warn(f"{folder}: {len(missing)} weights of the pretrained network are not in its checkpoint and "
                      f"start at random: {shown}", stacklevel=3)
    return model


def tiny_backbone(
    kind: str,
    arch: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    num_labels: int = 2,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised miniature backbone for fast tests (hidden 32, 2 layers).

    ``arch="bert"``: 2 heads, intermediate 64; ``arch="llama"``: 4 query heads, 2 KV heads,
    intermediate 64; ``arch="smollm2-135m"``: not miniature, a Llama of SmolLM2-135M's shapes
    (30 layers, hidden 576) with random weights, for speed measurements.  The vocabulary matches
    ``tokenizer`` (``len(tokenizer)``) or has
    128 entries.  Initialisation uses ``seed`` without touching the global RNG state.
    """
    _check_kind(kind)
    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; expected one of {TINY_ARCHS}")
    vocab_size = len(tokenizer) if tokenizer is not None else TINY_DEFAULT_VOCAB
    pad_token_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=pad_token_id,
        num_labels=num_labels,
    )
    if arch in FULL_SIZE_SHAPES:
        config = LlamaConfig(**{**common, **FULL_SIZE_SHAPES[arch]}, tie_word_embeddings=True)
    elif arch == "bert":
        config = BertConfig(num_attention_heads=2, is_decoder=kind == "causal_lm", **common)
    else:
        config = LlamaConfig(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, **common)
    auto_class = AutoModelForSequenceClassification if kind == "sequence_classification" else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return auto_class.from_config(config)

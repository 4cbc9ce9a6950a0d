"""Tiny models and batches built from configs (no downloads), shared by the tests."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from bara_pyro.tasks.base import Batch


def make_tiny_bert(num_labels: int = 3, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=num_labels, max_position_embeddings=64)
    return BertForSequenceClassification(cfg).eval()


def make_tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def move_off_init(model, scale: float = 0.3):
    """Add ``scale`` x N(0, 1) noise to every trainable parameter, in place (returns ``model``): away from the
    start, where the update (B = 0, magnitudes 0) hides every draw."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
    return model


def question_rows(count: int, mixed: bool = False) -> list[dict]:
    """``count`` cloze rows whose questions are prefixes of one sentence, of random lengths (seed 0), three choices
    each.  ``mixed``: the odd rows' choices share their first continuation word (a scored token inside the shared
    prefix) and row 4 has two choices."""
    words = "the red planet in our solar system is often called mars by most people".split()
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(count):
        n = int(torch.randint(2, len(words), (1,), generator=g))
        question = " ".join(words[:n])
        continuations = ([" the red one", " the blue one", " Venus"] if mixed and i % 2 else
                         [" Mars", " Venus is hot", " no"])
        choices = 2 if mixed and i == 4 else 3
        rows.append({"contexts": [f"Q: {question}?\nA:"] * choices, "continuations": continuations[:choices],
                     "question": question, "choices": ["a", "b", "c"][:choices], "label": i % choices})
    return rows


def tiny_cloze_model(tokenizer, **config):
    """``(model, task)``: a BaRA model (r = 4 on the query and value projections, inclusion probability 0.5, the
    other settings ``config``) on a tiny Llama, moved off its start, and the cloze task it scores."""
    from bara_pyro import BaRAConfig, get_bara_model
    from bara_pyro.backbones import tiny_backbone
    from bara_pyro.tasks import MultipleChoiceTask

    torch.manual_seed(0)
    task = MultipleChoiceTask(tokenizer, scoring="cloze")
    config = BaRAConfig(r=4, alpha=4, target_modules=["q_proj", "v_proj"], init_gate_logit=0.0, **config)
    model = get_bara_model(tiny_backbone("causal_lm", "llama", tokenizer=tokenizer), config, forward_fn=task.scores)
    return move_off_init(model), task


def make_batch(num_examples: int = 4, seq_len: int = 7, num_labels: int = 3, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (num_examples, seq_len), generator=g)
    mask = torch.ones(num_examples, seq_len, dtype=torch.long)
    mask[0, seq_len - 3:] = 0
    if num_examples > 2:
        mask[2, 2:] = 0
    ids = ids * mask
    labels = torch.randint(0, num_labels, (num_examples,), generator=g)
    return Batch(inputs={"input_ids": ids, "attention_mask": mask}, labels=labels, token_mask=mask.bool())


class TokenTask:
    """Toy sequence classification on token ids (rows ``{"ids": (T,), "label": int}``): the backbone's logits."""

    name = "toy"

    def collate(self, rows):
        ids = torch.stack([r["ids"] for r in rows])
        mask = (ids > 0).long()
        return Batch(inputs={"input_ids": ids, "attention_mask": mask},
                     labels=torch.tensor([r["label"] for r in rows]), token_mask=mask.bool())

    def scores(self, backbone, batch):
        return backbone(**batch.inputs).logits


def assert_globals_at_once_equal_per_adapter(build_model, monkeypatch, path: str = "_slab_globals",
                                             exact: tuple[str, ...] | None = None) -> None:
    """A batched globals path (the model property ``path``: ``_slab_globals``, ``_inducing_globals``) against the
    per-adapter ``fused_globals`` one, in float64: the same draws (bit for bit for the sites ``exact``, default all;
    to round-off for the others, which batched matrix products compute), the loss and the gradients to round-off.
    ``build_model()`` returns the model."""
    import pyro

    torch.set_default_dtype(torch.float64)
    try:
        model = build_model()
        assert getattr(model, path)
        model.dataset_size = 37
        batch, params = make_batch(), model.trainable_parameters()
        runs = []
        for at_once in (True, False):
            if not at_once:
                monkeypatch.setattr(type(model), path, property(lambda self: False))
            assert getattr(model, path) == at_once
            pyro.set_rng_seed(5)
            loss, _ = model.fused_loss(batch)
            draws = {(p, n): v.detach() for p, values in model.ctx.globals.items() for n, v in values.items()}
            draws.update({(p, n): v.detach() for p, values in model.ctx.weights.items() for n, v in values.items()})
            runs.append((loss, draws, torch.autograd.grad(loss, params, allow_unused=True)))
    finally:
        torch.set_default_dtype(torch.float32)
    (loss, draws, grads), (loss_ref, draws_ref, grads_ref) = runs
    assert draws.keys() == draws_ref.keys()
    for key, value in draws.items():
        if exact is None or key[1] in exact:
            assert torch.equal(value, draws_ref[key]), key  # the same random numbers, bit for bit
        else:
            torch.testing.assert_close(value, draws_ref[key], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-10)
    for a, b in zip(grads, grads_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def benchmark_script(name: str):
    """The module ``benchmarks/{name}.py``, loaded from its file (the folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# where run_triton_check runs a script: the Triton interpreter on the CPU, or CUDA (skipped without it)
TRITON_DEVICES = [pytest.param(False, id="interpreter"),
                  pytest.param(True, id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                          reason="needs CUDA"))]


def run_triton_check(code: str, cuda: bool) -> None:
    """Run a Triton-kernel check script (it prints ``ok`` at its end) in a fresh process: under the Triton
    interpreter on the CPU, or with CUDA as the default device (its ``torch.manual_seed(0)`` marks where);
    skipped without Triton."""
    pytest.importorskip("triton")
    env = dict(os.environ)
    if cuda:
        code = code.replace("torch.manual_seed(0)", "torch.manual_seed(0); torch.set_default_device('cuda')")
    else:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")

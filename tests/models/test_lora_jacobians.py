"""Per-example Jacobians of the scores in the LoRA factors, from one backward pass per score column, equal autograd's
one example and score at a time; adapters or batches without that structure are declined."""

import pytest
import torch

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.backbones import tiny_backbone
from bara_pyro.models.lora_jacobians import FACTORS, lora_jacobians
from bara_pyro.tasks import MultipleChoiceTask
from bara_pyro.testing import ToyTokenTask, tiny_bert, toy_rows

MC_ROWS = [  # three, four and two choices: the scores of missing choices are -inf
    {"contexts": ["Is water wet?"] * 3, "continuations": [" yes", " no", " it depends"], "label": 0},
    {"contexts": ["Pick one:"] * 4, "continuations": [" red", " green and blue", " a", " b c d"], "label": 2},
    {"contexts": ["A B C"] * 2, "continuations": [" D", " E F"], "label": 1},
]


def _with_random_factors(model):
    torch.manual_seed(0)
    for _, adapter in model.adapter_items:
        torch.nn.init.normal_(adapter.lora_B.weight, std=0.1)
    return model.eval()


def _autograd_jacobians(model, batch):
    """``(B, C, P)`` by one backward pass per example and score (zero rows for -inf scores)."""
    params = [getattr(a, name).weight for _, a in model.adapter_items for name in FACTORS]
    with torch.enable_grad():
        f = model.scores(batch, mode="mean")
        rows = torch.zeros(*f.shape, sum(p.numel() for p in params))
        for i in range(f.shape[0]):
            for c in range(f.shape[1]):
                if torch.isfinite(f[i, c]):
                    grads = torch.autograd.grad(f[i, c], params, retain_graph=True)
                    rows[i, c] = torch.cat([g.flatten() for g in grads])
    return f.detach(), rows


@pytest.mark.parametrize("scoring, padded", [("cloze", False), ("cloze", True), ("lettered", False)])
def test_multiple_choice_jacobians_equal_autograds(smollm_tokenizer, scoring, padded):
    task = MultipleChoiceTask(smollm_tokenizer, scoring=scoring)
    backbone = tiny_backbone("causal_lm", "llama", tokenizer=smollm_tokenizer)
    model = _with_random_factors(get_bara_model(backbone, BaRAConfig(r=4, prior="fixed"), forward_fn=task.scores))
    rows = [dict(r, question="Q?", choices=[c.strip() for c in r["continuations"]]) for r in MC_ROWS]
    batch = task.collate(rows)
    if padded:  # dummy sequences in the slots of missing choices, padded lengths
        batch = task.pad_batch(batch, 16)
    f, jac = lora_jacobians(model, batch)
    ref_f, ref_jac = _autograd_jacobians(model, batch)
    torch.testing.assert_close(f, ref_f)
    assert float(ref_jac.abs().max()) > 1e-3
    torch.testing.assert_close(jac, ref_jac, atol=1e-6, rtol=1e-5)
    assert bool((jac[~torch.isfinite(f)] == 0).all())


def test_token_task_jacobians_equal_autograds():
    task = ToyTokenTask()
    model = _with_random_factors(get_bara_model(tiny_bert(), BaRAConfig(r=4, prior="fixed"), forward_fn=task.scores))
    batch = task.collate(toy_rows(5))
    f, jac = lora_jacobians(model, batch)
    ref_f, ref_jac = _autograd_jacobians(model, batch)
    torch.testing.assert_close(f, ref_f)
    torch.testing.assert_close(jac, ref_jac, atol=1e-6, rtol=1e-5)


def test_gated_or_dropout_adapters_are_declined():
    task = ToyTokenTask()
    batch = task.collate(toy_rows(3))
    for config in (BaRAConfig(r=4), BaRAConfig(r=4, prior="fixed", lora_dropout=0.1)):
        model = get_bara_model(tiny_bert(), config, forward_fn=task.scores).eval()
        assert lora_jacobians(model, batch) is None

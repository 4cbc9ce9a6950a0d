"""The LM head applied only at the scored positions gives the same logits as the full forward pass."""

import torch

from bara_pyro.backbones import tiny_backbone
from bara_pyro.tasks.multiple_choice import _logits_at


def test_logits_at_scored_positions_match_full_logits():
    model = tiny_backbone("causal_lm", "llama").eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 128, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    sequence, position = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 8, 5, 0, 7])
    with torch.no_grad():
        full = model(**inputs).logits[sequence, position]
        fast = _logits_at(model, inputs, sequence, position)
        model.config.final_logit_softcapping = 30.0  # a head the fast path must not assume: full-logit fallback
        fallback = _logits_at(model, inputs, sequence, position)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fallback, full, atol=0, rtol=0)

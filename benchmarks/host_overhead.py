"""Host (CPU) time of one eager training step when the arithmetic is negligible.

A randomly initialised Llama with SmolLM2-135M's depth (30 layers) but hidden size 64, batch 16 x 32
tokens, one CPU thread: what is left is Python, dispatch and autograd bookkeeping, the cost that bounds
an eager step of the small quality-benchmark model on a GPU.  Rows: the frozen backbone's forward and
backward (the floor), LoRA and BaRA (the packaged presets, r = 8 on q_proj/v_proj) through the fused
estimator with AdamW and the gradient clip.  ``python benchmarks/host_overhead.py [lora|bara]`` also
prints a cProfile of ten steps of that method.
"""
import cProfile
import pstats
import sys
import time

import pyro
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.inference.optim import TorchOptimizer
from bara_pyro.methods import load_preset
from bara_pyro.tasks.base import Batch


def backbone():
    """The frozen 30-layer Llama with hidden size 64 (seeded), in training mode."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=30, intermediate_size=128,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=0)
    model = LlamaForSequenceClassification(cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.train()


def scores(bb, b):
    return bb(**b.inputs).logits


def time_it(step, n=20):
    """Milliseconds per call of ``step`` over ``n`` calls, after 3 untimed ones."""
    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n * 1e3


def main(profile_method: str | None = None) -> None:
    torch.set_num_threads(1)
    ids = torch.randint(1, 128, (16, 32))
    mask = torch.ones_like(ids)
    batch = Batch(inputs={"input_ids": ids, "attention_mask": mask}, labels=torch.randint(0, 2, (16,)),
                  token_mask=mask.bool())

    bb = backbone()
    emb = bb.model.embed_tokens.weight
    emb.requires_grad_(True)

    def frozen():
        scores(bb, batch).sum().backward()

    print(f"frozen fwd+bwd (embedding grad): {time_it(frozen):.1f} ms")
    emb.requires_grad_(False)

    for method in ("lora", "bara"):
        pyro.clear_param_store()
        adapter = dict(load_preset(method)["adapter"])
        adapter.update(r=8, alpha=16, target_modules=["q_proj", "v_proj"])
        model = get_bara_model(backbone(), BaRAConfig.from_dict(adapter), forward_fn=scores)
        model.dataset_size = 1000
        model.train()
        opt = TorchOptimizer([{"params": model.trainable_parameters()}], lr=1e-4, weight_decay=0.0, clip_norm=1.0,
                             lr_lambda=lambda s: 1.0)

        def step():
            loss, _ = model.fused_loss(batch)
            loss.backward()
            opt.step()

        print(f"{method}: {time_it(step):.1f} ms")
        if profile_method == method:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(10):
                step()
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)

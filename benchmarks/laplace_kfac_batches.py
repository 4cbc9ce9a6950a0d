"""How Laplace-LoRA's K-FAC input factors depend on the fit's batches: over real tokens (the library's) and over every
padded position (curvlinops' own), fitted in batches of 4, 8 and 32 rows.

A ``tiny-llama`` (random weights, SmolLM2's tokenizer) with the ``laplace_lora`` preset's adapters (B drawn with
standard deviation 0.05), 32 training rows of a task, CPU.  Printed per batch size: the trace of the first adapter's
input factor and the largest relative difference of every input factor from the fit in batches of 32.

    python benchmarks/laplace_kfac_batches.py [TASK]      # default arc_easy
"""

import sys

import torch

import bara_pyro.models.weights_laplace as wl
from bara_pyro import get_bara_model
from bara_pyro.experiment import _adapter_config, build_backbone_and_task, task_likelihood
from bara_pyro.experiment_config import load_config

BATCH_SIZES = (4, 8, 32)


def input_factors(model, task, rows, batch_size: int) -> list[torch.Tensor]:
    model.config.components.weights.fit_batch_size = batch_size
    model.fit_posterior(task, rows, batch_size=batch_size)
    return [getattr(a, f"laplace_{name}_kfac1").clone() for _, a in model.adapter_items for name in wl.FACTORS]


def main(task_name: str = "arc_easy") -> None:
    torch.manual_seed(0)
    config = load_config(method="laplace_lora", overrides=["model=tiny-llama", "tokenizer=smollm2-135m",
                                                           f"dataset={task_name}"])
    backbone, _, task, data = build_backbone_and_task(config)
    model = get_bara_model(backbone, _adapter_config(config, 0), forward_fn=task.scores,
                           likelihood=task_likelihood(task))
    for _, adapter in model.adapter_items:
        torch.nn.init.normal_(adapter.lora_B.weight, std=0.05)
    rows = data["train"].select(range(32))
    counted = wl._fit_set_count
    for label, count in (("real tokens", counted), ("every padded position", lambda *args: None)):
        wl._fit_set_count = count
        try:
            factors = {b: input_factors(model, task, rows, b) for b in BATCH_SIZES}
        finally:
            wl._fit_set_count = counted
        for b in BATCH_SIZES:
            diff = max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(factors[b], factors[32]))
            print(f"{label:<22} batches of {b:>2}: first input factor's trace {float(factors[b][0].trace()):8.3f}, "
                  f"largest relative difference from batches of 32 {diff:.1e}")


if __name__ == "__main__":
    main(*sys.argv[1:])

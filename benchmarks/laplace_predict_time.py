"""Wall time per example of Laplace-LoRA's linearised predictive, each row once against S collated copies.

The packaged SmolLM2-135M-Instruct with the ``laplace_lora`` preset's adapters (B drawn with standard deviation
0.01 so that the Jacobian is not that of a zero update), a K-FAC posterior fitted on 8 training rows, then
``predict`` with ``S`` samples on the first test rows of a task: as ``predict`` runs it (each row through the
backbone once, ``draws_from_one_copy``) and with the ``S`` sample-major copies collated, whose Jacobian is taken
on the first copy after a forward pass of all of them checks that they are copies.  The two give the same draws.

    python benchmarks/laplace_predict_time.py [TASK] [ROWS] [S]      # default arc_easy 3 10; 2 CPU threads
"""
import sys
import time

import pyro
import torch

from bara_pyro import get_bara_model
from bara_pyro.experiment import _adapter_config, build_backbone_and_task, task_likelihood
from bara_pyro.experiment_config import load_config
from bara_pyro.inference import predict


def main(task_name: str = "arc_easy", num_rows: int = 3, num_samples: int = 10) -> None:
    torch.set_num_threads(2)
    config = load_config(method="laplace_lora", overrides=["model=smollm2-135m", f"dataset={task_name}"])
    backbone, _, task, data = build_backbone_and_task(config)
    model = get_bara_model(backbone, _adapter_config(config, 0), forward_fn=task.scores,
                           likelihood=task_likelihood(task))
    torch.manual_seed(0)
    for _, adapter in model.adapter_items:
        torch.nn.init.normal_(adapter.lora_B.weight, std=0.01)
    start = time.perf_counter()
    model.fit_posterior(task, data["train"].select(range(8)), batch_size=4)
    print(f"K-FAC fit on 8 rows: {time.perf_counter() - start:.1f} s")
    rows = data["test"].select(range(num_rows))
    results = {}
    for label, one_copy in (("each row once", True), ("S copies collated", False)):
        if not one_copy:
            model.draws_from_one_copy = lambda s: False
        pyro.set_rng_seed(0)
        start = time.perf_counter()
        results[label] = predict(model, task, rows, num_samples=num_samples, progress=False)
        print(f"{label}: {(time.perf_counter() - start) / num_rows:.2f} s per example "
              f"({task_name}, S = {num_samples}, {num_rows} rows)")
    a, b = (r.sample_probs for r in results.values())
    print(f"largest difference of the sampled probabilities: {float((a - b).abs().max()):.2e}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "arc_easy", int(args[1]) if len(args) > 1 else 3, int(args[2]) if len(args) > 2 else 10)

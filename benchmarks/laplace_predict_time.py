"""Wall time per example of Laplace-LoRA's linearised predictive: the LoRA factors' Jacobians from one backward pass
of a batch per score column against laplace-torch's backend, one example per pass.

The packaged SmolLM2-135M-Instruct with the ``laplace_lora`` preset's adapters (B drawn with standard deviation
0.01 so that the Jacobian is not that of a zero update), a K-FAC posterior fitted on 16 training rows (after an
untimed fit on 4; timed with laplace-torch's own K-FAC step, which runs a second forward pass of each batch for its
loss, and with the library's, which takes the loss from the factors' pass), then
``predict`` with ``S`` samples on the first test rows of a task, batch size ``ROWS``: as ``predict`` runs it
(``lora_jacobians``), and with the Jacobians taken by laplace-torch's backend one example per pass (what it ran
before).  The draws differ (the random numbers fall in another order); the mean and covariance of the
linearised scores of the same rows are printed as their largest relative difference between the two paths.

    python benchmarks/laplace_predict_time.py [TASK] [ROWS] [S] [DEVICE]   # default arc_easy 8 10 cpu (2 threads)
"""
import sys
import time

import pyro
import torch
from laplace.curvature import CurvlinopsGGN

import bara_pyro.models.weights_laplace as wl
from bara_pyro import get_bara_model
from bara_pyro.experiment import _adapter_config, build_backbone_and_task, task_likelihood
from bara_pyro.experiment_config import load_config
from bara_pyro.inference import predict

FIT_ROWS = 16


def main(task_name: str = "arc_easy", num_rows: int = 8, num_samples: int = 10, device: str = "cpu") -> None:
    torch.set_num_threads(2)
    config = load_config(method="laplace_lora", overrides=["model=smollm2-135m", f"dataset={task_name}"])
    backbone, _, task, data = build_backbone_and_task(config)
    model = get_bara_model(backbone.to(device), _adapter_config(config, 0), forward_fn=task.scores,
                           likelihood=task_likelihood(task)).to(device)
    torch.manual_seed(0)
    for _, adapter in model.adapter_items:
        torch.nn.init.normal_(adapter.lora_B.weight, std=0.01)
    model.fit_posterior(task, data["train"].select(range(4)), batch_size=4)  # untimed: first-use costs
    backend = wl._chunked_jacobian_backend()
    own_kron = backend.kron
    for label, kron in (("the loss from the factors' forward pass", own_kron),
                        ("laplace-torch's, a second forward pass per batch for its loss", CurvlinopsGGN.kron)):
        backend.kron = kron
        start = time.perf_counter()
        model.fit_posterior(task, data["train"].select(range(FIT_ROWS)), batch_size=4)
        print(f"K-FAC fit on {FIT_ROWS} rows in batches of 4, {label}: {time.perf_counter() - start:.1f} s")
    backend.kron = own_kron
    rows = data["test"].select(range(num_rows))
    family = model.config.components.weights
    la = wl.laplace_of(family, model)
    batched = wl._glm(la, task.collate(list(rows)).to(device))
    for label in ("lora_jacobians, the batch per pass", "laplace-torch's backend, one example per pass"):
        if label.startswith("laplace-torch"):
            wl.lora_jacobians = lambda model, batch: None
            family.prediction_rows = lambda num_samples: 1
        pyro.set_rng_seed(0)
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        predict(model, task, rows, num_samples=num_samples, batch_size=num_rows, progress=False)
        if device != "cpu":
            torch.cuda.synchronize()
        print(f"{label}: {(time.perf_counter() - start) / num_rows:.3f} s per example "
              f"({task_name}, S = {num_samples}, {num_rows} rows, {device})")
    one_by_one = [wl._glm(la, task.collate([row]).to(device)) for row in rows]
    for k, name in enumerate(("mean", "covariance")):
        a, b = batched[k].nan_to_num(neginf=0.0), torch.cat([m[k] for m in one_by_one]).nan_to_num(neginf=0.0)
        print(f"{name} of the linearised scores, largest relative difference: "
              f"{float((a - b).abs().max() / b.abs().max()):.1e}")

if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "arc_easy", int(args[1]) if len(args) > 1 else 8,
         int(args[2]) if len(args) > 2 else 10, args[3] if len(args) > 3 else "cpu")

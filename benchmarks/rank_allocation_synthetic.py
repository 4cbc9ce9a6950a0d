"""Does a BaRA configuration's rank follow the data?  Synthetic regression through one linear layer,
``y = W0 x + dW x + noise`` with ``dW`` of true rank ``k`` (:func:`bara_pyro.synthetic.low_rank_update`); A, B
and the gates are learned from LoRA's initialisation.  Prints, per method and ``k``, the joint effective rank
``sum_k E[z]``, the posterior-mean inclusion probabilities, the row norms of the fitted A and the size of each
component's mean update ``|B_k| |A_k|`` (with a family's magnitudes folded into B, e.g. ``singular_slab``'s), and
the singular values of the least-squares estimate of ``dW`` from the same rows: beyond the true rank they are the
noise's, the size a point-estimated direction can fit.  Below the table: the log-likelihood gain of each further
rank-1 component of the reduced-rank least-squares fit, what fitting one more direction is worth to the likelihood.

    python benchmarks/rank_allocation_synthetic.py [--steps 4000] [--ranks 2 6] [--methods bara bara_slab]
        [--set prior.sparsity.context=thin ...]      # overrides of the presets' adapter section
"""

from __future__ import annotations

import argparse
import copy

import torch

from bara_pyro import BaRAConfig, get_bara_model
from bara_pyro.experiment_config import parse_override
from bara_pyro.export import mean_lora_weights
from bara_pyro.inference import TrainConfig, fit, predict
from bara_pyro.methods import load_preset
from bara_pyro.models import GaussianLikelihood
from bara_pyro.synthetic import RegressionTask, low_rank_update

NOISE, LR, R = 0.3, 0.05, 8


def _override(adapter: dict, assignments: list[str]) -> dict:
    """``adapter`` with each ``dotted.key=value`` set, values read as ``--set`` reads them."""
    adapter = copy.deepcopy(adapter)
    for item in assignments:
        (*parents, leaf), value = parse_override(item)
        node = adapter
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return adapter


def _least_squares(k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``X`` ``(n, d)`` of :func:`low_rank_update`'s rows and the least-squares ``dW^T`` ``(d, d)`` fitted to
    their targets minus the frozen layer's output."""
    data = low_rank_update(k, noise=NOISE, seed=seed)
    x = torch.stack([r["x"] for r in data.rows])
    with torch.no_grad():
        residual = torch.stack([r["y"] for r in data.rows]) - data.backbone.proj(x)
    return x, torch.linalg.lstsq(x, residual).solution


def least_squares_spectrum(k: int, seed: int = 0) -> list[float]:
    """Singular values of the least-squares ``dW`` from :func:`low_rank_update`'s rows, largest first."""
    return torch.linalg.svdvals(_least_squares(k, seed)[1]).tolist()


def rank_one_gains(k: int, seed: int = 0) -> list[float]:
    """Log-likelihood gain (nats, the noise's scale known) of each successive rank-1 component of the reduced-rank
    least-squares fit of the update: ``s_j^2 / (2 noise^2)`` with ``s_j`` the singular values of the fitted values
    ``X dW_hat^T`` ``(n, d)``, largest first; beyond the true rank, the gain of fitting the noise."""
    x, solution = _least_squares(k, seed)
    return (torch.linalg.svdvals(x @ solution) ** 2 / (2 * NOISE**2)).tolist()


def run(method: str, k: int, steps: int, seed: int = 0, overrides: list[str] = ()) -> dict:
    """Train ``method``'s adapter (its preset's adapter and estimator settings, with ``overrides`` of the
    adapter section) on a rank-``k`` update."""
    preset = load_preset(method)
    preset["adapter"] = _override(preset["adapter"], list(overrides))
    data = low_rank_update(k, noise=NOISE, seed=seed)
    task = RegressionTask()
    config = BaRAConfig.from_dict({**preset["adapter"], "r": R, "alpha": R, "target_modules": ["proj"]})
    model = get_bara_model(data.backbone, config, forward_fn=task.scores, likelihood=GaussianLikelihood(NOISE))
    train = TrainConfig.from_dict({**preset.get("train", {}), "steps": steps, "batch_size": 64, "lr": LR,
                                   "warmup_ratio": 0.0, "checkpoint_every": 0, "seed": seed})
    fit(model, task, data.rows, train, progress=False)
    rank = predict(model, task, data.rows, num_samples=0, progress=False).effective_rank["joint"]
    (_, adapter), = model.adapter_items
    gate = adapter.gate
    pi = gate.sparsity.inclusion_probs(gate.sparsity_hp, {n: gate.guide_global(n).mean for n in gate.sites})
    norms = adapter.lora_A.weight.detach().norm(dim=1)
    a, b = mean_lora_weights(adapter)
    sizes = b.norm(dim=0) * a.norm(dim=1)
    return {"rank": rank, "pi": pi.detach().tolist(), "A row norms": norms.tolist(), "sizes": sizes.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--methods", nargs="+", default=["bara", "bara_slab"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override of the presets' adapter section, e.g. prior.sparsity.context=thin")
    args = parser.parse_args()
    print(f"noise {NOISE}, lr {LR}, {args.steps} steps, r = {R}" + (f", {' '.join(args.set)}" if args.set else "")
          + "\n")
    print("| method | true rank | effective rank | E[pi] | A row norms | \\|B_k\\| \\|A_k\\| "
          "| least-squares spectrum |")
    print("|---|---|---|---|---|---|---|")
    for method in args.methods:
        for k in args.ranks:
            out = run(method, k, args.steps, overrides=args.set)
            pi = " ".join(f"{v:.2f}" for v in out["pi"])
            norms = " ".join(f"{v:.2f}" for v in out["A row norms"])
            sizes = " ".join(f"{v:.2f}" for v in out["sizes"])
            spectrum = " ".join(f"{v:.2f}" for v in least_squares_spectrum(k)[:R])
            print(f"| {method} | {k} | {out['rank']:.2f} | {pi} | {norms} | {sizes} | {spectrum} |", flush=True)
    print("\nlog-likelihood gain (nats) of each further rank-1 component of the least-squares fit:")
    for k in args.ranks:
        gains = rank_one_gains(k)[:R]
        print(f"  true rank {k}: " + " ".join(f"{g:.1f}" for g in gains[:k]) + " | "
              + " ".join(f"{g:.1f}" for g in gains[k:]))


if __name__ == "__main__":
    main()

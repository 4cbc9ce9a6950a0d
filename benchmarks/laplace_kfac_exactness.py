"""How close Laplace-LoRA's K-FAC curvature ("expand" and "reduce") comes to the exact Gauss-Newton matrix, measured
where it matters: the variance of the linearised predictive on held-out examples.

For a trained ``laplace_lora`` run, a few of its weight matrices (``lora_A`` and ``lora_B`` of the adapters of the
chosen layers) are taken one at a time, as K-FAC does (a block-diagonal posterior).  For each block ``b``:

* exact: ``G_b = sum_n J_nb^T Lambda_n J_nb`` over the fit rows, ``J_nb`` the Jacobian of example ``n``'s scores
  in the block (``lora_jacobians``), ``Lambda_n = diag(p_n) - p_n p_n^T`` the softmax cross-entropy's Hessian;
* K-FAC: ``G_b ~ kfac0 (x) kfac1`` as ``fit_posterior`` stores it, with ``kfac_approx`` "expand" and "reduce".

Printed: over the test rows, the summed predictive variance of the scores ``sum_n tr(J_nb (G_b + delta I)^-1
J_nb^T)`` per block and in total, for the exact curvature and for each approximation, at the run's fitted prior
precision ``delta`` (or ``--prior-precision``).  A ratio above 1 means the approximation's predictive is wider
than the exact block-diagonal one (under-confident).

    python benchmarks/laplace_kfac_exactness.py RUN_DIR [--layers 0,10,20,29] [--fit-rows 400] [--test-rows 100]
                                                        [--device cuda]
"""

import argparse

import torch

from bara_pyro.experiment import _subset, build_backbone_and_task, load_members, load_run_config
from bara_pyro.models.lora_jacobians import lora_jacobians
from bara_pyro.models.weights_laplace import FACTORS


def blocks_of(model, layers: list[int]) -> list[tuple[str, str, int, torch.Size]]:
    """``(adapter path, factor, offset in J's last dim, weight shape)`` of the chosen layers' factors."""
    out, offset = [], 0
    for path, adapter in model.adapter_items:
        for name in FACTORS:
            weight = getattr(adapter, name).weight
            if any(f".{layer}." in f".{path}." for layer in layers):
                out.append((path, name, offset, weight.shape))
            offset += weight.numel()
    return out


def batches(task, rows, size: int, model):
    device = next(model.backbone.parameters()).device
    for start in range(0, len(rows), size):
        yield task.collate([rows[i] for i in range(start, min(start + size, len(rows)))]).to(device)


@torch.no_grad()
def exact_blocks(model, task, rows, blocks, size: int) -> list[torch.Tensor]:
    grams = [torch.zeros(s.numel(), s.numel(), dtype=torch.float64) for *_, s in blocks]
    for batch in batches(task, rows, size, model):
        f, jac = (t.cpu() for t in lora_jacobians(model, batch))
        p = torch.softmax(f.float(), dim=-1)
        hess = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # (B, C, C)
        for gram, (_, _, offset, shape) in zip(grams, blocks):
            jb = jac[:, :, offset:offset + shape.numel()].double()
            gram += torch.einsum("bcp,bcd,bdq->pq", jb, hess.double(), jb)
    return grams


@torch.no_grad()
def predictive_variance(model, task, rows, blocks, precisions, size: int) -> list[float]:
    """``sum_n tr(J_nb P_b^-1 J_nb^T)`` for every block ``b`` with posterior precision ``P_b``."""
    chols = [torch.linalg.cholesky(p) for p in precisions]
    totals = [0.0] * len(blocks)
    for batch in batches(task, rows, size, model):
        jac = lora_jacobians(model, batch)[1].cpu()
        for k, (chol, (_, _, offset, shape)) in enumerate(zip(chols, blocks)):
            jb = jac[:, :, offset:offset + shape.numel()].double().reshape(-1, shape.numel())
            solved = torch.linalg.solve_triangular(chol, jb.T, upper=False)  # L^-1 J^T
            totals[k] += float((solved ** 2).sum())
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--layers", default="0,10,20,29")
    parser.add_argument("--fit-rows", type=int, default=400)
    parser.add_argument("--test-rows", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prior-precision", type=float, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = load_run_config(args.run_dir)
    config["train"]["device"] = args.device
    backbone, _, task, data = build_backbone_and_task(config)
    (model,) = load_members(args.run_dir, config, backbone.to(args.device), task)
    model.eval()
    fit_rows = _subset(data["train"], args.fit_rows)
    test_rows = _subset(data["test"], args.test_rows)
    blocks = blocks_of(model, [int(x) for x in args.layers.split(",")])
    delta = args.prior_precision or float(model.adapter_items[0][1].laplace_state[0])
    print(f"{len(blocks)} blocks, {len(fit_rows)} fit rows, {len(test_rows)} test rows, prior precision {delta:.4g}")

    precisions = {"exact": [g + delta * torch.eye(g.shape[0], dtype=g.dtype)
                            for g in exact_blocks(model, task, fit_rows, blocks, args.batch_size)]}
    family = model.config.components.weights
    state = {name: buf.clone() for name, buf in model.named_buffers() if "laplace_" in name}
    fitted = family.kfac_approx, family.optimize_prior_precision
    for approx in ("expand", "reduce"):
        family.kfac_approx, family.optimize_prior_precision = approx, False
        model.fit_posterior(task, fit_rows, batch_size=args.batch_size)
        adapters = dict(model.adapter_items)
        precisions[approx] = [
            torch.kron(getattr(adapters[path], f"laplace_{name}_kfac0").double().cpu(),
                       getattr(adapters[path], f"laplace_{name}_kfac1").double().cpu())
            + delta * torch.eye(shape.numel(), dtype=torch.float64)
            for path, name, _, shape in blocks]
        family.kfac_approx, family.optimize_prior_precision = fitted
    for name, buf in model.named_buffers():
        if name in state:
            buf.copy_(state[name])

    variances = {k: predictive_variance(model, task, test_rows, blocks, p, args.batch_size)
                 for k, p in precisions.items()}
    print(f"{'block':<48} {'exact':>10} {'expand/exact':>13} {'reduce/exact':>13}")
    for k, (path, name, _, _) in enumerate(blocks):
        exact = variances["exact"][k]
        print(f"{path + ' ' + name:<48} {exact:10.4g} {variances['expand'][k] / exact:13.3f} "
              f"{variances['reduce'][k] / exact:13.3f}")
    total = {k: sum(v) for k, v in variances.items()}
    print(f"{'all blocks':<48} {total['exact']:10.4g} {total['expand'] / total['exact']:13.3f} "
          f"{total['reduce'] / total['exact']:13.3f}")


if __name__ == "__main__":
    main()

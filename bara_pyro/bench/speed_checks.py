"""Correctness and launch tuning of the fused gate kernels on the benchmark's device: every implementation against
the torch reference (values and gradients), and the library's fused loss with each."""

from __future__ import annotations

import statistics

import torch

from ..models import BaRAConfig, get_bara_model
from .speed_setup import SpeedConfig, adapter_config, build_backbone, cloze_forward, make_batch
from .speed_timing import capture_step, time_steps

__all__ = ["check_gate_impls", "tune_triton"]


def check_gate_impls(device, impls: list[str]) -> dict:
    """Max relative error of each gate implementation against the torch reference (values and gradients)."""
    from ..models import fused_kernels as fk

    results = {}
    g = torch.Generator(device="cpu").manual_seed(0)
    r, hidden, n_seq, t = 16, 32, 8, 256

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g) * s).to(device)

    for dtype in (torch.float32, torch.bfloat16):
        h = rnd(n_seq, t, r, s=2.0).to(dtype).requires_grad_()
        w = [rnd(hidden, r, s=0.5), rnd(hidden, s=0.1), rnd(3 * r, hidden, s=0.3), rnd(3 * r, s=0.5)]
        w = [x.requires_grad_() for x in w]
        pi = (torch.rand(r, generator=g) * 0.9 + 0.05).to(device).requires_grad_()
        lam = (torch.rand(r, generator=g) + 0.5).to(device).requires_grad_()
        a = torch.tensor(4.0, device=device)
        mask = (torch.rand(n_seq, t, generator=g) > 0.2).to(device)
        u = torch.rand(2, n_seq, t, r, generator=g).to(device)
        gy = rnd(n_seq, t, r).to(dtype)
        ref = None
        for impl in ["torch", *[i for i in impls if i != "torch"]]:
            try:
                pi_view = torch.stack([pi, 1 - pi], -1)[..., 0]  # strided, as the library's Beta draw arrives
                y, kl = fk.bara_gated_local(h, *w, pi_view, lam, a, 0.67, mask=mask, u=u, impl=impl)
                loss = (y.float() * gy.float()).sum() + 0.3 * kl
                grads = torch.autograd.grad(loss, [h, *w, pi, lam])
                with torch.no_grad():
                    mean = fk.bara_gated_mean(h, *w, impl=impl)
                vals = [y.detach(), kl.detach(), mean, *grads]
            except Exception as exc:  # noqa: BLE001  (report, do not stop the benchmark)
                results[f"{impl}/{str(dtype)[6:]}"] = {"error": repr(exc)}
                continue
            if ref is None:
                ref = vals
                continue
            names = ["y", "kl", "mean_gate", "d_h", "d_w1", "d_b1", "d_w2", "d_b2", "d_pi", "d_lambda"]
            results[f"{impl}/{str(dtype)[6:]}"] = {
                n: float((v.float() - rv.float()).norm() / rv.float().norm().clamp_min(1e-30))
                for n, v, rv in zip(names, vals, ref)}
    for impl in [i for i in impls if i != "torch"]:
        for name, check in (("library-fused-loss", _check_library_path),
                            ("library-fused-loss/bara_singular", _check_library_path_singular)):
            try:
                results[f"{name}/{impl}"] = check(device, impl)
            except Exception as exc:  # noqa: BLE001
                results[f"{name}/{impl}"] = {"error": repr(exc)}
    results.update(_check_contextual(device, impls))
    return results


def _check_contextual(device, impls: list[str]) -> dict:
    """Max relative error of each implementation of the contextual gate (``fused_contextual``) against torch."""
    from ..models import fused_contextual as fc

    results = {}
    g = torch.Generator(device="cpu").manual_seed(0)
    r, n_seq, t = 8, 8, 256
    for dtype in (torch.float32, torch.bfloat16):
        h = (torch.randn(n_seq, t, r, generator=g) * 2).to(device, dtype).requires_grad_()
        pi = (torch.rand(r, generator=g) * 0.9 + 0.05).to(device).requires_grad_()
        w = torch.randn(r, r, generator=g).to(device).requires_grad_()
        scale = torch.randn(r, generator=g).to(device).requires_grad_()
        u = torch.rand(n_seq, t, r, generator=g).to(device)
        gy = torch.randn(n_seq, t, r, generator=g).to(device, dtype)
        ref = None
        for impl in ["torch", *[i for i in impls if i != "torch"]]:
            try:
                y = fc.contextual_gated_local(h, pi, w, 0.67, scale=scale, u=u, impl=impl)
                vals = [y.detach(), *torch.autograd.grad((y.float() * gy.float()).sum(), [h, pi, w, scale])]
            except Exception as exc:  # noqa: BLE001
                results[f"contextual/{impl}/{str(dtype)[6:]}"] = {"error": repr(exc)}
                continue
            if ref is None:
                ref = vals
                continue
            results[f"contextual/{impl}/{str(dtype)[6:]}"] = {
                n: float((v.float() - rv.float()).norm() / rv.float().norm().clamp_min(1e-30))
                for n, v, rv in zip(["y", "d_h", "d_pi", "d_w", "d_scale"], vals, ref)}
    return results


def tune_triton(device, configs=((32, 4), (16, 4), (16, 2), (32, 8)), calls: int = 60) -> dict:
    """Time the Triton gate kernels alone (one adapter of the benchmark's shape, ``calls`` back-to-back calls in
    a CUDA graph) for each ``(BLOCK_TOKENS, NUM_WARPS)``; sets the fastest training configuration and returns
    ``{config: {"train_us": fwd+bwd per call, "mean_us": posterior-mean forward per call}, "best": ...}``."""
    from ..models import fused_kernels as fk

    g = torch.Generator(device="cpu").manual_seed(0)
    r, hidden, n_seq, t = 16, 32, 8, 256
    h = (torch.randn(n_seq, t, r, generator=g) * 2).to(device, torch.bfloat16).requires_grad_()
    w = [(torch.randn(*s_, generator=g) * 0.3).to(device).requires_grad_()
         for s_ in ((hidden, r), (hidden,), (3 * r, hidden), (3 * r,))]
    pi = (torch.rand(r, generator=g) * 0.9 + 0.05).to(device).requires_grad_()
    lam = (torch.rand(r, generator=g) + 0.5).to(device).requires_grad_()
    a = torch.tensor(4.0, device=device)
    mask = torch.ones(n_seq, t, dtype=torch.bool, device=device)
    gy = torch.randn(n_seq, t, r, generator=g).to(device, torch.bfloat16)
    one = torch.ones((), device=device)
    inputs = [h, *w, pi, lam]

    def train():
        y, kl = fk.bara_gated_local(h, *w, pi, lam, a, 0.67, mask=mask, impl="triton")
        torch.autograd.grad([y, kl], inputs, [gy, one])

    @torch.no_grad()
    def mean():
        fk.bara_gated_mean(h, *w, impl="triton")

    def per_call_us(fn):
        graph = capture_step(lambda: [fn() for _ in range(calls)], 1, device)
        times = time_steps(graph.replay, 5, device)
        return 1e3 * statistics.median(times) / calls

    old = fk.BLOCK_TOKENS, fk.NUM_WARPS
    out = {}
    for bt, nw in configs:
        fk.BLOCK_TOKENS, fk.NUM_WARPS = bt, nw
        try:
            out[f"{bt}x{nw}"] = {"block_tokens": bt, "num_warps": nw, "train_us": per_call_us(train),
                                 "mean_us": per_call_us(mean)}
        except Exception as exc:  # noqa: BLE001
            out[f"{bt}x{nw}"] = {"error": repr(exc)[:300]}
    ok = {k: v for k, v in out.items() if "train_us" in v}
    if ok:
        best = min(ok, key=lambda k: ok[k]["train_us"] + ok[k]["mean_us"])
        fk.BLOCK_TOKENS, fk.NUM_WARPS = ok[best]["block_tokens"], ok[best]["num_warps"]
        out["best"] = best
    else:
        fk.BLOCK_TOKENS, fk.NUM_WARPS = old
    return out


def _check_library_path_singular(device, impl: str) -> dict:
    """:func:`_check_library_path` with the ``bara_singular`` preset (its contextual gate)."""
    config = adapter_config(SpeedConfig(r=8, alpha=16.0, targets=("q_proj", "v_proj")), "bara_singular")
    return _check_library_path(device, impl, config)


def _check_library_path(device, impl: str, config: BaRAConfig | None = None) -> dict:
    """``BaRAModel.fused_loss`` on a tiny fp32 Llama: loss and gradients with ``impl`` vs the torch gate path."""
    cfg = SpeedConfig(examples=2, seq_len=32, cont_len=8)
    backbone = build_backbone("tiny", device, torch.float32, seed=0)
    batch = make_batch(cfg, backbone.config.vocab_size, device)
    config = config or BaRAConfig(r=16, alpha=32.0, target_modules=["q_proj", "v_proj"])
    model = get_bara_model(backbone, config, forward_fn=cloze_forward)
    try:
        model.dataset_size = 100
        with torch.no_grad():
            for _, adapter in model.adapter_items:
                adapter.lora_B.weight.normal_(0, 0.05)
        params = model.trainable_parameters()
        outs = {}
        for which in ("torch", impl):
            model.ctx.gate_impl = which
            torch.manual_seed(123)
            loss, _ = model.fused_loss(batch)
            outs[which] = [loss.detach(), *torch.autograd.grad(loss, params, allow_unused=True)]
        pairs = [(a, b) for a, b in zip(outs[impl], outs["torch"]) if a is not None and b is not None]
        return {"loss": float((pairs[0][0] - pairs[0][1]).abs() / pairs[0][1].abs()),
                "grads_max_rel": max(float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in pairs[1:])}
    finally:
        model.remove_hooks()

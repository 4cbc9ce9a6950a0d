"""Wall time of one evaluation pass of the cloze tasks in three layouts: rows in the data's order, rows batched
longest first (``predict``'s ``by_length``), and longest first with each example's choices packed in one row, their
shared prefix once (``pack_choices``; both are the defaults), on the packaged SmolLM2-135M-Instruct with a method
preset's adapters (or random weights of its shapes, ``--model random-smollm2-135m``).

The adapters are freshly initialised (B drawn with standard deviation 0.01 so that the update is not zero): the time
of a pass does not depend on trained values.  Each pass runs the whole split at the given batch size, once on two
batches untimed (kernel selection, caches) and then ``REPEATS`` times, timed with a device sync; the table gives the
fastest.  At ``S = 0`` the three layouts give the same probabilities: the largest absolute difference from the data
order's is printed as a check.

    python benchmarks/eval_length_order_time.py [--methods lora bara_singular] [--datasets arc_challenge ...]
        [--split test] [--batch-size 32] [--samples 0 10] [--repeats 2] [--device cuda]
"""
from __future__ import annotations

import argparse
import time

import torch

from bara_pyro import get_bara_model
from bara_pyro.experiment import _adapter_config, build_backbone_and_task, task_likelihood
from bara_pyro.experiment_config import load_config
from bara_pyro.inference import predict

LAYOUTS = {"data order": {"by_length": False, "pack_choices": False},
           "by length": {"by_length": True, "pack_choices": False},
           "by length, packed": {"by_length": True, "pack_choices": True}}


def timed_pass(model, task, rows, num_samples: int, batch_size: int, device: str, **layout):
    """(seconds, Prediction) of one ``predict`` call, synchronised on CUDA."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    pred = predict(model, task, rows, num_samples=num_samples, batch_size=batch_size, progress=False, **layout)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, pred


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["lora", "bara_singular"])
    p.add_argument("--datasets", nargs="+", default=["winogrande_s", "arc_challenge", "openbookqa"])
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--samples", nargs="+", type=int, default=[0, 10])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m, or random-smollm2-135m (random weights of its shapes: the same times)")
    p.add_argument("--tokenizer", default=None, help="the tokenizer's folder for random-smollm2-135m")
    args = p.parse_args()
    print(f"device: {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}, torch "
          f"{torch.__version__}, model {args.model}, split {args.split}, batch {args.batch_size} examples, "
          f"fastest of {args.repeats}")
    names = list(LAYOUTS)
    print(f"| method | dataset | examples | S | {' (s) | '.join(names)} (s) | data order / packed | "
          "max abs diff (S = 0) |")
    print("|---|---|---|---|" + "---|" * len(names) + "---|---|")
    for method in args.methods:
        for name in args.datasets:
            overrides = [f"model={args.model}", f"dataset={name}", "task.scoring=cloze"]
            config = load_config(method=method, overrides=overrides + (
                [f"tokenizer={args.tokenizer}"] if args.tokenizer else []))
            backbone, _, task, data = build_backbone_and_task(config)
            torch.manual_seed(0)
            model = get_bara_model(backbone.to(args.device), _adapter_config(config, 0), forward_fn=task.scores,
                                   likelihood=task_likelihood(task)).to(args.device)
            for _, adapter in model.adapter_items:
                torch.nn.init.normal_(adapter.lora_B.weight, std=0.01)
            rows = list(data[args.split])[:args.max_examples]
            for s in args.samples:
                times, probs = {}, {}
                for layout, options in LAYOUTS.items():
                    timed_pass(model, task, rows[:2 * args.batch_size], s, args.batch_size, args.device, **options)
                    runs = [timed_pass(model, task, rows, s, args.batch_size, args.device, **options)
                            for _ in range(args.repeats)]
                    times[layout] = min(t for t, _ in runs)
                    probs[layout] = runs[0][1].probs
                diff = (f"{max((probs[k] - probs[names[0]]).abs().max().item() for k in names):.1e}" if s == 0
                        else "-")
                cells = " | ".join(f"{times[k]:.2f}" for k in names)
                print(f"| {method} | {name} | {len(rows)} | {s} | {cells} | {times[names[0]] / times[names[-1]]:.2f} "
                      f"| {diff} |", flush=True)
            del model, backbone
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

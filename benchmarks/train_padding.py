"""Tokens a training step feeds the backbone per example on the cloze tasks, unpacked and packed (pack_choices):
``fit()``'s batches (the seeded data order, ``train.batch_size`` examples) as the captured step pads them
(``task.pad_batch``: lengths to a multiple of ``train.pad_multiple``, the sequences to a multiple of 8 with
one-token dummies in missing choices' slots), the same batches unpadded, and each example's choices packed in one
row, the prefix they share once (``task.pack_padded``, what ``train.pack_choices`` trains on), padded to the same
multiple or not at all; and the batch shapes each captured setting meets (a CUDA graph each).  Token counts, not
times: no model weights are loaded (the packaged SmolLM2 tokenizer only).

    python benchmarks/train_padding.py [--datasets winogrande_s arc_challenge arc_easy winogrande_m openbookqa boolq]
        [--steps 1000] [--batch-size 4] [--pad-multiple 64] [--seed 1]
"""

from __future__ import annotations

import argparse

from transformers import AutoTokenizer

from bara_pyro.assets import resolve_model
from bara_pyro.data.registry import load_task_dataset
from bara_pyro.inference.graphed_step import batch_signature
from bara_pyro.inference.trainer import DataOrder
from bara_pyro.tasks import MultipleChoiceTask


def token_counts(task: MultipleChoiceTask, rows: list[dict], steps: int, batch_size: int, multiple: int,
                 seed: int) -> dict[str, float]:
    """Per training example over ``steps`` batches: ``captured`` (``pad_batch``'s ids), ``unpadded`` (the batch's
    sequences, each padded to the batch's longest), ``packed`` (``pack_padded``'s rows, their width a multiple of
    ``multiple``) and ``packed_unpadded`` (the packed rows, padded to the batch's longest packed row); and the
    number of distinct batch shapes, ``captured_shapes`` and ``packed_shapes``."""
    order = DataOrder(len(rows), batch_size, seed)
    totals = dict.fromkeys(("captured", "unpadded", "packed", "packed_unpadded"), 0)
    shapes: dict[str, set] = {"captured_shapes": set(), "packed_shapes": set()}
    for step in range(steps):
        batch = task.collate([rows[i] for i in order.indices(step)])
        captured, packed = task.pad_batch(batch, multiple), task.pack_padded(batch, multiple)
        totals["captured"] += captured.inputs["input_ids"].numel()
        totals["unpadded"] += batch.inputs["input_ids"].numel()
        totals["packed_unpadded"] += task.pack(batch).inputs["input_ids"].numel()
        totals["packed"] += packed.inputs["input_ids"].numel()
        shapes["captured_shapes"].add(batch_signature(captured))
        shapes["packed_shapes"].add(batch_signature(packed))
    return {**{key: value / (steps * batch_size) for key, value in totals.items()},
            **{key: len(value) for key, value in shapes.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+",
                   default=["winogrande_s", "arc_challenge", "arc_easy", "winogrande_m", "openbookqa", "boolq"])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--pad-multiple", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    task = MultipleChoiceTask(tokenizer, scoring="cloze")
    print(f"tokens per training example, {args.steps} steps of {args.batch_size} examples, seed {args.seed}, "
          f"lengths padded to multiples of {args.pad_multiple}")
    print("| dataset | captured step (pad_batch) | unpadded | packed, padded | packed, unpadded | "
          "captured / packed, padded | batch shapes, captured / packed |")
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets:
        rows = list(load_task_dataset(name)["train"])
        c = token_counts(task, rows, args.steps, args.batch_size, args.pad_multiple, args.seed)
        print(f"| {name} | {c['captured']:.0f} | {c['unpadded']:.0f} | {c['packed']:.0f} | "
              f"{c['packed_unpadded']:.0f} | {c['captured'] / c['packed']:.2f} | "
              f"{c['captured_shapes']} / {c['packed_shapes']} |")


if __name__ == "__main__":
    main()

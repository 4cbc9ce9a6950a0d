"""Tokens an evaluation pass feeds the backbone per example on the cloze tasks, against the tokens it must score:
batches in the data's order, batches of similar length (``predict``'s ``by_length``), each example's choices packed
in one row, the prefix they share once, in batches of similar packed length (``pack_choices``; both are the
defaults), and packing without padding (the bound).  Token counts, not times: no model weights are loaded (the
packaged SmolLM2 tokenizer only).

    python benchmarks/eval_padding.py [--datasets winogrande_s arc_challenge arc_easy openbookqa boolq]
        [--split test] [--batch-size 32]
"""

from __future__ import annotations

import argparse

from transformers import AutoTokenizer

from bara_pyro.assets import resolve_model
from bara_pyro.data.registry import load_task_dataset
from bara_pyro.inference.predictive import length_order
from bara_pyro.tasks import MultipleChoiceTask


def token_counts(task: MultipleChoiceTask, rows: list[dict], batch_size: int) -> dict[str, float]:
    """Per example: ``real`` tokens (every choice sequence unpadded), ``data_order``, ``by_length`` and
    ``packed`` (padded batches of ``batch_size`` examples) and ``packed_prefix`` (the shared prefix once, each
    choice's rest, unpadded)."""

    def padded(order, pack=False):
        batches = (task.collate([rows[i] for i in order[k:k + batch_size]]) for k in range(0, len(order), batch_size))
        return sum((task.pack(b) if pack else b).inputs["input_ids"].numel() for b in batches)

    real = sum(int(task.collate([row]).token_mask.sum()) for row in rows)
    packed = sum(task.row_lengths(rows, packed=True))
    n = len(rows)
    return {"real": real / n, "data_order": padded(list(range(n))) / n,
            "by_length": padded(length_order(task, rows)) / n,
            "packed": padded(length_order(task, rows, packed=True), pack=True) / n, "packed_prefix": packed / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+",
                   default=["winogrande_s", "arc_challenge", "arc_easy", "openbookqa", "boolq"])
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    task = MultipleChoiceTask(tokenizer, scoring="cloze")
    print(f"tokens per example, {args.split} split, batches of {args.batch_size} examples")
    print("| dataset | examples | real | data order | by length | by length, packed | packed, no padding (bound) | "
          "data order / by length | data order / packed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.datasets:
        rows = list(load_task_dataset(name)[args.split])
        c = token_counts(task, rows, args.batch_size)
        print(f"| {name} | {len(rows)} | {c['real']:.0f} | {c['data_order']:.0f} | {c['by_length']:.0f} | "
              f"{c['packed']:.0f} | {c['packed_prefix']:.0f} | {c['data_order'] / c['by_length']:.2f} | "
              f"{c['data_order'] / c['packed']:.2f} |")


if __name__ == "__main__":
    main()

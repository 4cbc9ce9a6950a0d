"""How many batch shapes a captured training run meets: the distinct padded batches (``train.graphs``) of the first
``--steps`` batches of each dataset, in the trainer's data order.  Each new shape costs ``fit()`` an eager step and
a capture.  No model weights are loaded (the packaged SmolLM2 tokenizer only).

    python benchmarks/batch_shapes.py [--datasets arc_easy arc_challenge openbookqa winogrande_s boolq]
        [--steps 1000] [--batch-size 8] [--pad-multiple 64] [--scored-floor 4]

``--scored-floor``: the cloze task's scored tokens are padded to at least this many ``pad_multiple``s
(``bara_pyro.tasks.multiple_choice.SCORED_TOKENS_FLOOR``; 1 gives the padding to a power of two of at least one).
"""

from __future__ import annotations

import argparse
import collections

from bara_pyro.experiment import _subset, build_backbone_and_task
from bara_pyro.experiment_config import load_config
from bara_pyro.inference.graphed_step import batch_signature
from bara_pyro.inference.trainer import DataOrder
from bara_pyro.tasks import multiple_choice


def shape_counts(dataset: str, steps: int, batch_size: int, pad_multiple: int, seed: int = 0) -> list[int]:
    """How often each distinct padded batch occurs in the first ``steps`` batches, most frequent first."""
    config = load_config(None, method="lora", overrides=["model=tiny-llama", f"dataset={dataset}",
                                                          f"train.batch_size={batch_size}"])
    _, _, task, data = build_backbone_and_task(config)
    rows = _subset(data["train"], config["data"]["max_train_examples"])
    order = DataOrder(len(rows), batch_size, seed)
    counts = collections.Counter()
    for step in range(steps):
        batch = task.collate([rows[i] for i in order.indices(step)])
        counts[batch_signature(task.pad_batch(batch, pad_multiple))] += 1
    return sorted(counts.values(), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+",
                        default=["arc_easy", "arc_challenge", "openbookqa", "winogrande_s", "boolq"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pad-multiple", type=int, default=64)
    parser.add_argument("--scored-floor", type=int, default=multiple_choice.SCORED_TOKENS_FLOOR)
    args = parser.parse_args()
    multiple_choice.SCORED_TOKENS_FLOOR = args.scored_floor
    print(f"| dataset | batch shapes in {args.steps} steps | steps per shape |\n|---|---:|---|")
    for name in args.datasets:
        counts = shape_counts(name, args.steps, args.batch_size, args.pad_multiple)
        print(f"| {name} | {len(counts)} | {', '.join(map(str, counts))} |")


if __name__ == "__main__":
    main()

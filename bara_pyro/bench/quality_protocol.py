"""The quality benchmark's protocol: tasks, methods, seeds, budget, the overrides every run gets, the peft anchor
and BaRA's targets (:mod:`bara_pyro.bench.quality` documents the protocol as a whole)."""

from __future__ import annotations

__all__ = ["ANCHOR_SEED", "BASELINES", "LAYER_RANK_RANGE", "METHOD_LABELS", "METHODS", "METRICS", "MMLU_OOD_SETS",
           "MODEL", "MODEL_SELECTION", "OOD_SETS", "OOD_TRAIN_TASK", "PEFT_LORA_ANCHOR", "PROTOCOL_NAME",
           "PROTOCOL_OVERRIDES", "QUICK", "QUICK_CAPS", "QUICK_OVERRIDES", "SEEDS", "STEPS", "TARGETS", "TASKS",
           "TOKEN_RANK_SPREAD"]

PROTOCOL_NAME = "the Bayesian-LoRA small-scale protocol"
MODEL = "smollm2-135m"
TASKS = ("winogrande_s", "arc_challenge", "arc_easy", "winogrande_m", "openbookqa", "boolq")
METHODS = ("lora", "lora_map", "mc_dropout", "ensemble", "blob", "bara")
SEEDS = (1, 2, 3)
STEPS = 1000
METRICS = ("accuracy", "nll", "ece", "brier")

OOD_TRAIN_TASK = "openbookqa"
# two MMLU subjects with many test rows and short questions, far from OBQA's elementary science
MMLU_OOD_SETS = ("mmlu_high_school_psychology", "mmlu_miscellaneous")  # 545 and 783 test rows
OOD_SETS = ("arc_challenge", "arc_easy", *MMLU_OOD_SETS)

# Applied to every run, after the method preset (so the budget is the same for every method).
PROTOCOL_OVERRIDES = (
    "task.scoring=cloze",
    "adapter.r=8",
    "adapter.alpha=16",
    "adapter.target_modules=[q_proj, v_proj]",
    "train.lr=0.0001",
    "train.weight_decay=0.0",
    "train.warmup_ratio=0.06",
    "train.lr_schedule=linear",
    "train.clip_norm=1.0",
    "train.batch_size=4",
    "eval.ece_bins=15",
    "eval.splits=[validation, test]",
    "eval.batch_size=4",  # S = 10 draws x 4 examples x up to 5 choices per forward: memory, not results
    "data.seed=0",
)
# --quick: a CPU smoke run of the whole pipeline (tiny random Llama with SmolLM2's tokenizer)
QUICK_OVERRIDES = (
    "data.max_train_examples=8",
    "eval.max_examples=16",
    "eval.gate_examples=8",
    "eval.importance_draws=0",
    "train.checkpoint_every=0",
    "train.log_every=1",
)
QUICK_CAPS = {("ensemble", "members"): 2, ("eval", "num_samples"): 2}  # --quick: at most 2 members, S <= 2
QUICK = {"model": "tiny-llama", "steps": 3, "seeds": (1,), "methods": ("lora", "bara"), "tasks": ("winogrande_s",),
         "device": "cpu", "ood_sets": ("arc_easy",)}

# peft's LoRA, same protocol, one seed (1), H100: (ACC %, ECE %)
PEFT_LORA_ANCHOR = {
    "arc_easy": (69.1, 5.2),
    "arc_challenge": (34.1, 16.0),
    "openbookqa": (39.8, 20.4),
    "boolq": (60.4, 5.9),
    "winogrande_s": (54.8, 7.2),
}
ANCHOR_SEED = 1

TARGETS = {
    "ece": "BaRA's ECE at most 40% of LoRA (MLE)'s",
    "nll": "BaRA's NLL below both LoRA (MLE)'s and BLoB's",
    "accuracy": "BaRA's accuracy no more than 0.5 points below LoRA (MLE)'s",
    "effective_rank": "BaRA's joint effective rank at most r / 2",
    "rank_structure": "BaRA's ranks have structure: per-layer ranks that differ and per-token ranks that vary "
                      "within a sequence, on every task",
    "nll_every_baseline": "BaRA's NLL below every baseline's (LoRA (MLE), MAP, MC-dropout, ensemble, BLoB)",
    "ece_every_baseline": "BaRA's ECE below every baseline's (LoRA (MLE), MAP, MC-dropout, ensemble, BLoB)",
}
LAYER_RANK_RANGE = 0.5  # rank_structure: the per-layer ranks are not all within this many components of each other
TOKEN_RANK_SPREAD = 0.1  # rank_structure: the per-token rank's mean standard deviation within a sequence exceeds it
BASELINES = ("lora", "lora_map", "mc_dropout", "ensemble", "blob")  # what the every-baseline targets compare with
METHOD_LABELS = {"lora": "LoRA (MLE)", "lora_map": "MAP", "mc_dropout": "MC-dropout", "ensemble": "Ensemble",
                 "blob": "BLoB", "bara": "BaRA", "bara_sparsity_only": "BaRA (sparsity only)",
                 "bara_global_only": "BaRA (global only)", "bara_slab": "BaRA (spike-and-slab)",
                 "bara_singular": "BaRA (singular directions)",
                 "bayesian_lora": "Bayesian-LoRA", "bayeslora": "BayesLoRA", "balora": "BaLoRA (from its abstract)",
                 "projected_subspace": "Projected subspace (SWAG)",
                 "projected_subspace_laplace": "Projected subspace (Laplace)", "laplace_lora": "Laplace-LoRA"}
MODEL_SELECTION = ("No early stopping or checkpoint selection: every method is evaluated at its final training step. "
                   "Hyperparameters are the presets' unless a --method-set says otherwise; such values come from a "
                   "sweep of --variant methods ranked on the validation split (--best-variant). The test split "
                   "chooses nothing.")

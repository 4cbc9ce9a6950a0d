#!/usr/bin/env bash
# The bara_slab preset's settings on real data, chosen on validation: the demo's model, data and budget
# (MiniLM-L6, Rotten Tomatoes, 400 steps unless the variant says otherwise, batch 16, lr 2e-3, KL warm-up
# 100 steps, CPU, about 2-3 minutes a 400-step run on 2 cores), evaluated on the validation split (S = 10),
# one seed.  Variants (NAME: method + overrides):
#   lora              the lora preset
#   bara              the bara preset
#   lora_1600         lora trained 1600 steps (KL warm-up 400 steps, as the 1600-step slab runs)
#   bara_1600         bara trained 1600 steps (KL warm-up 400 steps)
#   slab              the bara_slab preset as packaged
#   slab_absolute     bara_slab with adapter.weights.posterior_scale=absolute
#   slab_learned      bara_slab, absolute posterior scales, prior scales by type-II ML (ard: learned)
#   slab_init02       bara_slab, absolute posterior scales starting at 0.02 instead of 1e-3
#   slab_thin         bara_slab with the context as a thinning of the layer's inclusion (context: thin)
#   slab_guide_lr     bara_slab with the gates' variational parameters at 10x the learning rate (2e-2)
#   slab_1600         bara_slab trained 4x longer (1600 steps, KL warm-up 400 steps; about 7 minutes)
#   slab_u01          bara_slab with the relative posterior scales starting at 0.1 of the prior's (init_scale)
#   slab_u03          the same at 0.3
#   slab_glr_1600     slab_guide_lr trained 1600 steps (KL warm-up 400 steps)
#   slab_b            bara_slab with B alone random, A trained as LoRA's (adapter.weights.factors=B)
#   slab_b_glr        slab_b with the gates' variational parameters at 10x the learning rate (2e-2)
#   slab_b_glr_1600   slab_b_glr trained 1600 steps (KL warm-up 400 steps)
#   slab_seq          bara_slab with one gate per sentence (adapter.guide.local.per=sequence)
#   slab_seq_glr      slab_seq with the gates' variational parameters at 10x the learning rate (2e-2)
#   singular          bara_singular with its first prior: a Gaussian slab, a prior mass of 1 component per layer
#                     and the slab's scale tied to the inclusion probability (adapter.weights.slab=gaussian,
#                     adapter.gamma0=1, adapter.weights.ard=inclusion); every singular* variant starts from these
#                     three values, then sets its own.
#   singular_one_lr   bara_singular with the gates at the learning rate of the rest (train.guide_lr=null)
#   singular_1600     bara_singular trained 1600 steps (KL warm-up 400 steps)
#   singular_one_lr_1600  singular_one_lr trained 1600 steps (KL warm-up 400 steps)
#   singular_kl_warm  bara_singular with the KL weight rising over the whole run (train.kl_warmup_steps=400)
#   singular_glr_mid  bara_singular with the gates at 6e-3, between the preset's 2e-2 and the rest's 2e-3
#   singular_no_gates bara_singular's update without gates (adapter.prior.sparsity=none, adapter.weights.ard=off)
#   singular_no_gates_orth10   singular_no_gates with the near-Stiefel prior 100x weaker (orthogonality 10)
#   singular_no_gates_no_kl    singular_no_gates with the KL weight held near 0 (train.kl_warmup_steps=1000000000)
#   singular_no_gates_tau_small  singular_no_gates with the magnitudes' posterior scales started at 1e-4
#   singular_orth100  bara_singular with orthogonality 100
#   singular_ard_off  bara_singular with the slab's scale independent of the inclusion probability (ard: off)
#   singular_ard_off_one_lr  singular_ard_off with the gates at the learning rate of the rest
#   singular_g4       bara_singular with a prior mass of 4 components per layer (adapter.gamma0=4)
#   singular_ard_off_g4  singular_ard_off with adapter.gamma0=4
#   singular_ard_off_g2  singular_ard_off with adapter.gamma0=2
#   singular_ard_off_g3  singular_ard_off with adapter.gamma0=3
#   singular_ard_off_g3_delay100  singular_ard_off_g3 with the gates held still for the first 100 steps
#                     (train.guide_delay_steps=100)
#   singular_ard_off_g3_delay200  the same for the first 200 steps
#   singular_ard_off_g3_ctx3   singular_ard_off_g3 with the context weights' prior scale 3 (default 1):
#                     adapter.prior.sparsity.context_scale=3
#   singular_ard_off_g3_ctx03  the same with 0.3
#   preset_*          start from bara_singular with a Gaussian slab and a prior mass of 3 (adapter.weights.slab=gaussian,
#                     adapter.gamma0=3: singular_ard_off_g3, "the preset" below), then set their own values.  The
#                     preset as packaged now is preset_moment_g2.
#   preset_temp02     the preset with the gates' binary-concrete
#                     temperature 0.2 (adapter.temperature; default 0.67)
#   preset_glr006     the preset with the gates' learning rate 0.06 (3x the preset's train.guide_lr)
#   preset_glr02      the same at 0.2 (10x)
#   preset_seq        the preset with one gate per sentence (adapter.guide.local.per=sequence)
#   preset_seq_g4     preset_seq with a prior mass of 4 components (adapter.gamma0=4)
#   preset_lr4e-3     the preset at twice the demo's learning rate (train.lr=0.004)
#   lora_lr4e-3       lora at the same rate
#   preset_c01        the preset with the beta process's concentration 0.1 (adapter.concentration; default 1)
#   preset_c10        the same with 10
#   preset_ibp_a3     the preset with the contextual stick-breaking IBP instead of the contextual beta process
#                     (adapter.prior.sparsity=contextual_ibp; alpha = gamma0 = 3)
#   preset_ibp_a4     the same with alpha = 4 (adapter.gamma0=4)
#   preset_moment     the preset with the non-local second-moment slab on the magnitudes (adapter.weights.slab=moment)
#   preset_moment_g4  the same with a prior mass of 4 components (adapter.gamma0=4)
#   preset_moment_g2  the same with 2 (adapter.gamma0=2)
#   preset_moment_g2_t02  preset_moment_g2 with the gates' binary-concrete temperature at 0.2
#   preset_moment_g175_t02  the same with a prior mass of 1.75 components
#   preset_moment_g175  preset_moment with a prior mass of 1.75 components (adapter.gamma0=1.75)
#   preset_moment_no_gates  the moment slab's update without gates (adapter.prior.sparsity=none)
#   preset_moment_g2_occam  preset_moment_g2 with the directions' Laplace Occam factor
#                     (adapter.weights.direction_occam=kfac)
#   preset_moment_g2_c01  preset_moment_g2 with the beta process's concentration 0.1 (adapter.concentration)
#   preset_moment_g2_ctx3  preset_moment_g2 with the context weights' prior scale 3
#                     (adapter.prior.sparsity.context_scale=3; default 1)
#   lora_r4           lora at rank 4 (adapter.r=4, adapter.alpha=8: the same alpha / r)
#
#   bash benchmarks/bara_slab_ablation.sh [OUTPUT]          # default OUTPUT: runs/bara_slab_ablation
#   VARIANTS="lora slab" bash benchmarks/bara_slab_ablation.sh OUTPUT
#   SEED=1 VARIANTS="lora singular" bash benchmarks/bara_slab_ablation.sh OUTPUT_SEED1   # train.seed (default 0)
#   SEED=k VARIANTS=... bash benchmarks/bara_slab_ablation.sh BASE/seedk; python benchmarks/ablation_seeds.py BASE
#                     # means over the seeds, and paired differences from lora
#
# Finished runs (metrics.json present) are kept; prints one table and writes it to OUTPUT/summary.md: gate
# rank is metrics.json's effective_rank (sum_k E[z]), update rank the entropy effective rank of the singular
# values of the mean update (benchmarks/update_rank.py; docs/model.md).
set -eu
OUT=${1:-runs/bara_slab_ablation}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
COMMON=(model=minilm-l6 dataset=rt_sst2 task.max_length=64 adapter.r=8 adapter.alpha=16 train.steps=400
        train.batch_size=16 train.lr=0.002 train.kl_warmup_steps=100 train.log_every=50 train.checkpoint_every=0
        train.device=cpu "eval.splits=[validation]" eval.num_samples=10 eval.batch_size=64 eval.gate_examples=100
        eval.importance_draws=0)
[ -n "${SEED:-}" ] && COMMON+=(train.seed=$SEED)
ABSOLUTE=adapter.weights.posterior_scale=absolute
EARLIER_SINGULAR=(adapter.weights.slab=gaussian adapter.gamma0=1 adapter.weights.ard=inclusion)
GAUSSIAN_G3=(adapter.weights.slab=gaussian adapter.gamma0=3 adapter.weights.ard=off)
VARIANTS=${VARIANTS:-lora bara lora_1600 bara_1600 slab slab_absolute slab_learned slab_init02 slab_thin slab_guide_lr slab_1600 slab_u01 slab_u03 slab_glr_1600 slab_b slab_b_glr slab_b_glr_1600 slab_seq slab_seq_glr
          singular singular_one_lr singular_1600 singular_one_lr_1600 singular_kl_warm singular_glr_mid singular_no_gates
          singular_no_gates_orth10 singular_orth100 singular_no_gates_no_kl singular_no_gates_tau_small
          singular_ard_off singular_ard_off_one_lr singular_g4 singular_ard_off_g4
          singular_ard_off_g2 singular_ard_off_g3 singular_ard_off_g3_delay100 singular_ard_off_g3_delay200
          singular_ard_off_g3_ctx3 singular_ard_off_g3_ctx03 preset_temp02 preset_glr006 preset_glr02
          preset_seq preset_seq_g4 preset_lr4e-3 lora_lr4e-3 preset_c01 preset_c10
          preset_ibp_a3 preset_ibp_a4 preset_moment preset_moment_g4 preset_moment_g2 preset_moment_g2_t02 preset_moment_g175_t02
          preset_moment_g175 preset_moment_no_gates lora_r4 preset_moment_g2_occam preset_moment_g2_c01
          preset_moment_g2_ctx3}
for name in $VARIANTS; do
  dir=$OUT/$name
  [ -f "$dir/metrics.json" ] && continue
  case $name in
    lora) method=lora; extra=() ;;
    bara) method=bara; extra=() ;;
    lora_1600) method=lora; extra=(train.steps=1600 train.kl_warmup_steps=400) ;;
    bara_1600) method=bara; extra=(train.steps=1600 train.kl_warmup_steps=400) ;;
    slab) method=bara_slab; extra=() ;;
    slab_absolute) method=bara_slab; extra=($ABSOLUTE) ;;
    slab_learned) method=bara_slab; extra=($ABSOLUTE adapter.weights.ard=learned) ;;
    slab_init02) method=bara_slab; extra=($ABSOLUTE adapter.weights.init_scale=0.02) ;;
    slab_thin) method=bara_slab; extra=(adapter.prior.sparsity.context=thin) ;;
    slab_guide_lr) method=bara_slab; extra=(train.guide_lr=0.02) ;;
    slab_1600) method=bara_slab; extra=(train.steps=1600 train.kl_warmup_steps=400) ;;
    slab_u01) method=bara_slab; extra=(adapter.weights.init_scale=0.1) ;;
    slab_u03) method=bara_slab; extra=(adapter.weights.init_scale=0.3) ;;
    slab_glr_1600) method=bara_slab; extra=(train.guide_lr=0.02 train.steps=1600 train.kl_warmup_steps=400) ;;
    slab_b) method=bara_slab; extra=(adapter.weights.factors=B) ;;
    slab_b_glr) method=bara_slab; extra=(adapter.weights.factors=B train.guide_lr=0.02) ;;
    slab_b_glr_1600) method=bara_slab; extra=(adapter.weights.factors=B train.guide_lr=0.02 train.steps=1600
                     train.kl_warmup_steps=400) ;;
    slab_seq) method=bara_slab; extra=(adapter.guide.local.per=sequence) ;;
    slab_seq_glr) method=bara_slab; extra=(adapter.guide.local.per=sequence train.guide_lr=0.02) ;;
    singular) method=bara_singular; extra=() ;;
    singular_one_lr) method=bara_singular; extra=(train.guide_lr=null) ;;
    singular_1600) method=bara_singular; extra=(train.steps=1600 train.kl_warmup_steps=400) ;;
    singular_one_lr_1600) method=bara_singular; extra=(train.guide_lr=null train.steps=1600 train.kl_warmup_steps=400) ;;
    singular_kl_warm) method=bara_singular; extra=(train.kl_warmup_steps=400) ;;
    singular_glr_mid) method=bara_singular; extra=(train.guide_lr=0.006) ;;
    singular_no_gates) method=bara_singular; extra=(adapter.prior.sparsity=none adapter.weights.ard=off) ;;
    singular_no_gates_orth10) method=bara_singular; extra=(adapter.prior.sparsity=none adapter.weights.ard=off adapter.weights.orthogonality=10) ;;
    singular_orth100) method=bara_singular; extra=(adapter.weights.orthogonality=100) ;;
    singular_ard_off) method=bara_singular; extra=(adapter.weights.ard=off) ;;
    singular_ard_off_one_lr) method=bara_singular; extra=(adapter.weights.ard=off train.guide_lr=null) ;;
    singular_g4) method=bara_singular; extra=(adapter.gamma0=4) ;;
    singular_ard_off_g4) method=bara_singular; extra=(adapter.weights.ard=off adapter.gamma0=4) ;;
    singular_ard_off_g2) method=bara_singular; extra=(adapter.weights.ard=off adapter.gamma0=2) ;;
    singular_ard_off_g3) method=bara_singular; extra=(adapter.weights.ard=off adapter.gamma0=3) ;;
    singular_ard_off_g3_delay100) method=bara_singular; extra=(adapter.weights.ard=off adapter.gamma0=3
                                  train.guide_delay_steps=100) ;;
    singular_ard_off_g3_delay200) method=bara_singular; extra=(adapter.weights.ard=off adapter.gamma0=3
                                  train.guide_delay_steps=200) ;;
    singular_ard_off_g3_ctx3) method=bara_singular; extra=(adapter.weights.ard=off adapter.gamma0=3
                              adapter.prior.sparsity.context_scale=3) ;;
    singular_ard_off_g3_ctx03) method=bara_singular; extra=(adapter.weights.ard=off adapter.gamma0=3
                               adapter.prior.sparsity.context_scale=0.3) ;;
    preset_temp02) method=bara_singular; extra=(adapter.temperature=0.2) ;;
    preset_glr006) method=bara_singular; extra=(train.guide_lr=0.06) ;;
    preset_glr02) method=bara_singular; extra=(train.guide_lr=0.2) ;;
    preset_seq) method=bara_singular; extra=(adapter.guide.local.per=sequence) ;;
    preset_seq_g4) method=bara_singular; extra=(adapter.guide.local.per=sequence adapter.gamma0=4) ;;
    preset_lr4e-3) method=bara_singular; extra=(train.lr=0.004) ;;
    lora_lr4e-3) method=lora; extra=(train.lr=0.004) ;;
    preset_c01) method=bara_singular; extra=(adapter.concentration=0.1) ;;
    preset_c10) method=bara_singular; extra=(adapter.concentration=10) ;;
    preset_ibp_a3) method=bara_singular; extra=(adapter.prior.sparsity=contextual_ibp) ;;
    preset_ibp_a4) method=bara_singular; extra=(adapter.prior.sparsity=contextual_ibp adapter.gamma0=4) ;;
    preset_moment) method=bara_singular; extra=(adapter.weights.slab=moment) ;;
    preset_moment_g4) method=bara_singular; extra=(adapter.weights.slab=moment adapter.gamma0=4) ;;
    preset_moment_g2) method=bara_singular; extra=(adapter.weights.slab=moment adapter.gamma0=2) ;;
    preset_moment_g2_t02) method=bara_singular; extra=(adapter.weights.slab=moment adapter.gamma0=2 adapter.temperature=0.2) ;;
    preset_moment_g175_t02) method=bara_singular; extra=(adapter.weights.slab=moment adapter.gamma0=1.75 adapter.temperature=0.2) ;;
    preset_moment_g175) method=bara_singular; extra=(adapter.weights.slab=moment adapter.gamma0=1.75) ;;
    preset_moment_no_gates) method=bara_singular; extra=(adapter.weights.slab=moment adapter.prior.sparsity=none) ;;
    preset_moment_g2_occam) method=bara_singular; extra=(adapter.weights.slab=moment adapter.gamma0=2
                            adapter.weights.direction_occam=kfac) ;;
    preset_moment_g2_c01) method=bara_singular; extra=(adapter.weights.slab=moment adapter.gamma0=2
                          adapter.concentration=0.1) ;;
    preset_moment_g2_ctx3) method=bara_singular; extra=(adapter.weights.slab=moment adapter.gamma0=2
                           adapter.prior.sparsity.context_scale=3) ;;
    lora_r4) method=lora; extra=(adapter.r=4 adapter.alpha=8) ;;
    singular_no_gates_no_kl) method=bara_singular; extra=(adapter.prior.sparsity=none adapter.weights.ard=off train.kl_warmup_steps=1000000000) ;;
    singular_no_gates_tau_small) method=bara_singular; extra=(adapter.prior.sparsity=none adapter.weights.ard=off adapter.weights.init_scale=0.0001) ;;
    *) echo "unknown variant $name"; exit 2 ;;
  esac
  [[ $name == singular* ]] && extra=("${EARLIER_SINGULAR[@]}" "${extra[@]}")
  [[ $name == preset_* ]] && extra=("${GAUSSIAN_G3[@]}" "${extra[@]}")
  args=()
  for s in "${COMMON[@]}" "${extra[@]}"; do args+=(--set "$s"); done
  "$PY" -m bara_pyro.cli train --method "$method" --quiet --output "$dir" "${args[@]}"
done
"$PY" - "$HERE" "$OUT" $VARIANTS <<'EOF'
import json, sys
from pathlib import Path

sys.path.insert(0, sys.argv.pop(1))
from update_rank import run_update_ranks  # noqa: E402

out = Path(sys.argv[1])
rows = ["| variant | acc | NLL | ECE | gate rank | update rank | train s |", "|---|---|---|---|---|---|---|"]
for name in sys.argv[2:]:
    m = json.loads((out / name / "metrics.json").read_text())
    v = m["validation"]
    rank = m.get("effective_rank")
    update = m.get("update_rank")
    if update is None:  # a run evaluated before metrics.json recorded it
        per_layer = run_update_ranks(out / name)
        update = sum(per_layer.values()) / len(per_layer)
    rows.append(f"| {name} | {v['accuracy']:.3f} | {v['nll']:.3f} | {v['ece']:.3f} | "
                f"{'-' if rank is None else f'{rank:.2f}'} | {update:.2f} | {m['train_time_s']:.0f} |")
table = "\n".join(rows)
print(table)
(out / "summary.md").write_text(table + "\n")
EOF

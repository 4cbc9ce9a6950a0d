#!/usr/bin/env bash
# The quality suite (`bara-pyro bench quality`, the Bayesian-LoRA small-scale protocol) in chunks, for a GPU
# machine where each job has a wall-time limit and the files moved in and out of a job must be small.
# State persists under $KEEP (default /root/keep) between jobs on the same machine; every stage resumes where
# the last job stopped (bench quality resumes interrupted runs from their checkpoints and evaluations from
# their finished batches), so the same command, repeated, finishes the suite. On a machine without such
# limits, run the bench quality commands of the stages below directly.
#
#   bash benchmarks/quality_chunked.sh setup DIR...   # copy input folders into $KEEP (one job per folder when
#                                                     #   uploads are small): wheels (*.whl, installed into
#                                                     #   $KEEP/site), the GGUF in parts (part_aa, part_ab, ...),
#                                                     #   tarballs of earlier runs (*.tar.gz), datasets/<name>/
#   bash benchmarks/quality_chunked.sh run [SECONDS]  # one chunk of the suite; repeat until every stage is done
#                                                     # SECONDS: the job's wall-time limit (default 550); stages
#                                                     # stop 75 s before it, to checkpoint and pack
#   bash benchmarks/quality_chunked.sh local_kl [SECONDS]   # the train.local_kl=expected comparison (below)
#
# The first `run` takes in $MODEL_DIR (default ./carry_c) like a set-up folder (when the model is not in $KEEP yet), joins the GGUF
# parts in order, checks the file's sha256 against the packaged SmolLM2-135M-Instruct wheel's and converts it
# to transformers format. Input folders are git-ignored (/carry*/).
#
# `run` stages, each skipped once finished (SKIP="stage ..." skips stages for one job):
#   1. sweep        BaRA variants on the validation splits of OBQA and ARC-C (seed 1): the variant with the
#                   lowest mean validation NLL is chosen (bench quality --best-variant); the test split chooses
#                   nothing.
#   2. others       bara (chosen values), blob, lora_map and mc_dropout; six tasks x 3 seeds
#      members      at the same time: lora (seeds 1-3) and the ensemble's members 1-4 as LoRA runs
#                   (seeds s + 1000 m); then
#      ensemble     each ensemble assembled from its 5 members' predictions, and
#      ood_members  the OOD evaluation (ARC-C, ARC-E, two MMLU subjects) of the OBQA LoRA and member runs
#      ood_others   at the same time if the OBQA runs of `others` have all finished, else after `others`:
#                   the OOD evaluation of those runs
#   3. ood_ensemble each OBQA ensemble's OOD evaluation, assembled from its members' OOD predictions
# then aggregates all methods into $KEEP/suite/results.{json,md} and, when $OUT is set, packs into it the small
# files, every run's predictions (predictions.tar.gz.part_*: the ensembles are assembled from the LoRA runs'
# ones), the OBQA adapters trained in this job (obqa_adapters_new.tar.gz.part_*: the OOD stage on another
# machine needs them) and the runs trained but not yet evaluated (unevaluated_runs.tar.gz.part_*), in parts of
# 15 MB. Join parts with cat; put the tarballs in an input folder for the next machine.
#
# `local_kl`: BaRA trained with `train.local_kl=expected` (docs/model.md) as the variant bara_lkl, against the
# suite's BaRA (`train.local_kl=draw`): on validation in $KEEP/sweep_lkl (OBQA and ARC-C, seed 1, with the
# sweep's bara runs copied in; bench quality --best-variant ranks the two) and on the test split, six tasks x
# 3 seeds, in $KEEP/suite_lkl (with the suite's LoRA, BLoB and BaRA runs copied in for the tables and the
# targets: --targets-for bara_lkl); packs suite_lkl.tar.gz and sweep_lkl.tar.gz (small files only).
#
# Every stage sets train.local_kl=draw (the per-token gate KL at one draw of the globals, Pyro's
# TraceMeanField_ELBO estimate), which the committed suite and sweep were trained with; bara_lkl's
# --method-set (later on the command line) wins over it.
#
# A fresh machine starts from the runs already in the repository ($SEED_FROM): finished runs are copied into
# $KEEP/suite and skipped, except OBQA runs without adapters or OOD predictions (the OOD stage needs one of
# them) and LoRA runs without adapters or test predictions (an ensemble member needs one of them): those
# train again (identical results: same seed, deterministic).
# Six training processes per GPU (WORKERS), at most 2/5 of them for `others`: an eager training step is bound
# by the host CPU, not by the GPU. On 4 H200s (2026-11-22): one process per GPU trained a 1000-step BaRA run
# in 221-227 s, as many as 3 per GPU did (210-236 s); 18 LoRA runs side by side (20 workers) took 161-219 s
# each; 36 workers with BoolQ evaluations (S = 10, fp32) in the mix slowed every run down (254-378 s); 24
# workers: LoRA runs 171-301 s, MAP runs 301-408 s.
set -u
KEEP=${KEEP:-/root/keep}
phase=${1:?setup DIR... or run [SECONDS]}
export PYTHONPATH="$PWD:$KEEP/site" BARA_PYRO_CACHE="$KEEP/cache" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$KEEP/cache/datasets/v1" "$KEEP/smol/gguf"
copy_datasets() { [ -d "$1/datasets" ] && cp -r "$1"/datasets/* "$KEEP/cache/datasets/v1/" 2>/dev/null; true; }

take_in() {  # take_in DIR: copy a carried folder's wheels (installed), GGUF parts, tarballs and datasets into $KEEP
  if ls "$1"/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$KEEP/site" "$1"/*.whl
  fi
  cp "$1"/part_* "$1"/*.tar.gz "$KEEP/" 2>/dev/null
  copy_datasets "$1"
}

case $phase in
setup)
  shift
  for dir in "$@"; do take_in "$dir"; done
  ls -la "$KEEP"; nvidia-smi --query-gpu=name,memory.total --format=csv; exit 0 ;;
run|local_kl) END=$(( $(date +%s) + ${2:-550} )) ;;
*) echo "unknown phase $phase"; exit 2 ;;
esac

if [ ! -f "$KEEP/smol/hf/model.safetensors" ]; then
  take_in "${MODEL_DIR:-carry_c}"
  cat "$KEEP"/part_* > "$KEEP/smol/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"  # part_aa, part_ab, ... in order
  echo "$GGUF_SHA  $KEEP/smol/gguf/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - || exit 1
  python3 -c "from pathlib import Path; from bara_pyro.assets import _convert_smollm2_gguf as c; c(Path('$KEEP/smol'))" \
    || exit 1
fi
NGPU=$(nvidia-smi -L | wc -l)
WORKERS=${WORKERS:-$(( 6 * NGPU ))}
SEED_FROM=${SEED_FROM:-benchmarks/results/quality_h200x4_2026-11-22}
if [ ! -f "$KEEP/seeded" ] && [ -d "$SEED_FROM/suite/runs" ]; then
  for t in "$KEEP"/*.tar.gz; do [ -f "$t" ] && tar -C "$KEEP" -xzf "$t"; done
  for run in "$SEED_FROM"/suite/runs/*/*/seed*; do
    [ -f "$run/metrics.json" ] || continue
    rel=${run#"$SEED_FROM"/}
    # OBQA runs only with their adapters or OOD predictions (the OOD stage needs one of them); LoRA runs
    # only with their adapters or test predictions (an ensemble member needs one of them)
    case $run in
      *openbookqa*) [ -f "$run/ood_predictions.npz" ] || [ -n "$(ls "$run"/*.safetensors "$KEEP/$rel"/*.safetensors \
                      2>/dev/null)" ] || continue ;;
      */runs/lora/*) [ -f "$run/predictions.npz" ] || [ -n "$(ls "$run"/*.safetensors "$KEEP/$rel"/*.safetensors \
                       2>/dev/null)" ] || continue ;;
    esac
    mkdir -p "$KEEP/$rel" && cp -r "$run"/. "$KEEP/$rel/"
  done
  if [ -d "$SEED_FROM/sweep" ] && [ ! -f "$KEEP/sweep.done" ]; then
    rm -rf "$KEEP/sweep" && cp -r "$SEED_FROM/sweep" "$KEEP/sweep" && touch "$KEEP/sweep.done"
  fi
  touch "$KEEP/seeded"
  echo "seeded $(ls -d "$KEEP"/suite/runs/*/*/seed* 2>/dev/null | wc -l) finished runs from $SEED_FROM"
fi
Q=(python3 -m bara_pyro.bench.quality --model "$KEEP/smol/hf" --device cuda
   --set train.estimator=fused --set train.local_kl=draw --set eval.batch_size=32 --set eval.importance_draws=0
   --set eval.gate_examples=64)
bench() {  # bench STAGE ARGS...: run until done (marker) or until the deadline, less the time a stop takes
  local stage=$1; shift
  [ -f "$KEEP/$stage.done" ] && return 0
  case " ${SKIP:-} " in *" $stage "*) echo "== $stage skipped (SKIP)"; return 1 ;; esac
  # SIGTERM: runs checkpoint at their next training step or prediction batch (an evaluation goes on from
  # there in the next job); then aggregation and packing need ~30 s.
  local left=$(( END - $(date +%s) - 75 ))
  [ "$left" -gt 60 ] || return 1
  echo "== $stage ($left s left)"
  timeout -s TERM "$left" "${Q[@]}" --workers "${W:-$WORKERS}" "$@" && touch "$KEEP/$stage.done"
  [ -f "$KEEP/$stage.done" ]
}

VARIANTS=(--variant bara_glr=bara --method-set bara_glr:train.guide_lr=0.01
          --variant bara_glr_at16=bara --method-set bara_glr_at16:train.guide_lr=0.01
          --method-set bara_glr_at16:adapter.a_theta=16.0
          --variant bara_glr_prior=bara --method-set bara_glr_prior:train.guide_lr=0.01
          --method-set bara_glr_prior:adapter.init_gate_logit=0.0
          --variant bara_at64=bara --method-set bara_at64:train.guide_lr=0.001
          --method-set bara_at64:adapter.a_theta=64.0)
bench sweep --output "$KEEP/sweep" --tasks openbookqa,arc_challenge --seeds 1 \
  --methods bara,bara_glr,bara_glr_at16,bara_glr_prior,bara_at64 "${VARIANTS[@]}" --set "eval.splits=[validation]" \
  || { echo "sweep not finished"; exit 0; }
if [ ! -f "$KEEP/selected.txt" ]; then
  python3 -m bara_pyro.bench.quality --best-variant "$KEEP/sweep/results.json" > "$KEEP/selected.txt" || exit 1
fi
read -r -a SEL < "$KEEP/selected.txt"
echo "chosen BaRA values: ${SEL[*]:-(the preset)}"
SUITE=(--output "$KEEP/suite" --set "eval.splits=[test]" "${SEL[@]}")
ALL=bara,lora,blob,lora_map,mc_dropout,ensemble
if [ "$phase" = local_kl ]; then
  LKL=(--variant bara_lkl=bara --method-set bara_lkl:train.local_kl=expected)
  mkdir -p "$KEEP/suite_lkl/runs" "$KEEP/sweep_lkl/runs"
  for m in lora blob bara; do [ -d "$KEEP/suite_lkl/runs/$m" ] || cp -r "$KEEP/suite/runs/$m" "$KEEP/suite_lkl/runs/"; done
  [ -d "$KEEP/sweep_lkl/runs/bara" ] || cp -r "$KEEP/sweep/runs/bara" "$KEEP/sweep_lkl/runs/"
  ( W=2 bench lkl_validation --output "$KEEP/sweep_lkl" --tasks openbookqa,arc_challenge --seeds 1 \
      --methods bara,bara_lkl "${LKL[@]}" --set "eval.splits=[validation]" ) &
  ( W=$(( WORKERS > 2 ? WORKERS - 2 : 1 )) bench lkl_test --methods bara_lkl,bara,lora,blob "${LKL[@]}" \
      --targets-for bara_lkl --output "$KEEP/suite_lkl" --set "eval.splits=[test]" "${SEL[@]}" ) &
  wait
  "${Q[@]}" --methods bara_lkl,bara,lora,blob "${LKL[@]}" --targets-for bara_lkl --output "$KEEP/suite_lkl" \
    --set "eval.splits=[test]" "${SEL[@]}" --aggregate-only > /dev/null 2>&1
  python3 -m bara_pyro.bench.quality --best-variant "$KEEP/sweep_lkl/results.json" 2>&1
  if [ -n "${OUT:-}" ]; then
    for d in suite_lkl sweep_lkl; do
      tar -C "$KEEP" -czf "$OUT/$d.tar.gz" --exclude='*.safetensors' --exclude='checkpoint*' --exclude='*.npz' \
        --exclude='*.pt' "$d"
    done
    ls -la "$OUT"
  fi
  ls "$KEEP"/*.done 2>/dev/null
  exit 0
fi
# The ensemble's members 0-4 (seeds s + 1000 m; member 0 is the LoRA run of seed s) train as LoRA (MLE)
# runs, side by side with the other methods' runs (two bench processes sharing the workers, so that neither
# waits for the other's last wave). The ensemble stage then assembles each ensemble from its members' saved
# predictions (bench quality does when every member is a finished identical run with predictions.npz): no
# model is loaded, and the result is what evaluating the five members would give, bit for bit.
MEMBER_SEEDS=$(python3 -c "print(','.join(str(s + 1000 * m) for m in range(5) for s in (1, 2, 3)))")
# `others` gets 2/5 of the workers, or one per run it has left (4 methods x 6 tasks x 3 seeds) if fewer
OTHERS_LEFT=$(( 72 - $(ls "$KEEP"/suite/runs/{bara,blob,lora_map,mc_dropout}/*/seed[123]/metrics.json 2>/dev/null | wc -l) ))
W_OTHERS=${W_OTHERS:-$(( OTHERS_LEFT < WORKERS * 2 / 5 ? (OTHERS_LEFT > 0 ? OTHERS_LEFT : 1) : WORKERS * 2 / 5 ))}
OTHER_METHODS=bara,blob,lora_map,mc_dropout
OBQA_OTHERS=$(ls "$KEEP"/suite/runs/{bara,blob,lora_map,mc_dropout}/openbookqa/seed[123]/metrics.json 2>/dev/null | wc -l)
( W=$W_OTHERS bench others --methods $OTHER_METHODS "${SUITE[@]}" ) &
sleep 20  # the first process builds the dataset caches before its workers start
( export W=$(( WORKERS - W_OTHERS ))
  bench members --methods lora --seeds "$MEMBER_SEEDS" "${SUITE[@]}" \
  && bench ensemble --methods ensemble "${SUITE[@]}" \
  && bench ood_members --methods lora --tasks openbookqa --seeds "$MEMBER_SEEDS" --ood "${SUITE[@]}" ) &
# OOD of the other methods' OBQA runs: at once if they have all finished (the stage then evaluates and trains
# nothing else, so it cannot collide with `others`), else once `others` has finished
OOD_OTHERS=(--methods $OTHER_METHODS --tasks openbookqa --ood "${SUITE[@]}")
[ "$OBQA_OTHERS" -eq 12 ] && ( W=${W_OOD:-8} bench ood_others "${OOD_OTHERS[@]}" ) &
wait
[ -f "$KEEP/others.done" ] && bench ood_others "${OOD_OTHERS[@]}"
# the ensemble's OOD, assembled from its members' OOD predictions
[ -f "$KEEP/ood_members.done" ] && bench ood_ensemble --methods ensemble --tasks openbookqa --ood "${SUITE[@]}"

# aggregate whatever has finished, then pack the small files
"${Q[@]}" --methods $ALL --ood "${SUITE[@]}" --aggregate-only > /dev/null 2>&1
if [ -n "${OUT:-}" ]; then
  for d in suite; do
    [ -d "$KEEP/$d" ] && tar -C "$KEEP" -czf "$OUT/$d.tar.gz" --exclude='*.safetensors' --exclude='checkpoint*' \
      --exclude='*.npz' --exclude='*.pt' "$d"
  done
  # every run's test (and OOD) predictions: the ensembles are assembled from them, on any machine
  (cd "$KEEP" && find suite/runs \( -name predictions.npz -o -name ood_predictions.npz \) -not -path '*member_*' \
    | tar -czf - -T - | split -b 15M - "$OUT/predictions.tar.gz.part_")
  # the OBQA adapters trained on this machine (the OOD stage of a later machine needs them), in parts of
  # 15 MB; join them with cat into an input folder's obqa_adapters_*.tar.gz
  (cd "$KEEP" && find suite/runs/*/openbookqa -newer "$KEEP/seeded" -not -path '*checkpoint*' \
    \( -name '*.safetensors' -o -name 'adapter_config.json' -o -name DONE \) 2>/dev/null \
    | tar -czf - -T - | split -b 15M - "$OUT/obqa_adapters_new.tar.gz.part_")
  # runs trained but not evaluated when the job ended: whole (their finished prediction batches too),
  # less training checkpoints, so that a later machine only evaluates them, from where they stopped
  (cd "$KEEP" && for r in suite/runs/*/*/seed*; do [ -f "$r/DONE" ] && [ ! -f "$r/metrics.json" ] && echo "$r"; done \
    | tar -czf - --exclude='checkpoint*' -T - | split -b 15M - "$OUT/unevaluated_runs.tar.gz.part_")
  cp "$KEEP/selected.txt" "$OUT/" 2>/dev/null
  ls -la "$OUT"
fi
ls "$KEEP"/*.done 2>/dev/null

#!/usr/bin/env bash
# Issue 6's quality suite on a lent GPU machine whose calls last at most 10 minutes and carry at most
# 64 MiB each (this workplace's `device` tool). Everything persists under $KEEP between calls on the
# same machine; every stage resumes where the last call stopped (bara-pyro bench quality resumes runs).
#
#   bash benchmarks/quality_device.sh setup1         # carry: carry_a (GGUF part 1, datasets), .device_wheels
#   bash benchmarks/quality_device.sh setup2         # carry: carry_b (GGUF part 2, datasets)
#   bash benchmarks/quality_device.sh run [SECONDS]  # carry: carry_c (GGUF part 3, datasets); repeat until done
#                                                   # SECONDS: how long the call may take (default 550)
#
# `run` stages, each skipped once finished:
#   1. sweep  BaRA variants on the validation splits of OBQA and ARC-C (seed 1): the variant with the
#             lowest mean validation NLL is chosen (bench quality --best-variant); the test split chooses nothing.
#   2. one stage per method, six tasks x 3 seeds each, in this order: lora (the anchor), bara (chosen
#             values), blob, lora_map, mc_dropout, ensemble (5 members)
#   3. ood    the OBQA runs on ARC-C, ARC-E and two MMLU subjects
# then aggregates all methods into $KEEP/suite/results.{json,md} and packs the small files (and the OBQA
# adapters, which the OOD stage of a later session needs) into $OUT.
#
# A fresh machine starts from the runs already in the repository ($SEED_FROM): finished runs are copied
# into $KEEP/suite and skipped. OBQA runs are copied only with their adapters (the OOD stage loads them).
# Five training processes per GPU (WORKERS): an eager training step is bound by the host CPU (about
# 220 ms per BaRA step on OBQA), not by the GPU. On 4 H200s one process per GPU trained a 1000-step run
# in 221-227 s, the same as with 3 processes per GPU (210-236 s), so the GPUs had room for more.
set -u
KEEP=${KEEP:-/root/keep}
phase=${1:?setup1, setup2 or run}
END=$(( $(date +%s) + ${2:-550} ))
export PYTHONPATH="$PWD:$KEEP/site" BARA_PYRO_CACHE="$KEEP/cache" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$KEEP/cache/datasets/v1" "$KEEP/smol/gguf"
copy_datasets() { [ -d "$1/datasets" ] && cp -r "$1"/datasets/* "$KEEP/cache/datasets/v1/" 2>/dev/null; true; }

case $phase in
setup1)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$KEEP/site" .device_wheels/*.whl
  cp carry_a/part_aa "$KEEP/" && copy_datasets carry_a
  nvidia-smi --query-gpu=name,memory.total --format=csv; exit 0 ;;
setup2)
  cp carry_b/part_ab "$KEEP/" && copy_datasets carry_b; ls -la "$KEEP"; exit 0 ;;
run) ;;
*) echo "unknown phase $phase"; exit 2 ;;
esac

if [ ! -f "$KEEP/smol/hf/model.safetensors" ]; then
  cp carry_c/part_ac "$KEEP/" && copy_datasets carry_c
  cat "$KEEP/part_aa" "$KEEP/part_ab" "$KEEP/part_ac" > "$KEEP/smol/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
  echo "$GGUF_SHA  $KEEP/smol/gguf/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - || exit 1
  python3 -c "from pathlib import Path; from bara_pyro.assets import _convert_smollm2_gguf as c; c(Path('$KEEP/smol'))" \
    || exit 1
fi
NGPU=$(nvidia-smi -L | wc -l)
WORKERS=${WORKERS:-$(( 5 * NGPU ))}
SEED_FROM=${SEED_FROM:-benchmarks/results/quality_h200x4_2026-11-22}
if [ ! -d "$KEEP/suite" ] && [ -d "$SEED_FROM/suite/runs" ]; then
  for run in "$SEED_FROM"/suite/runs/*/*/seed*; do
    [ -f "$run/metrics.json" ] || continue
    case $run in *openbookqa*) ls "$run"/*.safetensors > /dev/null 2>&1 || continue ;; esac
    rel=${run#"$SEED_FROM"/}; mkdir -p "$KEEP/$rel" && cp -r "$run"/. "$KEEP/$rel/"
  done
  [ -d "$SEED_FROM/sweep" ] && [ ! -d "$KEEP/sweep" ] && cp -r "$SEED_FROM/sweep" "$KEEP/sweep" && touch "$KEEP/sweep.done"
  echo "seeded $(ls -d "$KEEP"/suite/runs/*/*/seed* 2>/dev/null | wc -l) finished runs from $SEED_FROM"
fi
Q=(python3 -m bara_pyro.bench.quality --model "$KEEP/smol/hf" --device cuda --workers "$WORKERS"
   --set train.estimator=fused --set eval.batch_size=32 --set eval.importance_draws=0 --set eval.gate_examples=64)
bench() {  # bench STAGE ARGS...: run until done (marker) or until the deadline, less the time a stop takes
  local stage=$1; shift
  [ -f "$KEEP/$stage.done" ] && return 0
  # SIGTERM: training runs checkpoint at their next step, but a run that is evaluating finishes or is
  # killed after 120 s (bench quality's grace period); then aggregation and packing need ~30 s.
  local left=$(( END - $(date +%s) - 160 ))
  [ "$left" -gt 60 ] || return 1
  echo "== $stage ($left s left)"
  timeout -s TERM "$left" "${Q[@]}" "$@" && touch "$KEEP/$stage.done"
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
for method in lora bara blob lora_map mc_dropout ensemble; do
  bench "$method" --methods "$method" "${SUITE[@]}" || break
done && bench ood --methods $ALL --ood "${SUITE[@]}"

# aggregate whatever has finished, then pack the small files
"${Q[@]}" --methods $ALL --ood "${SUITE[@]}" --aggregate-only > /dev/null 2>&1
if [ -n "${OUT:-}" ]; then
  for d in sweep suite; do
    [ -d "$KEEP/$d" ] && tar -C "$KEEP" -czf "$OUT/$d.tar.gz" --exclude='*.safetensors' --exclude='checkpoint*' \
      --exclude='*.npz' --exclude='*.pt' "$d"
  done
  (cd "$KEEP" && find suite/runs -path '*openbookqa*' -name '*.safetensors' -not -path '*checkpoint*' \
    | tar -czf "$OUT/obqa_adapters.tar.gz" -T -)
  cp "$KEEP/selected.txt" "$OUT/" 2>/dev/null
  ls -la "$OUT"
fi
ls "$KEEP"/*.done 2>/dev/null

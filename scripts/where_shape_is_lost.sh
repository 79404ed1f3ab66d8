#!/usr/bin/env bash
# Where the 4-step student loses shape: the default teacher at 80 NFE, pruned (before KD), after
# KD, the unpruned teacher distilled to 4 steps, and the pruned + KD model distilled to 4 steps
# (the shipped student's recipe), each scored on the same 288 clips (the three shipped prompt
# files, 4 seeds). Run from a directory holding the default's training run (`mvdit train`:
# runs/tiny/model and its latent cache runs/tiny/latents) and the repository's prompts/ and
# configs/. Writes runs/shape/; docs/student_quality.md is its table. About 40 min on 2 cores.
set -euo pipefail
T=${TEACHER:-runs/tiny/model}
P=(-p prompts/shapes-eval.txt -p prompts/shapes-holdout.txt -p prompts/shapes-paraphrase.txt --seeds 4)
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
ev() {  # ev MODEL OUT [sampler flags]: one evaluation, skipped when it is there
  local m=$1 o=$2; shift 2
  [ -f "$o/eval.json" ] || { stamp "eval $m -> $o"; mvdit eval -m "$m" "${P[@]}" -o "$o" "$@"; }
}
ev "$T" runs/shape/teacher-80 --steps 40 --cfg 4
stamp "prune to params=0.55 + 600 KD steps"
mvdit study prune --teacher "$T" -o runs/shape/study --variants tri-level-kd --recovery-steps 600
ev runs/shape/study/tri-level-kd/pruned runs/shape/pruned-80 --steps 40 --cfg 4
ev runs/shape/study/tri-level-kd/kd/model runs/shape/kd-80 --steps 40 --cfg 4
[ -f runs/synth/index.json ] && grep -q '"complete": true' runs/synth/index.json || {
  stamp "synth"; mvdit synth -m "$T" -p prompts/shapes-train.txt -o runs/synth --seeds 2 --batch 16; }
for row in unpruned:"$T" pruned-kd:runs/shape/study/tri-level-kd/kd/model; do
  name=${row%%:*} student=${row#*:}
  [ -f "runs/shape/distill-$name/summary.json" ] || { stamp "distill $name";
    mvdit distill configs/distill-tiny.toml --set distill.student="$student" --set distill.teacher="$T" \
      --set optim.steps=1200 --set run.out_dir="runs/shape/distill-$name" \
      $([ -d "runs/shape/distill-$name/checkpoints" ] && echo --resume); }
  ev "runs/shape/distill-$name/model" "runs/shape/$name-4"
done
for b in pruned-80 kd-80 unpruned-4 pruned-kd-4; do
  mvdit eval-compare runs/shape/teacher-80 "runs/shape/$b" -o "runs/shape/compare-$b.md" > /dev/null
done
stamp done

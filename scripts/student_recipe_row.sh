#!/usr/bin/env bash
# One row of the student-quality study (docs/student_quality.md): prune the default teacher to a
# budget, recover it with KD, distill it to 4 steps and score the KD model at 80 NFE and the
# student at 4 NFE on the 288 clips of the shipped prompt files (4 seeds), each compared with the
# teacher at 80 NFE (paired bootstrap). Every part is skipped when done, so a rerun resumes.
#   scripts/student_recipe_row.sh NAME BUDGET KD_STEPS [DISTILL_STEPS]
#   e.g. scripts/student_recipe_row.sh kd3000 params=0.55 3000
# KD_CONFIG picks the recovery's KD config (default configs/kd-tiny.toml: the teacher's training
# clips; configs/kd-teacher-samples.toml: the teacher's own samples); KD_EVAL=0 skips the 80-NFE
# evaluation of the KD model (the student row is the target).
# Run from a directory holding runs/tiny/model (the default's `mvdit train`), runs/synth and
# runs/shape/teacher-80 (scripts/where_shape_is_lost.sh), prompts/ and configs/.
set -euo pipefail
name=$1 budget=$2 kd_steps=$3 distill_steps=${4:-1200}
T=${TEACHER:-runs/tiny/model}
R=runs/shape/$name
P=(-p prompts/shapes-eval.txt -p prompts/shapes-holdout.txt -p prompts/shapes-paraphrase.txt --seeds 4)
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
stamp "$name: prune to $budget + $kd_steps KD steps"
mvdit study prune --teacher "$T" -o "$R/study" --variants tri-level-kd --budget "$budget" \
  --recovery-steps "$kd_steps" --kd-config "${KD_CONFIG:-configs/kd-tiny.toml}"
kd=$R/study/tri-level-kd/kd/model
[ "${KD_EVAL:-1}" = 0 ] || [ -f "$R/kd-80/eval.json" ] || { stamp "eval $kd"; mvdit eval -m "$kd" "${P[@]}" -o "$R/kd-80" --steps 40 --cfg 4; }
[ -f "$R/distill/summary.json" ] || { stamp "distill $name";
  mvdit distill configs/distill-tiny.toml --set distill.student="$kd" --set distill.teacher="$T" \
    --set optim.steps="$distill_steps" --set run.out_dir="$R/distill" \
    $([ -d "$R/distill/checkpoints" ] && echo --resume); }
[ -f "$R/student-4/eval.json" ] || { stamp "eval student"; mvdit eval -m "$R/distill/model" "${P[@]}" -o "$R/student-4"; }
for b in kd-80 student-4; do
  if [ -f "$R/$b/eval.json" ]; then
    mvdit eval-compare runs/shape/teacher-80 "$R/$b" -o "$R/compare-$b.md" > /dev/null
  fi
done
stamp "$name done"

#!/usr/bin/env bash
# Every detector family on the embedded set (the demo's data: 600 train / 150 val images of 128 px):
# train the small teacher, cache it, distill the tiny student from the cache, train the tiny student alone,
# and print each model's COCO AP. One chain per family, run side by side.
#   bench/embedded_families.sh OUT [DEVICE] [FAMILY ...]      (default: cpu; all four families)
# Extra recipe overrides for every command (e.g. a shorter CPU schedule) go in $SET, a smaller set in
# $N_TRAIN / $N_VAL, e.g.
#   N_TRAIN=200 N_VAL=60 SET="teacher_train.epochs=6 train.epochs=4" bench/embedded_families.sh runs/emb cpu gfl
set -euo pipefail
out=${1:?usage: bench/embedded_families.sh OUT [DEVICE] [FAMILY ...]}
device=${2:-cpu}
shift $(( $# > 1 ? 2 : 1 ))
families=${*:-retinanet fcos fasterrcnn gfl}
py=${PYTHON:-python3}
mkdir -p "$out"
[ -d "$out/data" ] || $py -c "
from frs_cli.data.synth import SynthConfig, generate
generate('$out/data', SynthConfig(train=${N_TRAIN:-600}, val=${N_VAL:-150}, size=128, seed=0, min_object=16.0, max_objects=4))"

chain() {
  local fam=$1 recipe=pipelines/embedded_$1.toml d=$out/$1
  [ "$fam" = retinanet ] && recipe=pipelines/demo.toml
  local sets=(--set "data.root=\"$out/data\"")
  for s in ${SET:-}; do sets+=(--set "$s"); done
  local t=(--set "teacher.weights=\"$d/teacher/model_final.pt\"")
  local t0=$SECONDS
  $py -m frs_cli train -p "$recipe" --role teacher --out "$d/teacher" --device "$device" "${sets[@]}"
  $py -m frs_cli teacher-cache -p "$recipe" --out "$d/cache.zarr" --device "$device" "${sets[@]}" "${t[@]}"
  $py -m frs_cli distill -p "$recipe" --cache "$d/cache.zarr" --out "$d/student_frs" --device "$device" "${sets[@]}" "${t[@]}"
  $py -m frs_cli train -p "$recipe" --role student --out "$d/student_plain" --device "$device" "${sets[@]}"
  echo "$fam done in $((SECONDS - t0)) s"
}

for fam in $families; do chain "$fam" > "$out/$fam.log" 2>&1 & done
wait
for fam in $families; do
  $py - "$out/$fam" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
row = []
for run in ("teacher", "student_plain", "student_frs"):
    evals = [json.loads(x)["eval"] for x in (d / run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    row.append(f"{run} AP {100 * evals[-1]['AP']:.1f} AP50 {100 * evals[-1]['AP50']:.1f}" if evals else f"{run} -")
print(f"{d.name:11s} " + " | ".join(row))
PY
done

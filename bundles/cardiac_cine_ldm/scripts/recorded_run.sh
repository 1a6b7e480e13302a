#!/usr/bin/env bash
# The recorded evaluation run of docs/README.md: the three training stages, balanced synthesis and the evaluation
# on the built-in cardiac cohort (240 subjects, seed 0, 64 px) at the bundle's default settings (the learning rate,
# given here as the run gave it, is the default since).
#
#   bash bundles/cardiac_cine_ldm/scripts/recorded_run.sh OUT_DIR [extra --key value overrides for every stage]
#
# Every stage resumes from its checkpoints, and synthesis skips finished items, so rerunning after a kill
# continues where it stopped. Timings go to OUT_DIR/timings.txt.
set -euo pipefail
out=${1:?usage: recorded_run.sh OUT_DIR [--key value ...]}
shift
bundle=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python}
common=(--output_dir "$out/eval" --model_dir "$out/models" --phantom_dir "$out/cardiac_phantom" --seed 0 "$@")
lr=(--learning_rate 3e-4)

stage() {
    local name=$1
    shift
    local start=$SECONDS
    "$python" -m monai.bundle run run --config_file "$bundle/configs/$name.yaml" "${common[@]}" "$@"
    echo "$name $((SECONDS - start)) s" >>"$out/timings.txt"
}

mkdir -p "$out"
stage train_autoencoder "${lr[@]}"
stage train_diffusion "${lr[@]}"
stage train_controlnet "${lr[@]}"
stage inference --target largest
stage evaluate --synthetic_manifest "$out/eval/synthetic/synthetic.csv" --fit_reference_models true

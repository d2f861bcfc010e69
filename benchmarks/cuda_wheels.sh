#!/usr/bin/env bash
# The wheels benchmarks/cuda_check.sh needs on the lent GPU machine (Python 3.12, torch 2.11 and numpy, scipy,
# pillow, matplotlib, pyyaml, tqdm, tensorboard, scikit-image, einops, pytest, pytest-xdist, pytest-timeout already
# there; no network), fetched here for Python 3.12 on x86-64 Linux, with --no-deps: every one's own requirements
# are on that image (torch, numpy, packaging, typing-extensions).
#
#   benchmarks/cuda_wheels.sh [DIR]    # default DIR: .cuda_wheels (ignored by git); `make cuda-wheels`
#   benchmarks/cuda_wheels.sh --names  # the distribution names, one a line (cuda_check.sh --wheels checks them)
#
# The list is what the check's steps import and the image lacks, traced on CPU (the CUDA tests' modules, step_cost.py,
# the LiTS bundle epoch): monai, pytorch-ignite, nibabel (NIfTI), av (tests/helpers/dataset_files.py writes the POCUS
# test videos with it), and the demo CT's package (data files only). pydicom, pylibjpeg, pynrrd, jsonschema and
# fire are not imported on these paths (the dry run passes with them hidden). The versions are the ones this
# repository's tests pass with here.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3

SPECS=(
    monai==1.6.1
    pytorch-ignite==0.5.5
    nibabel==5.4.2
    av==18.1.0
    "${DEMO_DATA_SPEC:-liver-ct-segmentation-package==1.6.0}"
)
# what travels with the working tree to the device machine, at most (the run tool's limit is 64 MiB)
BUDGET_MIB=${BUDGET_MIB:-56}

if [[ "${1:-}" == "--names" ]]; then
    for spec in "${SPECS[@]}"; do echo "${spec%%[=<>!~ ]*}"; done
    exit 0
fi
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    sed -n '2,14p' "$0"
    exit 0
fi
DIR=${1:-.cuda_wheels}
mkdir -p "$DIR"

PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$DIR" "${SPECS[@]}"

# one wheel of each (two versions of one stop the install there), none besides them
status=0
for spec in "${SPECS[@]}"; do
    name=$(echo "${spec%%[=<>!~ ]*}" | tr 'A-Z.-' 'a-z__')
    version=${spec#*==}
    mapfile -t found < <(find "$DIR" -maxdepth 1 -iname "${name}-*.whl" -printf '%f\n')
    for f in "${found[@]}"; do
        if [[ "$spec" == *==* && "${f,,}" != "${name}-${version,,}-"* ]]; then
            echo "cuda_wheels: removing $f (not $spec)"
            rm -f "$DIR/$f"
        fi
    done
done
listed=$(bash "$0" --names | tr 'A-Z.-' 'a-z__')
for f in "$DIR"/*.whl; do
    base=$(basename "$f")
    if ! grep -qx "$(echo "${base%%-*}" | tr 'A-Z.-' 'a-z__')" <<< "$listed"; then
        echo "cuda_wheels: FAILED: $base in $DIR is not in the list (cuda_check.sh --wheels would refuse it)" >&2
        status=1
    fi
done
[[ $status -eq 0 ]] || exit 1

ls -l "$DIR"/*.whl | awk '{printf "%10.1f MiB  %s\n", $5 / 2^20, $NF}'
wheels=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | du -cb --files0-from=- 2> /dev/null | tail -1 | cut -f1)
total=$((wheels + tree))
awk -v w="$wheels" -v t="$tree" -v b="$BUDGET_MIB" 'BEGIN {
    printf "cuda_wheels: wheels %.1f MiB + tracked tree %.1f MiB = %.1f MiB (budget %d MiB of the 64 MiB that travel)\n",
        w / 2^20, t / 2^20, (w + t) / 2^20, b }'
if (( total > BUDGET_MIB * 1024 * 1024 )); then
    echo "cuda_wheels: FAILED: over the ${BUDGET_MIB} MiB budget" >&2
    exit 1
fi
echo "cuda_wheels: OK; on the device: carry ['$DIR'], command: bash benchmarks/cuda_check.sh --wheels $DIR"

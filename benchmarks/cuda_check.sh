#!/usr/bin/env bash
# Every CUDA claim of monai-metalr in one run (under 8 minutes on one modern GPU), from the repository root:
#
#   benchmarks/cuda_check.sh [OUT_DIR]          # default OUT_DIR: cuda_check_output
#   benchmarks/cuda_check.sh --dry-run [OUT_DIR] # on CPU, under a minute: every step exists and parses
#   benchmarks/cuda_check.sh --wheels DIR [--dry-run] [OUT_DIR]  # first install DIR's wheels (make cuda-wheels)
#
# (a) the CUDA tests: no host sync in the meta step (set_sync_debug_mode("error")) with fused Adam, capturable
#     AdamW and fused SGD, and inside an amp + GradScaler SupervisedTrainer with MetaLRHandler; a torch.compile'd
#     network; the bundles' gpu data pipeline on the device (LiTS and the three 2D bundles);
# (b) benchmarks/step_cost.py --device cuda --amp: ResNet-18 2D batch 32 at 224^2 and the 3D U-Net batch 2 at
#     96x96x64; plain / MetaLR interval 1 / interval 4 / authors' style;
# (c) one epoch of the LiTS bundle on the real demo CT with the gpu pipeline, 60 iterations (iterations_per_epoch):
#     data wait vs iteration time;
# (d) OUT_DIR/cuda_check.json (every figure) and OUT_DIR/cuda_check.md (the tables for docs/benchmarks.md).
# Any failed, skipped or missing test, unexpected host sync, failed check or step over its time limit stops the
# script with a non-zero exit and a line "cuda_check: FAILED ..." on stderr.
#
# Needs: $PY (default .venv/bin/python, else python3) with a CUDA build of torch, this package installed with its
# test extra (pip install -e ".[test]") and the demo CT (pip install --no-deps liver-ct-segmentation-package==1.6.0,
# as `make demo` does). MEMORY_JOBS (default 4) step_cost memory processes share the GPU at once.
# --wheels DIR (the lent GPU machine: no network, no monai): pip installs exactly the wheels benchmarks/cuda_wheels.sh
# lists from DIR, --no-index --no-deps, into $CUDA_SITE (default /tmp/cuda_site; $OUT_DIR/cuda_site with --dry-run),
# and runs every step with PYTHONPATH=<repo>:$CUDA_SITE; the interpreter's own torch stays. It refuses a DIR that is
# missing, lacks one of the wheels (named) or holds another. Without --wheels, ./.cuda_wheels is used the same way
# when it exists and $PY cannot import monai. Relative paths are taken from the repository root.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3

DRY_RUN=0
OUT=cuda_check_output
WHEELS=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --wheels)
            [[ $# -ge 2 && -n "$2" ]] || { echo "cuda_check: --wheels needs a folder (make cuda-wheels writes .cuda_wheels)" >&2; exit 2; }
            WHEELS=$2
            shift ;;
        --wheels=*) WHEELS=${1#--wheels=} ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        -*) echo "cuda_check: unknown option $1" >&2; exit 2 ;;
        *) OUT=$1 ;;
    esac
    shift
done

STEP="setup"
trap 'rc=$?; echo "cuda_check: FAILED in step \"$STEP\" (exit $rc); see the output above" >&2; exit $rc' ERR

if [[ -z "$WHEELS" && -d .cuda_wheels ]] && ! "$PY" -c "import monai" 2> /dev/null; then
    echo "cuda_check: $PY cannot import monai; using the wheels in .cuda_wheels"
    WHEELS=.cuda_wheels
fi
if [[ -n "$WHEELS" ]]; then
    # exactly one wheel of each listed distribution, and nothing else: a stray torch or numpy would shadow the image's
    STEP="wheels"
    if [[ ! -d "$WHEELS" ]]; then
        echo "cuda_check: FAILED: no wheel folder $WHEELS (run make cuda-wheels here and carry .cuda_wheels)" >&2
        exit 2
    fi
    mapfile -t WANTED < <(bash benchmarks/cuda_wheels.sh --names | tr 'A-Z.-' 'a-z__')
    bad=0
    for name in "${WANTED[@]}"; do
        mapfile -t found < <(find "$WHEELS" -maxdepth 1 -iname "${name}-*.whl")
        if [[ ${#found[@]} -eq 0 ]]; then
            echo "cuda_check: FAILED: $WHEELS has no wheel of $name (run make cuda-wheels)" >&2
            bad=1
        elif [[ ${#found[@]} -gt 1 ]]; then
            echo "cuda_check: FAILED: $WHEELS has ${#found[@]} wheels of $name: ${found[*]}" >&2
            bad=1
        fi
    done
    while IFS= read -r f; do
        name=$(basename "$f")
        name=$(echo "${name%%-*}" | tr 'A-Z.-' 'a-z__')
        if ! printf '%s\n' "${WANTED[@]}" | grep -qx "$name"; then
            echo "cuda_check: FAILED: $f is not a wheel this check installs (benchmarks/cuda_wheels.sh --names)" >&2
            bad=1
        fi
    done < <(find "$WHEELS" -maxdepth 1 -name '*.whl')
    [[ $bad -eq 0 ]] || exit 2
fi
mkdir -p "$OUT"

# (a) every test must run and pass: pytest's ids, checked one by one below
TESTS=(
    "tests/core/test_fused_meta.py::test_cuda_meta_step_makes_no_host_sync[adam_fused]"
    "tests/core/test_fused_meta.py::test_cuda_meta_step_makes_no_host_sync[adamw_capturable]"
    "tests/core/test_fused_meta.py::test_cuda_meta_step_makes_no_host_sync[sgd_fused]"
    "tests/core/test_cuda.py::test_sync_debug_mode_catches_a_host_sync"
    "tests/core/test_cuda.py::test_amp_gradscaler_trainer_with_metalr_makes_no_host_sync_in_the_meta_step[adam]"
    "tests/core/test_cuda.py::test_amp_gradscaler_trainer_with_metalr_makes_no_host_sync_in_the_meta_step[adam_fused]"
    "tests/core/test_cuda.py::test_torch_compile_network_trains_with_metalr_under_amp"
    "tests/bundle/test_gpu_pipeline.py::test_lits_gpu_pipeline_keeps_the_cache_on_the_device[cuda]"
    "tests/bundle/test_gpu_pipeline.py::test_classification_gpu_pipeline_caches_the_images_on_the_device[cuda-busi_classification]"
    "tests/bundle/test_gpu_pipeline.py::test_classification_gpu_pipeline_caches_the_images_on_the_device[cuda-pocus_classification]"
    "tests/bundle/test_gpu_pipeline.py::test_classification_gpu_pipeline_caches_the_images_on_the_device[cuda-chestxray_classification]"
)
# (b) the realistic sizes; the JSON of the report names them
# memory is measured in fresh processes, MEMORY_JOBS at once (each counts only its own allocations)
STEP_COST=(benchmarks/step_cost.py --device cuda --amp --memory-jobs "${MEMORY_JOBS:-4}"
           --resnet-batch 32 --resnet-size 224 --unet-batch 2 --unet-size 96 96 64)
SIZES='{"resnet18_2d": "32 x 3 x 224 x 224", "unet3d": "2 x 1 x 96 x 96 x 64"}'
# (c)
BUNDLE_EPOCH=(benchmarks/cuda_check.py bundle --work-dir "$OUT/bundle_work" --iterations 60)

# seconds each step may take; together under 8 minutes
LIMIT_TESTS=150
LIMIT_STEP_COST=160
LIMIT_BUNDLE=110
LIMIT_REPORT=10

run_step() {  # run_step NAME LIMIT_S COMMAND...
    STEP=$1
    local limit=$2
    shift 2
    echo "== cuda_check: $STEP (limit ${limit} s): $*"
    local start=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        echo "cuda_check: FAILED: step \"$STEP\" ran past its ${limit} s limit" >&2
        exit 1
    elif [[ $rc -ne 0 ]]; then
        echo "cuda_check: FAILED: step \"$STEP\" exited $rc" >&2
        exit "$rc"
    fi
    echo "== cuda_check: $STEP done in $((SECONDS - start)) s"
}

if [[ -n "$WHEELS" ]]; then
    if [[ $DRY_RUN -eq 1 ]]; then SITE=${CUDA_SITE:-$OUT/cuda_site}; else SITE=${CUDA_SITE:-/tmp/cuda_site}; fi
    mkdir -p "$SITE"
    SITE=$(cd "$SITE" && pwd)
    run_step "install wheels" 60 "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps \
        --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    # the wheels' packages come from SITE, torch from the interpreter, and the demo CT's files are found
    STEP="wheels import"
    "$PY" - "$SITE" <<'PYCHECK'
import sys
from pathlib import Path

site = Path(sys.argv[1])
import av, ignite, monai, nibabel, torch  # noqa: E401

from monai_metalr.data.demo_ct import find_demo_ct

for mod in (monai, ignite, nibabel, av):
    where = Path(mod.__file__).resolve()
    if site not in where.parents:
        sys.exit(f"cuda_check: FAILED: {mod.__name__} was imported from {where}, not from {site}")
if site in Path(torch.__file__).resolve().parents:
    sys.exit(f"cuda_check: FAILED: torch came from {site}; the interpreter's own torch must be used")
image, _ = find_demo_ct()
if site not in image.resolve().parents:
    sys.exit(f"cuda_check: FAILED: the demo CT {image} is not the one installed in {site}")
print(f"cuda_check: wheels installed in {site}: monai {monai.__version__}, ignite {ignite.__version__}, "
      f"nibabel {nibabel.__version__}, av {av.__version__}, demo CT {image.name}; torch {torch.__version__} "
      f"from {Path(torch.__file__).parent}")
PYCHECK
fi
STEP="imports"
if ! "$PY" -c "import monai, ignite, nibabel" 2> /dev/null; then
    echo "cuda_check: FAILED: $PY cannot import monai, ignite and nibabel; on a machine without them (the lent GPU)" \
        "run make cuda-wheels where pip works, carry .cuda_wheels and pass --wheels .cuda_wheels" >&2
    exit 2
fi

if [[ $DRY_RUN -eq 1 ]]; then
    STEP="syntax"
    bash -n "$0"
    echo "cuda_check --dry-run: script syntax OK"
    # every test id exists: pytest collects exactly these (an unknown id is a collection error)
    STEP="collect tests"
    collected=$("$PY" -m pytest --collect-only -q -p no:cacheprovider "${TESTS[@]}" | grep -c '::' || true)
    if [[ "$collected" -ne "${#TESTS[@]}" ]]; then
        echo "cuda_check: FAILED: pytest collected $collected of the ${#TESTS[@]} CUDA test ids" >&2
        exit 1
    fi
    echo "cuda_check --dry-run: the ${#TESTS[@]} CUDA test ids are collected"
    # every option of step_cost.py is accepted and every workload builds at the requested sizes (meta device)
    run_step "step_cost options" 60 "$PY" "${STEP_COST[@]}" --out "$OUT/step_cost.json" --dry-run
    # the LiTS bundle with the gpu pipeline and its device on CPU: parsed, cached, checked, 2 tiny iterations timed
    run_step "bundle epoch on CPU" 90 "$PY" "${BUNDLE_EPOCH[@]}" --out "$OUT/bundle_epoch.json" --dry-run
    # the report step accepts its options and writes both files from the dry-run's JSON
    run_step "report" "$LIMIT_REPORT" "$PY" benchmarks/cuda_check.py report --out-dir "$OUT" \
        --bundle "$OUT/bundle_epoch.json" --step-cost-sizes "$SIZES"
    "$PY" benchmarks/cuda_check.py tests --help > /dev/null
    echo "cuda_check --dry-run: OK (nothing ran on a GPU)"
    exit 0
fi

STEP="CUDA present"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "cuda_check: FAILED: torch sees no CUDA device (torch $("$PY" -c 'import torch; print(torch.__version__)'))" >&2
    exit 1
fi
"$PY" -c "import torch; print('cuda_check: ' + torch.cuda.get_device_name(0) + ', torch ' + torch.__version__)"

PYTEST_TIMEOUT=()  # pytest-timeout (the test extra) names a hung test; the step's own limit holds without it
if "$PY" -c "import pytest_timeout" 2> /dev/null; then PYTEST_TIMEOUT=(--timeout "$LIMIT_TESTS"); fi
run_step "CUDA tests" "$LIMIT_TESTS" "$PY" -m pytest -q -rA -p no:cacheprovider ${PYTEST_TIMEOUT[@]+"${PYTEST_TIMEOUT[@]}"} \
    --junitxml "$OUT/pytest.xml" "${TESTS[@]}"
run_step "CUDA tests summary" "$LIMIT_REPORT" "$PY" benchmarks/cuda_check.py tests --junit "$OUT/pytest.xml" \
    --out "$OUT/tests.json" "${TESTS[@]}"
run_step "step cost" "$LIMIT_STEP_COST" "$PY" "${STEP_COST[@]}" --out "$OUT/step_cost.json"
run_step "bundle epoch" "$LIMIT_BUNDLE" "$PY" "${BUNDLE_EPOCH[@]}" --out "$OUT/bundle_epoch.json"
run_step "report" "$LIMIT_REPORT" "$PY" benchmarks/cuda_check.py report --out-dir "$OUT" --tests "$OUT/tests.json" \
    --step-cost "$OUT/step_cost.json" --step-cost-sizes "$SIZES" --bundle "$OUT/bundle_epoch.json"
echo "cuda_check: OK in ${SECONDS} s; tables in $OUT/cuda_check.md, every figure in $OUT/cuda_check.json"

#!/usr/bin/env bash
# The whole study of docs/results.md, as it is run: two streams in parallel, one per CPU core (about 6-7 hours on
# this project's 2-core machine; outputs in study_output/). Every script resumes where it stopped: rerun to continue.
# Needs `make setup` + the demo CT (`make demo` installs it) and, for the 3D pre-training CT, Debian's apt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-study_output}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
$PY -m monai_metalr.data.downloads all  # the data of docs/datasets.md (make study-data; reused when present)

two_d() {
    # (a) 2D: ImageNet EfficientNet-Lite0 on tiles of the real liver CT: every strategy x 10 seeds, then every
    # baseline again with MetaLR's wall-clock budget, then data efficiency
    $PY studies/liver_ct_tiles.py --out "$OUT/tiles" --threads 1
    $PY studies/liver_ct_tiles.py --out "$OUT/tiles" --threads 1 --equal_time
    $PY studies/liver_ct_tiles.py --out "$OUT/tiles" --threads 1 --fractions 0.1 0.25 0.5 --seeds 0 1 2
    # controls: MetaLR whose LRs cannot move, and one LR with the head at head_lr (where MetaLR starts)
    $PY studies/liver_ct_tiles.py --out "$OUT/tiles" --threads 1 --strategies metalr --hyper_lr 0 --variant @0
    $PY studies/liver_ct_tiles.py --out "$OUT/tiles" --threads 1 --strategies all_layers --variant +head \
        --strategy_kwargs '{"separate_head": true}'
}

transfer_and_3d() {
    # (d) the chest X-ray bundle end to end on 16 real Kermany X-rays (the files read, train and evaluate)
    $PY studies/kermany_bundle.py --out "$OUT/kermany"
    # (c) controlled transfer: one source model, targets that change only the appearance or only the labels
    $PY studies/controlled_transfer.py --out "$OUT/transfer" --threads 1 --epochs 10 --seeds 0 1 2 3 4 5 6 7 8 9
    # (b) 3D: Models-Genesis-style pre-training on the head CT of invesalius-examples, then liver segmentation
    if [ ! -f "$OUT/invesalius/usr/share/doc/invesalius-examples/examples/Cranium.inv3" ]; then
        (mkdir -p "$OUT/invesalius" && cd "$OUT/invesalius" && apt-get download invesalius-examples \
            && dpkg-deb -x invesalius-examples_*_all.deb .)
    fi
    $PY studies/genesis_pretrain.py --ct "$OUT/invesalius/usr/share/doc/invesalius-examples/examples/Cranium.inv3" \
        --out "$OUT/genesis" --threads 1
    $PY studies/liver_seg_3d.py --pretrained "$OUT/genesis/genesis_unet3d.pt" --out "$OUT/seg3d" --threads 1
    $PY studies/liver_seg_3d.py --pretrained "$OUT/genesis/genesis_unet3d.pt" --out "$OUT/seg3d" --threads 1 \
        --equal_time  # every baseline again with MetaLR's training time
    # (e) real medical pre-training in 3D: deepbet's brain-extraction U-Net on Colin27's hemispheres (MRI)
    $PY studies/brain_mri_3d.py --out "$OUT/brain3d" --threads 1 --strategies metalr all_layers  # 160 steps x 5 seeds
}

two_d > "$OUT/two_d.log" 2>&1 &
first=$!
transfer_and_3d > "$OUT/transfer_and_3d.log" 2>&1 &
second=$!
status=0
wait "$first" || { echo "the 2D stream failed: see $OUT/two_d.log" >&2; status=1; }
wait "$second" || { echo "the transfer/3D stream failed: see $OUT/transfer_and_3d.log" >&2; status=1; }
[ "$status" -eq 0 ] || exit "$status"

$PY studies/report.py --tiles "$OUT/tiles" --seg3d "$OUT/seg3d" --transfer "$OUT/transfer" --brain3d "$OUT/brain3d" \
    --out "$OUT/report"

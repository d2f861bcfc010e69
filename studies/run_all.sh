#!/usr/bin/env bash
# The whole study of docs/results.md, as it was run (about 2.5 hours on 2 CPU cores; outputs in study_output/).
# Needs `make setup` + the demo CT (`make demo` installs it) and, for the 3D pre-training CT, Debian's apt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-study_output}
mkdir -p "$OUT"

# (a) 2D: EfficientNet-Lite0 (ImageNet) on tiles of the real liver CT, 7 strategies x 5 seeds, then data efficiency
$PY studies/liver_ct_tiles.py --out "$OUT/tiles" --threads 1
$PY studies/liver_ct_tiles.py --out "$OUT/tiles" --threads 1 --fractions 0.1 0.25 0.5 --seeds 0 1 2
# MetaLR with a 10x larger hyper-LR (the LRs move more)
$PY studies/liver_ct_tiles.py --out "$OUT/tiles" --threads 1 --strategies metalr --hyper_lr 0.1 --variant @0.1
# controls: MetaLR whose LRs cannot move, and one LR with the head at head_lr (where MetaLR starts)
$PY studies/liver_ct_tiles.py --out "$OUT/tiles" --threads 1 --strategies metalr --hyper_lr 0 --variant @0 --seeds 0 1 2
$PY studies/liver_ct_tiles.py --out "$OUT/tiles" --threads 1 --strategies all_layers --variant +head \
    --strategy_kwargs '{"separate_head": true}' --seeds 0 1 2

# (b) 3D: Models-Genesis-style pre-training on the head CT of invesalius-examples, then liver segmentation
if [ ! -f "$OUT/invesalius/usr/share/doc/invesalius-examples/examples/Cranium.inv3" ]; then
    (mkdir -p "$OUT/invesalius" && cd "$OUT/invesalius" && apt-get download invesalius-examples \
        && dpkg-deb -x invesalius-examples_*_all.deb .)
fi
$PY studies/genesis_pretrain.py --ct "$OUT/invesalius/usr/share/doc/invesalius-examples/examples/Cranium.inv3" \
    --out "$OUT/genesis" --threads 1
$PY studies/liver_seg_3d.py --pretrained "$OUT/genesis/genesis_unet3d.pt" --out "$OUT/seg3d" --threads 1

$PY studies/report.py --tiles "$OUT/tiles" --seg3d "$OUT/seg3d" --out "$OUT/report"

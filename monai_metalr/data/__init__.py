"""Data readers for the LiTS liver CT segmentation bundle.

- :func:`lits_datalist` / :func:`lits_inference_list`: find the cases of a LiTS or MSD Task03_Liver dataset
  (layout detected automatically) and check their NIfTI headers, naming any broken file.
- :func:`split_cases`: a seeded case-level train / val / test split, stored in a JSON file and reused.
- :class:`LoadVolumed`: ``LoadImaged`` whose read errors name the file.
- :class:`CheckSegmentationd`: image/label shape, affine, label values and finite voxels, after loading.
- :data:`LITS_LABELS`: ``{"background": 0, "liver": 1, "tumour": 2}``.
- :func:`label_classes` / :func:`label_map`: the classes of a ``label_mode`` ("liver" or "liver_tumour").
- :func:`make_dataset`: memory (``CacheDataset``), disk (``PersistentDataset``) or no caching, by one key.
- :func:`write_demo_lits`: the real CT of ``liver-ct-segmentation-package`` as a small LiTS dataset.
"""

from __future__ import annotations

from .checks import CheckSegmentationd, LoadVolumed
from .datasets import LABEL_MODES, label_classes, label_map, make_dataset, split_subset
from .demo_ct import read_mrc, write_demo_lits
from .lits import LITS_LABELS, lits_datalist, lits_inference_list, split_cases

__all__ = [
    "LABEL_MODES",
    "LITS_LABELS",
    "CheckSegmentationd",
    "LoadVolumed",
    "label_classes",
    "label_map",
    "lits_datalist",
    "lits_inference_list",
    "make_dataset",
    "read_mrc",
    "split_cases",
    "split_subset",
    "write_demo_lits",
]

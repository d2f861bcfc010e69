"""Readers, datalists, splits and loading transforms for the bundles.

3D segmentation (LiTS bundle):

- :func:`lits_datalist` / :func:`lits_inference_list`: find the cases of a LiTS or MSD Task03_Liver dataset
  (layout detected automatically) and check their NIfTI headers, naming any broken file.
- :func:`split_cases`: a seeded case-level train / val / meta / test split (val chooses the best model, meta feeds
  MetaLR's meta loader), stored in a JSON file and reused.
- :class:`LoadVolumed`: ``LoadImaged`` whose read errors name the file and that checks the gzip CRC-32 of ``.nii.gz``
  files as it reads their voxels (:class:`~monai_metalr.data.checks.CheckedNibabelReader`).
- :class:`CheckSegmentationd`: image/label shape, affine, label values and finite voxels, after loading.
- :class:`AtomicSaveImaged`: MONAI's ``SaveImaged`` writing each prediction atomically; a full disk is an ``OSError``
  naming the file and the errno.
- :data:`LITS_LABELS`, :func:`label_classes` / :func:`label_map`: the classes of a ``label_mode``.
- :func:`make_dataset`: memory (``CacheDataset``), disk (``PersistentDataset``) or no caching, by one key.
- :func:`make_loader`, :data:`PIPELINES`: the ``pipeline`` key of every bundle, ``"cpu"`` (host transforms,
  worker processes) or ``"gpu"`` (the cache and the random transforms on the device, ``ThreadDataLoader``).
- :func:`write_demo_lits`: the real CT of ``liver-ct-segmentation-package`` as a small LiTS dataset;
  :func:`read_inv3`: the CT of an InVesalius project (Debian's ``invesalius-examples`` head CT).

2D classification (BUSI, POCUS, chest X-ray bundles):

- :func:`busi_datalist`, :func:`pocus_datalist` (+ :func:`pocus_folds_pickle`, :func:`folds_to_datalist` for the
  MetaLR authors' 5-fold pickle), :func:`chestxray_datalist`: the published layouts, as MONAI datalists.
- :func:`split_classification`: stratified, grouped (patient / video), seeded train / val / meta / test splits and
  k-fold, stored as JSON; :func:`pocus_split`: the POCUS bundle's split (by video, or whole folds of the pickle).
- :class:`LoadFramed`: PNG/JPEG, DICOM and video frames as ``[C, H, W]`` tensors;
  :func:`classification_inference_list`: every image, DICOM file and video under a folder, frames sampled by
  :func:`sample_frame_indices`.
- :func:`read_dicom_frame` / :func:`dicom_frame_info`, :func:`read_video_frames` / :func:`video_frame_info`.

Bad input: every reader names the file it cannot use and says why (``ValueError``; ``FileNotFoundError`` for a
missing file). The builders that scan a dataset folder (:func:`lits_datalist`, :func:`lits_inference_list`,
:func:`busi_datalist`, :func:`chestxray_datalist`, :func:`pocus_datalist`, :func:`classification_inference_list`)
take ``on_error="raise"`` (default) or ``"skip"``: skip leaves a broken file or case out with a warning on the
``monai_metalr`` logger and a summary count; layout problems (missing partners, duplicate case ids) always raise.
Damage that only shows when the voxels or pixels are decoded (NaN, label values outside the task, a corrupt zlib
or gzip stream, a blank scan) is skipped when the data are loaded: :func:`make_dataset` with ``on_error="skip"``
loads every item once while it builds the dataset (for the memory and disk caches that is the cache fill), and the
inference lists decode every image with ``"skip"``; they also list every file they leave out, with the reason, in
a ``report_file`` (the bundles' ``not_predicted.csv``).
"""

from __future__ import annotations

# bundle configs call "$monai_metalr.data.subsets.training_subset(...)", an attribute path: the submodule must be
# loaded with the package, not only when some other module happens to import it
from . import subsets  # noqa: F401
from .busi import BUSI_CLASSES, busi_datalist, merge_masks
from .checks import CheckSegmentationd, LoadVolumed
from .chestxray import CXR_CLASSES, chestxray_datalist
from .colin27 import (
    AAL_REGION_SCHEMES,
    Colin27,
    aal_region_map,
    colin27_segmentation_datalist,
    colin27_slice_items,
    read_aal_labels,
    read_colin27,
)
from .datasets import LABEL_MODES, label_classes, label_map, make_dataset, split_subset
from .demo_ct import read_mrc, write_demo_lits
from .dicom import dicom_frame_info, read_dicom_frame
from .frames import sample_frame_indices
from .image2d import LoadFramed, classification_inference_list, read_frame
from .inv3 import read_inv3
from .kermany_val import KERMANY_NAME_RULES, arrange_kermany_val, kermany_class_of
from .lits import LITS_LABELS, lits_datalist, lits_inference_list
from .meta_batches import meta_loader
from .nrrd_header import NRRD_READER, NrrdHeader, check_nrrd_pair, read_nrrd_header
from .pipelines import PIPELINES, check_pipeline, make_loader
from .pocus import POCUS_CLASSES, folds_to_datalist, pocus_classes, pocus_datalist, pocus_folds_pickle
from .pyradiomics_cases import PYRADIOMICS_CASES, check_label_values, pyradiomics_datalist
from .saving import AtomicSaveImaged
from .splits import pocus_split, split_cases, split_classification
from .video import VIDEO_EXTENSIONS, read_video_frames, video_frame_info

# the fetch functions are imported on first access: `python -m monai_metalr.data.downloads` must find the module
# not yet imported by this package (runpy warns, and would run a second copy of it, otherwise)
_DOWNLOADS = ("SOURCES", "FetchError", "default_root", "fetch", "fetched_path", "is_fetched")


def __getattr__(name: str):
    if name in _DOWNLOADS:
        from . import downloads

        return getattr(downloads, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AAL_REGION_SCHEMES",
    "BUSI_CLASSES",
    "CXR_CLASSES",
    "KERMANY_NAME_RULES",
    "LABEL_MODES",
    "LITS_LABELS",
    "NRRD_READER",
    "PIPELINES",
    "POCUS_CLASSES",
    "PYRADIOMICS_CASES",
    "SOURCES",
    "VIDEO_EXTENSIONS",
    "AtomicSaveImaged",
    "CheckSegmentationd",
    "Colin27",
    "FetchError",
    "LoadFramed",
    "LoadVolumed",
    "NrrdHeader",
    "aal_region_map",
    "arrange_kermany_val",
    "busi_datalist",
    "check_label_values",
    "check_nrrd_pair",
    "check_pipeline",
    "chestxray_datalist",
    "classification_inference_list",
    "colin27_segmentation_datalist",
    "colin27_slice_items",
    "default_root",
    "dicom_frame_info",
    "fetch",
    "fetched_path",
    "folds_to_datalist",
    "is_fetched",
    "kermany_class_of",
    "label_classes",
    "label_map",
    "lits_datalist",
    "lits_inference_list",
    "make_dataset",
    "make_loader",
    "merge_masks",
    "meta_loader",
    "pocus_classes",
    "pocus_datalist",
    "pocus_folds_pickle",
    "pocus_split",
    "pyradiomics_datalist",
    "read_aal_labels",
    "read_colin27",
    "read_dicom_frame",
    "read_frame",
    "read_inv3",
    "read_mrc",
    "read_nrrd_header",
    "read_video_frames",
    "sample_frame_indices",
    "split_cases",
    "split_classification",
    "split_subset",
    "video_frame_info",
    "write_demo_lits",
]

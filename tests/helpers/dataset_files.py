"""Good files the tests write, in the real formats and dataset layouts: NIfTI volumes and LiTS cases, PNG / JPEG /
TIFF images, DICOM, MP4 and GIF videos, the BUSI, Kermany chest X-ray and POCUS folders, InVesalius projects and a
Models Genesis checkpoint. The broken ones are made from these in ``bad_files.py``."""

from __future__ import annotations

import io
import plistlib
import tarfile
from collections import OrderedDict
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import torch
from PIL import Image

SHAPE = (8, 8, 6)
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])
SIZE = 16
CODEC = "mpeg4" if "mpeg4" in av.codecs_available else "libx264"


# ---------------------------------------------------------------------------------------------------------------------
# NIfTI: single volumes, LiTS segmentations, the bundles' synthetic CT


def write_nii(
    path: Path, data: np.ndarray | None = None, affine: np.ndarray = AFFINE, shape: tuple[int, ...] = SHAPE
) -> Path:
    """A real NIfTI file (``.nii`` or ``.nii.gz`` from the suffix); random float32 voxels by default."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = np.random.default_rng(len(path.name)).normal(size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def segmentation(shape: tuple[int, ...] = SHAPE, value: float | None = None, dtype: type = np.uint8) -> np.ndarray:
    """A LiTS segmentation (liver 1, tumour 2); ``value`` is written to one voxel."""
    seg = np.zeros(shape, dtype)
    seg[2:6, 2:6, 1:4] = 1
    seg[3:5, 3:5, 2] = 2
    if value is not None:
        seg[0, 0, 0] = value
    return seg


def big_gz(path: Path) -> Path:
    """A ``.nii.gz`` large enough that cutting it in half leaves the header readable."""
    data = np.random.default_rng(0).normal(size=(32, 32, 16)).astype(np.float32)
    return write_nii(path, data)


def synthetic_ct(shape: tuple[int, int, int], seed: int, tumour: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A body (soft tissue) in air with an ellipsoidal 'liver' (HU ~ 100) and a darker 'tumour' inside it."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    image = np.full(shape, -1000.0, dtype=np.float32)
    body = (grid[0] ** 2 + grid[1] ** 2) < 0.9
    image[body] = 20.0
    centre = rng.uniform(-0.2, 0.2, size=3)[:, None, None, None]
    liver = (((grid - centre) / np.array([0.5, 0.4, 0.7])[:, None, None, None]) ** 2).sum(0) < 1
    label = liver.astype(np.uint8)
    image[liver] = 100.0
    if tumour:
        lesion = (((grid - centre) / 0.18) ** 2).sum(0) < 1
        label[lesion] = 2
        image[lesion] = 40.0
    image += rng.normal(0, 10, size=shape).astype(np.float32)
    return image, label


def write_case(image_path: Path, label_path: Path | None, shape=(24, 24, 16), seed=0, spacing=(1.5, 1.5, 2.0)):
    """Write one NIfTI case (``.nii`` or ``.nii.gz`` from the name); returns the affine."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [10.0, 20.0, -30.0]
    image, label = synthetic_ct(shape, seed)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), str(image_path))
    if label_path is not None:
        label_path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(label, affine), str(label_path))
    return affine


# ---------------------------------------------------------------------------------------------------------------------
# 2D images, DICOM, videos


def img(path: Path, array: np.ndarray | None = None, fmt: str | None = None, mode: str | None = None, **kw) -> Path:
    """A real image (format from the name unless ``fmt``): random 16x16 grey by default."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array is None:
        array = np.random.default_rng(len(path.name)).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    im = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    im.save(path, format=fmt, **kw)
    return path


def palette(path: Path, rgb: np.ndarray) -> Path:
    """A palette (mode "P") PNG of an RGB array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).convert("P").save(path)
    return path


def dcm(path: Path, array: np.ndarray | None = None, rows: int | None = None) -> Path:
    """A real, minimal Secondary Capture DICOM file: uint16 MONOCHROME2, or float32 (Float Pixel Data)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    array = np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) if array is None else array
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "OT", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = array.shape
    if array.dtype.kind == "f":
        ds.BitsAllocated = 32
        ds.FloatPixelData = array.astype(np.float32).tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = array.astype(np.uint16).tobytes()
    if rows is not None:
        ds.Rows = rows
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def mp4(path: Path, n: int = 10, faststart: bool = False) -> Path:
    """A real MP4 of ``n`` 16x16 frames at 10 fps; ``faststart`` puts the header (moov) before the data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(CODEC, rate=10)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for k in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((SIZE, SIZE, 3), 20 * k, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def gif(path: Path, n: int = 6) -> Path:
    """A real animated GIF (also under another name) of ``n`` frames, 100 ms each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.new("RGB", (SIZE, SIZE), (30 * k, 0, 0)) for k in range(n)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# dataset folders: tiny ones for the readers' checks, and the classification bundles' size


def tiny_busi(root: Path) -> Path:
    """A BUSI folder of two good 16 x 16 cases per class (``make_busi``: five, the bundles' size)."""
    for cls in ("benign", "malignant", "normal"):
        for n in (1, 2):
            img(root / cls / f"{cls} ({n}).png")
            img(root / cls / f"{cls} ({n})_mask.png", np.zeros((SIZE, SIZE), np.uint8))
    return root


def tiny_cxr(root: Path) -> Path:
    """The Kermany layout, two 16 x 16 JPEGs per split and class (``make_cxr``: the bundles' size)."""
    for split in ("train", "val", "test"):
        for cls, stem in (("NORMAL", "IM-0001-0001"), ("PNEUMONIA", "person1_virus_1")):
            img(root / "chest_xray" / split / cls / f"{stem}.jpeg")
            img(root / "chest_xray" / split / cls / f"{stem[:-1]}2.jpeg")
    return root


def tiny_pocus(root: Path) -> Path:
    """A POCUS data/ folder of one MP4, one GIF and one still (``make_pocus``: the bundles' size)."""
    mp4(root / "pocus_videos" / "convex" / "Cov-clip.mp4", n=6)
    gif(root / "pocus_videos" / "convex" / "Reg-clip.gif", n=4)
    img(root / "pocus_images" / "convex" / "Pneu-image.png")
    return root


CLASSES = {
    "busi_classification": ["benign", "malignant", "normal"],
    "pocus_classification": ["covid", "pneumonia", "regular"],
    "chestxray_classification": ["NORMAL", "PNEUMONIA"],
}


def noise_png(path: Path, seed: int, size=(40, 48), mode="L") -> None:
    """A seeded random-noise image (grey, or RGB) of ``size`` pixels."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (*size, 3) if mode == "RGB" else size
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)


def noise_mp4(path: Path, seed: int, frames: int = 12) -> None:
    """A seeded random-noise 32 x 32 MP4 of ``frames`` frames at 10 fps."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def noise_gif(path: Path, seed: int, frames: int = 6) -> None:
    """A seeded random-noise 32 x 32 grey GIF of ``frames`` frames, 200 ms each."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), "L") for _ in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=200, loop=0)


def make_busi(root: Path) -> Path:
    base = root / "Dataset_BUSI_with_GT"
    for c, name in enumerate(CLASSES["busi_classification"]):
        for n in range(1, 6):
            noise_png(base / name / f"{name} ({n}).png", seed=10 * c + n)
            noise_png(base / name / f"{name} ({n})_mask.png", seed=99)
        noise_png(base / name / f"{name} (1)_mask_1.png", seed=98)  # a multifocal case
    return base


def make_pocus(root: Path) -> Path:
    data = root / "covid19_ultrasound" / "data"
    for c, prefix in enumerate(["Cov", "Pneu", "Reg"]):
        for k in range(4):  # 4 groups per class: test, val, meta and train get one each
            seed = 10 * c + k
            if k == 0:
                noise_mp4(data / "pocus_videos" / "convex" / f"{prefix}-clip{k}.mp4", seed)
            elif k == 1:
                (data / "pocus_videos" / "linear").mkdir(parents=True, exist_ok=True)
                noise_gif(data / "pocus_videos" / "linear" / f"{prefix}_loop{k}.gif", seed)
            else:
                noise_png(data / "pocus_images" / "convex" / f"{prefix}-image{k}.png", seed, mode="RGB")
    return data


def make_cxr(root: Path) -> Path:
    base = root / "chest_xray"
    for split, count in (("train", 6), ("val", 1), ("test", 2)):
        for n in range(count):
            for c, name in enumerate(CLASSES["chestxray_classification"]):
                pid = {"train": n, "val": 50 + n, "test": 100 + n}[split]  # distinct patients, as published
                stem = f"IM-{100 + pid:04d}-0001" if name == "NORMAL" else f"person{pid}_bacteria_{pid + 10}"
                path = base / split / name / f"{stem}.jpeg"
                path.parent.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng(100 * c + n + len(split))
                Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), "L").save(path, "JPEG")
    (base / "__MACOSX").mkdir()
    return base


MAKERS = {"busi_classification": make_busi, "pocus_classification": make_pocus,
          "chestxray_classification": make_cxr}


# ---------------------------------------------------------------------------------------------------------------------
# an InVesalius project; a Models Genesis checkpoint


def write_inv3(path: Path, volume: np.ndarray, spacing=(0.8, 0.8, 1.5), members: dict | None = None,
               plist: dict | None = None) -> Path:
    """An .inv3 as InVesalius writes it: every file in one temporary folder of a gzip-compressed tar."""
    main = plist if plist is not None else {
        "format_version": 1, "modality": "CT", "name": "test",
        "matrix": {"dtype": volume.dtype.name, "filename": "matrix.dat", "shape": list(volume.shape)},
        "spacing": list(spacing), "masks": {}, "surfaces": {},
    }
    files = {"main.plist": plistlib.dumps(main), "matrix.dat": volume.astype(volume.dtype.newbyteorder("<")).tobytes(),
             "mask_0.plist": b"<plist/>"}
    files.update(members or {})
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            if data is None:
                continue
            info = tarfile.TarInfo(f"tmpab12cd/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def genesis_table(n_class: int = 1) -> OrderedDict[str, list[int]]:
    """State dict names and shapes of MrGiovanni/ModelsGenesis pytorch/unet3d.py ``UNet3D(n_class)``, by hand.

    Written from the published architecture, not from the module under test: each ``LUConv`` is conv1 (3x3x3) + bn1
    (ContBatchNorm3d, a _BatchNorm with running stats); ``UpTransition`` registers ``up_conv`` before ``ops``.
    """
    conv_blocks = {  # prefix -> (in, out)
        "down_tr64.ops.0": (1, 32),
        "down_tr64.ops.1": (32, 64),
        "down_tr128.ops.0": (64, 64),
        "down_tr128.ops.1": (64, 128),
        "down_tr256.ops.0": (128, 128),
        "down_tr256.ops.1": (128, 256),
        "down_tr512.ops.0": (256, 256),
        "down_tr512.ops.1": (256, 512),
        "up_tr256.up_conv": (512, 512),
        "up_tr256.ops.0": (768, 256),
        "up_tr256.ops.1": (256, 256),
        "up_tr128.up_conv": (256, 256),
        "up_tr128.ops.0": (384, 128),
        "up_tr128.ops.1": (128, 128),
        "up_tr64.up_conv": (128, 128),
        "up_tr64.ops.0": (192, 64),
        "up_tr64.ops.1": (64, 64),
    }
    table: OrderedDict[str, list[int]] = OrderedDict()
    for prefix, (cin, cout) in conv_blocks.items():
        if prefix.endswith("up_conv"):  # ConvTranspose3d weight is (in, out, k, k, k)
            table[f"{prefix}.weight"] = [cin, cout, 2, 2, 2]
            table[f"{prefix}.bias"] = [cout]
            continue
        table[f"{prefix}.conv1.weight"] = [cout, cin, 3, 3, 3]
        table[f"{prefix}.conv1.bias"] = [cout]
        for buf in ("weight", "bias", "running_mean", "running_var"):
            table[f"{prefix}.bn1.{buf}"] = [cout]
        table[f"{prefix}.bn1.num_batches_tracked"] = []
    table["out_tr.final_conv.weight"] = [n_class, 64, 1, 1, 1]
    table["out_tr.final_conv.bias"] = [n_class]
    return table


def random_genesis_checkpoint(n_class: int = 1, seed: int = 0) -> dict:
    """Shaped like Genesis_Chest_CT.pt: saved from nn.DataParallel ('module.' keys) with the optimizer state."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for name, shape in genesis_table(n_class).items():
        if name.endswith("num_batches_tracked"):
            state[f"module.{name}"] = torch.tensor(12345, dtype=torch.long)
        elif name.endswith("running_var"):
            state[f"module.{name}"] = torch.rand(shape, generator=g) + 0.5
        else:
            state[f"module.{name}"] = torch.randn(shape, generator=g)
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 1.0, "momentum": 0.9,
                                                                                   "nesterov": False, "params": [0]}]}
    return {"state_dict": state, "optimizer_state_dict": optimizer, "epoch": 41}

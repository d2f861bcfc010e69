"""Study (b), step 1: pre-train the bundle's 3D U-Net by Models-Genesis-style restoration on one unlabelled CT.

The CT is the head CT of Debian's ``invesalius-examples`` (another person and body region than the liver CT the
network is fine-tuned on, so nothing of the fine-tuning data is seen here). Get it offline from the Debian archive:

    apt-get download invesalius-examples && dpkg-deb -x invesalius-examples_*_all.deb invesalius
    python studies/genesis_pretrain.py --ct invesalius/usr/share/doc/invesalius-examples/examples/Cranium.inv3 \
        --out study_output/genesis

The volume is resampled to the fine-tuning bundle's CPU voxel size (2 mm), windowed with the bundle's HU window
and cut into body-centred patches of the bundle's patch size; :class:`monai_metalr.apps.selfsup.GenesisCorruptd`
corrupts them and a MONAI ``SupervisedTrainer`` trains ``UNet3D(1, 1)`` to restore them (MSE after a sigmoid).
Written to ``--out``: ``genesis_unet3d.pt`` (the weights, loadable with the bundle's ``--pretrained_path``),
``pretrain.json`` (loss per epoch; restoration error on fixed probe patches: crops of the same CT with corruptions
drawn by another seed, so they show the task is learned, not that it generalises) and
``restoration.png`` (original / corrupted / restored slices).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from monai_metalr.data.inv3 import read_inv3
from monai_metalr.io import atomic_path
from monai_metalr.networks.unet3d import UNet3D
from monai_metalr.apps.selfsup import GenesisCorruptd, restoration_loss

# the lits_liver_segmentation bundle's CPU settings (monai_metalr.apps.demo.CPU_OVERRIDES) and default HU window
PIXDIM = (2.0, 2.0, 2.0)
PATCH = (48, 48, 16)
HU_WINDOW = (-200.0, 250.0)
BASE_CHANNELS = 8


def preprocess(path: str | Path) -> dict[str, torch.Tensor]:
    """``{"image": [1, x, y, z] in [0, 1] at 2 mm, "body": [1, x, y, z] mask}`` of an ``.inv3`` CT."""
    from monai.data import MetaTensor
    from monai.transforms import ScaleIntensityRange, Spacing

    volume, spacing = read_inv3(path)
    xyz = np.ascontiguousarray(volume.transpose(2, 1, 0)).astype(np.float32)[None]  # [z, y, x] -> [1, x, y, z]
    image = MetaTensor(torch.from_numpy(xyz), affine=torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64)))
    image = Spacing(pixdim=PIXDIM, mode="bilinear")(image)
    body = (image > -500).float()  # air is -1000 HU; patches are centred inside the body
    image = ScaleIntensityRange(HU_WINDOW[0], HU_WINDOW[1], 0.0, 1.0, clip=True)(image)
    return {"image": image.as_tensor(), "body": body.as_tensor()}


def patch_transform(num_samples: int):
    from monai.transforms import Compose, DeleteItemsd, RandCropByPosNegLabeld

    return Compose([
        RandCropByPosNegLabeld(["image"], "body", PATCH, pos=1, neg=0, num_samples=num_samples),
        DeleteItemsd("body"),
        GenesisCorruptd("image", target_key="label"),
    ])


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", required=True, help="the InVesalius project (.inv3) holding the CT")
    parser.add_argument("--out", default="study_output/genesis")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--iterations_per_epoch", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=2, help="volumes per batch (each gives --num_samples)")
    parser.add_argument("--num_samples", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.handlers import StatsHandler
    from monai.utils import set_determinism

    set_determinism(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    volume = preprocess(args.ct)
    print(f"{args.ct}: {tuple(volume['image'].shape[1:])} voxels at {PIXDIM[0]} mm", flush=True)
    n = args.batch_size * args.iterations_per_epoch
    train = Dataset([volume] * n, patch_transform(args.num_samples))
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=False, num_workers=0)
    # fixed probe corruptions (another seed, same CT) to follow restoration, against doing nothing
    probe_t = patch_transform(4)
    probe_t.set_random_state(seed=args.seed + 12345)
    probe = probe_t(volume)
    probe_x = torch.stack([p["image"] for p in probe])
    probe_y = torch.stack([p["label"] for p in probe])

    network = UNet3D(1, 1, base_channels=BASE_CHANNELS)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=args.epochs, train_data_loader=loader, network=network,
        optimizer=torch.optim.Adam(network.parameters(), args.lr), loss_function=restoration_loss,
        train_handlers=[StatsHandler(iteration_log=False, tag_name="restoration_mse")],
    )
    log: dict = {"ct": str(args.ct), "args": vars(args), "epoch_loss": [], "probe_mse": []}

    @torch.no_grad()
    def probe_mse() -> float:
        network.eval()
        return float(restoration_loss(network(probe_x), probe_y))

    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))

    @trainer.on(Events.EPOCH_COMPLETED)
    def _epoch(engine) -> None:
        log["epoch_loss"].append(float(np.mean(losses[-args.iterations_per_epoch:])))
        log["probe_mse"].append(probe_mse())
        print(f"epoch {engine.state.epoch}: train MSE {log['epoch_loss'][-1]:.4f}, "
              f"probe restoration MSE {log['probe_mse'][-1]:.4f}", flush=True)

    start = time.perf_counter()
    trainer.run()
    log["seconds"] = round(time.perf_counter() - start, 1)
    log["identity_mse"] = float(torch.nn.functional.mse_loss(probe_x, probe_y))  # doing nothing
    weights = out / "genesis_unet3d.pt"
    with atomic_path(weights) as tmp:
        torch.save(network.state_dict(), tmp)
    with atomic_path(out / "pretrain.json") as tmp:
        tmp.write_text(json.dumps(log, indent=2) + "\n")
    _plot(network, probe_x, probe_y, out / "restoration.png")
    print(f"probe restoration MSE {log['probe_mse'][-1]:.4f} vs {log['identity_mse']:.4f} for the corrupted "
          f"input; wrote {weights}", flush=True)
    return weights


@torch.no_grad()
def _plot(network: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    network.eval()
    restored = torch.sigmoid(network(x))
    z = x.shape[-1] // 2
    fig, axes = plt.subplots(len(x), 3, figsize=(7, 2.4 * len(x)), squeeze=False)
    for i in range(len(x)):
        for j, (img, title) in enumerate(((y, "original"), (x, "corrupted"), (restored, "restored"))):
            axes[i, j].imshow(img[i, 0, :, :, z].T, cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_axis_off()
            if i == 0:
                axes[i, j].set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])

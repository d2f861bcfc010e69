"""A one-minute synthetic example: fine-tune a pre-trained MONAI ResNet with MetaLRHandler in a SupervisedTrainer.

Data are generated on the fly (no download): 2D "lesion" images whose class is the lesion's shape
(disc, square, ring) under speckle noise. A ResNet-10 is first pre-trained on a source task (bright vs
dark blobs), then fine-tuned on the target task with MetaLR learning one LR per layer group from a
held-out validation split. The learned LRs are printed and plotted.

    python -m monai_metalr.apps.synthetic_demo --output_dir synthetic_demo_output --epochs 4
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["make_shapes", "main"]


def make_shapes(n: int, size: int = 48, task: str = "target", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` single-channel images ``[n, 1, size, size]`` and labels.

    ``task="target"``: 3 classes by lesion shape (disc, square, ring). ``task="source"``: 2 classes by
    lesion brightness (bright, dark), the pre-training task.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    n_classes = 3 if task == "target" else 2
    labels = torch.randint(0, n_classes, (n,), generator=g)
    images = torch.empty(n, 1, size, size)
    for i in range(n):
        cy, cx = (torch.rand(2, generator=g) * size * 0.5 + size * 0.25).tolist()
        r = float(torch.rand((), generator=g) * size * 0.12 + size * 0.1)
        dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        if task == "target":
            shape = [dist < r, ((yy - cy).abs() < r * 0.9) & ((xx - cx).abs() < r * 0.9), (dist < r) & (dist > r * 0.6)]
            mask, contrast = shape[int(labels[i])].float(), 1.0
        else:
            mask, contrast = (dist < r).float(), (1.0 if labels[i] == 0 else -1.0)
        speckle = 1.0 + 0.35 * torch.randn(size, size, generator=g)
        images[i, 0] = (0.5 + 0.4 * contrast * mask) * speckle + 0.05 * torch.randn(size, size, generator=g)
    return images, labels


def _pretrain(net: nn.Module, epochs: int, device: torch.device) -> None:
    x, y = make_shapes(256, task="source", seed=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(net(xb.to(device))[:, :2], yb.to(device)).backward()
            opt.step()


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="synthetic_demo_output")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n_train", type=int, default=192)
    parser.add_argument("--n_val", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hyper_lr", type=float, default=None, help="default: MetaLR's own (needs no tuning)")
    args = parser.parse_args(argv)

    from ignite.metrics import Accuracy
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import StatsHandler, ValidationHandler
    from monai.networks.nets import resnet10
    from monai.utils import set_determinism

    from .. import MetaLRHandler, param_groups

    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    set_determinism(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    net = resnet10(spatial_dims=2, n_input_channels=1, num_classes=3).to(device)
    print("pre-training ResNet-10 on the source task (bright vs dark lesions) ...")
    _pretrain(net, epochs=2, device=device)

    xt, yt = make_shapes(args.n_train, seed=args.seed + 10)
    xv, yv = make_shapes(args.n_val, seed=args.seed + 20)
    xm, ym = make_shapes(args.n_val, seed=args.seed + 30)  # MetaLR's own held-out set: model selection never sees it
    to_dicts = lambda x, y: [{"image": a, "label": b} for a, b in zip(x, y)]  # noqa: E731
    train_loader = DataLoader(to_dicts(xt, yt), batch_size=16, shuffle=True)
    meta_loader = DataLoader(to_dicts(xm, ym), batch_size=16, shuffle=True)
    eval_loader = DataLoader(to_dicts(xv, yv), batch_size=32)

    optimizer = torch.optim.Adam(param_groups(net, 1e-3, head_lr=1e-2), weight_decay=1e-4)
    loss = nn.CrossEntropyLoss()
    metalr_kwargs = {} if args.hyper_lr is None else {"hyper_lr": args.hyper_lr}
    metalr = MetaLRHandler(meta_loader, output_dir=out, **metalr_kwargs)

    def acc_transform(output):
        from monai.engines.utils import CommonKeys as Keys

        preds = torch.stack([o[Keys.PRED] for o in output])
        labels = torch.as_tensor([int(o[Keys.LABEL]) for o in output], device=preds.device)
        return preds, labels

    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=eval_loader,
        network=net,
        key_val_metric={"val_acc": Accuracy(output_transform=acc_transform)},
    )
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=args.epochs,
        train_data_loader=train_loader,
        network=net,
        optimizer=optimizer,
        loss_function=lambda pred, y: loss(pred, y.long().view(-1)),
        train_handlers=[metalr, ValidationHandler(validator=evaluator, interval=1, epoch_level=True), StatsHandler(
            tag_name="train_loss", output_transform=lambda o: o[0]["loss"] if isinstance(o, list) else o["loss"],
            iteration_log=False)],
    )
    print(f"fine-tuning on the target task (disc / square / ring), {args.epochs} epochs, MetaLR on ...")
    trainer.run()

    lrs = dict(zip(metalr.meta.group_names, metalr.meta.lrs.tolist()))
    paths = metalr.write_outputs()
    print("\nLearned per-layer learning rates (input -> output):")
    for name, lr in lrs.items():
        print(f"  {name:10s} {lr:.3e}")
    print(f"validation accuracy: {evaluator.state.metrics['val_acc']:.3f}")
    print(f"LR history: {paths['csv']}\nLR plot:    {paths['png']}")
    return {"lrs": lrs, "val_acc": evaluator.state.metrics["val_acc"], **{k: str(v) for k, v in paths.items()}}


if __name__ == "__main__":
    main()

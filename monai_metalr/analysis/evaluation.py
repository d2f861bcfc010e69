"""Command line of the evaluation beyond accuracy (the properties Mustafa et al. 2021 study): score a bundle's
``predictions.csv`` against a datalist's labels (accuracy, macro-F1, calibration, subgroups), e.g. after running its
``inference.json`` on a second dataset::

    python -m monai_metalr.analysis.evaluation --predictions out/predictions.csv --datalist other.json \\
        --group_key site --out_dir eval_other

The evaluation itself lives in topic modules: :mod:`.calibration` (ECE, reliability diagram), :mod:`.predictions`
(reading and scoring ``predictions.csv``), :mod:`.subgroups`, :mod:`.data_efficiency` (the plot) and :mod:`.f1`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .predictions import evaluate_predictions

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: evaluate a ``predictions.csv`` against a JSON datalist and save ``evaluation.json`` and
    ``reliability.png``.

    Returns:
        The dict of :func:`evaluate_predictions`.
    """
    parser = argparse.ArgumentParser(description="Accuracy, macro-F1, calibration and subgroups of predictions.csv")
    parser.add_argument("--predictions", required=True, help="predictions.csv written by a bundle's inference")
    parser.add_argument("--datalist", required=True, help="JSON list of items with the file path and label")
    parser.add_argument("--label_key", default="label", help="item key of the label (index or class name)")
    parser.add_argument("--file_key", default="image", help="item key of the file path the predictions name")
    parser.add_argument("--group_key", default=None, help="item key of a subgroup, e.g. site")
    parser.add_argument("--bins", type=int, default=15, help="confidence bins of the ECE (default 15)")
    parser.add_argument("--out_dir", required=True, help="folder for evaluation.json and reliability.png")
    args = parser.parse_args(argv)
    result = evaluate_predictions(
        args.predictions,
        args.datalist,
        label_key=args.label_key,
        file_key=args.file_key,
        group_key=args.group_key,
        out_dir=args.out_dir,
        num_bins=args.bins,
    )
    print(
        f"{result['n']} files: accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
        f"ECE {result['ece']:.4f} ({args.bins} bins)"
    )
    if "subgroups" in result:
        for key, m in result["subgroups"]["groups"].items():
            print(
                f"  {args.group_key}={key}: n={m['count']}, accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}"
            )
        print(f"  worst: {result['subgroups']['worst_group']}, gap {result['subgroups']['gap']:.4f}")
    print(f"wrote {Path(args.out_dir) / 'evaluation.json'} and {Path(args.out_dir) / 'reliability.png'}")
    return result


if __name__ == "__main__":
    main()


def __getattr__(name: str) -> Any:
    # names that moved out of this module (deprecated paths)
    from .._moved import moved_name

    return moved_name("monai_metalr.analysis.evaluation", name)

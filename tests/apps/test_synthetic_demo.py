"""`make demo`'s job, at a small size: it trains, prints the learned LRs and leaves CSV + plot."""

from __future__ import annotations

import pytest

from monai_metalr.apps import synthetic_demo as demo
from monai_metalr.analysis import read_lr_csv

pytestmark = pytest.mark.slow  # the demo's training run


def test_demo_runs_and_reports(tmp_path, capsys):
    result = demo.main(["--output_dir", str(tmp_path), "--epochs", "1", "--n_train", "32", "--n_val", "32"])
    out = capsys.readouterr().out
    assert "Learned per-layer learning rates" in out and "LR plot:" in out
    assert list(result["lrs"]) == ["stem", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "head"]
    history, groups = read_lr_csv(result["csv"])
    assert len(history["step"]) == 2 and groups == list(result["lrs"])
    assert (tmp_path / "metalr_lr.png").exists()

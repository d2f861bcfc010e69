"""benchmarks/hyper_lr_sensitivity.py: a smoke run on the real CT (both tasks, tiny settings) and its statistics
checked by hand. (Its own file, so the test runner can run it beside the cost benchmarks.)"""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest


@pytest.mark.slow
def test_hyper_lr_sensitivity_runs_on_the_real_ct_and_reports(tmp_path):
    import hyper_lr_sensitivity as hls

    out = tmp_path / "hls"
    common = ["--out", str(out), "--small", "--seeds", "0", "--rules", "log_adam",
              "--sweep_rules", "none", "--meta_batches", "{}", "--tasks", "tiles2d", "unet3d"]
    hls.main(common)
    runs = hls.load_runs(out / "runs.jsonl")
    assert len(runs) == 2 * 2  # per task: log_adam at the default and the hyper_lr 0 control
    control = [r for r in runs if r["hyper_lr"] == 0.0]
    assert len(control) == 2 and all(max(abs(m) for m in r["log_move"]) == 0.0 for r in control)
    default = [r for r in runs if r["rule"] == "log_adam" and r["hyper_lr"] > 0]
    # log_adam moves, and never by more than hyper_lr per meta step
    assert all(0 < max(abs(m) for m in r["log_move"]) <= r["hyper_lr"] * r["meta_steps"] + 1e-12 for r in default)
    hls.main(common)  # resumes: nothing new
    assert len(hls.load_runs(out / "runs.jsonl")) == len(runs)
    hls.main(["--out", str(out), "--report", "--json", str(tmp_path / "summary.json")])
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert set(summary) == {"tiles2d", "unet3d"}
    assert [r["hyper_lr"] for r in summary["tiles2d"]["rules"]["log_adam"]] == [0.0, 0.01]
    assert "| log_adam | 0.01 |" in (out / "report.md").read_text()


def test_hypergradient_statistics_by_hand():
    import hyper_lr_sensitivity as hls

    h = np.array([[1.0, -2.0], [3.0, 2.0], [1.0, -2.0], [3.0, 2.0], [1.0, 4.0], [3.0, 4.0]])
    stats = hls.hypergradient_stats(h)
    columns = [h[:, 0].tolist(), h[:, 1].tolist()]
    assert stats["snr"] == pytest.approx([statistics.mean(c) / statistics.stdev(c) for c in columns], rel=1e-12)
    assert stats["snr_block1"] == stats["snr"]
    assert stats["mean_sign"] == pytest.approx([1.0, 1.0 / 3.0])
    assert stats["median_abs_h"] == [2.0, 2.0]
    assert "snr_block4" not in stats  # fewer than 3 blocks of 4
    assert hls._spearman([1, 2, 3], [10, 30, 20]) == 0.5

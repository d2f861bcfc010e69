"""The study scripts (studies/): tile labels and splits, and each script end to end on the real CT at tiny size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import controlled_transfer as transfer
import equal_compute
import genesis_pretrain
import liver_ct_tiles as tiles
import liver_seg_3d
import numpy as np
import pytest
import report
import torch
from dataset_files import write_inv3
from repo_paths import STUDIES

from monai_metalr.data.demo_ct import find_demo_ct, read_mrc


def test_centre_class_rules():
    w = np.zeros((4, 4), np.uint16)
    assert tiles.centre_class(w) == 0
    w[:2] = 2  # half tumour
    assert tiles.centre_class(w) == 2
    w[:] = 1
    w[0, :3] = 2  # 3/16 tumour, rest liver: neither rule
    assert tiles.centre_class(w) == -1
    w[:] = 1
    w[0] = 0  # 3/4 liver, no tumour
    assert tiles.centre_class(w) == 1
    w[1, 0] = 0  # below 3/4 liver
    assert tiles.centre_class(w) == -1


def test_slab_splits_are_disjoint_and_apart():
    splits = tiles.slab_splits(128)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [48, 24, 24]
    owner = {z: s for s, zs in splits.items() for z in zs}
    assert len(owner) == 96
    for z1, s1 in owner.items():
        for z2, s2 in owner.items():
            if s1 != s2:
                assert abs(z1 - z2) >= 5, (z1, s1, z2, s2)  # 4 dropped slices between different splits
    with pytest.raises(ValueError, match="do not make"):
        tiles.slab_splits(100)


def test_build_tiles_labels_by_centre_window():
    label = np.zeros((1, 96, 96), np.uint16)
    label[0, :48, 48:] = 1  # top right liver
    label[0, 48:, :48] = 2  # bottom left tumour
    image = np.where(label > 0, 100.0, -1000.0).astype(np.float32)
    x, y, z = tiles.build_tiles(image, label, [0], tile=48, stride=16)
    expected = []
    for y0 in range(0, 49, 16):
        for x0 in range(0, 49, 16):
            centre = label[0, y0 + 16 : y0 + 32, x0 + 16 : x0 + 32]
            frac = {c: float(np.mean(centre == c)) for c in (0, 1, 2)}
            cls = 2 if frac[2] >= 0.5 else 1 if frac[2] == 0 and frac[1] >= 0.75 else 0 if frac[0] == 1 else -1
            if cls >= 0:
                expected.append(cls)
    assert y.tolist() == expected and set(expected) == {0, 1, 2}
    assert x.shape == (len(expected), 48, 48) and x.dtype == np.uint8 and z.tolist() == [0] * len(expected)
    assert x.max() == round(255 * 300 / 450) and x.min() == 0  # window [-200, 250] HU: 100 HU -> 170, -1000 -> 0
    inp = tiles.to_input(x[:2])
    assert inp.shape == (2, 3, 48, 48) and torch.equal(inp[:, 0], inp[:, 2])


@pytest.fixture(scope="module")
def tiles_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiles")
    args = ["--out", str(out), "--strategies", "metalr", "last_layer", "--seeds", "0", "1", "--epochs", "1",
            "--train_per_class", "4", "--val_per_class", "4", "--fractions", "0.5", "1.0", "--batch_size", "4"]
    runs = tiles.main(args)
    return out, runs, args


@pytest.mark.slow
def test_tiles_study_end_to_end(tiles_run):
    out, runs, args = tiles_run
    records = [json.loads(line) for line in runs.read_text().splitlines()]
    assert sorted((r["strategy"], r["n_train"], r["seed"]) for r in records) == [
        (s, n, seed) for s in ("last_layer", "metalr") for n in (6, 12) for seed in (0, 1)]
    data = json.loads((out / "data.json").read_text())
    assert data["counts"]["train"] == [4, 4, 4] and sum(data["counts"]["test"]) > 100
    for r in records:
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["test_macro_f1"] <= 1 and 0 <= r["test_ece"] <= 1
        probs = torch.load(out / f"n{r['n_train']}" / f"{r['strategy']}_seed{r['seed']}" / "test_probs.pt")
        assert probs.shape == (sum(data["counts"]["test"]), 3)
        # the record's accuracy is the saved probabilities' argmax against the test labels
        test_y = tiles.load_study_data(4, 4)["test"][1]
        assert r["test_accuracy"] == pytest.approx(float((probs.argmax(1).numpy() == test_y).mean()))
        p = probs.double().numpy()
        assert r["test_nll"] == pytest.approx(float(-np.log(np.maximum(p[np.arange(len(test_y)), test_y], 1e-12)).mean()))
        assert r["test_auc"] == pytest.approx(np.mean([_auc_by_ranks(p[:, c], test_y == c) for c in range(3)]), abs=1e-9)
    meta = next(r for r in records if r["strategy"] == "metalr" and r["n_train"] == 12)
    assert meta["lr_vs_t"]["groups"][-1] == "head" and -1 <= meta["lr_vs_t"]["spearman"] <= 1
    assert (out / "n12" / "metalr_seed0" / "metalr_lr.png").is_file()
    before = runs.read_text()
    tiles.main(args)  # resumes: every run is done already
    assert runs.read_text() == before


def _auc_by_ranks(score: np.ndarray, positive: np.ndarray) -> float:
    """One-vs-rest ROC-AUC as the Mann-Whitney statistic: the chance a positive outranks a negative (ties 1/2)."""
    pos, neg = score[positive], score[~positive]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


@pytest.mark.slow
def test_equal_time_runs_get_metalr_s_wall_clock(tiles_run):
    out, runs, args = tiles_run
    records = tiles.read_records(runs)
    expected = {
        seed: tiles.equal_time_epochs(records, "last_layer", seed, 12, 1) for seed in (0, 1)
    }  # fmt: skip
    for seed, epochs in expected.items():  # MetaLR's time over last_layer's, times one epoch, rounded, at least 1
        metalr = next(r for r in records if r["strategy"] == "metalr" and r["seed"] == seed and r["n_train"] == 12)
        base = next(r for r in records if r["strategy"] == "last_layer" and r["seed"] == seed and r["n_train"] == 12)
        assert epochs == max(1, round(metalr["cpu_seconds"] / base["cpu_seconds"]))
        assert 0 < metalr["cpu_seconds"] <= 2 * metalr["seconds"] + 1  # one torch thread: CPU time tracks the wall
    old = [{k: v for k, v in r.items() if k != "cpu_seconds"} for r in records]  # records from before cpu_seconds
    metalr = next(r for r in old if r["strategy"] == "metalr" and r["seed"] == 0 and r["n_train"] == 12)
    base = next(r for r in old if r["strategy"] == "last_layer" and r["seed"] == 0 and r["n_train"] == 12)
    assert tiles.equal_time_epochs(old, "last_layer", 0, 12, 1) == max(1, round(metalr["seconds"] / base["seconds"]))
    at_full_size = [a for a in args if a != "0.5"]  # the equal-time rows at the full training set only
    tiles.main([*at_full_size, "--equal_time"])
    timed = [r for r in tiles.read_records(runs) if r["strategy"] == "last_layer=time"]
    assert sorted((r["seed"], r["epochs"]) for r in timed) == sorted(expected.items())
    assert not any(r["strategy"] == "metalr=time" for r in tiles.read_records(runs))
    with pytest.raises(LookupError, match="standard metalr run of seed 7"):
        tiles.equal_time_epochs(records, "last_layer", 7, 12, 1)


@pytest.mark.slow
def test_report_tables_and_figures(tiles_run, tmp_path):
    out, _, _ = tiles_run
    path = report.main(["--tiles", str(out), "--out", str(tmp_path)])
    text = path.read_text()
    assert "| metalr | 2 |" in text and "| last_layer | 2 |" in text
    assert "Data efficiency" in text and "| last_layer |" in text.split("Data efficiency")[1]
    assert "| last_layer |" in text.split("MetaLR minus each baseline")[1]
    summary = text.split("Summary: MetaLR against the best baseline")[1]
    for metric in ("macro-F1", "NLL", "AUC"):  # a row per metric, against last_layer, with an interval and a verdict
        row = next(line for line in summary.splitlines() if line.startswith(f"| metalr | {metric} | last_layer |"))
        assert re.search(r"\[[-+]\d+\.\d{3}, [-+]\d+\.\d{3}\] \(2 seeds\) \| \((win|tie|loss): only 2 seeds\) \|$", row), row
    for png in ("tiles_lr_curves.png", "tiles_data_efficiency.png", "tiles_transferability.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_std_is_the_sample_std():
    assert report.mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, np.std([1, 2, 4], ddof=1)))
    assert report.mean_std([3.0]) == (3.0, 0.0)


@pytest.mark.slow
def test_genesis_pretraining_then_bundle_fine_tuning(tmp_path):
    """Pre-train on a real CT written as an .inv3 project, then fine-tune with the bundle from those weights."""
    image, _ = find_demo_ct()
    ct = read_mrc(image)[:24, :64, :64].astype(np.int16)  # an unlabelled CT crop, [z, y, x] HU
    project = write_inv3(tmp_path / "ct.inv3", ct, spacing=(2.0, 2.0, 2.0))
    weights = genesis_pretrain.main(["--ct", str(project), "--out", str(tmp_path / "genesis"), "--epochs", "1",
                                     "--iterations_per_epoch", "1", "--batch_size", "1", "--num_samples", "1"])
    log = json.loads((tmp_path / "genesis" / "pretrain.json").read_text())
    assert len(log["epoch_loss"]) == 1 and log["identity_mse"] > 0
    assert (tmp_path / "genesis" / "restoration.png").is_file()

    runs = liver_seg_3d.main(["--pretrained", str(weights), "--out", str(tmp_path / "seg"), "--strategies", "metalr",
                              "--seeds", "0", "--epochs", "1", "--iterations_per_epoch", "1"])
    (record,) = [json.loads(line) for line in runs.read_text().splitlines()]
    assert 0 <= record["test_liver_dice"] <= 1 and set(record["transferability"]) >= {"Down-1", "Out", "mean"}
    # the split docs/results.md reports (no separate meta slab: meta_fraction=0, MetaLR's meta batches are val)
    split = json.loads((tmp_path / "seg" / "split.json").read_text())
    assert (split["train"], split["val"], split["meta"], split["test"], split["meta_fraction"]) == (
        ["1", "3"], ["0"], [], ["2"], 0)
    run_log = (tmp_path / "seg" / "metalr_seed0" / "run.log").read_text()
    # all but the 3-class output layer
    assert re.search(rf"loaded 104/106 tensors \([\d.]+% of the model's [\d,]+ values\) from {re.escape(str(weights))}", run_log)
    saved = torch.load(weights, weights_only=True)  # UNet3D(1, 1): a 1-channel output layer
    fresh = liver_seg_3d.UNet3D(1, 3, base_channels=8).state_dict()
    start = liver_seg_3d.genesis_state(weights, fresh)
    assert start.keys() == fresh.keys()
    for k in fresh:
        source = fresh if k.startswith("out_tr.final_conv") else saved  # the 3-class output cannot come from Genesis
        assert torch.equal(start[k], source[k]), k
    assert not torch.equal(saved["down_tr64.ops.0.conv1.weight"], fresh["down_tr64.ops.0.conv1.weight"])

    # equal compute: the baseline's standard run, then its run for MetaLR's CPU time on that seed
    base = ["--pretrained", str(weights), "--out", str(tmp_path / "seg"), "--strategies", "metalr", "all_layers",
            "--seeds", "0", "--epochs", "1", "--iterations_per_epoch", "1"]
    liver_seg_3d.main(base)
    liver_seg_3d.main([*base, "--equal_time"])
    records = {r["strategy"]: r for r in map(json.loads, runs.read_text().splitlines())}
    assert set(records) == {"metalr", "all_layers", "all_layers=time"}  # MetaLR has no equal-time run
    metalr, last = records["metalr"], records["all_layers"]
    # the bundle's own process did the training: its CPU time is positive and, on one thread, near its wall time
    assert 0 < metalr["train_cpu_seconds"] <= 2 * metalr["train_seconds"] + 1
    assert records["all_layers=time"]["epochs"] == max(1, round(metalr["train_cpu_seconds"] / last["train_cpu_seconds"]))
    assert (tmp_path / "seg" / "all_layers=time_seed0" / "metrics.csv").is_file()
    with pytest.raises(LookupError, match="standard metalr run of seed 3"):
        liver_seg_3d.equal_time_epochs(list(records.values()), "all_layers", 3, 1)
    # one LR everywhere keeps its T too (the measure MetaLR's LRs did not shape); a record from before that field
    # gets it back from the model in its folder when the study runs again
    kept = last["transferability"]
    assert set(kept) == set(metalr["transferability"]) and kept != metalr["transferability"]
    assert "transferability" not in records["all_layers=time"]
    runs.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "transferability" or r is not last}) + "\n"
                            for r in records.values()))
    liver_seg_3d.main(base)  # every run is done: only the missing T is filled in
    assert [json.loads(line) for line in runs.read_text().splitlines()] == list(records.values())
    text = report.main(["--seg3d", str(tmp_path / "seg"), "--out", str(tmp_path / "report")]).read_text()
    assert "| all_layers=time | 1 |" in text and "Summary at equal compute" in text
    assert "Against T of `all_layers` (one LR everywhere, same seed; 1 seeds)" in text
    assert "(mean over 1 seeds):" in text
    # a study resumed from its records alone: the tables still come out, the curves are said to be missing
    (tmp_path / "seg" / "metalr_seed0" / "metalr_lr.csv").unlink()
    text = report.main(["--seg3d", str(tmp_path / "seg"), "--out", str(tmp_path / "report2")]).read_text()
    assert "none of the 1 MetaLR run folders holds metalr_lr.csv (figure not drawn)" in text
    assert "Summary at equal compute" in text and not (tmp_path / "report2" / "seg3d_lr_curves.png").exists()
    assert (tmp_path / "report" / "seg3d_lr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_equal_compute_prefers_cpu_time_and_never_shortens():
    metalr = {"cpu": 90.0, "wall": 200.0}
    assert equal_compute.budget_epochs(metalr, {"cpu": 30.0, "wall": 50.0}, 20, "cpu", "wall") == 60  # 20 * 90/30
    # a record without CPU time (an older run): both fall back to wall-clock time, 20 * 200/50
    assert equal_compute.budget_epochs(metalr, {"wall": 50.0}, 20, "cpu", "wall") == 80
    assert equal_compute.budget_epochs(metalr, {"cpu": 120.0, "wall": 50.0}, 20, "cpu", "wall") == 20  # slower


def test_seg3d_report_splits_standard_and_equal_compute(tmp_path):
    liver = {"metalr": [0.70, 0.72, 0.68, 0.71, 0.69], "all_layers": [0.60, 0.66, 0.64, 0.61, 0.65],
             "all_layers=time": [0.75, 0.74, 0.76, 0.70, 0.73], "last_layer": [0.10, 0.05, 0.08, 0.12, 0.09]}
    epochs = {"metalr": 16, "all_layers": 16, "all_layers=time": 27, "last_layer": 16}
    records = [{"strategy": name, "seed": seed, "epochs": epochs[name], "train_seconds": 40.0 + seed,
                "train_cpu_seconds": 38.0, "test_liver_dice": dice, "test_tumour_dice": dice / 2}
               for name, values in liver.items() for seed, dice in enumerate(values)]
    folder = tmp_path / "seg3d"
    folder.mkdir()
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = report.main(["--seg3d", str(folder), "--out", str(tmp_path / "report")]).read_text()
    # mean ± sample std by hand, the epochs and the times as recorded
    assert f"| all_layers=time | 5 | {np.mean(liver['all_layers=time']):.3f} ± " \
           f"{np.std(liver['all_layers=time'], ddof=1):.3f} |" in text
    assert "| 27 | 42 | 38 |" in text
    standard, equal = text.split("Summary at equal compute")
    standard = standard.split("Summary: MetaLR against the best baseline")[1]
    # at the standard budget the best baseline is all_layers (the =time rows are left out); at equal compute it is
    # all_layers=time, and the mean same-seed difference is the one computed here
    gain = np.mean(np.subtract(liver["metalr"], liver["all_layers"]))
    assert f"| metalr | liver Dice | all_layers | {gain:+.3f} [" in standard and "=time" not in standard
    loss = np.mean(np.subtract(liver["metalr"], liver["all_layers=time"]))
    row = next(line for line in equal.splitlines() if line.startswith("| metalr | liver Dice |"))
    assert row.startswith(f"| metalr | liver Dice | all_layers=time | {loss:+.3f} [") and row.endswith("| loss |")


def test_controlled_transfer_targets_change_one_thing():
    data = tiles.load_study_data(4, 4)
    for name in ("invert", "speckle", "blur", "permute"):
        target = transfer.make_target(name, data)
        for split in ("train", "val", "test"):
            (x0, y0, z0), (x1, y1, z1) = data[split], target[split]
            assert x1.shape == x0.shape and x1.dtype == np.uint8 and (z1 == z0).all()
            if name == "permute":
                assert (x1 == x0).all() and (y1 == (y0 + 1) % 3).all()
            else:
                assert (y1 == y0).all() and not (x1 == x0).all()
    assert (transfer.make_target("invert", data)["test"][0] == 255 - data["test"][0]).all()
    blurred = transfer.make_target("blur", data)["train"][0].astype(float)
    assert np.abs(np.diff(blurred, axis=2)).mean() < np.abs(np.diff(data["train"][0].astype(float), axis=2)).mean()
    with pytest.raises(ValueError, match="needs the tiles in the wide window"):
        transfer.make_target("window", data)
    with pytest.raises(ValueError, match="unknown target 'rotate'"):
        transfer.make_target("rotate", data)


@pytest.mark.slow
def test_controlled_transfer_end_to_end_and_report(tmp_path):
    out = tmp_path / "transfer"
    args = ["--out", str(out), "--targets", "invert", "permute", "--strategies", "metalr", "last_layer",
            "--seeds", "0", "1", "--epochs", "1", "--train_per_class", "4", "--val_per_class", "4", "--batch_size", "4",
            "--source_epochs", "2"]
    runs = transfer.main(args)
    assert json.loads((out / "source" / "source.json").read_text())["epochs"] == 2
    records = tiles.read_records(runs)
    assert sorted((r["target"], r["strategy"], r["seed"]) for r in records) == [
        (t, s, seed) for t in ("invert", "permute") for s in ("last_layer", "metalr") for seed in (0, 1)]
    source = torch.load(out / "source" / "source_model.pt", weights_only=True)
    for r in records:
        if r["strategy"] == "metalr":
            csv = out / r["target"] / f"metalr_seed{r['seed']}" / "metalr_lr.csv"
            assert r["final_multiplier"] == pytest.approx(transfer.final_multipliers(csv))
            assert list(r["final_multiplier"])[-1] == "head" and all(m > 0 for m in r["final_multiplier"].values())
        else:  # last_layer trains the head only: every other weight is the source model's
            tuned = torch.load(r["best_model"], weights_only=True)
            assert all(torch.equal(tuned[k], v) for k, v in source.items() if not k.startswith("_fc."))
    # the same folder with another source schedule is refused, naming the record, before anything trains
    with pytest.raises(ValueError, match=r"source\.json: the source model .* trained for 2 epochs, not --source_epochs 3"):
        transfer.main([*args[:-1], "3"])
    assert len(tiles.read_records(runs)) == len(records)
    path = report.main(["--transfer", str(out), "--out", str(tmp_path / "report")])
    text = path.read_text()
    assert "**invert** (the early layers should adapt)" in text and "**permute** (the head layers should adapt)" in text
    assert text.count("MetaLR's final multipliers") == 2 and "Early third vs head: log ratio" in text
    assert (tmp_path / "report" / "transfer_multipliers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_all_calls_scripts_and_options_that_exist():
    """`make study` runs studies/run_all.sh for hours: a renamed script or option must fail here, not at hour 3."""
    import subprocess

    script = STUDIES / "run_all.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    calls = re.findall(r"\$PY (studies/\w+\.py)((?:[^\n]|\\\n)*)", script.read_text())
    assert {c[0] for c in calls} >= {"studies/liver_ct_tiles.py", "studies/controlled_transfer.py",
                                     "studies/genesis_pretrain.py", "studies/liver_seg_3d.py", "studies/report.py"}
    for path, rest in calls:
        source = (STUDIES.parent / path).read_text()
        if "tiles.add_training_arguments(parser)" in source:  # the options it shares with liver_ct_tiles.py
            source += (STUDIES / "liver_ct_tiles.py").read_text()
        for option in re.findall(r"(--\w+)", rest):
            assert f'"{option}"' in source, f"{path} has no option {option}"


def _fake_mricron(folder: Path) -> Path:
    """A small T1 + AAL pair in mricron's files: left/right cerebrum split by x, cerebellum low in z, along all y."""
    import nibabel as nib

    folder.mkdir(parents=True)
    atlas = np.zeros((40, 240, 40), np.uint8)
    atlas[4:20, 8:232, 16:36] = 1  # Precentral_L
    atlas[20:36, 8:232, 16:36] = 2  # Precentral_R
    atlas[10:30, 8:232, 4:14] = 3  # Cerebelum_6_L
    t1 = (atlas * 50 + 20).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(t1, affine), str(folder / "ch2.nii.gz"))
    nib.save(nib.Nifti1Image(atlas, affine), str(folder / "aal.nii.gz"))
    (folder / "aal.nii.txt").write_text("1 Precentral_L 2001\n2 Precentral_R 2002\n3 Cerebelum_6_L 9001\n")
    return folder


def test_brain_study_volume_splits_and_dice():
    import brain_mri_3d as brain

    masks = brain.slab_masks(128)
    assert sum(int(m.sum()) for m in masks.values()) == 128 and [int(m.sum()) for m in masks.values()] == [64, 16, 32, 16]
    assert not (masks["train"] & masks["test"]).any() and not (masks["meta"] & masks["val"]).any()
    labels = torch.zeros(4, 8, 4, dtype=torch.long)
    labels[:2, :, :2] = 1
    pred = labels.clone()
    pred[:2, :4, :2] = 0  # half of class 1 missed
    keep = torch.ones(8, dtype=torch.bool)
    dice = brain.dice_per_class(pred, labels, keep, 3)
    assert dice[0] == pytest.approx(2 * 8 / (8 + 16)) and np.isnan(dice[1])  # class 2 absent from both: nan
    masked = brain.masked_labels(labels, masks["train"][:8])
    assert (masked[:, ~masks["train"][:8]] == brain.IGNORE).all() and (masked[:, masks["train"][:8]] < 3).all()


@pytest.mark.slow
def test_brain_study_end_to_end_from_random_init(tmp_path):
    """Two steps per run on a small fake Colin27; the deepbet init needs its weights (`make study-data`)."""
    import brain_mri_3d as brain

    mricron = _fake_mricron(tmp_path / "mricron")
    image, labels, names = brain.prepare_volume(mricron)
    assert tuple(image.shape) == (1, *brain.SHAPE) and tuple(labels.shape) == brain.SHAPE
    assert names == ("background", "left_cerebrum", "right_cerebrum", "cerebellum")
    assert set(labels.unique().tolist()) == {0, 1, 2, 3}
    out = tmp_path / "brain"
    base = ["--out", str(out), "--mricron", str(mricron), "--deepbet", str(tmp_path / "none"), "--inits", "random",
            "--threads", "1"]
    runs = brain.main(base + ["--strategies", "metalr", "last_layer", "--seeds", "0", "--steps", "2"])
    records = [json.loads(line) for line in runs.read_text().splitlines()]
    assert sorted(r["strategy"] for r in records) == ["last_layer", "metalr"]
    for r in records:
        assert set(r["test_dice"]) == {"left_cerebrum", "right_cerebrum", "cerebellum"}
        assert 0 <= r["test_mean_dice"] <= 1
    assert (out / "random" / "metalr_seed0" / "metalr_lr.csv").is_file()
    resumed = brain.main(base + ["--strategies", "last_layer", "--seeds", "0", "1", "--steps", "2"])
    added = [(r["strategy"], r["seed"]) for r in map(json.loads, resumed.read_text().splitlines())][2:]
    assert added == [("last_layer", 1)]  # seed 0's runs were kept, not redone
    with pytest.raises(ValueError, match=r"runs\.jsonl: holds runs of \[2\] steps, not --steps 3"):
        brain.main(base + ["--strategies", "last_layer", "--seeds", "1", "--steps", "3"])
    text = report.main(["--brain3d", str(out), "--out", str(tmp_path / "report")]).read_text()
    assert "| random | metalr | 1 |" in text and "no baseline shares two seeds" in text


@pytest.mark.slow
def test_kermany_bundle_study_on_the_real_x_rays(tmp_path):
    """The chest X-ray bundle on the 16 real Kermany X-rays, one strategy, one epoch (when they are fetched)."""
    from monai_metalr.data import is_fetched

    if not is_fetched("kermany_val"):
        pytest.skip("the Kermany X-rays are not fetched: run make study-data")
    import kermany_bundle

    runs = kermany_bundle.main(["--out", str(tmp_path / "k"), "--strategies", "all_layers", "--epochs", "1"])
    (record,) = [json.loads(line) for line in runs.read_text().splitlines()]
    assert record["strategy"] == "all_layers" and 0 <= record["test_accuracy"] <= 1 and "test_macro_f1" in record

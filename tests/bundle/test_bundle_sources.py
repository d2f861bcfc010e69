"""The published bundles are generated from one source (``bundles/_source``, ``bundles/generate.py``): every committed
config is exactly what its layers give, a hand edit to a published file is caught, and the logic the configs call
lives in :mod:`monai_metalr.bundle.config_helpers`."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from repo_paths import BUNDLES

from monai_metalr.bundle import config_helpers

NAMES = ["busi_classification", "chestxray_classification", "lits_liver_segmentation", "pocus_classification"]
CLASSIFICATION = [n for n in NAMES if n.endswith("_classification")]


def _generator(path: Path = BUNDLES / "generate.py"):
    spec = importlib.util.spec_from_file_location(f"bundle_generate_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def copy_of_bundles(tmp_path: Path) -> Path:
    """The bundles folder (sources, generator, published files) copied: tests edit the copy, never the real one."""
    root = tmp_path / "bundles"
    shutil.copytree(BUNDLES, root, ignore=shutil.ignore_patterns("__pycache__", "outputs"))
    return root


def test_committed_bundle_files_are_what_the_sources_generate():
    problems = _generator().check(diff=True)
    assert not problems, "\n".join(problems) + "\nrun `python bundles/generate.py` and commit the result"


@pytest.mark.slow
def test_an_edit_to_a_generated_file_is_detected(copy_of_bundles: Path):
    root = copy_of_bundles
    train = root / "busi_classification" / "configs" / "train.json"
    config = json.loads(train.read_text())
    config["epochs"] = 31
    train.write_text(json.dumps(config, indent=4) + "\n")
    (root / "pocus_classification" / "configs" / "evaluate.json").unlink()
    (root / "lits_liver_segmentation" / "configs" / "extra.json").write_text("{}\n")
    proc = subprocess.run([sys.executable, str(root / "generate.py"), "--check"], check=False, capture_output=True,
                          text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    listed = sorted(line.split(":")[0] for line in proc.stdout.splitlines())
    assert listed == [
        "bundles/busi_classification/configs/train.json",
        "bundles/lits_liver_segmentation/configs/extra.json",
        "bundles/pocus_classification/configs/evaluate.json",
    ]
    assert "differs" in proc.stdout and "missing" in proc.stdout and "not generated" in proc.stdout
    generator = _generator(root / "generate.py")
    assert len(generator.write(root)) == 3 and generator.check(root) == []  # regenerating restores them
    assert json.loads(train.read_text())["epochs"] == 30


def test_a_shared_layer_is_published_to_every_bundle_that_uses_it(copy_of_bundles: Path):
    """One edit to the 2D layer changes the three 2D bundles, and one to the common layer all four."""
    root = copy_of_bundles
    generator = _generator(root / "generate.py")
    source = root / "_source" / "classification" / "configs" / "train.json"
    source.write_text(source.read_text().replace('"fixed_epochs": 5', '"fixed_epochs": 6'))
    assert sorted(p.split("/")[1] for p in generator.check(root)) == CLASSIFICATION
    generator.write(root)
    assert all(json.loads((root / n / "configs" / "train.json").read_text())["fixed_epochs"] == 6 for n in CLASSIFICATION)
    common = root / "_source" / "common" / "configs" / "train.json"
    common.write_text(common.read_text().replace('"checkpoint_every_n_iterations": 50', '"checkpoint_every_n_iterations": 7'))
    assert sorted(p.split("/")[1] for p in generator.check(root)) == NAMES


def test_a_merge_key_with_nothing_to_merge_into_is_refused(copy_of_bundles: Path):
    root = copy_of_bundles
    overlay = root / "_source" / "busi_classification" / "configs" / "train.json"
    overlay.write_text(json.dumps({**json.loads(overlay.read_text()), "+no_such_list": ["x"]}, indent=4))
    generator = _generator(root / "generate.py")
    with pytest.raises(generator.SourceError, match=r"\+no_such_list"):
        generator.check(root)


def test_the_2d_bundles_share_their_overlays_byte_for_byte():
    for name in ("evaluate.json", "inference.json", "multi_gpu_train.json", "logging.conf"):
        contents = {(BUNDLES / b / "configs" / name).read_bytes() for b in CLASSIFICATION}
        assert len(contents) == 1, name


@pytest.mark.slow
def test_the_published_configs_use_only_current_module_paths():
    """Every ``monai_metalr.<module>[.<name>]`` the configs name imports and resolves, with no deprecation warning
    (the old paths, such as ``monai_metalr.guards``, still work but warn)."""
    text = "\n".join(p.read_text() for b in NAMES for p in (BUNDLES / b / "configs").glob("*.json"))
    paths = sorted(set(re.findall(r"monai_metalr(?:\.[A-Za-z_]\w*)+", text)))
    script = (
        "import importlib, sys\n"
        "for path in sys.argv[1:]:\n"
        "    parts = path.split('.')\n"
        "    for i in range(len(parts), 0, -1):\n"
        "        try:\n"
        "            obj = importlib.import_module('.'.join(parts[:i]))\n"
        "            break\n"
        "        except ModuleNotFoundError:\n"
        "            if i == 1: raise\n"
        "    for name in parts[i:]:\n"
        "        obj = getattr(obj, name)\n"
    )

    def run(*names: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", script, *names],
                              check=False, capture_output=True, text=True)

    proc = run(*paths)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "monai_metalr.bundle.config_helpers.pocus_bundle_datalist" in paths
    old = run("monai_metalr.guards.NonFiniteGuard")  # the check itself: an old path fails it
    assert old.returncode != 0 and "has moved to monai_metalr.handlers.guards" in old.stderr


# ------------------------------------------------------------------ the helpers the configs call


def test_schedule_epochs_counts_only_when_the_schedule_depends_on_it():
    assert config_helpers.schedule_epochs("constant", 30) is None
    assert config_helpers.schedule_epochs("cosine", 30) == 30


def test_find_unused_parameters_for_the_strategies_that_freeze():
    from monai_metalr.strategies import STRATEGIES

    assert set(config_helpers.FREEZING_STRATEGIES) <= set(STRATEGIES)
    assert [s for s in STRATEGIES if config_helpers.ddp_find_unused_parameters(s)] == [
        s for s in STRATEGIES if s in ("last_layer", "lpft", "bidirectional")
    ]


def test_pocus_datalist_from_the_pickle_or_the_folder(monkeypatch: pytest.MonkeyPatch):
    from monai_metalr import data

    calls = []
    monkeypatch.setattr(data, "pocus_folds_pickle", lambda path: calls.append(("pickle", path)) or ["folds"])
    monkeypatch.setattr(data, "folds_to_datalist", lambda folds, out: calls.append(("folds", folds, out)) or ["f"])
    monkeypatch.setattr(data, "pocus_datalist", lambda d, **kw: calls.append(("folder", d, kw)) or ["v"])
    assert config_helpers.pocus_bundle_datalist("/d", "/p.pkl", "/frames") == ["f"]
    assert calls == [("pickle", "/p.pkl"), ("folds", ["folds"], "/frames")]
    calls.clear()
    assert config_helpers.pocus_bundle_datalist("/d", "", "/frames", sample_fps=2.0, max_frames=4, on_error="skip") == ["v"]
    assert calls == [("folder", "/d", {"sample_fps": 2.0, "max_frames": 4, "frame_dir": "/frames", "on_error": "skip"})]


def test_multi_gpu_helpers(monkeypatch: pytest.MonkeyPatch):
    import logging

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config_helpers.local_rank_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert config_helpers.local_rank_device() == torch.device("cuda:3")
    engine_logger = logging.getLogger("test_bundle_sources.engine")
    for rank, level in ((0, logging.INFO), (1, logging.WARNING)):
        monkeypatch.setattr(config_helpers.dist, "get_rank", lambda rank=rank: rank)
        config_helpers.quiet_other_ranks(engine_logger, "test_bundle_sources.named")
        assert engine_logger.level == logging.getLogger("test_bundle_sources.named").level == level

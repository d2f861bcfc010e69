"""One MetaLR default serves every bundle: the four train.json files use the library's default rule, hyper-LR
and multiplier bounds (no per-bundle tuning), start every group strictly inside the bounds, and step a base
LR schedule that MetaLR composes with."""

from __future__ import annotations

import json

import pytest
from repo_paths import BUNDLES

from monai_metalr.meta import DEFAULT_HYPER_LR, DEFAULT_MULTIPLIER_BOUNDS, MetaLR

NAMES = ["busi_classification", "chestxray_classification", "lits_liver_segmentation", "pocus_classification"]


@pytest.mark.parametrize("bundle", NAMES)
def test_bundle_uses_the_library_defaults(bundle):
    import inspect

    config = json.loads((BUNDLES / bundle / "configs" / "train.json").read_text())
    defaults = inspect.signature(MetaLR).parameters
    assert config["metalr_update"] == defaults["update"].default == "log_adam"
    assert config["hyper_lr"] == DEFAULT_HYPER_LR == defaults["hyper_lr"].default
    assert tuple(config["multiplier_bounds"]) == DEFAULT_MULTIPLIER_BOUNDS
    lo, hi = config["multiplier_bounds"]
    assert lo < 1.0 < hi  # every multiplier starts at 1: strictly inside
    handlers = config["train"]["handlers"]
    (strategy,) = [h for h in handlers if h.get("_target_") == "monai_metalr.handlers.StrategyHandler"]
    assert strategy == {"_target_": "monai_metalr.handlers.StrategyHandler", "strategy": "@strategy_def",
                        "metalr": "@metalr_handler"}
    names = [h["_target_"] for h in handlers]  # schedulefree's switch to the averaged weights precedes validation
    assert names.index("monai_metalr.handlers.StrategyHandler") < names.index("ValidationHandler")
    assert "@metalr_handler" in config["train"]["checkpoint"]["save_dict"]
    metalr = config["metalr_handler"]
    assert metalr["hyper_lr"] == "@hyper_lr" and metalr["multiplier_bounds"] == "@multiplier_bounds"
    assert "lr_bounds" not in json.dumps(config)
    schedule = next(h for h in handlers if h.get("_target_") == "LrScheduleHandler")
    assert schedule["lr_scheduler"] == "@lr_scheduler" and schedule["epoch_level"] is False
    assert (
        config["lr_schedule"] == "constant"
        and "lr_scheduler=@lr_scheduler" in config["train"]["checkpoint"]["save_dict"]
    )


@pytest.mark.parametrize("bundle", NAMES)
def test_checkpoints_store_the_settings_that_define_the_run(bundle, tmp_path):
    """Every bundle's ResumableCheckpoint gets the resolved run settings (refused on resume if they differ) and the
    allow list; the epoch count counts only when the LR schedule depends on it (raising it extends a constant run)."""
    from monai.bundle import ConfigParser

    config = json.loads((BUNDLES / bundle / "configs" / "train.json").read_text())
    checkpoint = config["train"]["checkpoint"]
    assert checkpoint["settings"] == "@run_settings" and checkpoint["allow_changes"] == "@resume_allow_changes"
    assert config["resume_allow_changes"] == []
    parser = ConfigParser(config)
    parser.update({"bundle_root": str(BUNDLES / bundle), "output_dir": str(tmp_path)})
    settings = parser.get_parsed_content("run_settings")
    for key in ("lr", "head_lr", "iterations_per_epoch", "strategy", "strategy_kwargs", "use_metalr", "hyper_lr",
                "lr_schedule", "batch_size", "seed", "network_name"):
        assert key in settings, key
    assert settings["use_metalr"] is True and settings["epochs"] is None
    parser.update({"lr_schedule": "cosine", "strategy": "layer_decay"})
    settings = ConfigParser(parser.get()).get_parsed_content("run_settings")
    assert settings["epochs"] == config["epochs"] and settings["use_metalr"] is False
    assert not any(k in settings for k in ("device", "num_workers", "cache", "dataset_dir", "output_dir"))

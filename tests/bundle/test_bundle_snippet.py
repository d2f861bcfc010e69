"""The override shown in docs/bundle_integration.md is exactly what ``add_to_bundle`` writes for a bundle in the shape
of the model zoo's spleen_ct_segmentation, and MONAI's own parser composes the page's block with that bundle into a
working trainer; tests/bundle/test_add_to_bundle.py trains the bundle with it through ``python -m monai.bundle run``,
so the page cannot drift from the code."""

from __future__ import annotations

import json
import re

from repo_paths import DOCS
from zoo_bundles import write_spleen_like

from monai.bundle import ConfigParser

from monai_metalr.bundle.add_to_bundle import plan_override

DOC = DOCS / "bundle_integration.md"


def _blocks() -> tuple[dict, dict]:
    text = DOC.read_text()
    block = re.search(r"<!-- metalr-snippet:start -->\s*```json\n(.*?)```", text, re.S)
    assert block, f"{DOC} lost its marked snippet"
    multi = re.search(r'```json\n\s*(\{"train#trainer#train_handlers".*?\})\n\s*```', text, re.S)
    assert multi, f"{DOC} lost its multi-GPU override"
    return json.loads(block.group(1)), json.loads(multi.group(1))


def test_documented_override_is_what_add_to_bundle_writes(tmp_path):
    root = write_spleen_like(tmp_path / "bundle", tmp_path / "data", n_cases=0)
    plan = plan_override(root, preview=False)
    single, multi = _blocks()
    assert single == plan.override
    assert multi == plan.multi_gpu_override


def test_documented_block_composes_through_monai_s_parser(tmp_path):
    root = write_spleen_like(tmp_path / "bundle", tmp_path / "data")
    single, _ = _blocks()
    (root / "configs" / "metalr.json").write_text(json.dumps(single, indent=4))  # the page's text, as a user saves it
    parser = ConfigParser(ConfigParser.load_config_files([str(root / "configs" / f) for f in ("train.json", "metalr.json")]))
    parser["bundle_root"] = str(root)
    assert parser["initialize"][-2:] == ["$monai_metalr.bundle.run.install_root_cause_hook()", "$@metalr"]
    trainer = parser.get_parsed_content("train#trainer")
    handler = parser.get_parsed_content("metalr")
    assert type(handler).__name__ == "MetaLRHandler" and trainer.optimizer is parser.get_parsed_content("optimizer")
    assert len(trainer.optimizer.param_groups) == 5  # one per layer group of the UNet, each at the bundle's LR

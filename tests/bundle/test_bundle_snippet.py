"""The override shown in docs/bundle_integration.md is exactly what ``add_to_bundle`` writes for a bundle in the shape
of the model zoo's spleen_ct_segmentation; tests/bundle/test_add_to_bundle.py trains that bundle with it through
``python -m monai.bundle run``, so the page cannot drift from the code."""

from __future__ import annotations

import json
import re

from repo_paths import DOCS
from zoo_bundles import write_spleen_like

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

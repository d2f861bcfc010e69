"""The repository's folders, for tests wherever they live under ``tests/`` (this file is ``tests/helpers/``)."""

from __future__ import annotations

from pathlib import Path

HELPERS = Path(__file__).resolve().parent
REPO = HELPERS.parents[1]
PACKAGE = REPO / "monai_metalr"
BUNDLES = REPO / "bundles"
BENCHMARKS = REPO / "benchmarks"
STUDIES = REPO / "studies"
DOCS = REPO / "docs"

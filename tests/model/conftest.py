"""Fixtures for tests that load the real embedding model (all-MiniLM-L6-v2, bundled package)."""

from __future__ import annotations

import os

import pytest

from batchroute.analyzer import Analyzer, get_analyzer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def analyzer() -> Analyzer:
    """The process-wide analyzer over the bundled exemplars (model loaded once per session).

    Its index is cached under ``BATCHROUTE_DATA_DIR`` (set by tests/conftest.py), so only the
    first session after an exemplar change pays for embedding the exemplars.
    """
    return get_analyzer()

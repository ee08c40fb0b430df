import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path_factory):
    """No test reads or writes the user's cache, mirror or weights folder."""
    monkeypatch.setenv("CITYSEG_ZOO_CACHE", str(tmp_path_factory.mktemp("cache")))
    for var in ("CITYSEG_ZOO_WEIGHTS_DIR", "CITYSEG_ZOO_MIRROR", "CITYSEG_ZOO_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

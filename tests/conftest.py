"""Session-wide test settings."""
import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """The tar-index cache (neatt.datasets.tar_index) of this session, not the user's ~/.cache (subprocesses
    inherit it)."""
    os.environ["NEATT_CACHE_DIR"] = str(tmp_path_factory.mktemp("neatt-cache"))

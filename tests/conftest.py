"""Suite-wide isolation of the device-profile cache (:mod:`opmeter.timemodel.cache`): profiles go to a temporary
directory, never the developer's ``~/.cache``, and none is reused (maximum age 0), so every executed report in the
suite measures its own as before; the cache's own tests set a real age."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    os.environ["OPMETER_CACHE_DIR"] = tempfile.mkdtemp(prefix="opmeter-test-cache-")
    os.environ["OPMETER_PROFILE_MAX_AGE_DAYS"] = "0"

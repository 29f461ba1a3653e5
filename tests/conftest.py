"""Shared pytest configuration: Hypothesis profiles and the data/network locations."""
import os
import pathlib

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("REFCERT_SHARED", REPO.parent / "shared"))


def shared_file(relative: str) -> pathlib.Path:
    """A file under ../shared, or skip the test cleanly when it is absent."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"shared file {relative} not found under {SHARED}")
    return path


@pytest.fixture
def plain():
    """Real-arithmetic transformers without refcert.fp's rounding-error radii: for tests of a closed form
    or of gradients, which the sound widening (a few ulps) would blur.  Soundness tests never use it."""
    from refcert import fp
    with fp.use(sound=False):
        yield

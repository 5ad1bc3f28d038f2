import os
import socket

import pytest
from hypothesis import HealthCheck, settings

# CI runs the same examples every time (no flaky reds); STAIRFLOW_HYPOTHESIS=explore for more.
settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "explore", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("STAIRFLOW_HYPOTHESIS", "ci"))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees a `stairflow serve` the developer left running (its note lives in the
    cache directory): runs that need the local model start their own or fail as tested."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _no_network(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests may not open network connections unless marked as integration tests."""
    if request.node.get_closest_marker("integration"):
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("network access in a unit test; mark it @pytest.mark.integration")

    monkeypatch.setattr(socket.socket, "connect", refuse)

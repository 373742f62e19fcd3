"""Options of the power-cut tests: how many crash states, and a seed to replay.

    pytest tests/crash                                   # CI: about 2,000 states
    pytest tests/crash --crash-states 50000 -m slow      # the long run (or MILLPOND_CRASH_STATES=50000)
    pytest tests/crash --crash-seed 1234                 # replay the seed a failure printed
"""

from __future__ import annotations

import os
import random

import pytest

CI_STATES = 2_000


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("crash", "power-cut simulation (tests/crash)")
    group.addoption("--crash-states", type=int, default=None, help="crash states in total (default 2,000)")
    group.addoption("--crash-seed", type=int, default=None, help="replay one seed (printed by a failure)")


@pytest.fixture
def crash_seed(request: pytest.FixtureRequest) -> int:
    seed = request.config.getoption("--crash-seed")
    if seed is None and os.environ.get("MILLPOND_CRASH_SEED"):
        seed = int(os.environ["MILLPOND_CRASH_SEED"])
    return seed if seed is not None else random.SystemRandom().randrange(1 << 32)


@pytest.fixture
def crash_states(request: pytest.FixtureRequest) -> int:
    states = request.config.getoption("--crash-states")
    if states is None and os.environ.get("MILLPOND_CRASH_STATES"):
        states = int(os.environ["MILLPOND_CRASH_STATES"])
    return states if states is not None else CI_STATES

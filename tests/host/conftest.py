"""Host-test options: `--fuzz N` runs N fresh random scenarios in
tests/host/test_properties.py instead of the fixed CI set (`make fuzz N=500`).

The option is registered when pytest is given a path under tests/host (as
`make fuzz` does); the property test reads it with a default, so a plain
`pytest` run works without it.

Fixtures `keys` and `srv`: the firmware-update tests' signing keys and
loopback HTTP server (tests/host/fwserver.py).
"""

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz",
        type=int,
        default=None,
        metavar="N",
        help="run N random scenarios in test_properties.py (default: the fixed, derandomized CI set)",
    )


def pytest_terminal_summary(terminalreporter, config):
    for attr, what in (("fuzz_stats", ""), ("fuzz_stats_energy", " with load management")):
        stats = getattr(config, attr, None)
        if not stats:
            continue
        terminalreporter.write_line(
            "safety invariants%s: %d random scenarios checked, %.2f simulated hours, %d contactor closings, %d openings"
            % (what, stats["scenarios"], stats["sim_seconds"] / 3600, stats["closes"], stats["opens"])
        )


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs, "good" and "other": {name: (private PEM, public JSON)}."""
    from fwserver import make_keys

    return make_keys(tmp_path_factory.mktemp("fwkeys"))


@pytest.fixture
def srv():
    """A loopback HTTP server serving what the test puts in srv.routes."""
    from fwserver import FwServer

    s = FwServer()
    yield s
    s.close()

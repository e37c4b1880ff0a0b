"""The scenario library (tests/scenarios/*.json) as specifications: every
scenario runs on the unix port against the simulated board and each of its
`expect` steps must hold; over the whole library the contactor must open
within 100 ms of the world requiring it (DEVELOPERS.md) and close within 3 s
of the EV asking (IEC 61851). The table of reaction times is printed
(`pytest -s`): our targets are 20 ms and 200 ms. Each test runs once per
interpreter (`mp_interpreter`, tests/conftest.py): the venv's 64-bit unix port
and the ESP32-faithful one (112 KB heap, firmware frozen)."""

import glob
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))

from evrig import EXIT_FAILED, cli, load_scenario  # noqa: E402
from evrig.scenario import check_expects  # noqa: E402
from evrig.unixport import run_scenario  # noqa: E402

SCENARIOS = sorted(glob.glob(os.path.join(REPO, "tests", "scenarios", "*.json")))
SUMMARIES = {}  # (interpreter, scenario file) -> summary


@pytest.fixture
def interp(mp_interpreter, monkeypatch):
    """The interpreter's name; rig runs scenarios on $MICROPYTHON."""
    name, exe = mp_interpreter
    monkeypatch.setenv("MICROPYTHON", str(exe))
    return name


def test_library_covers_what_commercial_testers_exercise():
    names = {os.path.basename(p)[:-5] for p in SCENARIOS}
    for required in (
        "state_a_idle", "state_b_connected", "state_c_charge_and_unplug", "state_d_vent_allowed",
        "state_d_vent_not_allowed", "state_e_cp_short", "diode_short", "pe_open", "pp_13a", "pp_20a",
        "pp_32a", "pp_63a", "pp_invalid", "rcd_trip", "weld", "x1_pause_obeyed", "x1_pause_ignored", "tethered_j1772_80a",
        "overcurrent", "overtemperature",
    ):  # fmt: skip
        assert required in names, required


@pytest.mark.parametrize("path", SCENARIOS, ids=[os.path.basename(p) for p in SCENARIOS])
def test_scenario_expectations_hold(path, interp):
    sc = load_scenario(path)
    assert any("expect" in s for s in sc["steps"]), "a scenario without expectations tests nothing"
    records, _commands, summary = run_scenario(path, sc)
    failures = check_expects(sc, records)
    assert failures == [], failures
    SUMMARIES[interp, os.path.basename(path)] = summary
    # No close the simulated world forbade (S2 open, a diode/CP short, PE open, RCD trip).
    assert summary["unsafe_closes"] == 0, [c for c in summary["closes"] if c["cause"] == "unsafe"]
    # The checkpoint area (sim/nor.py) is never erased with the contactor closed, on any profile,
    # and never programmed where it was not erased.
    nv = summary["nvlog"]
    assert nv is not None and nv["energized_erases"] == 0 and nv["overwrites"] == 0, nv
    # No record may show the contactor closed outside C/D with PWM, or during a fault.
    for r in records:
        if r["contactor"]:
            assert r["fault"] is None, r
            assert r["state"] in ("C2", "D2", "C1", "D1"), r
    # A phase relay moves only with the contacts open and the pilot steady (the simulator's truth).
    for sw in (summary.get("energy") or {}).get("phase_switches", ()):
        assert not sw["contacts_closed"] and not sw["pwm"], sw


def test_reaction_times_over_the_library(interp):
    mine = {}
    for path in SCENARIOS:
        name = os.path.basename(path)
        if (interp, name) not in SUMMARIES:  # when run alone
            SUMMARIES[interp, name] = run_scenario(path, load_scenario(path))[2]
        mine[name] = SUMMARIES[interp, name]
    open_max = max((s["open_max_ms"] or 0) for s in mine.values())
    close_max = max((s["close_max_ms"] or 0) for s in mine.values())
    print("\nreaction times over %d scenarios (%s): open max %d ms (target 20), close max %d ms (target 200)"
          % (len(mine), interp, open_max, close_max))  # fmt: skip
    assert open_max <= 100
    assert close_max <= 3000


def test_measure_fails_on_a_close_the_world_forbade(monkeypatch, capsys):
    # Issue 15 item 1: the runner labelled a close with the diode still shorted
    # "resume" and `measure` passed it. sim/scenario.py now labels it "unsafe";
    # here a summary holding one must make `measure` exit 1 and name it.
    path = os.path.join(REPO, "tests", "scenarios", "diode_short_retry_noisy.json")
    summary = {"opens": [], "closes": [{"t": 5.36, "cause": "unsafe", "why": "diode_short", "ms": None}],
               "unsafe_closes": 1, "open_max_ms": None, "close_max_ms": None}  # fmt: skip
    monkeypatch.setattr(cli, "run_scenario", lambda *a, **k: ([], [], summary))
    assert cli.main(["measure", path]) == EXIT_FAILED
    assert "1 unsafe close(s): diode_short at 5.36 s" in capsys.readouterr().out

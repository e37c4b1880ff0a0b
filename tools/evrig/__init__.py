"""The bench rig (`tools/rig.py`) as a package, one job a module:

- `scenario`: the scenario format, its validation and the expectation checks
  (no I/O: a parsed scenario in, messages out);
- `unixport`: running a scenario on the MicroPython unix port against the
  simulated board (sim/scenario.py) and reading its trace stream;
- `board_run`: the same scenario on a board over its serial line, real on a
  pilot-signal rig or emulated (tools/simboard.py), docs/rig.md;
- `report`: the live timeline and the plot;
- `calibrate`: the meter calibration against a known load (simulated board);
- `cli`: the command line (`run`, `measure`, `restore`, `calibrate`).

This file holds what they share: the repository's place, the exit codes, the
two errors and reading a scenario file.
"""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIO_DIR = os.path.join(REPO, "tests", "scenarios")
# The firmware's and the simulation's plain-Python modules (firmware/config.py,
# firmware/facts.py, sim/steps.py) hold facts the rig must not copy.
if REPO not in sys.path:
    sys.path.append(REPO)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CRASH = 0, 1, 2, 3


class BadScenario(Exception):
    """The scenario file is unusable; args[0] is a list of messages."""


class RigError(Exception):
    """The MicroPython side failed; the message holds its output."""


def load_scenario(path):
    """The parsed, validated scenario of a file; raises BadScenario with the messages."""
    from evrig.scenario import validate

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise BadScenario(["cannot read %s: %s" % (path, e.strerror)]) from None
    try:
        sc = json.loads(text)
    except ValueError as e:
        raise BadScenario(["not valid JSON: %s" % e]) from None
    errors = validate(sc)
    if errors:
        raise BadScenario(errors)
    return sc

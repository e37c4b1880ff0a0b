#!/usr/bin/env python3
"""The bench rig: run a scenario against the real firmware on the simulated
board, check its expectations, show and plot what happened, and measure the
contactor's reaction times; with --port, the same scenario on a board over its
serial line. The code is the package tools/evrig/ (one job a module); this is
its command line. docs/scenarios.md describes the scenario format, the expect
rules and the trace fields; docs/rig.md the board runs.

Exit codes (scripts may rely on them):
    0  every expectation held / every reaction time within its target
    1  an expectation failed / a reaction-time target was missed
    2  bad command line or bad scenario file (the message names the step)
    3  the MicroPython process died, printed a traceback or timed out
"""

import sys

from evrig.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""What the firmware shows the world, defined once for both interpreters: the
charger's state names, the length of its control tick, the prefix of its
trace lines on the console.

Plain Python (no micropython import): the CPython host tools (the rig, the
deploy tool) import these instead of copying them. Never holds state.
"""

# IEC 61851-1 states as the charger reports them: pilot state letter, then
# 1 (steady pilot, no offer) or 2 (PWM on); E and F have no number.
STATES = ("A1", "A2", "B1", "B2", "C1", "C2", "D1", "D2", "E", "F")

TICK_MS = 10  # the control loop runs every TICK_MS; scenario step times are whole ticks

TRACE_PREFIX = "TRACE "  # every trace line of the rig mode starts with this (firmware/rigtrace.py)

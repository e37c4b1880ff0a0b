"""Pilot misread rates on the simulated ESP32 front end (issue 12 item 4).

`make bench` and `tools/rig.py measure` print them: tools/bench_mp.py `pilot`
reads the pilot N times per EV state (A-D) and duty (10, 50, 96 %) through
sim/frontend.py (RC settling, the 11 dB ADC curve, noise), with the driver's
phase-classified sampling and with the older unsynchronised split, and
counts readings out of the state's window, false diode faults of a healthy
diode and low levels the burst could not see.
"""

import json
import os
import subprocess

from evrig import REPO, RigError
from evrig.unixport import micropython, mp_env


def measure_pilot(n):
    """The JSON object of tools/bench_mp.py pilot N (RigError on a failed run)."""
    cmd = [micropython(), os.path.join(REPO, "tools", "bench_mp.py"), "pilot", str(n)]
    try:
        p = subprocess.run(cmd, cwd=REPO, env=mp_env(), capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise RigError("pilot misread measurement timed out") from None
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise RigError("pilot misread measurement failed (exit %d): %s" % (p.returncode, (p.stdout + p.stderr)[-1500:]))
    return json.loads(lines[-1])


def print_pilot(out, file=None):
    """The misread table: one line per sampling and duty, % per state."""
    print("pilot misreads over %d readings per state and duty (simulated ESP32 front end: tau %d us, "
          "+-%d counts of noise, settle %d us)"
          % (out["pilot_reads"], out["pilot_tau_us"], out["pilot_noise_counts"], out["pilot_settle_us"]), file=file)
    print("  %-22s %5s  %-34s %-26s %s" % ("sampling", "duty", "state out of window A/B/C/D %",
                                           "false diode fault B/C/D %", "low unseen %"), file=file)
    for key, what in (("phase", "phase-classified"), ("split", "unsynchronised split")):
        for duty, m in out["pilot_misread_pct_" + key].items():
            d = out["pilot_false_diode_pct_" + key][duty]
            u = out["pilot_low_unseen_pct_" + key][duty]
            print("  %-22s %4s%%  %-34s %-26s %s" % (
                what, duty, " / ".join("%g" % m[s] for s in "ABCD"), " / ".join("%g" % d[s] for s in "BCD"),
                "%g" % max(u.values())), file=file)  # fmt: skip

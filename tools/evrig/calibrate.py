"""Calibrating the meter against a known load, on the simulated board.

`rig.py calibrate`: tools/bench_mp.py meters a known reference current through
CTs that read ct_error_pm per mille high, stores the per-channel gains in
DIR/cal.json (what firmware/app.py loads at boot), boots again and meters a
session; this side prints the before/after figures and judges them.
"""

import json
import os
import subprocess
import sys

from evrig import EXIT_CRASH, EXIT_FAILED, EXIT_OK, REPO
from evrig.unixport import micropython, mp_env

CAL_LIMIT_PCT = 0.5  # a calibrated meter must read the reference within this


def cmd_calibrate(args):
    """Simulated calibration (tools/bench_mp.py calibrate): meter a known load
    through CTs that read ct_error_pm per mille high, store per-channel gains in
    DIR/cal.json (what firmware/app.py loads at boot), boot again and meter."""
    import tempfile

    data = os.path.abspath(args.data) if args.data else tempfile.mkdtemp(prefix="evse-cal-")
    os.makedirs(data, exist_ok=True)
    mp = micropython()
    if not os.path.exists(mp):
        print("rig: no MicroPython interpreter at %s: run `make deps` first" % mp, file=sys.stderr)
        return EXIT_CRASH
    cmd = [mp, os.path.join(REPO, "tools", "bench_mp.py"), "calibrate", data,
           str(args.ct_error_pm), str(args.reference_a), str(args.minutes)]  # fmt: skip
    env = mp_env()
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60 + 10 * args.minutes, check=False)
    except subprocess.TimeoutExpired:
        print("rig: calibration run timed out", file=sys.stderr)
        return EXIT_CRASH
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("{"):
        print("rig: calibration run failed (exit %d):\n%s" % (p.returncode, p.stdout[-2000:]), file=sys.stderr)
        return EXIT_CRASH
    r = json.loads(lines[-1])
    print("reference load %.1f A on every phase; simulated CTs read %+.1f %%" % (r["reference_a"], r["ct_error_pm"] / 10))
    print("before: gains %s ppm, session energy off by %+.3f %%" % (r["before_gain_ppm"], r["before_err_pct"]))
    print("stored: gains %s ppm in %s" % (r["stored_gain_ppm"], r["cal_file"]))
    print("after a reboot: gains %s ppm, session energy off by %+.3f %% (limit +-%.1f %%)"
          % (r["after_gain_ppm"], r["after_err_pct"], CAL_LIMIT_PCT))  # fmt: skip
    ok = r["after_gain_ppm"] == r["stored_gain_ppm"] and abs(r["after_err_pct"]) <= CAL_LIMIT_PCT
    print("calibration %s" % ("OK" if ok else "FAILED"))
    return EXIT_OK if ok else EXIT_FAILED

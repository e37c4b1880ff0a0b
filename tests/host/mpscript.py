"""Run a MicroPython script of tests/device/ (not a test module: a driver a
host test feeds with files it made) and return the JSON object it printed last."""

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def run_json(exe, script, arg, timeout_s=300):
    env = dict(os.environ, MICROPYPATH="%s:%s" % (REPO, REPO / "lib"))
    r = subprocess.run(
        [str(exe), str(REPO / "tests" / "device" / script), str(arg)],
        capture_output=True, text=True, cwd=str(REPO), env=env, timeout=timeout_s,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])

"""A power cut during a long charge, as a hard kill: the unix-port firmware
charging at 22 kW with the default configuration (no filesystem write while
the contactor is closed) is SIGKILLed at random moments and started again on
the same flash; the session is recovered as power_loss with the energy of
the checkpoint ring (firmware/nvlog.py), losing at most one checkpoint step
(sim/board.py's 64 KB area: 100 kWh / 2048 records = 48.8 Wh), where the
journal alone lost everything since the contactor closed.
"""

import json
import os
import random
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MP = os.environ.get("MICROPYTHON") or os.path.join(REPO, ".venv", "bin", "micropython")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_lifetime_restart import _journal_records  # noqa: E402

AMPS, PHASES, VOLTS = 32, 3, 230
STEP_WH = 100000 / 2048  # firmware/nvlog.py: 100 kWh shared over a 64 KB ring's records
RECORD_S = 1  # the trace writes a record at least every simulated second
SLACK_WH = AMPS * PHASES * VOLTS * RECORD_S / 3600  # the trace lags the kill by up to this


def _scenario(path, until, steps):
    with open(path, "w") as f:
        json.dump({"name": os.path.basename(path), "config": {"max_current_a": 32}, "until": until,
                   "steps": steps}, f)  # fmt: skip
    return str(path)


def _kill_at(tmp_path, data, t_kill):
    """Charge on `data` until the trace passes t_kill seconds, then SIGKILL;
    the last energy the trace showed before the kill (Wh)."""
    data.mkdir()
    charge = _scenario(tmp_path / "charge.json", 3600, [
        {"t": 0, "ev": "B", "pp_ohm": 220, "draw_a": AMPS},
        {"t": 1, "ev": "C"},
    ])  # fmt: skip
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([REPO, os.path.join(REPO, "lib")]))
    proc = subprocess.Popen([MP, "-m", "sim.scenario", charge, "--data", str(data)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    last = None
    killed = False
    try:
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if "energy_wh" not in rec:
                continue
            last = rec
            if not killed and rec["t"] >= t_kill:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return last["energy_wh"]


def test_sigkill_at_random_points_of_a_long_charge_loses_at_most_one_checkpoint_step(tmp_path):
    rng = random.Random(61851)
    for k in range(3):
        t_kill = rng.uniform(60, 1200)
        data = tmp_path / ("flash%d" % k)
        metered = _kill_at(tmp_path, data, t_kill)
        assert metered > AMPS * PHASES * VOLTS * (t_kill - 30) / 3600 * 0.9  # it was charging
        # boot again on the same flash: a few idle seconds
        again = _scenario(tmp_path / "again.json", 5, [{"t": 0, "ev": "A"}])
        p = subprocess.run([sys.executable, os.path.join(REPO, "tools", "rig.py"), "run", again, "--data",
                            str(data)], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert p.returncode == 0, p.stdout + p.stderr
        lost = [r for kind, r in _journal_records(data) if kind == "S" and r["reason"] == "power_loss"]
        assert len(lost) == 1, lost
        got = lost[0]["energy_mwh"] / 1000
        assert -SLACK_WH <= metered - got <= STEP_WH + SLACK_WH, (t_kill, metered, got)
        assert lost[0]["meter_stop_mwh"] - lost[0]["meter_start_mwh"] == lost[0]["energy_mwh"]

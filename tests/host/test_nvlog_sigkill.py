"""A power cut during a long charge, as a hard kill: the unix-port firmware
charging at 22 kW with the default configuration (no filesystem write while
the contactor is closed) is SIGKILLed at random moments and started again on
the same flash; the session is recovered as power_loss with the energy of
the checkpoint ring (firmware/nvlog.py), losing at most one checkpoint step
(sim/board.py's 64 KB area: 100 kWh / 2048 records = 48.8 Wh), where the
journal alone lost everything since the contactor closed.
"""

import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hardkill import charge, journal_records, kill_at, restart, scenario  # noqa: E402

AMPS, PHASES, VOLTS = 32, 3, 230
STEP_WH = 100000 / 2048  # firmware/nvlog.py: 100 kWh shared over a 64 KB ring's records
RECORD_S = 1  # the trace writes a record at least every simulated second
SLACK_WH = AMPS * PHASES * VOLTS * RECORD_S / 3600  # the trace lags the kill by up to this
CONFIG = {"max_current_a": 32}  # the default: no filesystem write while the contactor is closed


def test_sigkill_at_random_points_of_a_long_charge_loses_at_most_one_checkpoint_step(tmp_path):
    rng = random.Random(61851)
    for k in range(3):
        t_kill = rng.uniform(60, 1200)
        data = tmp_path / ("flash%d" % k)
        metered = kill_at(charge(tmp_path, data, AMPS, CONFIG, subprocess.PIPE), t_kill)["energy_wh"]
        assert metered > AMPS * PHASES * VOLTS * (t_kill - 30) / 3600 * 0.9  # it was charging
        # boot again on the same flash: a few idle seconds
        restart(scenario(tmp_path / "again.json", CONFIG, 5, [{"t": 0, "ev": "A"}]), data)
        lost = [r for kind, r in journal_records(data) if kind == "S" and r["reason"] == "power_loss"]
        assert len(lost) == 1, lost
        got = lost[0]["energy_mwh"] / 1000
        assert -SLACK_WH <= metered - got <= STEP_WH + SLACK_WH, (t_kill, metered, got)
        assert lost[0]["meter_stop_mwh"] - lost[0]["meter_start_mwh"] == lost[0]["energy_mwh"]

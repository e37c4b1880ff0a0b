"""`micropython -m sim.scenario SCENARIO --hold`: a run that lasts until its
caller stops it (sim/scenario.py), what tests use so they never depend on how
fast the simulation runs: past `until` it goes on in real time, applies steps
written to its stdin, and ends with its summary when stdin closes."""

import json
import os
import queue
import subprocess
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MICROPYTHON = os.path.join(REPO, ".venv", "bin", "micropython")


def test_a_held_run_goes_on_in_real_time_past_until_takes_steps_from_stdin_and_ends_when_stdin_closes(tmp_path):
    sc = tmp_path / "held.json"
    sc.write_text(json.dumps({"name": "held", "until": 5, "steps": [{"t": 0, "ev": "A"}]}))
    env = dict(os.environ, MICROPYPATH="%s:%s/lib" % (REPO, REPO))
    t_start = time.monotonic()
    proc = subprocess.Popen([MICROPYTHON, "-m", "sim.scenario", str(sc), "--hold"], cwd=REPO, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout] + [lines.put(None)], daemon=True).start()

    def until(pred, what):
        while True:
            line = lines.get(timeout=60)
            assert line is not None, "the run ended before " + what
            obj = json.loads(line)
            if pred(obj):
                return obj

    try:
        until(lambda r: r.get("t", 0) >= 7, "a record 2 s past until")  # it did not stop at until
        assert proc.poll() is None
        proc.stdin.write(json.dumps({"ev": "B", "pp_ohm": 220}) + "\n")  # a step, applied now
        proc.stdin.flush()
        rec = until(lambda r: r.get("state", "A1")[0] == "B", "the step from stdin")
        # Past until it is paced by the wall clock: never ahead of the time since it started.
        assert rec["t"] - 5 <= time.monotonic() - t_start
        proc.stdin.close()
        summary = until(lambda r: "summary" in r, "the summary")["summary"]
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert summary["sim_seconds"] >= rec["t"]

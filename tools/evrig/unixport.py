"""Running a scenario on the MicroPython unix port: the real firmware against
the simulated board (sim/scenario.py), its trace stream read line by line.

The firmware runs unmodified in the unix port (.venv/bin/micropython, or
$MICROPYTHON); sim/scenario.py streams trace records, remote command answers
and a last summary as JSON lines. A process that dies, prints a traceback or
runs past its time limit is a RigError with its last output.
"""

import json
import os
import subprocess
import threading

from evrig import REPO, RigError


def micropython():
    return os.environ.get("MICROPYTHON") or os.path.join(
        REPO, ".venv", "bin", "micropython"
    )


def mp_env():
    """The environment of a unix-port process: imports from the repository and lib/."""
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "lib")])
    return env


def parse_line(line):
    """One line of sim/scenario.py's output as (kind, value): ("summary",
    dict), ("command", dict), ("record", dict) or ("output", the text)."""
    line = line.rstrip("\n")
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            if "summary" in obj:
                return "summary", obj["summary"]
            if "command" in obj:
                return "command", obj
            if "state" in obj:
                return "record", obj
    return "output", line


def start_scenario(path, realtime=False, extra=(), **popen):
    """Start sim/scenario.py on a scenario file in the unix port: the Popen,
    its stdout (stderr merged) a text stream of lines. extra: more arguments
    (--seed N, --data DIR, --broker HOST:PORT, --id ID, --ocpp URL); popen: more Popen options."""
    mp = micropython()
    if not os.path.exists(mp):
        raise RigError("no MicroPython interpreter at %s: run `make deps` first" % mp)
    cmd = [mp, "-m", "sim.scenario", os.path.abspath(path)]
    if realtime:
        cmd.append("--realtime")
    cmd += list(extra)
    return subprocess.Popen(
        cmd, cwd=REPO, env=mp_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1, errors="replace", **popen,
    )  # fmt: skip


def run_scenario(path, sc, seed=None, realtime=False, on_line=None, extra=(), profile=None):
    """Run one scenario in the unix port. Returns (records, commands, summary).
    on_line(kind, obj) is called as lines arrive: kind "record", "command" or
    "output" (any other text). Raises RigError when the process fails."""
    seed_args = ["--seed", str(seed)] if seed is not None else []
    if profile is not None:  # sim/timing.py: ideal, esp32, esp32_worst
        seed_args += ["--profile", profile]
    until = sc["until"]
    limit_s = until + 30 if realtime else 30 + until / 20
    proc = start_scenario(path, realtime, seed_args + list(extra))
    timed_out = []

    def kill():
        timed_out.append(True)
        proc.kill()

    timer = threading.Timer(limit_s, kill)
    timer.start()
    records, commands, other = [], [], []
    summary = None
    traceback_at = None
    try:
        for line in proc.stdout:
            kind, obj = parse_line(line)
            if kind == "summary":
                summary = obj
            elif kind == "command":
                commands.append(obj)
                if on_line:
                    on_line("command", obj)
            elif kind == "record":
                records.append(obj)
                if on_line:
                    on_line("record", obj)
            else:
                line = obj
                if (
                    line.startswith("Traceback (most recent call last)")
                    and traceback_at is None
                ):
                    traceback_at = len(other)
                other.append(line)
                if on_line and traceback_at is None:
                    on_line("output", line)
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    tail = "\n".join(other[traceback_at:] if traceback_at is not None else other[-25:])
    if timed_out:
        raise RigError(
            "MicroPython did not finish within %.0f s; its last output:\n%s"
            % (limit_s, tail)
        )
    if traceback_at is not None:
        raise RigError(
            "MicroPython raised an exception (exit code %d):\n%s" % (rc, tail)
        )
    if rc != 0:
        raise RigError(
            "MicroPython exited with code %d; its last output:\n%s" % (rc, tail)
        )
    if summary is None:
        raise RigError(
            "MicroPython ended without a summary line; its last output:\n%s" % tail
        )
    return records, commands, summary


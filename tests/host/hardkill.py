"""A power cut as a hard kill, for the restart tests (test_lifetime_restart.py,
test_nvlog_sigkill.py): the unix-port firmware charges on a flash folder
(`python -m sim.scenario --data DIR`), is SIGKILLed, and starts again on the
same folder (`tools/rig.py run --data DIR`); then the test reads what survived.

    data = tmp_path / "flash"
    proc = charge(tmp_path, data, amps, config, subprocess.PIPE)
    last = kill_at(proc, t_s)               # the last trace record before the kill
    restart(scenario(tmp_path / "again.json", config, 5, steps), data)
    journal_records(data)                   # [(kind letter, record)] of journal.bin
"""

import json
import os
import signal
import subprocess
import sys
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MP = os.environ.get("MICROPYTHON") or os.path.join(REPO, ".venv", "bin", "micropython")


def scenario(path, config, until, steps):
    """A scenario file for sim/scenario.py; its path as a string."""
    with open(path, "w") as f:
        json.dump({"name": os.path.basename(path), "config": config, "until": until, "steps": steps}, f)
    return str(path)


def charge(tmp_path, data, amps, config, stdout):
    """The unix-port firmware charging at `amps` (3 phases) for up to an hour
    on the new flash folder `data`: the running process."""
    data.mkdir()
    sc = scenario(tmp_path / "charge.json", config, 3600, [
        {"t": 0, "ev": "B", "pp_ohm": 220, "draw_a": amps},
        {"t": 1, "ev": "C"},
    ])  # fmt: skip
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([REPO, os.path.join(REPO, "lib")]))
    return subprocess.Popen([MP, "-m", "sim.scenario", sc, "--data", str(data)], cwd=REPO, env=env,
                            stdout=stdout, text=True)  # fmt: skip


def kill_at(proc, t_kill):
    """Read the trace `proc` prints until a record passes t_kill simulated
    seconds, SIGKILL it there and read on to what it printed before it died;
    the last record with an energy_wh."""
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
                killed = True  # keep reading what it printed before it died
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return last


def restart(sc, data, trace=None):
    """Boot again on the flash folder `data` and run scenario `sc` to its end
    (tools/rig.py run); it must exit 0."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "rig.py"), "run", sc, "--data", str(data)]
    if trace is not None:
        cmd += ["--trace", str(trace)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def journal_records(data_dir):
    """Every frame of journal.bin that checks, as (kind letter, record)."""
    try:
        data = (data_dir / "journal.bin").read_bytes()
    except OSError:
        return []
    out = []
    i = 0
    while i + 9 <= len(data):
        if data[i : i + 2] != b"\xecJ":
            i += 1
            continue
        kind, n = data[i + 2], data[i + 3] | data[i + 4] << 8
        crc = int.from_bytes(data[i + 5 : i + 9], "little")
        payload = data[i + 9 : i + 9 + n]
        if len(payload) == n and zlib.crc32(payload, zlib.crc32(bytes((kind, n & 0xFF, n >> 8)))) == crc:
            out.append((chr(kind), json.loads(payload)))
            i += 9 + n
        else:
            i += 1
    return out

"""tools/simboard.py as a child process for host tests that deploy to or bench
an emulated board: started with its own flash folder, stopped by its pid.

interpreter="esp32" (the board's default): the ESP32-faithful interpreter at
its 112 KB heap, with firmware/, hal/, umqtt.simple and sim/ frozen, as a
board image built from manifest.py holds them; a flash folder without
firmware files runs the frozen firmware. interpreter="unix64": the venv's
64-bit port, which runs whatever the flash holds."""

import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIMBOARD = REPO / "tools" / "simboard.py"
MPBUILD = REPO / "tools" / "mpbuild.py"


def esp32_ready():
    """(True, "") when the ESP32-faithful interpreter is built or can be; else
    (False, why)."""
    p = subprocess.run([sys.executable, str(MPBUILD), "build", "--quiet"], capture_output=True, text=True, check=False)
    return p.returncode == 0, p.stderr[-500:]


class EmulatedBoard:
    def __init__(self, flash, flash_kb=2048, interpreter="esp32", heapsize=None):
        self.flash = flash
        self.interpreter = interpreter
        cmd = [sys.executable, str(SIMBOARD), "--flash", str(flash), "--interpreter", interpreter,
               "--flash-kb", str(flash_kb)]  # fmt: skip
        if heapsize:
            cmd += ["--heapsize", heapsize]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.port = self.proc.stdout.readline().strip()  # its first line: the pty
        assert self.port.startswith("/dev/pts/"), self.port

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

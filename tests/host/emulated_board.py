"""tools/simboard.py as a child process for host tests that deploy to or bench
an emulated board: started with its own flash folder, stopped by its pid."""

import signal
import subprocess
import sys
from pathlib import Path

SIMBOARD = Path(__file__).resolve().parents[2] / "tools" / "simboard.py"


class EmulatedBoard:
    def __init__(self, flash, flash_kb=2048):
        self.flash = flash
        # 384k heap: the simulated HAL's tables and EV need ~35 KB an ESP32 does not carry,
        # and the rig tests run the firmware from source (compiling it needs heap an
        # ESP32 running .mpy does not: with the link and netup, 256k and 320k run out).
        cmd = [sys.executable, str(SIMBOARD), "--flash", str(flash), "--heapsize", "384k",
               "--flash-kb", str(flash_kb)]  # fmt: skip
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

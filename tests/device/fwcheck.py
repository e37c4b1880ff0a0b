# Run by tests/host/test_ocpp_fw.py on each MicroPython interpreter:
#     micropython tests/device/fwcheck.py RUN.json
# Drives firmware/ocpp_fw.py's FwUpdate as the OCPP link does (loop() as the
# control loop, work() as the thread) against the host test's HTTP server,
# with a recording installer and board, and prints one JSON object: the
# statuses posted, what the installer saw, whether the board was reset, the
# file state and the notes.
#
# RUN.json: {"data": dir, "key": path, "version": "1.0", "max_s": 30,
#   "request": UpdateFirmware payload or null (a boot after an install),
#   "busy_passes": n (a session is active for the first n passes),
#   "busy_on": a status, "busy_ms": a session begins when that status is
#   posted and lasts busy_ms ("resets_in_session" counts resets during it),
#   "installer": "ok" | "fail_begin" | "fail_finish", "ticks": fw.ticks}
import gc
import hashlib
import json
import sys
import time

from fakeboard import FakeBoard

import hal.net as net

gc.collect()
_HEAP0 = gc.mem_alloc()
from firmware import ocpp_fw, signature  # noqa: E402

gc.collect()
_HEAP_IMPORT = gc.mem_alloc() - _HEAP0


class UpdateError(Exception):
    pass


class Installer:
    log = None

    def __init__(self, hal, key, mode):
        self.mode = mode
        self.sha = hashlib.sha256()
        self.rec = {
            "begin": None,
            "bytes": 0,
            "finish": None,
            "aborted": False,
            "writes": 0,
            "key_ok": isinstance(key, signature.PublicKey),
        }
        Installer.log = self.rec

    def begin(self, size):
        if self.mode == "fail_begin":
            raise UpdateError("image too large for the partition")
        self.rec["begin"] = size

    def write(self, chunk):
        self.sha.update(chunk)
        self.rec["bytes"] += len(chunk)
        self.rec["writes"] += 1

    def finish(self, sig):
        self.rec["sha256"] = self.sha.digest().hex()
        if self.mode == "fail_finish":
            raise UpdateError("signature")
        self.rec["finish"] = len(sig)

    def abort(self):
        self.rec["aborted"] = True


class Charger:
    session_active = False
    contactor_on = False


class Hal(FakeBoard):
    """The board: counts safe() and reset(); ota_info() as the run says."""

    resets = 0
    safes = 0
    ota = None  # {"running": label, "next": label} or None: no partitions

    def ota_info(self):
        return Hal.ota

    def ticks_ms(self):
        return time.ticks_ms()  # real time: the run waits for the reset

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def safe(self):
        Hal.safes += 1

    def reset(self):
        Hal.resets += 1


class Fw:
    _end_due = None  # no session end waiting to be written

    def __init__(self, ticks):
        self.charger = Charger()
        self.hal = Hal()
        self.ticks = ticks

    def shutdown(self, flush_ms):
        self.hal.safe()


def main(path):
    with open(path) as f:
        run = json.load(f)
    posted = []
    Hal.ota = run.get("ota")
    cfg = {"ocpp_ca": run.get("ca")}
    mode = run.get("installer", "ok")
    fu = ocpp_fw.FwUpdate(
        run["data"],
        Hal(),
        net,
        cfg,
        lambda a, p: posted.append([a, p["status"]]),
        lambda hal, key: Installer(hal, key, mode),
        run["key"],
    )
    fw = Fw(run.get("ticks", 0))
    version = run.get("version", "1.0")
    fu.loop(fw, version)
    if run.get("request"):
        fu.call("UpdateFirmware", run["request"])
    busy = run.get("busy_passes", 0)
    t0 = time.ticks_ms()
    n = 0
    busy_seen = []
    after = run.get("busy_ms", 0)
    busy_on = run.get("busy_on")
    t_inst = None
    in_session = 0
    while time.ticks_diff(time.ticks_ms(), t0) < run.get("max_s", 30) * 1000:
        if after and t_inst is None and posted and posted[-1][1] == busy_on:
            t_inst = time.ticks_ms()
        late = t_inst is not None and time.ticks_diff(time.ticks_ms(), t_inst) < after
        fw.charger.session_active = n < busy or late
        fu.loop(fw, version)
        if late:
            in_session = Hal.resets
        fu.work(time.time(), None)
        if n < busy and posted:
            busy_seen.append(posted[-1][1])
        n += 1
        if Hal.resets or (posted and posted[-1][1] in ("DownloadFailed", "InstallationFailed", "Installed")):
            break
        time.sleep_ms(2)
    state, _ = ocpp_fw.store.load_json(run["data"] + "/" + ocpp_fw.FILE, 4096)
    print(json.dumps({
        "posted": posted, "installer": Installer.log, "resets": Hal.resets, "safes": Hal.safes, "state": state,
        "resets_in_session": in_session, "notes": fu.notes, "trigger": fu.trigger("FirmwareStatusNotification"), "busy_seen": busy_seen,
        "elapsed_ms": time.ticks_diff(time.ticks_ms(), t0), "import_heap": _HEAP_IMPORT,
    }))  # fmt: skip


main(sys.argv[1])

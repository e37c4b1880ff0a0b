"""OCPP 1.6J FirmwareManagement: UpdateFirmware and GetDiagnostics.

Owns: the update requested by the central system, from UpdateFirmware to the
FirmwareStatusNotification after the reboot (Downloading, Downloaded,
Installing, Installed, and DownloadFailed / InstallationFailed), and the
diagnostics upload (DiagnosticsStatusNotification Uploading, Uploaded,
UploadFailed). The image is a signed image (firmware/fwimage.py): its
signature is checked against the board's public key (firmware/signature.py)
from the header, before one byte of it is written; the body streams through
a small buffer into the A/B installer (firmware/update.py) while its SHA-256
is computed, and only an image whose SHA-256 is the signed one is installed.

Never: runs in the control tick (the download and upload run in the OCPP
thread, a slice of at most SLICE_MS per pass, so the WebSocket is still
served), writes flash or resets while a session is active (a session that
begins stops the download, which starts again when it has ended), or keeps
a whole image in RAM. The pending step (waiting for retrieveDate, or
installed and waiting for the reset) is on flash (FILE), so a power cut
loses nothing: after the reboot the running OTA partition (or, on a board
that cannot tell, the version) tells Installed (the new image runs and
stayed up) from InstallationFailed (the bootloader went back).
RAM: one BUF_BYTES buffer and a SHA-256 state while a download runs.
"""

import hashlib
import json

from micropython import const

from firmware import fwimage, http, signature, store, update
from firmware.ocpp_time import parse_time

FILE = "ocpp_fw.json"
ACTIONS = ("UpdateFirmware", "GetDiagnostics")
IO_TIMEOUT_S = const(10)  # connect, TLS, headers, every read
SLICE_MS = const(100)  # download work per pass of the OCPP thread
BUF_BYTES = const(2048)
DEFAULT_TRIES = const(3)  # no `retries` in the request
DEFAULT_RETRY_S = const(60)  # no `retryInterval`
MAX_TRIES = const(10)
MAX_RETRY_S = const(86400)  # a longer wait than a day would overflow ESP32 ticks arithmetic (2^29 ms)
DOWNLOAD_MAX_S = const(900)  # one attempt, start to end: a server that trickles is given up
DIAG_MAX_BYTES = const(4096)
RESET_AFTER_MS = const(3000)  # time for the Installing notification to go out before the reset
# After an attempt that failed, the next one waits retryInterval; while the
# request waits for its retrieveDate nothing happens.


def _interval(s):
    """retryInterval in seconds: the default when absent, 0..MAX_RETRY_S."""
    return DEFAULT_RETRY_S if s is None else min(max(s, 0), MAX_RETRY_S)


def _usable(state):
    """A state read from flash that work() can rely on."""
    if not isinstance(state, dict) or not isinstance(state.get("loc"), str):
        return False
    if state.get("step") == "reboot":
        return True
    for k in ("at", "tries", "every"):
        if not isinstance(state.get(k), int):
            return False
    return state.get("step") == "wait"


def _installer(hal, key):
    """The A/B image installer of this firmware (firmware/update.py)."""
    return update.Installer(hal, key)


class FwUpdate:
    """Owned by firmware/ocpp.py's Ocpp: call() and work() from its thread,
    loop() from the control loop's service()."""

    def __init__(self, data_dir, hal, net, cfg, post, make_installer=_installer, key_path=None):
        """post(action, payload): queue a CALL to the central system."""
        self.path = data_dir + "/" + FILE
        self.key_path = key_path or data_dir + "/" + update.KEY_FILE  # the board's public key (tools/sign.py)
        self._hal = hal
        self._net = net
        self._ca = cfg.get("ocpp_ca") or None
        self._post = post
        self._make = make_installer
        self.version = "?"  # the running firmware's version (set by Ocpp)
        self.status = "Idle"  # the last FirmwareStatusNotification sent
        self.diag_status = "Idle"
        self.idle = False  # no session, contactor open: written by the loop
        self.notes = []
        self.reset_due = False  # installed: the loop resets the board once idle
        self._due_t = None  # loop ticks when the loop first saw reset_due
        self._dl = None  # the download under way (thread only)
        self._next_ms = None  # (ticks, ms): the wait after a failed attempt
        self._diag = None  # [url, body, tries left, retry s, (ticks, ms) wait]
        self._check = False  # after a boot into an update: Installed or not
        self.healthy = False  # this boot ran long enough to mark its image valid (loop)
        state, err = store.load_json(self.path, 2048)
        if err:
            self._note(err)
        self.state = state if _usable(state) else None
        if state and self.state is None:
            self._note("%s: not a usable update state, ignored" % self.path)
        if self.state is not None and self.state["step"] == "reboot":
            self._check = True  # this boot follows the install (reset or power cut)
            self.status = "Installing"  # until the new image has proved itself

    def _note(self, text):
        self.notes.append(text)
        if len(self.notes) > 10:
            self.notes.pop(0)

    # ==== persisted state ==============================================================
    def _save(self, state):
        self.state = state
        try:
            if state is None:
                store.write(self.path, "{}")
            else:
                store.write(self.path, json.dumps(state))
        except OSError as e:
            self._note("cannot write %s: %r" % (self.path, e))

    def _report(self, status):
        self.status = status
        self._post("FirmwareStatusNotification", {"status": status})

    # ==== the central system's CALLs (thread) =========================================
    def call(self, action, p):
        """The CALLRESULT payload of a validated UpdateFirmware/GetDiagnostics."""
        if action == "UpdateFirmware":
            return self._update(p)
        return self._diagnostics(p)

    def _update(self, p):
        loc = p["location"]
        try:
            http.parse_url(loc)
        except ValueError:
            self._report("DownloadFailed")  # not http(s): nothing we can fetch
            return {}
        at = parse_time(p["retrieveDate"])
        tries = p.get("retries")
        tries = DEFAULT_TRIES if tries is None else min(max(tries, 1), MAX_TRIES)
        every = _interval(p.get("retryInterval"))
        self._abort()  # a new request replaces the one under way
        self.reset_due = False
        self._check = False
        self._next_ms = None
        self._save({"step": "wait", "loc": loc, "at": at or 0, "tries": tries, "every": every})
        return {}

    def _diagnostics(self, p):
        loc = p["location"]
        try:
            http.parse_url(loc)
        except ValueError:
            return {}  # ftp and the like: no file will be uploaded
        name = "diag-%s.json" % self.version
        tries = p.get("retries")
        tries = 1 if tries is None else min(max(tries, 1), MAX_TRIES)
        every = _interval(p.get("retryInterval"))
        self._diag = [loc.rstrip("/") + "/" + name, None, tries, every, None]
        return {"fileName": name}

    def trigger(self, what):
        """TriggerMessage: the status of what is under way (Idle: nothing)."""
        if what == "FirmwareStatusNotification":
            busy = self.state is not None or self._dl is not None
            return self.status if busy else "Idle"
        return self.diag_status if self._diag is not None else "Idle"

    # ==== the loop's side ===============================================================
    def loop(self, fw, version):
        """Every service() of the loop: no I/O, a few attribute reads, except
        the reset into a new image (once idle)."""
        self.version = version
        ch = fw.charger
        self.idle = not ch.session_active and not ch.contactor_on
        if self._check and not self.healthy:
            from firmware.app import HEALTHY_AFTER

            self.healthy = fw.ticks >= HEALTHY_AFTER  # as long as a new image must run to be marked good
        if self.reset_due:
            hal = fw.hal
            if self._due_t is None:
                self._due_t = hal.ticks_ms()
            elif self.idle and fw._end_due is None and hal.ticks_diff(hal.ticks_ms(), self._due_t) >= RESET_AFTER_MS:
                self.reset_due = False
                self._due_t = None
                fw.shutdown(0)  # outputs safe, the last session written, the links closed (as a Reset)
                hal.reset()  # the bootloader starts the new image

    # ==== the thread ==================================================================
    def work(self, wall_s, oc):
        """One slice of download or upload work, in the OCPP thread (oc: the
        Ocpp, whose state a diagnostics file describes). Never raises into
        the link: whatever goes wrong ends the update (noted), not the link."""
        try:
            self._work(wall_s, oc)
        except Exception as e:  # noqa: BLE001 - a defect here must not drop the connection again and again
            self._note("update stopped: %r" % (e,))
            self._abort()
            self._diag = None
            self._check = False
            self._save(None)

    def _work(self, wall_s, oc):
        if self._diag is not None:
            self._upload(oc)
        if self._check and self.healthy and self.idle:  # the boot after an install (flash: only while idle)
            self._check = False
            self._report("Installed" if self._booted_new() else "InstallationFailed")
            self._save(None)
        st = self.state
        if self._dl is not None:
            if not self.idle:
                self._abort()  # a session began: start again after it
                return
            self._step()
            return
        if st is None or st["step"] != "wait" or not self.idle:
            return
        if oc is not None and oc.pending():
            return  # the last transaction's messages go out first: the central system sees it end before this begins
        if wall_s is not None and st["at"] > wall_s:
            return  # retrieveDate not reached yet
        if self._waiting(self._next_ms):
            return
        self._next_ms = None
        self._begin()

    def _ota_info(self):
        """The board's OTA partitions (hal ota_info()), or None when it has none."""
        f = getattr(self._hal, "ota_info", None)
        try:
            return f() if f is not None else None
        except Exception:  # noqa: BLE001 - a board that cannot tell
            return None

    def _booted_new(self):
        """After the boot that follows an install: does the new image run?
        The partition the install went to is the running one; on a board
        that cannot tell, the running version is another than before."""
        st = self.state or {}
        info = self._ota_info()
        if info is not None and st.get("to") is not None:
            return info["running"] == st["to"]
        return st.get("from") != self.version

    def _waiting(self, since):
        """True while (ticks, ms) has not passed yet (None: nothing to wait for)."""
        net = self._net
        return since is not None and net.ticks_diff(net.ticks_ms(), since[0]) < since[1]

    def _begin(self):
        key, err = signature.load_key(self.key_path)
        self._report("Downloading")
        if key is None:
            self._note("no firmware key: %s" % err)
            self._install_failed()
            return
        dl = {
            "resp": None,
            "inst": None,
            "key": key,
            "buf": bytearray(BUF_BYTES),
            "head": bytearray(),
            "fields": None,
            "got": 0,
            "sha": hashlib.sha256(),
            "t0": self._net.ticks_ms(),
        }
        self._dl = dl
        try:
            r = http.request(self._net, "GET", self.state["loc"], IO_TIMEOUT_S, ca=self._ca)
            dl["resp"] = r
            if r.status != 200:
                raise http.HttpError("HTTP %d" % r.status)
        except Exception as e:  # noqa: BLE001 - network or server trouble: an attempt failed
            self._download_failed(e)

    def _step(self):
        dl = self._dl
        net = self._net
        t0 = net.ticks_ms()
        view = memoryview(dl["buf"])
        try:
            if net.ticks_diff(t0, dl["t0"]) > DOWNLOAD_MAX_S * 1000:
                raise http.HttpError("download took longer than %d s" % DOWNLOAD_MAX_S)
            while net.ticks_diff(net.ticks_ms(), t0) < SLICE_MS:
                if dl["fields"] is None:
                    if self._header(dl, view):
                        return  # refused: reported
                    continue
                k = dl["resp"].readinto(view)
                if not k:
                    self._finish(dl)
                    return
                dl["got"] += k
                if dl["got"] > dl["fields"][0]:
                    raise http.HttpError("more bytes than the header says")
                part = view[:k]
                dl["sha"].update(part)
                dl["inst"].write(part)
        except Exception as e:  # noqa: BLE001 - UpdateError from the installer too
            if dl.get("installing"):
                self._install_failed(e)
            else:
                self._download_failed(e)

    def _header(self, dl, view):
        """Read the signed header; True when the image is refused."""
        head = dl["head"]
        want = fwimage.FIXED_BYTES
        if len(head) >= want:
            n, err = fwimage.sig_bytes(head)
            if err is not None:
                raise http.HttpError(err)
            want += n
        k = dl["resp"].readinto(view[: want - len(head)])
        if not k:
            raise http.HttpError("image shorter than its header")
        head.extend(view[:k])
        if len(head) < want or want == fwimage.FIXED_BYTES:
            return False
        f = fwimage.fields(head)
        if f is None:
            raise http.HttpError("bad image header")
        if not signature.verify(f[1], f[2], dl["key"]):
            self._note("image signature does not verify: refused")
            self._install_failed()
            return True
        dl["fields"] = f
        dl["installing"] = True  # from here the installer's errors are installation failures
        dl["inst"] = self._make(self._hal, dl["key"])
        dl["inst"].begin(f[0])
        dl["installing"] = False
        return False

    def _finish(self, dl):
        size, digest, sig = dl["fields"]
        if dl["got"] != size or dl["sha"].digest() != digest:
            raise http.HttpError("image does not match its signed SHA-256")
        self._close(dl)
        self._report("Downloaded")
        self._report("Installing")
        dl["installing"] = True
        info = self._ota_info()  # before finish(): where the image goes (the running one may read differently after)
        dl["inst"].finish(sig)  # verifies again, sets the boot partition
        self._dl = None
        st = self.state
        self._save({"step": "reboot", "loc": st["loc"], "from": self.version, "to": info["next"] if info else None})
        self.reset_due = True

    def _close(self, dl):
        r = dl["resp"]
        dl["resp"] = None
        if r is not None:
            r.close()

    def _abort(self):
        dl = self._dl
        self._dl = None
        if dl is None:
            return
        self._close(dl)
        if dl["inst"] is not None:
            try:
                dl["inst"].abort()
            except Exception:  # noqa: BLE001 - already failed
                pass

    def _download_failed(self, err):
        self._note("download: %r" % (err,))
        self._abort()
        st = self.state
        tries = st["tries"] - 1
        if tries <= 0:
            self._report("DownloadFailed")
            self._save(None)
            return
        st["tries"] = tries
        self._save(st)
        self._next_ms = (self._net.ticks_ms(), st["every"] * 1000)

    def _install_failed(self, err=None):
        if err is not None:
            self._note("install: %r" % (err,))
        self._abort()
        self._report("InstallationFailed")
        self._save(None)

    # ==== diagnostics upload (thread) ===================================================
    def summary(self, oc):
        """The diagnostics file: what a service engineer asks first (version,
        link counters, transaction messages waiting, this module's notes,
        the OCPP configuration), as JSON of at most DIAG_MAX_BYTES."""
        with oc._lock:
            waiting = len(oc.txq.entries)
        d = {
            "chargePointId": oc.cp_id, "firmwareVersion": self.version, "link": oc.stats,
            "txQueued": waiting, "txDropped": oc.txq.dropped, "txFlashErrors": oc.txq.flash_errors,
            "firmwareStatus": self.status, "update": self.state, "notes": self.notes[-10:],
            "configuration": oc.keys.values,
        }  # fmt: skip
        out = json.dumps(d)
        if len(out) > DIAG_MAX_BYTES:
            del d["configuration"]
            out = json.dumps(d)[:DIAG_MAX_BYTES]
        return out.encode()

    def _upload(self, oc):
        d = self._diag
        net = self._net
        if self._waiting(d[4]):
            return
        self.diag_status = "Uploading"
        self._post("DiagnosticsStatusNotification", {"status": "Uploading"})
        try:
            if d[1] is None:
                d[1] = self.summary(oc)
            r = http.request(net, "PUT", d[0], IO_TIMEOUT_S, ca=self._ca, body=d[1], content_type="application/json")
            r.close()
            if not 200 <= r.status < 300:
                raise http.HttpError("HTTP %d" % r.status)
        except Exception as e:  # noqa: BLE001 - network or server trouble
            self._note("diagnostics: %r" % (e,))
            d[2] -= 1
            if d[2] > 0:
                d[4] = (net.ticks_ms(), d[3] * 1000)
                return
            self._diag = None
            self.diag_status = "Idle"
            self._post("DiagnosticsStatusNotification", {"status": "UploadFailed"})
            return
        self._diag = None
        self.diag_status = "Idle"
        self._post("DiagnosticsStatusNotification", {"status": "Uploaded"})

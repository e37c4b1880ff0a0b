"""The OCPP transaction queue: StartTransaction, MeterValues and
StopTransaction on flash until the central system answered each, so they go
out in order and once each across outages and power cuts (docs/ocpp.md,
"Offline and exactly once").

Owns: the queue file (`ocpp_tx.q`, append-only JSON lines, compacted when
empty enough), the open transactions and the central system's transaction
ids. Never: raises a flash error into the control loop (counted in
`flash_errors`), sends anything (the link thread of firmware/ocpp.py does).
"""

import json

from micropython import const

from firmware import store
from firmware.journal import exists

TXQ_MAX = const(32)  # transaction messages kept while offline (file and RAM)
TXQ_SAMPLES_MAX = const(24)  # periodic MeterValues beyond this are skipped while offline
COMPACT_BYTES = const(4096)  # the queue file is rewritten past this once empty enough
TX_FILE = "ocpp_tx.q"


class TxQueue:
    """Transaction messages until the central system answered them, on flash.

    The file is append-only JSON lines, replayed at start:
    ["q", seq, action, local, payload]  a message was queued
    ["d", seq, txid]                    it was answered (txid: a StartTransaction's transactionId)
    ["o", local, txid, meter_start, tag, last_register] an open transaction (after a compaction)
    A torn last line (power cut) is ignored and the file rewritten. `local`
    is the session id; the central system's transactionId is filled into
    MeterValues and StopTransaction when they are sent. Used by the loop
    only: the thread reads `entries` under the Ocpp lock."""

    def __init__(self, path):
        self.path = path
        self.entries = []  # [seq, action, local, payload] in order
        self.open = {}  # local -> [txid or None, meter_start, tag, last register sent]: Start queued, no Stop yet
        self.txids = {}  # local -> txid for every transaction still referenced
        self.seq = 0
        self.dropped = 0
        self.flash_errors = 0  # writes that failed (flash full or broken): never raised into the loop
        self.size = 0
        torn = False
        if exists(path):
            try:
                with open(path) as f:
                    for line in f:
                        self.size += len(line)
                        if not line.endswith("\n"):
                            torn = True
                            break
                        try:
                            self._apply(json.loads(line))
                        except (ValueError, TypeError, KeyError, IndexError):
                            torn = True
            except Exception:  # noqa: BLE001 - unreadable, not UTF-8: keep what was read, rewrite the rest
                torn = True
        if torn:
            try:
                self._compact()
            except OSError:
                self.flash_errors += 1

    def _apply(self, r):
        kind = r[0]
        if kind == "q":
            seq, action, local, payload = r[1], r[2], r[3], r[4]
            self.entries.append([seq, action, local, payload])
            self.seq = max(self.seq, seq)
            if action == "StartTransaction":
                self.open[local] = [None, payload["meterStart"], payload["idTag"], payload["meterStart"]]
            elif action == "MeterValues" and local in self.open:
                o = self.open[local]
                o[3] = max(o[3], int(payload["meterValue"][-1]["sampledValue"][0]["value"]))
            elif action == "StopTransaction":
                self.open.pop(local, None)
        elif kind == "d":
            seq, txid = r[1], r[2]
            for i, e in enumerate(self.entries):
                if e[0] == seq:
                    del self.entries[i]
                    if e[1] == "StartTransaction" and txid is not None:
                        self.txids[e[2]] = txid
                        o = self.open.get(e[2])
                        if o is not None:
                            o[0] = txid
                    break
            self._forget()
        elif kind == "o":
            self.open[r[1]] = [r[2], r[3], r[4], r[5]]
            if r[2] is not None:
                self.txids[r[1]] = r[2]

    def _forget(self):
        """Drop transaction ids nothing refers to any more."""
        for local in list(self.txids):
            if local in self.open:
                continue
            for e in self.entries:
                if e[2] == local:
                    break
            else:
                del self.txids[local]

    def _write(self, rec):
        line = json.dumps(rec) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
        self.size += len(line)

    def _compact(self):
        tmp = self.path + ".tmp"
        size = 0
        with open(tmp, "w") as f:
            for local in self.open:
                o = self.open[local]
                line = json.dumps(["o", local, o[0], o[1], o[2], o[3]]) + "\n"
                f.write(line)
                size += len(line)
            for e in self.entries:
                line = json.dumps(["q", e[0], e[1], e[2], e[3]]) + "\n"
                f.write(line)
                size += len(line)
        store.replace(tmp, self.path)
        self.size = size

    def samples(self):
        n = 0
        for e in self.entries:
            if e[1] == "MeterValues":
                n += 1
        return n

    def push(self, action, local, payload, lock):
        """Queue one message (file first, then RAM under `lock`). False when
        the queue is full (counted in `dropped`)."""
        if len(self.entries) >= TXQ_MAX or (action == "MeterValues" and payload.get("_periodic") and self.samples() >= TXQ_SAMPLES_MAX):
            self.dropped += 1
            return False
        payload.pop("_periodic", None)
        seq = self.seq + 1
        try:
            self._write(["q", seq, action, local, payload])
        except OSError:
            self.flash_errors += 1
            self.dropped += 1
            return False
        self.seq = seq
        with lock:
            self._apply(["q", seq, action, local, payload])
        return True

    def done(self, seq, txid, lock):
        """The central system answered message `seq`. Returns its entry (or None)."""
        entry = None
        for e in self.entries:
            if e[0] == seq:
                entry = e
        if entry is None:
            return None
        try:
            self._write(["d", seq, txid])
        except OSError:
            self.flash_errors += 1  # sent again after a reboot: at least once
        with lock:
            self._apply(["d", seq, txid])
        if not self.entries and self.size > COMPACT_BYTES:
            try:
                self._compact()
            except OSError:
                self.flash_errors += 1
        return entry

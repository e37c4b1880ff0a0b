"""The OCPP 1.6J charge point: the WebSocket link in its own thread, and the
loop's side that maps the charger to OCPP.

Owns: the connection to the central system (firmware/ws.py; reconnect with
jittered back-off), BootNotification (Accepted/Pending/Rejected and its
interval), Heartbeat, StatusNotification for connectors 0 and 1, Authorize
(after the local list and cache of firmware/ocpp_auth.py), the transaction
messages (StartTransaction, MeterValues, StopTransaction) through the
persisted queue of firmware/ocpp_txq.py, delivered in order and once each,
and the answers to the central system's CALLs (each checked by
firmware/ocpp_schema.py first). The configuration keys are in
firmware/ocpp_keys.py, the status mapping in firmware/ocpp_status.py.

Never: delays the control tick. The loop calls service() every LINK_EVERY
ticks: a few list operations under the lock, plus a file append when a
transaction message is queued or delivered (like the session journal).
All network I/O happens in the link thread; the lock is never held across
I/O. Nothing from the network reaches the charger except through
Charger.command(), with the charger's own limits.
RAM: ~77 KB of heap after import from source on the unix port with all it
imports (64-bit words), ~8.4 KB frozen on the ESP32-faithful interpreter
(tests/device/test_ocpp.py prints both); a connection holds one message
buffer (firmware/ws.py); the queue holds at most ocpp_txq.TXQ_MAX messages
(~250 bytes each).
"""

import _thread
import json
import os

from micropython import const

from firmware import ocpp_auth, ocpp_fw, ocpp_meter, ocpp_schema, ocpp_smart
from firmware.backoff import Backoff, seed_for
from firmware.linkthread import LinkThread
from firmware.ocpp_keys import KEYS_FILE, Keys
from firmware.ocpp_reserve import Reservation
from firmware.ocpp_status import CP_AVAILABLE, CP_UNAVAILABLE, ConnectorStatus, stop_reason
from firmware.ocpp_time import iso, parse_time
from firmware.ocpp_txq import TX_FILE, TxQueue
from firmware.ws import WebSocket

PROTOCOL = "ocpp1.6"
VENDOR = "OpenEVSE-MP"  # chargePointVendor (CiString20)
MODEL = "ESP32-EVSE"  # chargePointModel (CiString20)
IO_TIMEOUT_MS = const(10000)  # connect, TLS, upgrade, every frame once it has begun
CALL_TIMEOUT_MS = const(30000)  # no CALLRESULT by then: the connection is dropped
IDLE_POLL_MS = const(20)  # the latency of a queued message when the link is idle
BOOT_RETRY_MS = const(60000)  # after a Pending/Rejected with interval 0, or a CALLERROR
RESET_SOFT_MS = const(10000)  # a soft Reset waits this long at most for its StopTransaction to be answered
RESET_CONF_MS = const(2000)  # ... and any Reset for its Accepted to go out
THREAD_STACK_BYTES = const(16384)
_SMALL_MAX = const(8)  # the other queues between the loop and the thread


def charge_point_id(url):
    return url[url.rstrip("/").rfind("/") + 1 :].rstrip("/")


class Ocpp(LinkThread):
    """The charge point; its thread's reconnect loop is firmware/linkthread.py's."""

    def __init__(self, cfg, net, data_dir, clock=None):
        """clock: the board (wall_time/set_wall_time): set from the central
        system's currentTime while NTP has not set it."""
        self._clock = clock
        self._ticks = net  # ticks_ms/ticks_diff for the thread (firmware/linkthread.py)
        self._cfg = cfg
        self._net = net
        self.url = cfg["ocpp_url"]
        self.cp_id = charge_point_id(self.url)
        self.keys = Keys(data_dir + "/" + KEYS_FILE)
        self.txq = TxQueue(data_dir + "/" + TX_FILE)
        self._lock = _thread.allocate_lock()
        self.auth = ocpp_auth.Auth(data_dir, self.keys, self._lock)  # local list and cache (firmware/ocpp_auth.py)
        self.smart = ocpp_smart.Smart(data_dir, cfg.get("voltage_v", 230), cfg.get("phases", 1))  # charging profiles
        self.fw_update = ocpp_fw.FwUpdate(data_dir, clock, net, cfg, self._post_call)  # UpdateFirmware, GetDiagnostics
        self.backoff = Backoff(seed_for(self.cp_id, int.from_bytes(os.urandom(4), "little")))
        self.netup = None
        self.version = "?"
        # --- shared with the loop: only under _lock ----------------------------------
        self._status_q = []  # [connector, status, errorCode, info] changes, oldest first
        self._calls = []  # [action, payload] non-transaction CALLs from the loop (Authorize, triggered MeterValues)
        self._done = []  # (seq, txid) transaction messages answered
        self._commands = []  # (uid, action, payload) for the loop
        self._results = []  # (uid, payload) the loop's answers
        self._replies = []  # (action, request, response) answers the loop asked for (Authorize)
        self._stop_req = False
        self._trigger_mv = False
        # --- written by the thread, read by anyone --------------------------------------
        self.connected = False
        self.accepted = False  # BootNotification accepted (this boot)
        self.running = False
        self.stats = {"connects": 0, "reconnects": 0, "sent": 0, "received": 0, "callerrors": 0, "last_error": None, "last_backoff_ms": 0}
        if self.auth.notes:
            self.stats["auth_notes"] = self.auth.notes
        # --- thread only -----------------------------------------------------------------
        self._ws = None
        self._pending = None  # [uid, action, kind, ref, t]: the one CALL in flight
        self._uid = 0
        self._tx_sent = 0  # highest seq of the queue answered (so not sent again)
        self._tx_tries = 0
        self._txids = dict(self.txq.txids)
        self._boot_t = 0  # ticks of the last Pending/Rejected answer
        self._boot_wait = 0  # ms to wait after it before the next BootNotification
        self._hb_now = False
        self._hb_ms = self.keys.get_int("HeartbeatInterval") * 1000
        self._last_tx = 0  # ticks of the last CALL sent
        self._last_status = {}  # connector -> [status, error, info] last sent
        # --- loop only -----------------------------------------------------------------
        self._st = None  # the last connector 1 status posted
        self._st0 = None
        self.status = ConnectorStatus()  # connector 1 from the charger (firmware/ocpp_status.py)
        self._local = None  # session id of the open transaction
        self._mv_t = 0
        self._avail_pending = None
        self._reset = None  # "Soft"/"Hard": the stop reason of the transaction a Reset ends
        self._reboot = None  # [type, ticks accepted, answers queued with it]: a Reset to carry out (in service)
        self._answers_in = 0  # CALLRESULTs the loop queued in _results (loop only)
        self._answers_out = 0  # ... and the thread sent (thread only)
        self._grant = None  # a card authorized locally (list, cache, offline rules): applied in service()
        self.reservation = Reservation()  # ReserveNow (firmware/ocpp_reserve.py); the charger's `reserved` follows it
        self._res_t = 0  # ticks of the last look at its expiry
        self.aligned = ocpp_meter.Aligned()  # clock-aligned meter values
        self._al_t = 0  # ticks of the last look at the wall clock for them
        self._tx_data = []  # clock-aligned entries for the StopTransaction's transactionData (StopTxnAlignedData)

    # ==== the loop's side ==========================================================
    def start(self):
        self.start_thread(THREAD_STACK_BYTES)

    def pending(self):
        with self._lock:
            return len(self.txq.entries)

    def recover(self, journal, recovered):
        """At boot: transactions left open by a power cut get their
        StopTransaction (reason PowerLoss, meterStop: the journal's recovered
        record or the last register queued in a MeterValues, the higher)."""
        recs = {}
        if recovered:
            for rec in journal.pending():
                recs[rec["id"]] = rec
        for local in list(self.txq.open):
            o = self.txq.open[local]
            rec = recs.get(local)
            mwh = rec.get("meter_stop_mwh") if rec is not None else None
            stop = max(o[3], o[1] if mwh is None else mwh // 1000)
            end = rec.get("end") if rec is not None else None
            self.txq.push(
                "StopTransaction",
                local,
                {"idTag": o[2], "meterStop": stop, "timestamp": iso(end if isinstance(end, int) else None), "reason": "PowerLoss"},
                self._lock,
            )

    def authorize(self, tag):
        """A card presented: the local list, the cache and the offline rules
        decide (firmware/ocpp_auth.py), else the central system (Authorize).
        (ok, error)."""
        if len(tag) > 20:
            return False, "an OCPP idTag has at most 20 characters"
        online = self.accepted and self.connected
        d = self.auth.decide(tag, online, self._clock.wall_time() if self._clock is not None else None)
        res = self.reservation
        if res.active() and not res.admits(tag, None) and d != ocpp_auth.REFUSE:
            # Reserved for another card: only one of the same parentIdTag, which
            # only the central system can tell (Authorize; offline: refused).
            if res.parent is None or not online:
                return False, "the connector is reserved for another card"
            d = ocpp_auth.ASK
        if d == ocpp_auth.ACCEPT:
            self._grant = tag
            return True, None
        if d == ocpp_auth.REFUSE:
            return False, "card refused (offline: local list, cache, AllowOfflineTxForUnknownId)"
        with self._lock:
            if len(self._calls) >= _SMALL_MAX:
                return False, "busy"
            self._calls.append(["Authorize", {"idTag": tag}])
        return True, None

    def tx_start(self, opening, wall_s):
        local = opening["id"]
        self._local = local
        self._mv_t = 0  # first sample one interval from now (set in service)
        self._mv_started = False
        self._tx_data = []
        tag = opening.get("tag") or self._cfg.get("ocpp_free_tag") or "FREE"
        self.smart.tx_begin(wall_s, tag)
        start = (opening.get("meter_start_mwh") or 0) // 1000
        payload = {"connectorId": 1, "idTag": tag, "meterStart": start, "timestamp": iso(wall_s)}
        if self.reservation.active():  # only a card it admits could start: the reservation ends here
            payload["reservationId"] = self.reservation.id
            self.reservation.end()
        self.txq.push("StartTransaction", local, payload, self._lock)

    def tx_stop(self, rec, wall_s, fw):
        self.smart.tx_end()  # its TxProfiles go with it
        local = rec["id"]
        o = self.txq.open.get(local)
        if o is None:
            return  # no StartTransaction was queued for it
        stop = rec["meter_stop_mwh"] // 1000
        mv = self.sample(fw, "Transaction.End")
        mv["sampledValue"][0]["value"] = str(stop)  # the register as of the end: meterStop
        self.txq.push("MeterValues", local, {"connectorId": 1, "meterValue": [mv]}, self._lock)
        reason = rec.get("reason") or ""
        if self._reset is not None and reason == "remote_stop":
            oc = self._reset + "Reset"
            self._reset = None
        else:
            oc = stop_reason(reason)
        payload = {"idTag": o[2], "meterStop": stop, "timestamp": iso(wall_s), "reason": oc}
        if self._tx_data:  # StopTxnAlignedData: the clock-aligned entries taken during it
            payload["transactionData"] = self._tx_data
            self._tx_data = []
        self.txq.push("StopTransaction", local, payload, self._lock)
        self._local = None
        self.status.finishing = True

    def sample(self, fw, context, key="MeterValuesSampledData", wall=None):
        """One meterValue entry with the measurands of configuration key `key`
        (firmware/ocpp_meter.py), stamped `wall` (None: now)."""
        return ocpp_meter.sample(fw, self.keys.values[key], context, fw.hal.wall_time() if wall is None else wall)

    def _aligned(self, fw):
        """Once a second: a clock-aligned sample when a boundary has passed
        (ClockAlignedDataInterval). MeterValues (Sample.Clock) with
        MeterValuesAlignedData for connector 0 (the charger's meter) and
        connector 1 (queued with its transaction while one runs); with
        StopTxnAlignedData, an entry kept for the StopTransaction's
        transactionData."""
        slot = self.aligned.due(fw.hal.wall_time(), self.keys.get_int("ClockAlignedDataInterval"))
        if slot is None:
            return
        if self.keys.values["MeterValuesAlignedData"]:
            mv = self.sample(fw, "Sample.Clock", "MeterValuesAlignedData", slot)
            with self._lock:
                for c in (0, 1) if self._local is None else (0,):
                    if len(self._calls) < _SMALL_MAX:
                        self._calls.append(["MeterValues", {"connectorId": c, "meterValue": [mv]}])
            if self._local is not None:
                self.txq.push("MeterValues", self._local, {"connectorId": 1, "meterValue": [mv], "_periodic": 1}, self._lock)
        if self._local is not None and self.keys.values["StopTxnAlignedData"]:
            if len(self._tx_data) >= ocpp_meter.TXDATA_MAX:
                self._tx_data.pop(0)
            self._tx_data.append(self.sample(fw, "Sample.Clock", "StopTxnAlignedData", slot))

    def service(self, fw):
        """Every LINK_EVERY ticks in the loop: never blocks on the network."""
        ch = fw.charger
        hal = fw.hal
        self.hold_tls = ch.contactor_on  # no TLS handshake while charging (firmware/linkthread.py)
        now = hal.ticks_ms()
        # A mark older than half the ticks period reads as the future (ticks wrap:
        # 6.2 days on an ESP32; the simulator starts just before the wrap): look then too.
        if self.reservation.active() and not 0 <= hal.ticks_diff(now, self._res_t) < 1000:
            self._res_t = now
            if self.reservation.expired(hal.wall_time()):
                self.reservation.end()
        ch.reserved = self.reservation.active()  # no session starts without a card it admits
        st = self.status.of(ch, ch.reserved)
        if st != self._st:
            self._st = st
            self._post_status(1, st)
        st0 = CP_AVAILABLE if ch.enabled or ch.session_active else CP_UNAVAILABLE
        if st0 is not self._st0:
            self._st0 = st0
            self._post_status(0, st0)
        if self._local is not None:
            every = self.keys.get_int("MeterValueSampleInterval") * 1000
            if not self._mv_started:
                self._mv_started = True
                self._mv_t = now
            elif every and hal.ticks_diff(now, self._mv_t) >= every:
                self._mv_t = now
                self.txq.push("MeterValues", self._local, {"connectorId": 1, "meterValue": [self.sample(fw, "Sample.Periodic")], "_periodic": 1}, self._lock)
        if hal.ticks_diff(now, self._al_t) >= 1000:
            self._al_t = now
            self._aligned(fw)
        if self._trigger_mv:
            self._trigger_mv = False
            with self._lock:
                if len(self._calls) < _SMALL_MAX:
                    self._calls.append(["MeterValues", {"connectorId": 1, "meterValue": [self.sample(fw, "Trigger")]}])
        while self._done:
            with self._lock:
                seq, txid = self._done.pop(0)
            e = self.txq.done(seq, txid, self._lock)
            if e is not None and e[1] == "StopTransaction" and fw.link is None:
                if fw.journal.ack(e[2]):  # no MQTT link: OCPP is where the session is billed
                    fw._check_journal()
        if self._grant is not None:
            ch.command("authorize", self._grant)
            self._grant = None
            fw._status_due = True
        while self._replies:
            with self._lock:
                action, req, resp = self._replies.pop(0)
            if action == "Authorize":
                info = resp.get("idTagInfo") or {}
                res = self.reservation
                if info.get("status") == "Accepted" and (not res.active() or res.admits(req["idTag"], info.get("parentIdTag"))):
                    ch.command("authorize", req["idTag"])
                    fw._status_due = True
        if self._avail_pending is not None and not ch.session_active:
            ch.command("enable", self._avail_pending)
            self._avail_pending = None
        while self._commands:
            with self._lock:
                uid, action, payload = self._commands.pop(0)
            answer = self._command(fw, action, payload)
            with self._lock:
                self._results.append((uid, answer))
            self._answers_in += 1
        self.fw_update.loop(fw, self.version)
        if self.smart.due(now, hal):  # a profile (just now too), the transaction or a period boundary changed
            ch.limits.ocpp_ma = self.smart.update(hal.wall_time(), now, fw.energy.phases)
        if self._reboot is not None:
            self._reset_when_done(fw, now)

    def _reset_when_done(self, fw, now):
        """A Reset accepted: once the transaction it stopped has ended (the
        contactor open, the session written) and its Accepted has gone out,
        and for a soft one once the StopTransaction was answered (at most
        RESET_SOFT_MS), the firmware shuts down and the board resets. The
        queue is on flash: whatever was not delivered goes after the reboot."""
        ch = fw.charger
        if ch.session_active or ch.contactor_on or fw._end_due is not None:
            return
        age = fw.hal.ticks_diff(now, self._reboot[1])
        if self._answers_out < self._reboot[2] and age < RESET_CONF_MS:
            return  # the Accepted has not gone out yet
        if self._reboot[0] == "Soft" and self.txq.entries and self.connected and age < RESET_SOFT_MS:
            return
        self._reboot = None
        self.stats["resets"] = self.stats.get("resets", 0) + 1
        fw.shutdown(0)  # outputs safe, links closed
        fw.hal.reset()  # does not return on a board; the simulator records it

    def _post_call(self, action, payload):
        with self._lock:
            if len(self._calls) < _SMALL_MAX:
                self._calls.append([action, payload])

    def _post_status(self, connector, st):
        with self._lock:
            if len(self._status_q) >= _SMALL_MAX:
                self._status_q.pop(0)  # the newest state matters most
            self._status_q.append([connector, st[0], st[1], st[2]])

    def _command(self, fw, action, p):
        """A validated CALL that needs the charger: its CALLRESULT payload."""
        ch = fw.charger
        if action in ocpp_smart.ACTIONS:
            local = self._local
            return self.smart.call(action, p, ch.limits, fw.hal.wall_time(), None if local is None else self.txq.txids.get(local))
        if action == "ReserveNow":
            zero = self.keys.values["ReserveConnectorZeroSupported"] == "true"
            status = self.reservation.reserve(p, ch, fw.hal.wall_time(), zero)
            ch.reserved = self.reservation.active()  # before the next tick
            return {"status": status}
        if action == "CancelReservation":
            status = self.reservation.cancel(p["reservationId"])
            ch.reserved = self.reservation.active()
            return {"status": status}
        if action == "RemoteStartTransaction":
            prof = p.get("chargingProfile")
            if p.get("connectorId", 1) != 1 or ch.session_active or ch.fault is not None or not ch.enabled:
                return {"status": "Rejected"}
            if self.reservation.active() and not self.reservation.admits(p["idTag"], None):
                return {"status": "Rejected"}  # reserved for another card
            if not self.smart.remote_start(p["idTag"], prof, fw.hal.wall_time()):
                return {"status": "Rejected"}  # its chargingProfile is not a TxProfile, or not acceptable
            err = ch.command("authorize", p["idTag"])
            if err:
                self.smart.remote_start(None, None, None)
            return {"status": "Rejected" if err else "Accepted"}
        if action == "RemoteStopTransaction":
            local = self._local
            if local is None or self.txq.txids.get(local) != p["transactionId"]:
                return {"status": "Rejected"}
            err = ch.command("stop", None)
            return {"status": "Rejected" if err else "Accepted"}
        if action == "Reset":
            # Ends the transaction (reason Soft/HardReset), then the board
            # resets (_reset_when_done).
            self._reset = p["type"]
            if ch.session_active:
                ch.command("stop", None)
            self._reboot = [p["type"], fw.hal.ticks_ms(), self._answers_in + 1]  # + this answer
            return {"status": "Accepted"}
        if action == "ChangeAvailability":
            if p["connectorId"] > 1:
                return {"status": "Rejected"}
            on = p["type"] == "Operative"
            if ch.session_active and not on:
                self._avail_pending = on
                return {"status": "Scheduled"}
            ch.command("enable", on)
            return {"status": "Accepted"}
        return {"status": "Rejected"}

    # ==== the thread (its loop: firmware/linkthread.py) ===============================
    def _tls(self):
        return self.url.startswith("wss:")

    def _goodbye(self):
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001
                pass
            self._ws = None

    def _connect(self):
        cfg = self._cfg
        self._ws = WebSocket.connect(
            self._net, self.url, PROTOCOL, IO_TIMEOUT_MS / 1000, password=cfg.get("ocpp_password") or None, ca=cfg.get("ocpp_ca") or None, cert=cfg.get("ocpp_client_cert") or None, key=cfg.get("ocpp_client_key") or None
        )
        self._pending = None
        self._last_tx = self._net.ticks_ms()
        self._rx_frames = 0
        self._rx_t = self._last_tx
        self._pinged = False
        with self._lock:
            self._status_q = []  # what changed while offline is history: the latest goes out
        self._last_status = {}  # send every connector's status again
        self.stats["connects"] += 1
        self.connected = True

    def _drop(self, err):
        self.connected = False
        self.stats["reconnects"] += 1
        self.stats["last_error"] = repr(err)
        ws = self._ws
        self._ws = None
        self._pending = None
        if ws is not None:
            try:
                ws.sock.close()
            except Exception:  # noqa: BLE001 - already broken
                pass

    def _send(self, frame):
        self._ws.send(json.dumps(frame))
        self.stats["sent"] += 1

    def _call(self, action, payload, kind, ref):
        self._uid += 1
        uid = "%d" % self._uid
        self._pending = [uid, action, kind, ref, self._net.ticks_ms()]
        self._last_tx = self._net.ticks_ms()
        self._send([2, uid, action, payload])

    def _service(self):
        net = self._net
        with self._lock:
            backlog = len(self._commands) + len(self._results) >= _SMALL_MAX
        if backlog:
            # The loop has not answered the CALLs it holds yet: leave further
            # frames in the socket (TCP back-pressure) rather than refuse them.
            msg = None
            net.sleep_ms(IDLE_POLL_MS // 4)
        else:
            msg = self._ws.recv(IDLE_POLL_MS)
        if msg is not None:
            self.stats["received"] += 1
            self._incoming(msg)
        self._keepalive()
        with self._lock:
            results = self._results
            if results:
                self._results = []
        for uid, payload in results:
            self._send([3, uid, payload])
            self._answers_out += 1
        now = net.ticks_ms()
        p = self._pending
        if p is not None:
            if net.ticks_diff(now, p[4]) > CALL_TIMEOUT_MS:
                raise OSError("no answer to " + p[1])
            return
        if not self.accepted:
            if self._boot_wait and net.ticks_diff(now, self._boot_t) < self._boot_wait:
                return
            self._call("BootNotification", {"chargePointVendor": VENDOR, "chargePointModel": MODEL, "chargePointSerialNumber": self.cp_id[:25], "firmwareVersion": self.version}, "boot", None)
            return
        self.fw_update.work(self._clock.wall_time() if self._clock is not None else None, self)
        with self._lock:
            call = self._calls.pop(0) if self._calls else None
        if call is not None:
            self._call(call[0], call[1], "call", call[1])
            return
        if self._send_status():
            return
        if self._send_tx():
            return
        if self._hb_now or net.ticks_diff(now, self._last_tx) >= self._hb_ms > 0:
            self._hb_now = False
            self._call("Heartbeat", {}, "hb", None)

    def _keepalive(self):
        """WebSocketPingInterval: after that long without a frame from the
        central system, ping it; without any frame IO_TIMEOUT_MS later the
        connection is dead (dropped, made again)."""
        ws = self._ws
        now = self._net.ticks_ms()
        if ws.frames != self._rx_frames:
            self._rx_frames = ws.frames
            self._rx_t = now
            self._pinged = False
            return
        every = self.keys.get_int("WebSocketPingInterval") * 1000
        if not every:
            return
        idle = self._net.ticks_diff(now, self._rx_t)
        if idle >= every + IO_TIMEOUT_MS:
            raise OSError("no frame from the central system")
        if idle >= every and not self._pinged:
            self._pinged = True
            ws.ping()

    def _send_status(self):
        with self._lock:
            s = self._status_q.pop(0) if self._status_q else None
            if s is None:  # after a (re)connect: every connector's latest status once
                for c in (0, 1):
                    if c not in self._last_status:
                        st = self._st0 if c == 0 else self._st
                        if st is not None:
                            s = [c, st[0], st[1], st[2]]
                            break
        if s is None:
            return False
        self._last_status[s[0]] = s
        payload = {"connectorId": s[0], "status": s[1], "errorCode": s[2]}
        if s[3]:
            payload["vendorErrorCode"] = s[3][:50]
        self._call("StatusNotification", payload, "status", None)
        return True

    def _send_tx(self):
        with self._lock:
            entry = None
            for e in self.txq.entries:
                if e[0] > self._tx_sent:
                    entry = e
                    break
        if entry is None:
            return False
        seq, action, local, payload = entry
        if action != "StartTransaction":
            txid = self._txids.get(local)
            if txid is None:  # its StartTransaction was never answered with an id: nothing to send
                self._tx_done(seq, None)
                return False
            payload = dict(payload)
            payload["transactionId"] = txid
            if action == "MeterValues":
                payload = {"connectorId": 1, "transactionId": txid, "meterValue": payload["meterValue"]}
        self._call(action, payload, "tx", entry)
        return True

    def _tx_done(self, seq, txid):
        self._tx_sent = seq
        self._tx_tries = 0
        with self._lock:
            self._done.append((seq, txid))

    def _incoming(self, text):
        """One message from the central system."""
        try:
            msg = json.loads(text)
        except Exception:  # noqa: BLE001 - ValueError, or MemoryError on a board: a bad frame either way
            msg = None
        if not isinstance(msg, list) or len(msg) < 3 or not isinstance(msg[1], str) or len(msg[1]) > 36:
            uid = msg[1] if isinstance(msg, list) and len(msg) > 1 and isinstance(msg[1], str) and len(msg[1]) <= 36 else "-1"
            self._error(uid, ocpp_schema.FORMATION, "not an OCPP-J message")
            return
        kind, uid = msg[0], msg[1]
        if kind == 2:
            if len(msg) != 4 or not isinstance(msg[2], str):
                self._error(uid, ocpp_schema.FORMATION, "CALL needs [2, id, action, payload]")
                return
            self._incoming_call(uid, msg[2], msg[3])
        elif kind == 3 or kind == 4:
            p = self._pending
            if p is None or p[0] != uid:
                return  # an answer to nothing we asked (or asked and gave up on): ignored
            self._pending = None
            if kind == 3 and len(msg) == 3 and isinstance(msg[2], dict):
                self._answered(p, msg[2])
            else:
                self.stats["callerrors"] += 1
                self._failed(p)
        else:
            self._error(uid, ocpp_schema.FORMATION, "unknown message type")

    def _error(self, uid, code, text):
        self._send([4, uid, code, text, {}])

    def _incoming_call(self, uid, action, payload):
        err = ocpp_schema.check(action, payload)
        if err is not None:
            self._error(uid, err[0], err[1])
            return
        answer = None
        if action == "GetConfiguration":
            answer = self.keys.listing(payload.get("key"))
        elif action == "ChangeConfiguration":
            answer = {"status": self.keys.change(payload["key"], payload["value"])}
            if payload["key"] == "HeartbeatInterval" and answer["status"] == "Accepted":
                self._hb_ms = self.keys.get_int("HeartbeatInterval") * 1000
        elif action == "ClearCache":
            answer = {"status": self.auth.clear_cache()}
        elif action == "SendLocalList":
            answer = {"status": self.auth.send_local_list(payload, parse_time)}
        elif action == "GetLocalListVersion":
            answer = {"listVersion": self.auth.list_version()}
        elif action == "DataTransfer":
            answer = {"status": "UnknownVendorId"}
        elif action == "UnlockConnector":
            answer = {"status": "NotSupported"}  # no connector lock on the board
        elif action == "TriggerMessage":
            answer = self._trigger(payload)
        elif action in ocpp_fw.ACTIONS:
            answer = self.fw_update.call(action, payload)
        if answer is not None:
            self._send([3, uid, answer])
            return
        with self._lock:
            if len(self._commands) + len(self._results) >= _SMALL_MAX:
                busy = True
            else:
                busy = False
                self._commands.append((uid, action, payload))
        if busy:
            self._error(uid, "GenericError", "busy: too many requests in flight")

    def _trigger(self, p):
        what = p["requestedMessage"]
        c = p.get("connectorId")
        if c is not None and c > 1:
            return {"status": "Rejected"}
        if what == "BootNotification":
            self.accepted = False
            self._boot_wait = 0
        elif what == "Heartbeat":
            self._hb_now = True
        elif what == "StatusNotification":
            if c is None:
                self._last_status = {}
            else:
                self._last_status.pop(c, None)
        elif what == "MeterValues":
            self._trigger_mv = True
        else:  # Diagnostics/FirmwareStatusNotification: the one under way, or Idle
            self._post_call(what, {"status": self.fw_update.trigger(what)})
        return {"status": "Accepted"}

    def _answered(self, p, payload):
        kind = p[2]
        if kind == "boot" or kind == "hb":
            c = self._clock
            if c is not None and c.wall_time() is None:
                t = parse_time(payload.get("currentTime"))
                if t is not None:
                    c.set_wall_time(t)
        if kind == "boot":
            status = payload.get("status")
            interval = payload.get("interval")
            interval = interval if isinstance(interval, int) and interval >= 0 else 0
            if status == "Accepted":
                self.accepted = True
                self._boot_wait = 0
                if interval:
                    self._hb_ms = interval * 1000
            else:  # Pending or Rejected: BootNotification again after the interval
                self._boot_t = self._net.ticks_ms()
                self._boot_wait = interval * 1000 if interval else BOOT_RETRY_MS
        elif kind == "tx":
            entry = p[3]
            txid = None
            if entry[1] == "StartTransaction":
                txid = payload.get("transactionId")
                if isinstance(txid, int):
                    self._txids[entry[2]] = txid
                else:
                    txid = None
            elif entry[1] == "StopTransaction":
                self._txids.pop(entry[2], None)
            if entry[1] != "MeterValues":
                self.auth.remember(entry[3].get("idTag"), payload.get("idTagInfo"), parse_time)
            self._tx_done(entry[0], txid)
        elif kind == "call":
            if p[1] == "Authorize":
                self.auth.remember(p[3]["idTag"], payload.get("idTagInfo"), parse_time)
                with self._lock:
                    self._replies.append((p[1], p[3], payload))

    def _failed(self, p):
        """A CALLERROR. A transaction message is tried TransactionMessageAttempts
        times, then given up (counted); a BootNotification later again."""
        if p[2] == "tx":
            self._tx_tries += 1
            if self._tx_tries >= self.keys.get_int("TransactionMessageAttempts"):
                self.stats["tx_given_up"] = self.stats.get("tx_given_up", 0) + 1
                self._tx_done(p[3][0], None)
        elif p[2] == "boot":
            self._boot_t = self._net.ticks_ms()
            self._boot_wait = BOOT_RETRY_MS

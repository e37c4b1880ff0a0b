"""The central system's CALLs to the charge point (OCPP 1.6J), for
firmware/ocpp.py's Ocpp, which takes this class as a base.

Owns: what a CALL from the central system does once the link thread has
framed it. Each is checked by firmware/ocpp_schema.py first (a bad one gets
its CALLERROR); those that need only the link's own state (configuration
keys, local list and cache, TriggerMessage, DataTransfer, UnlockConnector,
UpdateFirmware, GetDiagnostics) are answered at once in the link thread
(_incoming_call); the others wait in `_commands` for the loop, which answers
them with the charger (_command: ReserveNow, CancelReservation, Remote
Start/Stop, Reset, ChangeAvailability, the SmartCharging calls).

Never: touches the charger from the link thread, or does network I/O from
the loop; nothing from the network reaches the charger except through
Charger.command(), with the charger's own limits. Its state is Ocpp's
(firmware/ocpp.py documents which side owns each attribute).
"""

from micropython import const

from firmware import ocpp_fw, ocpp_schema, ocpp_smart
from firmware.ocpp_time import parse_time

SMALL_MAX = const(8)  # the queues between the loop and the thread other than the transaction queue


class Calls:
    # ==== the thread: a CALL framed by Ocpp._incoming ====================================
    def _incoming_call(self, uid, action, payload):
        """CALL `action` with id `uid`: checked, then answered here or handed
        to the loop (busy: a CALLERROR)."""
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
            if len(self._commands) + len(self._results) >= SMALL_MAX:
                busy = True
            else:
                busy = False
                self._commands.append((uid, action, payload))
        if busy:
            self._error(uid, "GenericError", "busy: too many requests in flight")

    def _trigger(self, p):
        """TriggerMessage: the message asked for goes out from the thread's loop."""
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

    # ==== the loop: the CALLs that need the charger (from Ocpp.service) ==================
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

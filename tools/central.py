#!/usr/bin/env python3
"""A small OCPP 1.6J central system for the demo (`make run`, tools/run_demo.py)
and for trying a charger by hand: it accepts every charge point and card,
answers every message the charge point sends, and prints one line for each.

    central.py [--port N]     # ws://127.0.0.1:N/<charge point id>; Ctrl-C ends it

Built on the `ocpp` package (2.1.0, Mobility House) and `websockets`: every
message is checked against the OCPP 1.6 JSON schemas in both directions (a
message that does not validate is printed as refused). Its own asyncio loop
runs in a thread, so a caller goes on meanwhile.

Exit codes (standalone): 0 after Ctrl-C, 2 the `ocpp` package is missing.
"""

import argparse
import asyncio
import json
import signal
import socket
import sys
import threading
import time

try:
    from ocpp.routing import on
    from ocpp.v16 import ChargePoint, call_result
    from websockets.asyncio.server import serve
except ImportError:  # the demo says so and runs without OCPP
    ChargePoint = None


def describe(action, p):
    """One short line for a CALL from the charge point."""
    if action == "BootNotification":
        return "BootNotification %s %s firmware %s" % (p.get("chargePointVendor"), p.get("chargePointModel"), p.get("firmwareVersion"))
    if action == "StatusNotification":
        err = "" if p.get("errorCode") == "NoError" else " %s (%s)" % (p.get("errorCode"), p.get("vendorErrorCode", ""))
        return "StatusNotification connector %s %s%s" % (p.get("connectorId"), p.get("status"), err)
    if action == "Authorize":
        return "Authorize %s" % p.get("idTag")
    if action == "StartTransaction":
        return "StartTransaction idTag %s meterStart %s Wh" % (p.get("idTag"), p.get("meterStart"))
    if action == "StopTransaction":
        return "StopTransaction #%s meterStop %s Wh reason %s" % (p.get("transactionId"), p.get("meterStop"), p.get("reason", "Local"))
    if action == "MeterValues":
        out = []
        for mv in p.get("meterValue", ()):
            for s in mv.get("sampledValue", ()):
                name = s.get("measurand", "Energy.Active.Import.Register").split(".")[0]
                out.append("%s%s=%s%s" % (name, "." + s["phase"] if "phase" in s else "", s.get("value"), s.get("unit", "")))
        ctx = p["meterValue"][0]["sampledValue"][0].get("context", "") if p.get("meterValue") else ""
        tx = " #%s" % p["transactionId"] if "transactionId" in p else ""
        return "MeterValues connector %s%s %s %s" % (p.get("connectorId"), tx, ctx, " ".join(out))
    return "%s %s" % (action, json.dumps(p, separators=(",", ":")))


if ChargePoint is not None:

    class _Session(ChargePoint):
        """One charge point's connection: answers, and a line per CALL."""

        central = None

        async def route_message(self, raw):
            try:
                m = json.loads(raw)
            except ValueError:
                m = None
            if isinstance(m, list) and len(m) == 4 and m[0] == 2 and isinstance(m[3], dict):
                self.central.say("%s %s <- %s" % (time.strftime("%H:%M:%S"), self.id, describe(m[2], m[3])))
            elif isinstance(m, list) and m and m[0] == 4:
                self.central.say("%s %s <- CALLERROR %s" % (time.strftime("%H:%M:%S"), self.id, m[2:4]))
            await super().route_message(raw)

        async def _send(self, message):
            m = json.loads(message)
            if m[0] == 4:  # our answer was a CALLERROR: the charge point's message did not validate
                self.central.say("%s %s -> refused: %s %s" % (time.strftime("%H:%M:%S"), self.id, m[2], m[3]))
            await super()._send(message)

        @on("BootNotification")
        def on_boot(self, **kw):
            return call_result.BootNotification(current_time=_now(), interval=self.central.heartbeat_s, status="Accepted")

        @on("Heartbeat")
        def on_heartbeat(self):
            return call_result.Heartbeat(current_time=_now())

        @on("StatusNotification")
        def on_status(self, **kw):
            return call_result.StatusNotification()

        @on("Authorize")
        def on_authorize(self, id_tag):
            return call_result.Authorize(id_tag_info={"status": "Accepted"})

        @on("StartTransaction")
        def on_start(self, **kw):
            self.central.next_txid += 1
            self.central.say("%s %s -> transactionId %d" % (time.strftime("%H:%M:%S"), self.id, self.central.next_txid))
            return call_result.StartTransaction(transaction_id=self.central.next_txid, id_tag_info={"status": "Accepted"})

        @on("StopTransaction")
        def on_stop(self, **kw):
            return call_result.StopTransaction()

        @on("MeterValues")
        def on_meter_values(self, **kw):
            return call_result.MeterValues()

        @on("DiagnosticsStatusNotification")
        def on_diag(self, **kw):
            return call_result.DiagnosticsStatusNotification()

        @on("FirmwareStatusNotification")
        def on_firmware(self, **kw):
            return call_result.FirmwareStatusNotification()

        @on("DataTransfer")
        def on_data(self, **kw):
            return call_result.DataTransfer(status="UnknownVendorId")


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def available():
    return ChargePoint is not None


class Central:
    """The central system on 127.0.0.1:`port` (0: a free one), in a thread."""

    def __init__(self, port=0, say=print, heartbeat_s=60):
        if ChargePoint is None:
            raise RuntimeError("the `ocpp` package is missing (run `make deps`)")
        self.say = say
        self.heartbeat_s = heartbeat_s
        self.next_txid = 0
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)

    def url(self, cp_id):
        return "ws://127.0.0.1:%d/%s" % (self.port, cp_id)

    async def _serve(self):
        return await serve(self._handler, "127.0.0.1", self.port, subprotocols=["ocpp1.6"])

    async def _handler(self, conn):
        cp = _Session(conn.request.path.rstrip("/").rsplit("/", 1)[-1], conn, response_timeout=10)
        cp.central = self
        self.say("%s %s connected" % (time.strftime("%H:%M:%S"), cp.id))
        try:
            await cp.start()
        except Exception:  # noqa: BLE001 - the connection closed: the charge point comes back or not
            pass
        self.say("%s %s disconnected" % (time.strftime("%H:%M:%S"), cp.id))

    def stop(self):
        async def close():
            self.server.close()
            await self.server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


def main(argv=None):
    p = argparse.ArgumentParser(prog="central.py", description="A local OCPP 1.6J central system that accepts everything and prints what it receives.")
    p.add_argument("--port", type=int, default=9000, help="TCP port on 127.0.0.1 (default 9000)")
    args = p.parse_args(argv)
    if not available():
        print("central.py: the `ocpp` package is missing (run `make deps`)", file=sys.stderr)
        return 2
    c = Central(args.port, say=lambda text: print(text, flush=True))
    print("OCPP central system on ws://127.0.0.1:%d/<charge point id>; Ctrl-C ends it" % c.port, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: done.set())
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    done.wait()
    c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

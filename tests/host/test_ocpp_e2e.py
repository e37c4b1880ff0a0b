"""End to end over OCPP 1.6J: the unmodified firmware on the simulated board
(sim/scenario.py --realtime on the MicroPython unix port) connected to a
central system built from the `ocpp` package (Mobility House, 2.1.0) on
`websockets`, which checks every message in both directions against the
official OCPP 1.6 JSON schemas (a CALL that does not validate is answered
with a CALLERROR and never reaches our handlers; the tests then fail on the
missing message).

What a charging network relies on: the charger boots and heartbeats, shows
its connector state, a card authorizes, the transaction's meter values end
on the register of its StopTransaction, the central system starts and stops
remotely, transaction messages queued while it was away (or across a power
cut) arrive once each with its transactionId mapped back, and hostile frames
are each answered with the right CALLERROR while the offer stays within the
cable's limit. Figures (run with -s): CALL round trip, plug-in to
StatusNotification Preparing.

The simulated board runs in real time (--realtime): the tests wait on
messages, never on how fast the machine is. The run is held (--hold): it does
not end at the scenario's `until` while a test still waits for a message (a
slow connect or handshake would otherwise leave it waiting on a stopped
charger); finish() ends it once the scenario's time has passed.
"""

import asyncio
import calendar
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

ocpp = pytest.importorskip("ocpp")
websockets = pytest.importorskip("websockets")

from ocpp.routing import on  # noqa: E402
from ocpp.v16 import call, call_result  # noqa: E402
from websockets.asyncio.server import serve  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tools"))
import central  # noqa: E402 - tools/central.py: the demo's central system, whose answers these extend

MICROPYTHON = os.path.join(REPO, ".venv", "bin", "micropython")
SCEN = os.path.join(REPO, "tests", "scenarios", "ocpp")
MP_ENV = dict(os.environ, MICROPYPATH="%s:%s/lib" % (REPO, REPO))
CP_ID = "CP0001"

pytestmark = pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="run make deps first")


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Quiet:
    """tools/central.py's printer, silent."""

    @staticmethod
    def say(text):
        pass


class _CP(central._Session):
    """The central system's side of one charge point connection: the demo's
    answers (tools/central.py), with scripted boots, cards and ids."""

    cs = None  # the CentralSystem
    central = _Quiet

    async def route_message(self, raw):
        self.cs._record("in", raw)
        await super().route_message(raw)

    async def _send(self, message):
        self.cs._record("out", message)
        await super()._send(message)

    @on("BootNotification")
    def on_boot(self, **kw):
        status, interval = self.cs.boot_answers.pop(0) if self.cs.boot_answers else ("Accepted", self.cs.heartbeat_s)
        return call_result.BootNotification(current_time=_now(), interval=interval, status=status)

    @on("Authorize")
    def on_authorize(self, id_tag):
        info = {"status": "Accepted" if id_tag in self.cs.tags else "Invalid"}
        if id_tag in self.cs.parents:
            info["parent_id_tag"] = self.cs.parents[id_tag]
        return call_result.Authorize(id_tag_info=info)

    @on("StartTransaction")
    def on_start(self, **kw):
        self.cs.next_txid += 1
        return call_result.StartTransaction(transaction_id=self.cs.next_txid, id_tag_info={"status": "Accepted"})


    @on("FirmwareStatusNotification")
    def on_fw_status(self, **kw):
        return call_result.FirmwareStatusNotification()


class CentralSystem:
    """An OCPP 1.6 central system on a free loopback port, in a thread of its
    own. `msgs`: every frame as (host time, "in"/"out", parsed JSON)."""

    def __init__(self, heartbeat_s=2, boot_answers=(), password=None, ssl_ctx=None, ping_interval=20):
        self.heartbeat_s = heartbeat_s
        self.boot_answers = list(boot_answers)
        self.tags = {"TAG0001", "REMOTE1"}
        self.parents = {}  # idTag -> its parentIdTag in Authorize answers
        self.next_txid = 100
        self.password = password
        self.ssl_ctx = ssl_ctx
        self.ping_interval = ping_interval
        self.msgs = []
        self.cond = threading.Condition()
        self.cp = None
        self.auth_seen = []
        self.peercerts = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.server = None
        self.up()

    @property
    def url(self):
        if self.ssl_ctx is not None:
            return "wss://localhost:%d/ocpp/%s" % (self.port, CP_ID)
        return "ws://127.0.0.1:%d/ocpp/%s" % (self.port, CP_ID)

    def _record(self, direction, raw):
        try:
            m = json.loads(raw)
        except ValueError:
            m = raw
        with self.cond:
            self.msgs.append((time.monotonic(), direction, m))
            self.cond.notify_all()

    async def _handler(self, conn):
        self.auth_seen.append(conn.request.headers.get("Authorization"))
        self.peercerts.append(conn.transport.get_extra_info("peercert"))  # TLS: the client's certificate (profile 3)
        cp = _CP(conn.request.path.rsplit("/", 1)[-1], conn, response_timeout=10)
        cp.cs = self
        self.cp = cp
        try:
            await cp.start()
        except websockets.exceptions.ConnectionClosed:
            pass

    def _process_request(self, conn, request):
        if self.password is not None:
            import base64

            want = "Basic " + base64.b64encode(("%s:%s" % (CP_ID, self.password)).encode()).decode()
            if request.headers.get("Authorization") != want:
                return conn.respond(401, "bad password\n")
        return None

    def up(self):
        async def start():
            return await serve(
                self._handler,
                "localhost" if self.ssl_ctx else "127.0.0.1",
                self.port,
                subprotocols=["ocpp1.6"],
                process_request=self._process_request,
                ssl=self.ssl_ctx,
                ping_interval=self.ping_interval,
                ping_timeout=5,
            )

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def down(self):
        async def stop():
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.server = None

    def close(self):
        if self.server is not None:
            self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    # --- looking at the traffic ------------------------------------------------------
    def calls(self, action=None):
        """CALLs from the charge point: [(time, uid, action, payload)]."""
        with self.cond:
            return [
                (t, m[1], m[2], m[3])
                for t, d, m in self.msgs
                if d == "in" and isinstance(m, list) and m and m[0] == 2 and (action is None or m[2] == action)
            ]

    def wait(self, pred, timeout_s, what):
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                for t, d, m in self.msgs:
                    if pred(d, m):
                        return t, m
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [m for _, _, m in self.msgs[-15:]]
                    raise AssertionError("%s not seen within %.0f s; last: %r" % (what, timeout_s, tail))
                self.cond.wait(left)

    def wait_call(self, action, timeout_s=20, where=None):
        return self.wait(
            lambda d, m: d == "in" and isinstance(m, list) and m[0] == 2 and m[2] == action and (where is None or where(m[3])),
            timeout_s,
            action,
        )

    def send(self, req, timeout_s=10):
        """A validated CALL to the charge point; its answer."""
        return asyncio.run_coroutine_threadsafe(self.cp.call(req), self.loop).result(timeout_s)

    def send_raw(self, text):
        asyncio.run_coroutine_threadsafe(self.cp._connection.send(text), self.loop).result(10)


class Firmware:
    """`micropython -m sim.scenario SCENARIO --realtime --ocpp URL` as a child;
    its trace records with host arrival times."""

    def __init__(self, scenario, url, data, broker=None, realtime=True):
        path = os.path.join(SCEN, scenario)
        with open(path) as f:
            self.until = json.load(f)["until"]
        cmd = [MICROPYTHON, "-m", "sim.scenario", path] + (["--realtime"] if realtime else []) + ["--hold", "--data", data, "--ocpp", url]
        if broker is not None:
            cmd += ["--broker", "127.0.0.1:%d" % broker, "--id", "both"]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=MP_ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )
        self.lines = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                rec = {"text": line.rstrip()}
            with self.cond:
                self.lines.append((time.monotonic(), rec))
                self.cond.notify_all()

    def wait(self, pred, timeout_s, what):
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                for t, r in self.lines:
                    if pred(r):
                        return t, r
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self.reader.is_alive():
                    raise AssertionError("%s not seen; last: %r" % (what, [r for _, r in self.lines[-10:]]))
                self.cond.wait(min(left, 0.5))

    def records(self):
        with self.cond:
            return [r for _, r in self.lines if "t" in r and "state" in r]

    def finish(self, timeout_s=60):
        """The end of the run: once its scenario's time has passed (it is held
        past it), stdin closes and it stops cleanly."""
        try:
            self.wait(lambda r: "state" in r and r.get("t", 0) >= self.until, timeout_s, "the scenario's end")
            self.proc.stdin.close()
            self.proc.wait(timeout_s)
        finally:
            self.kill()
        self.reader.join(5)
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        if not self.proc.stdin.closed:
            self.proc.stdin.close()


@pytest.fixture
def data_dir():
    d = tempfile.mkdtemp(prefix="evse-ocpp-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cs():
    c = CentralSystem()
    yield c
    c.close()


def _statuses(cs, connector=1):
    return [p["status"] for _, _, _, p in cs.calls("StatusNotification") if p["connectorId"] == connector]


def _answers(cs):
    """{uid: message} of every CALLRESULT/CALLERROR the charge point sent."""
    with cs.cond:
        return {m[1]: m for _, d, m in cs.msgs if d == "in" and isinstance(m, list) and len(m) > 1 and m[0] in (3, 4)}


# ---- boot and heartbeat ------------------------------------------------------------------


def test_boot_rejected_then_accepted_then_heartbeats_at_the_central_systems_interval(data_dir):
    cs = CentralSystem(heartbeat_s=1, boot_answers=[("Rejected", 2)])
    try:
        fw = Firmware("idle.json", cs.url, data_dir)
        t1, first = cs.wait_call("BootNotification")
        assert first[3]["chargePointVendor"] and first[3]["chargePointModel"]
        t2, _ = cs.wait(lambda d, m: d == "in" and m[0] == 2 and m[2] == "BootNotification" and m is not first, 20, "second boot")
        # Rejected with interval 2: nothing else before the second BootNotification, 2 s later at the earliest.
        between = [c for c in cs.calls() if t1 < c[0] < t2]
        assert between == []
        assert t2 - t1 >= 2.0 - 0.05
        cs.wait(lambda d, m: d == "in" and m[0] == 2 and m[2] == "StatusNotification" and m[3]["connectorId"] == 0, 10, "status 0")
        cs.wait(lambda d, m: d == "in" and m[0] == 2 and m[2] == "StatusNotification" and m[3]["connectorId"] == 1, 10, "status 1")
        assert _statuses(cs, 1)[0] == "Available"
        assert _statuses(cs, 0)[0] == "Available"
        # Heartbeats keep coming at the 1 s interval of the Accepted answer.
        deadline = time.monotonic() + 20
        while len(cs.calls("Heartbeat")) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        hb = [c[0] for c in cs.calls("Heartbeat")]
        assert len(hb) >= 3
        assert all(b - a >= 1.0 - 0.05 for a, b in zip(hb, hb[1:]))
        # Round trip of a CALL on loopback, from the central system's side.
        rt = []
        for _ in range(20):
            t0 = time.monotonic()
            r = cs.send(call.GetConfiguration(key=["HeartbeatInterval"]))
            rt.append(time.monotonic() - t0)
        assert r.configuration_key[0]["key"] == "HeartbeatInterval"
        rt.sort()
        print("\nCALL round trip on loopback (GetConfiguration, 20 calls): median %.2f ms, max %.2f ms" % (rt[10] * 1000, rt[-1] * 1000))
        assert fw.finish() == 0
    finally:
        cs.close()


# ---- a session by card ----------------------------------------------------------------------


def _keys(data_dir, **keys):
    """OCPP configuration keys on the board's flash before it starts."""
    with open(os.path.join(data_dir, "ocpp_keys.json"), "w") as f:
        json.dump(keys, f)


def _register(mv_payload):
    for s in mv_payload["meterValue"][-1]["sampledValue"]:
        if s.get("measurand", "Energy.Active.Import.Register") == "Energy.Active.Import.Register":
            return int(s["value"])
    raise AssertionError("no energy register in %r" % mv_payload)


def test_card_authorizes_a_session_whose_meter_values_end_on_the_stop_register(cs, data_dir):
    _keys(data_dir, MeterValueSampleInterval="2")
    fw = Firmware("charge_tag.json", cs.url, data_dir)
    t_plug, _ = fw.wait(lambda r: r.get("state", "A")[0] != "A" and "t" in r, 30, "plug-in")
    t_prep, _ = cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1 and p["status"] == "Preparing")
    print("\nplug-in (trace record on stdout) to StatusNotification Preparing at the central system: %.1f ms" % ((t_prep - t_plug) * 1000))
    _, auth = cs.wait_call("Authorize")
    assert auth[3] == {"idTag": "TAG0001"}
    _, start = cs.wait_call("StartTransaction")
    _, stop = cs.wait_call("StopTransaction", timeout_s=40)
    assert fw.finish() == 0
    s, p = start[3], stop[3]
    assert s["connectorId"] == 1 and s["idTag"] == "TAG0001"
    # No NTP in the simulation: the wall clock came from the BootNotification's currentTime.
    assert abs(calendar.timegm(time.strptime(s["timestamp"], "%Y-%m-%dT%H:%M:%SZ")) - time.time()) < 120
    assert p["transactionId"] == 101 and p["reason"] == "EVDisconnected" and p["idTag"] == "TAG0001"
    assert p["meterStop"] > s["meterStart"]  # 16 A for ~8 s: some Wh
    mvs = [c[3] for c in cs.calls("MeterValues")]
    assert len(mvs) >= 3  # every 2 s while charging, and the final one
    assert all(m["transactionId"] == 101 and m["connectorId"] == 1 for m in mvs)
    regs = [_register(m) for m in mvs]
    assert regs == sorted(regs)
    assert regs[-1] == p["meterStop"]
    last = mvs[-1]["meterValue"][-1]["sampledValue"]
    assert {v["context"] for v in last} == {"Transaction.End"}
    units = {v["measurand"]: v.get("unit") for m in mvs for v in m["meterValue"][0]["sampledValue"]}
    assert units["Energy.Active.Import.Register"] == "Wh" and units["Current.Import"] == "A"
    assert units["Power.Active.Import"] == "W"
    phases = {v.get("phase") for m in mvs for v in m["meterValue"][0]["sampledValue"] if v["measurand"] == "Current.Import"}
    assert phases == {"L1", "L2", "L3"}
    # Order on the wire: Authorize, StartTransaction, the MeterValues, StopTransaction.
    order = [c[2] for c in cs.calls() if c[2] in ("Authorize", "StartTransaction", "MeterValues", "StopTransaction")]
    assert order[:2] == ["Authorize", "StartTransaction"] and order[-1] == "StopTransaction"
    st = _statuses(cs)
    for a, b in (("Available", "Preparing"), ("Preparing", "Charging"), ("Charging", "Available")):
        assert st.index(a) < len(st) - 1 - st[::-1].index(b), st
    assert "Finishing" in st or "SuspendedEV" in st


def test_clock_aligned_meter_values_at_the_interval_boundaries_in_and_outside_the_transaction(cs, data_dir):
    _keys(
        data_dir, ClockAlignedDataInterval="2", MeterValueSampleInterval="0",
        MeterValuesAlignedData="Energy.Active.Import.Register,Power.Active.Import", StopTxnAlignedData="Energy.Active.Import.Register",
    )
    fw = Firmware("charge_tag.json", cs.url, data_dir)
    _, stop = cs.wait_call("StopTransaction", timeout_s=40)
    cs.wait(lambda d, m: len([1 for c in cs.calls("MeterValues") if c[3]["connectorId"] == 1 and "transactionId" not in c[3]]) >= 2, 20,
            "aligned values for connector 1 after the transaction")
    assert fw.finish() == 0
    with cs.cond:
        refused = [m for _, d, m in cs.msgs if d == "out" and isinstance(m, list) and m[0] == 4]
    assert refused == []  # every message valid against the 1.6 schemas
    clock = [c[3] for c in cs.calls("MeterValues") if c[3]["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"]
    for p in clock:
        ts = p["meterValue"][0]["timestamp"]
        assert calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")) % 2 == 0, ts
        assert [v["measurand"] for v in p["meterValue"][0]["sampledValue"]] == ["Energy.Active.Import.Register", "Power.Active.Import"]
    in_tx = [p for p in clock if p.get("transactionId") == 101]
    assert in_tx and all(p["connectorId"] == 1 for p in in_tx)
    assert {p["connectorId"] for p in clock if "transactionId" not in p} == {0, 1}
    data = stop[3]["transactionData"]
    assert [d["timestamp"] for d in data] == [p["meterValue"][0]["timestamp"] for p in in_tx][-len(data):]
    assert all(v["context"] == "Sample.Clock" and v["measurand"] == "Energy.Active.Import.Register" for d in data for v in d["sampledValue"])
    print("\nclock-aligned MeterValues: %d (%d in the transaction), transactionData entries: %d" % (len(clock), len(in_tx), len(data)))


def test_a_card_the_central_system_refuses_gives_no_energy(cs, data_dir):
    cs.tags = set()
    fw = Firmware("charge_tag.json", cs.url, data_dir)
    _, auth = cs.wait_call("Authorize")
    cs.wait_call("StatusNotification", timeout_s=30, where=lambda p: p["connectorId"] == 1 and p["status"] == "Available")
    assert fw.finish() == 0
    assert cs.calls("StartTransaction") == []
    assert all(not r["contactor"] and r["offer_a"] == 0 for r in fw.records())


# ---- remote start and stop ------------------------------------------------------------------


def test_central_system_starts_and_stops_a_session_remotely(cs, data_dir):
    fw = Firmware("remote.json", cs.url, data_dir)
    cs.wait_call("StatusNotification", timeout_s=30, where=lambda p: p["connectorId"] == 1 and p["status"] == "Preparing")
    r = cs.send(call.RemoteStartTransaction(id_tag="REMOTE1", connector_id=2))
    assert r.status == "Rejected"  # one connector
    r = cs.send(call.RemoteStartTransaction(id_tag="REMOTE1"))
    assert r.status == "Accepted"
    _, start = cs.wait_call("StartTransaction")
    assert start[3]["idTag"] == "REMOTE1"
    cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1 and p["status"] == "Charging")
    assert cs.send(call.RemoteStopTransaction(transaction_id=999)).status == "Rejected"
    assert cs.send(call.RemoteStopTransaction(transaction_id=101)).status == "Accepted"
    _, stop = cs.wait_call("StopTransaction")
    assert stop[3]["transactionId"] == 101 and stop[3]["reason"] == "Remote"
    t_stop = time.monotonic()
    cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1 and p["status"] == "Finishing")
    fw.wait(lambda r: "t" in r and "state" in r and not r["contactor"] and r["session"] is None, 10, "contactor open")
    # The charger stopped before it reported the stop: no offer in any record the host read after it
    # (a record comes at least once per simulated second: wait for two).
    deadline = time.monotonic() + 20
    while len([1 for t, r in list(fw.lines) if t > t_stop and "offer_a" in r]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    t_restart = time.monotonic()
    recs = [r for t, r in list(fw.lines) if t_stop < t < t_restart and "offer_a" in r]
    assert recs and all(r["offer_a"] == 0 and r["duty"] is None for r in recs)
    # Started again with the car still plugged in, then a soft Reset ends it.
    assert cs.send(call.RemoteStartTransaction(id_tag="REMOTE1")).status == "Accepted"
    cs.wait(lambda d, m: len(cs.calls("StartTransaction")) == 2, 20, "second StartTransaction")
    cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1 and p["status"] == "Charging" and len(cs.calls("StartTransaction")) == 2)
    assert cs.send(call.Reset(type="Soft")).status == "Accepted"
    t_stop2, stop2 = cs.wait_call("StopTransaction", where=lambda p: p["transactionId"] == 102)
    assert stop2[3]["reason"] == "SoftReset"
    # Then the board resets (the simulator records it and starts the firmware again): a new boot.
    fw.wait(lambda r: r.get("reset") == 1, 30, "the board's reset")
    cs.wait(lambda d, m: len(cs.calls("BootNotification")) == 2, 30, "BootNotification after the reset")
    assert cs.calls("BootNotification")[1][0] > t_stop2
    assert len(cs.calls("StopTransaction")) == 2  # delivered once, before the reset
    assert fw.finish() == 0
    assert len(cs.calls("StopTransaction")) == 2 and len(cs.calls("StartTransaction")) == 2


def _iso_in(s):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + s))


def test_a_reservation_holds_the_connector_for_its_card_group_and_ends_with_its_transaction(cs, data_dir):
    cs.tags |= {"OTHER", "MEMBER"}
    cs.parents = {"MEMBER": "FLEET", "OTHER": "SOLO"}
    fw = Firmware("reserve.json", cs.url, data_dir)
    cs.wait_call("StatusNotification", timeout_s=30, where=lambda p: p["connectorId"] == 1 and p["status"] == "Available")
    assert cs.send(call.ReserveNow(connector_id=2, expiry_date=_iso_in(120), id_tag="RES1", reservation_id=5)).status == "Rejected"
    assert cs.send(call.ReserveNow(connector_id=1, expiry_date=_iso_in(-5), id_tag="RES1", reservation_id=5)).status == "Rejected"
    r = cs.send(call.ReserveNow(connector_id=1, expiry_date=_iso_in(120), id_tag="RES1", parent_id_tag="FLEET", reservation_id=5))
    assert r.status == "Accepted"
    assert cs.send(call.ReserveNow(connector_id=0, expiry_date=_iso_in(120), id_tag="X", reservation_id=6)).status == "Occupied"
    assert cs.send(call.CancelReservation(reservation_id=6)).status == "Rejected"
    cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1 and p["status"] == "Reserved")
    _, start = cs.wait_call("StartTransaction", timeout_s=40)
    auths = [c[3]["idTag"] for c in cs.calls("Authorize")]
    assert auths == ["OTHER", "MEMBER"]  # OTHER's parent is not the reservation's: no transaction for it
    assert start[3]["idTag"] == "MEMBER" and start[3]["reservationId"] == 5
    # The car waited plugged in (free charging) without energy until MEMBER came.
    t_start = start[3]["timestamp"]
    assert t_start and all(not r["contactor"] for r in fw.records() if r["t"] < 20)
    _, stop = cs.wait_call("StopTransaction", timeout_s=30)
    assert stop[3]["reason"] == "EVDisconnected"
    cs.wait(lambda d, m: _statuses(cs)[-1:] == ["Available"], 20, "Available after the transaction")
    assert cs.send(call.CancelReservation(reservation_id=5)).status == "Rejected"  # it ended with its transaction
    # A reservation that expires: Reserved, then Available again.
    assert cs.send(call.ReserveNow(connector_id=0, expiry_date=_iso_in(3), id_tag="LATE", reservation_id=8)).status == "Accepted"
    cs.wait(lambda d, m: _statuses(cs)[-2:] == ["Reserved", "Available"], 20, "Reserved then Available at its expiry")
    assert fw.finish() == 0
    st = _statuses(cs)
    assert st.index("Reserved") < st.index("Charging")


def test_a_reservation_survives_a_power_cut_and_the_rebooted_charger_honours_it(cs, data_dir):
    fw = Firmware("idle_long.json", cs.url, data_dir)
    cs.wait_call("StatusNotification", timeout_s=30, where=lambda p: p["connectorId"] == 1 and p["status"] == "Available")
    assert cs.send(call.ReserveNow(connector_id=1, expiry_date=_iso_in(300), id_tag="RES1", reservation_id=9)).status == "Accepted"
    cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1 and p["status"] == "Reserved")
    fw.kill()  # SIGKILL: a power cut while the car is on its way
    n_boot, n_status = len(cs.calls("BootNotification")), len(_statuses(cs))
    fw2 = Firmware("reserve_reboot.json", cs.url, data_dir)  # free charging, a car plugged in at 2 s
    cs.wait(lambda d, m: len(cs.calls("BootNotification")) > n_boot, 30, "BootNotification after the reboot")
    cs.wait(lambda d, m: _statuses(cs)[n_status:n_status + 1] == ["Reserved"], 30, "Reserved again after the reboot")
    fw2.wait(lambda r: "t" in r and r["t"] >= 6, 30, "the car plugged in and another card presented")
    assert cs.send(call.RemoteStartTransaction(id_tag="OTHER", connector_id=1)).status == "Rejected"
    assert not any(r["contactor"] for r in fw2.records())  # the car waited: free charging, but reserved
    assert cs.send(call.RemoteStartTransaction(id_tag="RES1", connector_id=1)).status == "Accepted"
    _, start = cs.wait_call("StartTransaction", timeout_s=30)
    assert start[3]["idTag"] == "RES1" and start[3]["reservationId"] == 9
    assert cs.send(call.CancelReservation(reservation_id=9)).status == "Rejected"  # it ended with its transaction
    _, stop = cs.wait_call("StopTransaction", timeout_s=40)
    assert fw2.finish() == 0
    assert len(cs.calls("StartTransaction")) == 1
    assert [c[3]["idTag"] for c in cs.calls("Authorize")] == []  # OTHER was refused on the charger


def test_hard_reset_reboots_at_once_and_its_stop_arrives_once_with_the_new_boot(cs, data_dir):
    fw = Firmware("plugged.json", cs.url, data_dir)
    cs.wait_call("StatusNotification", timeout_s=30, where=lambda p: p["connectorId"] == 1 and p["status"] == "Charging")
    cs.wait_call("StartTransaction")
    assert cs.send(call.Reset(type="Hard")).status == "Accepted"
    fw.wait(lambda r: r.get("reset") == 1, 30, "the board's reset")
    cs.wait(lambda d, m: len(cs.calls("BootNotification")) == 2, 30, "BootNotification after the reset")
    # The car is still plugged in and charging is free: a new transaction after the reboot.
    cs.wait(lambda d, m: len(cs.calls("StartTransaction")) == 2, 30, "the next transaction")
    assert fw.finish() == 0
    stops = [c[3] for c in cs.calls("StopTransaction")]
    assert [(s["transactionId"], s["reason"]) for s in stops if s["transactionId"] == 101] == [(101, "HardReset")]  # once, no PowerLoss
    order = [(c[2], c[3].get("transactionId")) for c in cs.calls() if c[2] in ("BootNotification", "StartTransaction", "StopTransaction")]
    assert order.index(("StopTransaction", 101)) < order.index(("StartTransaction", None), 2)  # its stop before the next start


def test_configuration_keys_change_refuse_and_list(cs, data_dir):
    fw = Firmware("idle.json", cs.url, data_dir)
    cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1)
    assert cs.send(call.ChangeConfiguration(key="MeterValueSampleInterval", value="15")).status == "Accepted"
    assert cs.send(call.ChangeConfiguration(key="MeterValueSampleInterval", value="-3")).status == "Rejected"
    assert cs.send(call.ChangeConfiguration(key="NumberOfConnectors", value="2")).status == "Rejected"
    assert cs.send(call.ChangeConfiguration(key="NoSuchKey", value="1")).status == "NotSupported"
    assert cs.send(call.ChangeConfiguration(key="MeterValuesSampledData", value="Voltage")).status == "Rejected"
    r = cs.send(call.GetConfiguration(key=["MeterValueSampleInterval", "NumberOfConnectors", "NoSuchKey"]))
    got = {k["key"]: (k["value"], k["readonly"]) for k in r.configuration_key}
    assert got == {"MeterValueSampleInterval": ("15", False), "NumberOfConnectors": ("1", True)}
    assert r.unknown_key == ["NoSuchKey"]
    everything = cs.send(call.GetConfiguration())
    names = {k["key"] for k in everything.configuration_key}
    assert {"HeartbeatInterval", "MeterValuesSampledData", "SupportedFeatureProfiles", "AuthorizeRemoteTxRequests"} <= names
    assert cs.send(call.UnlockConnector(connector_id=1)).status == "NotSupported"
    assert cs.send(call.ClearCache()).status == "Accepted"
    assert cs.send(call.DataTransfer(vendor_id="com.example")).status == "UnknownVendorId"
    assert cs.send(call.ChangeAvailability(connector_id=0, type="Inoperative")).status == "Accepted"
    cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1 and p["status"] == "Unavailable")
    assert cs.send(call.ChangeAvailability(connector_id=0, type="Operative")).status == "Accepted"
    n = len(cs.calls("BootNotification"))
    assert cs.send(call.TriggerMessage(requested_message="BootNotification")).status == "Accepted"
    cs.wait(lambda d, m: len(cs.calls("BootNotification")) > n, 10, "triggered boot")
    assert cs.send(call.TriggerMessage(requested_message="DiagnosticsStatusNotification")).status == "Accepted"
    cs.wait_call("DiagnosticsStatusNotification")
    assert cs.send(call.TriggerMessage(requested_message="StatusNotification", connector_id=3)).status == "Rejected"
    assert fw.finish() == 0
    # The change survived on flash.
    with open(os.path.join(data_dir, "ocpp_keys.json")) as f:
        assert json.load(f) == {"MeterValueSampleInterval": "15"}


# ---- offline: queued, persisted, delivered once ---------------------------------------------


def _once_each(cs):
    """The transaction CALLs as the central system got them: one transaction,
    start first, stop last, nothing twice (same action and payload)."""
    seen = []
    for _, _, action, payload in cs.calls():
        if action in ("StartTransaction", "MeterValues", "StopTransaction"):
            key = (action, json.dumps(payload, sort_keys=True))
            assert key not in seen, "delivered twice: %s" % (key,)
            seen.append(key)
    actions = [a for a, _ in seen]
    assert actions[0] == "StartTransaction" and actions[-1] == "StopTransaction", actions
    assert actions.count("StartTransaction") == 1 and actions.count("StopTransaction") == 1, actions
    return actions


def test_transaction_while_the_central_system_is_down_is_delivered_once_on_its_return(cs, data_dir):
    _keys(data_dir, MeterValueSampleInterval="2")
    fw = Firmware("offline.json", cs.url, data_dir)
    cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1)
    cs.down()
    fw.wait(lambda r: r.get("session") is not None, 30, "session start")
    fw.wait(lambda r: "t" in r and r["t"] >= 14, 40, "session end")
    assert cs.calls("StartTransaction") == []
    cs.up()
    _, stop = cs.wait_call("StopTransaction", timeout_s=60)  # after the back-off
    assert fw.finish() == 0
    assert _once_each(cs).count("MeterValues") >= 3
    assert stop[3]["transactionId"] == 101 and stop[3]["reason"] == "EVDisconnected" and stop[3]["idTag"] == "FREE"
    mvs = [c[3] for c in cs.calls("MeterValues")]
    assert all(m["transactionId"] == 101 for m in mvs)
    assert _register(mvs[-1]) == stop[3]["meterStop"]
    # Nothing left in the queue file but the record of its delivery.
    with open(os.path.join(data_dir, "ocpp_tx.q")) as f:
        lines = [json.loads(x) for x in f]
    queued = {r[1] for r in lines if r[0] == "q"}
    answered = {r[1] for r in lines if r[0] == "d"}
    assert queued == answered


def test_central_system_down_for_a_simulated_hour_with_two_sessions_then_each_message_replayed_once_in_order(cs, data_dir):
    # The hour runs accelerated while the central system is down from the
    # start (the board's clock from the scenario, as from NTP); at its end
    # the run is held in real time and the central system comes back.
    cs.down()
    _keys(data_dir, MeterValueSampleInterval="300")
    fw = Firmware("offline_hour.json", cs.url, data_dir, realtime=False)
    fw.wait(lambda r: "t" in r and r["t"] >= 3600, 300, "the end of the simulated hour")
    assert cs.calls() == []
    sessions = {r["session"] for r in fw.records() if r.get("session")}
    assert len(sessions) == 2
    with open(os.path.join(data_dir, "ocpp_tx.q")) as f:
        queued = [json.loads(x) for x in f if x.startswith('["q"')]
    assert [q[2] for q in queued].count("StartTransaction") == 2 and [q[2] for q in queued].count("StopTransaction") == 2
    cs.up()
    cs.wait(lambda d, m: len(cs.calls("StopTransaction")) == 2, 240, "both StopTransactions after the back-off")
    time.sleep(2)  # anything sent twice would come now
    assert fw.finish() == 0
    tx = [(c[2], c[3]) for c in cs.calls() if c[2] in ("StartTransaction", "MeterValues", "StopTransaction")]
    # Once each, in the order they were queued: the central system's ids mapped back.
    assert len(tx) == len(queued)
    for (action, p), q in zip(tx, queued):
        assert action == q[2]
        want = dict(q[4])
        if action != "StartTransaction":
            assert p.pop("transactionId") == (101 if q[3] == queued[0][3] else 102)
        if action == "MeterValues":
            want = {"connectorId": 1, "meterValue": want["meterValue"]}
        assert p == want, (action, p, want)
    starts = [p for a, p in tx if a == "StartTransaction"]
    stops = [p for a, p in tx if a == "StopTransaction"]
    assert [s["meterStart"] for s in starts] == sorted(s["meterStart"] for s in starts)
    assert stops[0]["meterStop"] <= starts[1]["meterStart"] and stops[1]["meterStop"] > starts[1]["meterStart"]
    assert all(s["reason"] == "EVDisconnected" for s in stops)
    # Stamped in the simulated hour, not when they went out.
    t0 = calendar.timegm(time.strptime(starts[0]["timestamp"], "%Y-%m-%dT%H:%M:%SZ"))
    t1 = calendar.timegm(time.strptime(stops[1]["timestamp"], "%Y-%m-%dT%H:%M:%SZ"))
    assert 300 <= t0 - 1796140800 <= 306 and 2600 < t1 - t0 < 2620  # plug-in at 300 s, unplugged at 2910 s
    regs = [_register(p) for a, p in tx if a == "MeterValues"]
    assert regs == sorted(regs) and len(regs) >= 6  # periodic ones and each end
    print("\none simulated hour offline: %d transaction messages delivered once each on the return" % len(tx))


def test_transaction_cut_by_a_power_loss_while_offline_is_closed_and_delivered_once(cs, data_dir):
    _keys(data_dir, MeterValueSampleInterval="2")
    fw = Firmware("plugged_long.json", cs.url, data_dir)
    cs.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1)
    cs.down()
    fw.wait(lambda r: r.get("session") is not None, 30, "session start")
    fw.wait(lambda r: "t" in r and r["t"] >= 9, 40, "some meter values queued")
    fw.kill()  # SIGKILL: no clean stop, as a power cut
    cs.up()
    fw2 = Firmware("idle.json", cs.url, data_dir)
    _, stop = cs.wait_call("StopTransaction", timeout_s=60)
    assert fw2.finish() == 0
    assert _once_each(cs).count("MeterValues") >= 2
    _, start = cs.wait_call("StartTransaction")
    assert stop[3]["reason"] == "PowerLoss" and stop[3]["transactionId"] == 101
    assert start[3]["meterStart"] <= stop[3]["meterStop"]
    regs = [_register(c[3]) for c in cs.calls("MeterValues")]
    assert max(regs) <= stop[3]["meterStop"]  # never less than a register already reported


# ---- hostile frames -------------------------------------------------------------------------

# (frame text, uid of the answer, the answer: a CALLERROR code or ("result", payload))
HOSTILE = [
    ('{"not": "an array"', "-1", "FormationViolation"),
    ("[]", "-1", "FormationViolation"),
    ('[2, "h1"]', "h1", "FormationViolation"),
    ('[7, "h2", "Reset", {"type": "Soft"}]', "h2", "FormationViolation"),
    ('[2, "h3", "Reset", {"type": "Soft"}, 5]', "h3", "FormationViolation"),
    ('[2, "h4", "NoSuchAction", {}]', "h4", "NotImplemented"),
    ('[2, "h5", "SetChargingProfile", {"connectorId": 1}]', "h5", "OccurenceConstraintViolation"),
    ('[2, "h6", "RemoteStartTransaction", {"idTag": 5}]', "h6", "TypeConstraintViolation"),
    ('[2, "h7", "RemoteStartTransaction", {}]', "h7", "OccurenceConstraintViolation"),
    ('[2, "h8", "Reset", {"type": "Later"}]', "h8", "PropertyConstraintViolation"),
    ('[2, "h9", "RemoteStartTransaction", {"idTag": "%s"}]' % ("X" * 21), "h9", "TypeConstraintViolation"),
    ('[2, "h10", "ChangeAvailability", {"connectorId": 1, "type": "Operative", "x": 1}]', "h10", "FormationViolation"),
    ('[2, "h11", "Reset", []]', "h11", "FormationViolation"),
    ('[2, "h12", "RemoteStopTransaction", {"transactionId": "12"}]', "h12", "TypeConstraintViolation"),
    ('[2, "h13", "RemoteStopTransaction", {"transactionId": true}]', "h13", "TypeConstraintViolation"),
    ('[2, "h14", "ChangeConfiguration", {"key": "HeartbeatInterval", "value": 5}]', "h14", "TypeConstraintViolation"),
    ('[2, "h15", "GetConfiguration", {"key": [1]}]', "h15", "TypeConstraintViolation"),
    ('[2, "h16", "ChangeAvailability", {"connectorId": -1, "type": "Operative"}]', "h16", "PropertyConstraintViolation"),
    ('[2, "h17", "DataTransfer", {"vendorId": "v", "data": "%s"}]' % ("D" * 6000), "h17", ("result", {"status": "UnknownVendorId"})),
    (
        '[2, "h18", "RemoteStartTransaction", {"idTag": "X", "chargingProfile": {"chargingProfileId": 1, "stackLevel": 0,'
        ' "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Absolute", "chargingSchedule": {"chargingRateUnit": "A",'
        ' "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 80}]}}}]',
        "h18",
        ("result", {"status": "Rejected"}),  # a session is running: no second one, and no profile raises the offer
    ),
    (
        '[2, "h19", "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {"chargingProfileId": 1, "stackLevel": 0,'
        ' "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute", "chargingSchedule": {"chargingRateUnit": "A",'
        ' "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 80}]}}}]',
        "h19",
        ("result", {"status": "Accepted"}),  # a valid profile: never above the cable's 13 A all the same
    ),
    ('[2, "h20", "SetChargingProfile", {"connectorId": 3, "csChargingProfiles": {"chargingProfileId": 2, "stackLevel": 0,'
     ' "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Relative", "chargingSchedule": {"chargingRateUnit": "W",'
     ' "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 1e9}]}}}]', "h20", ("result", {"status": "Rejected"})),
    ('[2, "h21", "GetCompositeSchedule", {"connectorId": 1, "duration": -5}]', "h21", "PropertyConstraintViolation"),
    ('[2, "h22", "ReserveNow", {"connectorId": 1, "expiryDate": "2030-01-01T00:00:00Z", "idTag": "R", "reservationId": "7"}]', "h22", "TypeConstraintViolation"),
    ('[2, "h23", "ReserveNow", {"connectorId": 1, "expiryDate": "2030-01-01T00:00:00Z", "idTag": "R", "reservationId": 7}]', "h23", ("result", {"status": "Occupied"})),
    ('[2, "h24", "CancelReservation", {"reservationId": 7}]', "h24", ("result", {"status": "Rejected"})),
    ('[2, "h25", "ReserveNow", {"connectorId": 1, "idTag": "R", "reservationId": 7}]', "h25", "OccurenceConstraintViolation"),
    ('[3, "nobody-asked", {}]', None, None),  # an answer to nothing: ignored
]


def test_hostile_frames_each_get_the_right_answer_and_the_offer_stays_within_the_cable(cs, data_dir):
    fw = Firmware("hostile.json", cs.url, data_dir)
    cs.wait_call("StatusNotification", timeout_s=30, where=lambda p: p["connectorId"] == 1 and p["status"] == "Charging")
    rounds = 80  # 27 answered frames a round (and an answer to nothing): more than 2,000 in all
    for r in range(rounds):
        for text, uid, _ in HOSTILE:
            cs.send_raw(text.replace('"h', '"r%d-h' % r) if uid != "-1" else text)
    want = {}
    for r in range(rounds):
        for _, uid, answer in HOSTILE:
            if uid is not None and uid != "-1":
                want["r%d-%s" % (r, uid)] = answer
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not set(want) <= set(_answers(cs)):
        time.sleep(0.2)
    got = _answers(cs)
    for uid, answer in want.items():
        m = got.get(uid)
        assert m is not None, "no answer to %s" % uid
        if isinstance(answer, tuple):
            assert m[0] == 3 and m[2] == answer[1], (uid, m)
        else:
            assert m[0] == 4 and m[2] == answer, (uid, m)
    with cs.cond:
        anonymous = [m for _, d, m in cs.msgs if d == "in" and isinstance(m, list) and m[:1] == [4] and m[1] == "-1"]
    assert len(anonymous) == 2 * rounds and {m[2] for m in anonymous} == {"FormationViolation"}
    # A message above the size limit: the charge point closes with 1009 and comes back.
    n = len(cs.calls("StatusNotification"))
    old = cs.cp
    try:
        cs.send_raw('[2, "big", "DataTransfer", {"vendorId": "v", "data": "%s"}]' % ("B" * 20000))
    except websockets.exceptions.ConnectionClosed:
        pass
    cs.wait(lambda d, m: cs.cp is not old and len(cs.calls("StatusNotification")) > n, 60, "reconnect after 1009")
    assert old._connection.close_code == 1009
    assert "big" not in _answers(cs)
    assert fw.finish() == 0
    recs = fw.records()
    assert max(r["offer_a"] for r in recs) == 13  # the 13 A cable (PP 1.5 kOhm) decides, as without OCPP
    assert recs[-1]["contactor"] and recs[-1]["fault"] is None  # still charging at the end
    print("\nhostile frames answered: %d, plus one oversized message closed with 1009" % (len(want) + len(anonymous)))


# ---- security profiles 1 and 2: Basic auth, TLS with the central system's CA -------------


def _config(data_dir, **cfg):
    with open(os.path.join(data_dir, "config.json"), "w") as f:
        json.dump(cfg, f)


def test_basic_auth_over_tls_verified_against_the_ca_connects(data_dir):
    import ssl

    from test_link_secure import _pki

    pki_dir = tempfile.mkdtemp(prefix="evse-pki-")
    try:
        pki = _pki(pki_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["server"], os.path.join(pki_dir, "server.key"))
        cs = CentralSystem(password="0123456789abcdef", ssl_ctx=ctx)
        try:
            _config(data_dir, ocpp_password="0123456789abcdef", ocpp_ca=pki["ca"])
            fw = Firmware("idle.json", cs.url, data_dir)
            cs.wait_call("BootNotification", timeout_s=30)
            assert fw.finish() == 0
            assert cs.auth_seen and cs.auth_seen[0].startswith("Basic ")
        finally:
            cs.close()
        # The same central system with another CA on the board, or a wrong password: no connection.
        for cfg in ({"ocpp_password": "0123456789abcdef", "ocpp_ca": pki["other"]}, {"ocpp_password": "wrong-password!!", "ocpp_ca": pki["ca"]}):
            cs = CentralSystem(password="0123456789abcdef", ssl_ctx=ctx)
            try:
                _config(data_dir, **cfg)
                fw = Firmware("idle.json", cs.url, data_dir)
                assert fw.finish() == 0
                assert cs.calls() == [], cfg
            finally:
                cs.close()
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)


def test_security_profile_3_a_client_certificate_the_central_system_requires_connects_and_others_are_refused(data_dir):
    import ssl

    from test_link_secure import _openssl, _pki

    pki_dir = tempfile.mkdtemp(prefix="evse-pki-")
    try:
        pki = _pki(pki_dir)
        # The charge point's certificate, signed by the central system's CA (CN: its id).
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "cp.key", "-out", "cp.csr", "-subj", "/CN=%s" % CP_ID, cwd=pki_dir)
        _openssl("x509", "-req", "-in", "cp.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "cp.crt", "-days", "30", cwd=pki_dir)
        cp_crt, cp_key = os.path.join(pki_dir, "cp.crt"), os.path.join(pki_dir, "cp.key")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["server"], os.path.join(pki_dir, "server.key"))
        ctx.load_verify_locations(pki["ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED  # no client certificate of this CA: no TLS session
        cs = CentralSystem(ssl_ctx=ctx)
        try:
            _config(data_dir, ocpp_ca=pki["ca"], ocpp_client_cert=cp_crt, ocpp_client_key=cp_key)
            fw = Firmware("idle.json", cs.url, data_dir)
            cs.wait_call("BootNotification", timeout_s=30)
            assert fw.finish() == 0
            assert cs.peercerts and dict(x[0] for x in cs.peercerts[0]["subject"])["commonName"] == CP_ID
        finally:
            cs.close()
        # A certificate of another CA, or none: the central system refuses the handshake.
        other_key = os.path.join(pki_dir, "other.key")
        for cfg in ({"ocpp_ca": pki["ca"], "ocpp_client_cert": pki["other"], "ocpp_client_key": other_key}, {"ocpp_ca": pki["ca"]}):
            cs = CentralSystem(ssl_ctx=ctx)
            try:
                _config(data_dir, **cfg)
                fw = Firmware("idle.json", cs.url, data_dir)
                assert fw.finish() == 0
                assert cs.calls() == [] and cs.cp is None, cfg
            finally:
                cs.close()
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)


def test_a_latched_fault_shows_faulted_with_its_error_code_and_ends_the_transaction(cs, data_dir):
    fw = Firmware("fault.json", cs.url, data_dir)
    _, st = cs.wait_call("StatusNotification", timeout_s=30, where=lambda p: p["connectorId"] == 1 and p["status"] == "Faulted")
    assert st[3]["errorCode"] == "GroundFailure" and st[3]["vendorErrorCode"] == "rcd_trip"
    _, stop = cs.wait_call("StopTransaction")
    assert stop[3]["reason"] == "Other" and stop[3]["transactionId"] == 101
    assert fw.finish() == 0


def test_an_idle_connection_answers_the_central_systems_pings_and_stays_up(data_dir):
    cs = CentralSystem(heartbeat_s=300, ping_interval=0.3)
    try:
        fw = Firmware("idle.json", cs.url, data_dir)
        cs.wait_call("BootNotification", timeout_s=30)
        assert fw.finish() == 0  # 8 s of simulated (= wall) time, pinged every 0.3 s
        assert len(cs.auth_seen) == 1  # one connection all along
        assert cs.calls("Heartbeat") == []
    finally:
        cs.close()


def test_mqtt_and_ocpp_run_at_once_and_both_get_the_session(cs, data_dir):
    from broker import Broker, mosquitto_path

    if mosquitto_path() is None or not os.path.exists(os.path.join(REPO, "lib", "umqtt", "simple.py")):
        pytest.skip("mosquitto or umqtt.simple missing")
    from test_mqtt_e2e import Sub

    with Broker() as b:
        sub = Sub(b.port, ["evse/both/session"])
        try:
            fw = Firmware("both_links.json", cs.url, data_dir, broker=b.port)
            _, stop = cs.wait_call("StopTransaction", timeout_s=40)
            _, payload, _ = sub.wait(lambda t, p, r: True, 40, "session over MQTT")[:3]
            assert fw.finish() == 0
        finally:
            sub.close()
    rec = json.loads(payload)
    _, start = cs.wait_call("StartTransaction")
    assert stop[3]["meterStop"] == rec["meter_stop_mwh"] // 1000
    assert start[3]["meterStart"] == rec["meter_start_mwh"] // 1000
    assert len(cs.calls("StartTransaction")) == 1


def test_rig_run_connects_the_simulated_charger_with_ocpp(cs):
    rig = os.path.join(REPO, "tools", "rig.py")
    p = subprocess.run(
        [os.path.join(REPO, ".venv", "bin", "python"), rig, "run", os.path.join(SCEN, "idle.json"), "--realtime", "--ocpp", cs.url],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert cs.calls("BootNotification") and cs.calls("StatusNotification")
    bad = subprocess.run([os.path.join(REPO, ".venv", "bin", "python"), rig, "run", os.path.join(SCEN, "idle.json"), "--ocpp", "http://x/y"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--ocpp" in bad.stderr


# ---- make run ---------------------------------------------------------------------------------


def test_run_demo_shows_an_ocpp_session_beside_the_mqtt_one():
    out = subprocess.run([sys.executable, os.path.join(REPO, "tools", "run_demo.py"), "--fast"],
                         capture_output=True, text=True, timeout=90, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    ocpp_lines = [ln for ln in lines if ln.startswith("ocpp | ")]
    for what in ("BootNotification", "StatusNotification connector 1 Charging", "StartTransaction idTag FREE",
                 "MeterValues connector 1 #1 Transaction.End", "StopTransaction #1"):  # fmt: skip
        assert any(what in ln for ln in ocpp_lines), (what, out.stdout)
    assert len([ln for ln in ocpp_lines if "StartTransaction" in ln]) == 1
    assert len([ln for ln in ocpp_lines if "<- StopTransaction" in ln]) == 1
    assert not [ln for ln in ocpp_lines if "refused" in ln or "CALLERROR" in ln], out.stdout
    assert any(ln.startswith("mqtt | ") and " session " in ln for ln in lines)  # MQTT beside it
    assert "central system stopped" in out.stdout and "expectations held" in out.stdout
    # The session's energy: the same in both (MQTT in mWh-precise Wh, OCPP in whole Wh).
    mqtt_wh = float(next(ln for ln in lines if " session " in ln and "energy=" in ln).split("energy=")[1].split("Wh")[0])
    stop_wh = int(next(ln for ln in ocpp_lines if "<- StopTransaction" in ln).split("meterStop ")[1].split(" ")[0])
    start_wh = int(next(ln for ln in ocpp_lines if "<- StartTransaction" in ln).split("meterStart ")[1].split(" ")[0])
    assert abs((stop_wh - start_wh) - mqtt_wh) < 1  # registers in whole Wh

"""Wiring and the fixed-rate main loop.

Owns: building the parts from the configuration, the order of work inside one
loop iteration, the bookkeeping around the charger (meter -> session tracker ->
journal -> MQTT link), and the rule that any exception, KeyboardInterrupt or
SystemExit leaves the board safe (contactor open, pilot steady) before it
propagates. Never decides anything about energy: firmware/charger.py does.

One iteration, every TICK_MS; nothing stands between the pilot reading and
the decision it informs:
1. charger.tick(): inputs -> decision -> outputs (allocation free), first;
2. only when something happened: session start/end, faults -> journal, link;
3. every GC_LOOK_EVERY ticks: a garbage collection when enough garbage grew
   (a chosen point right after the decision, not wherever an allocation
   happens to run out of heap);
4. every METER_EVERY ticks: one current-sense burst (meter), session sampling,
   the bounded flash checkpoints;
5. every LINK_EVERY ticks: commands, acks and status to and from the link
   thread (non-blocking queue operations; the network never runs here).
No flash write while the contactor is closed (a NOR sector erase stalls both
cores for 45 ms, up to 400 ms, beyond IEC 61851-1's 100 ms): journal
checkpoints, the lifetime counter and acks wait until it opens, unless the
configuration says `flash_while_charging`. A TLS link is not (re)connected while
the contactor is closed (its handshake holds the GIL for 1-2 s). docs/architecture.md
has the figures.
"""

import gc
import json
from array import array

from micropython import const

from firmware import VERSION, commands, imagestate, slots
from firmware import charger as chg
from firmware import config as config_mod
from firmware.charger import Charger
from firmware.energy import EV_PHASES, EVENT_NAMES, PHASE_SAFE_MS, Energy, parse_mains
from firmware.facts import TICK_MS
from firmware.journal import Journal, exists
from firmware.meter import Meter
from firmware.nvlog import NvLog
from firmware.session import SessionTracker, stamp, to_json
from firmware.stalls import GC_LOOK_EVERY, Stalls

METER_EVERY = const(10)  # one current-sense burst every 10 ticks (100 ms)
LINK_EVERY = const(10)  # look at the link's queues every 100 ms
ENERGY_EVERY = const(10)  # load management looks at its readings every 100 ms
MAINS_CT_EVERY = const(100)  # the board's own mains CTs are read every second
# A fresh status goes to the link on every change of state, fault, offer or
# session, and otherwise this often (uptime alone must not publish every second).
STATUS_CHARGING_EVERY = const(1000)  # 10 s while the contactor is closed: current, energy
STATUS_IDLE_EVERY = const(6000)  # 60 s otherwise
REPOST_EVERY = const(1000)  # offer unacknowledged sessions again every 10 s
WDT_MS = const(2000)  # the control loop must come round this often or the board resets
# ... with the contactor open, where a TLS handshake (1-2 s holding the GIL) and
# a long flash erase (0.4 s) may legitimately stall it: the watchdog is a hang
# detector, never fired by those.
WDT_IDLE_MS = const(5000)
MAINTENANCE_WDT_MS = const(900000)  # after Ctrl-C: 15 min of REPL before the watchdog resets
HEALTHY_AFTER = const(3000)  # ticks (30 s) of running before a new slot is marked good
NVLOG_RECLAIM_AT = const(5)  # the tick (of METER_EVERY) that may erase a sector of checkpoint history
JOURNAL_RETRY_EVERY = const(6000)  # ticks (60 s): after a failed journal write (full flash), try again
_PHASE_FLOOR_MA = const(500)  # a phase carrying more than this counts as used
CLOCK_CHECK_EVERY = const(100)  # ticks (1 s): look for the wall clock until it is set
# Stamps taken before the wall clock was set are back-computed from the ticks
# only when the clock was set within this much uptime: half the ESP32 ticks
# period (2**30 ms), so ticks_diff() is exact for every earlier stamp.
_ANCHOR_MAX_MS = const(1 << 29)


def _back_date(t, boot_id, anchor_ms, anchor_wall_s, ticks_diff):
    """A stamp of boot `boot_id` taken before the wall clock was set, as wall
    seconds back-computed from the monotonic clock: anchor_wall_s was the
    wall time at anchor_ms (same boot). Wall seconds, stamps of other boots,
    and stamps that do not lie before the anchor come back unchanged. Only
    valid while the anchor is less than 2**29 ms (6.2 days, half the ESP32
    ticks period) into the boot: the caller checks that."""
    if isinstance(t, dict) and t.get("boot") == boot_id and "mono_ms" in t:
        d = ticks_diff(anchor_ms, t["mono_ms"])
        if d >= 0:
            return anchor_wall_s - (d + 500) // 1000
    return t


def _restamped(rec, fix):
    """rec with fix (a stamp -> stamp function) applied to its start, end and
    recovered stamps; rec itself when nothing changed."""
    out = rec
    for k in ("start", "end", "recovered"):
        if k in rec:
            v = fix(rec[k])
            if v is not rec[k]:
                if out is rec:
                    out = dict(rec)
                out[k] = v
    return out


CONFIG_FILE = "config.json"
LIFETIME_FILE = "lifetime.txt"
CAL_FILE = "cal.json"


class Firmware:
    def __init__(self, hal, overrides=None, config_path=None):
        self.hal = hal
        data = hal.data_dir
        if config_path is None:
            config_path = data + "/" + CONFIG_FILE
        cfg, errors = config_mod.load(config_path)
        if overrides:
            cfg, more = config_mod.validate(overrides, cfg)
            errors += more
        if cfg["phases"] > hal.adc_channels:
            # A setting the board cannot measure must not become a boot loop.
            errors.append(
                "phases %d but the board measures %d: using %d" % (cfg["phases"], hal.adc_channels, hal.adc_channels)
            )
            cfg["phases"] = hal.adc_channels
        if not cfg["id"]:
            # Two chargers left at a fixed default would share topics and one HA device.
            cfg["id"] = "evse-" + hal.unique_id()
        self.cfg = cfg
        self.config_errors = errors
        for e in errors:
            print("config:", e)
        self.notes = []  # start-up findings, reported as events once the link runs

        meter = Meter(hal, phases=cfg["phases"], voltage_v=cfg["voltage_v"], mains_hz=cfg["mains_hz"])
        self._lifetime_path = data + "/" + LIFETIME_FILE
        err = meter.load(self._lifetime_path)
        if err:
            self.notes.append(err)
        cal_path = data + "/" + CAL_FILE
        if exists(cal_path):
            err = meter.load_cal(cal_path)
            if err:
                self.notes.append(err)
        self.meter = meter

        j = Journal(data)
        self.journal = j
        self.boot_id = j.boot()
        now = hal.ticks_ms()
        # The checkpoint ring (firmware/nvlog.py): a session cut by a power
        # loss takes its newest record when that is ahead of the journal's.
        nv = NvLog(hal)
        self.nvlog = nv
        nv.scan()
        self.recovered = j.recover(stamp(self.boot_id, now, hal.wall_time()), nv.merge)
        nv.settle(j.open_ids())
        for sid in nv.taken:
            self.notes.append("nvlog: %s recovered from the checkpoint area" % sid)
        if nv.damaged:
            self.notes.append("nvlog: %d damaged checkpoints ignored (a power cut while one was written)" % nv.damaged)
        if nv.error:
            self.notes.append(nv.error)
        if not nv.sectors and getattr(hal, "nvlog_note", None):
            self.notes.append("nvlog: " + hal.nvlog_note)
        self._nv_told = None  # the last checkpoint-area trouble reported
        self.notes += j.notes
        # A power cut between a journal checkpoint and the next lifetime
        # persist: the counter goes on from the journaled reading, never
        # below a meter_stop already billed (docs/metering.md).
        if meter.at_least(j.meter_mwh):
            self.notes.append("meter: lifetime raised to %d Wh, the journal's last reading" % meter.lifetime_wh)
            err = meter.persist(self._lifetime_path, now)
            if err:
                self.notes.append(err)
        if j.error:
            self.notes.append(j.error)
        # The recovery's garbage goes before the objects that live as long as
        # the firmware are made: they take the lowest free blocks and leave
        # the heap's top as one large free block (docs/architecture.md).
        gc.collect()
        self.tracker = SessionTracker(hal, cfg["id"], self.boot_id)
        self.charger = Charger(hal, cfg, meter)
        self.charger.inhibit = self.journal.full()  # reported by start()
        self.energy = Energy(cfg, hal.ticks_diff, cfg["phases"], getattr(hal, "phase_relay", False) and cfg["phase_switch"])
        self._mains_buf = array("i", (0, 0, 0))
        self._switch_safe_since = None  # phase switch: since when the pilot and contactor are safe
        self._mains_err = None  # the last bad mains payload's error (reported once)

        self.netup = None  # the network link and the clock (firmware/netup.py)
        netif = getattr(hal, "netif", None)
        if netif is not None and (cfg["mqtt_host"] or cfg["ocpp_url"] or netif.kind != "host"):  # else: nothing to run it
            from firmware.netup import NetUp

            self.netup = NetUp(cfg, hal)
        gc.collect()  # the links' modules and objects live as long as the firmware: low in the heap too
        self.link = None
        self.command_note = None  # set by command()
        if cfg["mqtt_host"]:
            from firmware.link import Link

            self.link = Link(cfg, hal.net, hal.net, {"serial_number": hal.unique_id(), "hw_version": hal.name})
        self.ocpp = None  # the OCPP 1.6J charge point (firmware/ocpp.py), beside MQTT or alone
        if cfg["ocpp_url"]:
            from firmware.ocpp import Ocpp

            self.ocpp = Ocpp(cfg, hal.net, data, hal)
            self.ocpp.version = VERSION
            self.ocpp.recover(self.journal, self.recovered)
            self.notes += self.ocpp.notes  # a damaged reservation file (firmware/ocpp_reserve.py)
        self.session_id = None
        self.ticks = 0
        self.rig_trace = None  # rig mode: trace records on the console (firmware/rigtrace.py)
        if cfg["bench_trace"]:
            from firmware.rigtrace import RigTrace

            self.rig_trace = RigTrace(self)
        self.on_event = None  # optional callable(dict) for the host side (rig, tests)
        self._meter_t = now
        self._last_state = None
        self._last_fault = None
        self._last_offer = 0
        self._last_session = None
        self._status_due = True
        self._acked = []  # session ids the broker has, journaled when flash writes are allowed
        self._end_due = None  # (ticks, reason) of a session end waiting for the contactor to open
        self.stalls = Stalls(cfg)  # what may stall the loop, and when (firmware/stalls.py)
        self._wdt_ms = 0
        self._anchor = None  # (ticks_ms, wall_s): when this boot first saw the wall clock set
        self._up_ms = 0  # uptime until then, saturating at _ANCHOR_MAX_MS
        self._clock_t = now

    # --- start-up / shut-down ------------------------------------------------------
    def start(self):
        """Start the link thread and queue what must be reported at boot."""
        hal = self.hal
        self._event(
            {
                "event": "boot",
                "version": VERSION,
                "boot": self.boot_id,
                "reset_cause": hal.reset_cause(),
                "recovered": self.recovered,
                "pending_sessions": self.journal.pending_count(),
                "nvlog_kb": self.nvlog.sectors * 4,  # the checkpoint area (0: none)
                "slot": slots.boot_report(),  # which A/B slot runs, and why it rolled back if it did
                "image": imagestate.report(hal),  # which OTA partition runs, and whether the last image rolled back
            }
        )
        if self.charger.inhibit:
            ev = {"event": "journal_full", "pending": self.journal.pending_count()}
            if self.journal.error:
                ev["error"] = self.journal.error
            self._event(ev)
        for e in self.config_errors:
            self._event({"event": "config_error", "error": e})
        for n in self.notes:
            self._event({"event": "note", "text": n})
        if self.link is not None:
            self.link.netup = self.netup  # the link thread runs the network too
            self.link.start()
            self._repost()
        elif self.netup is not None:
            self.netup.start()  # no broker: a thread of its own keeps the network and the clock
        if self.ocpp is not None:
            self.ocpp.start()

    def shutdown(self, flush_ms=0):
        """A clean stop: outputs safe, then (with MQTT) give queued sessions up
        to flush_ms to be acknowledged, publish online 0 and close the link."""
        self.hal.safe()
        if self._end_due is not None:
            self._end_session(*self._end_due)  # the outputs are safe: flash writes may stall now
        if self.netup is not None:
            self.netup.stop()
        oc = self.ocpp
        if oc is not None:
            net = self.hal.net
            t0 = net.ticks_ms()
            while oc.pending() and net.ticks_diff(net.ticks_ms(), t0) < flush_ms:
                oc.service(self)
                net.sleep_ms(10)
            oc.service(self)
            oc.stop(2000)
        link = self.link
        if link is None:
            return
        net = self.hal.net
        t0 = net.ticks_ms()
        while link.pending_sessions() and net.ticks_diff(net.ticks_ms(), t0) < flush_ms:
            self._service_link()
            net.sleep_ms(10)
        self._service_link()
        if self._acked:
            self._journal_acks()  # the outputs are safe: flash writes may stall now
        link.stop(2000)

    # --- one loop iteration ------------------------------------------------------------
    def tick(self):
        ch = self.charger
        n = self.ticks
        self.ticks = n + 1
        ch.tick()
        if self._end_due is not None and self._flash_ok():
            self._end_session(*self._end_due)
        if ch.events_pending and self._end_due is None:
            self._drain_events()
        if n % GC_LOOK_EVERY == GC_LOOK_EVERY - 1:
            self.stalls.collect(ch)
        if n % METER_EVERY == 0:
            self._meter_step()
        elif n % METER_EVERY == NVLOG_RECLAIM_AT and not ch.contactor_on:
            self._nvlog_reclaim()
        if (
            ch.state is not self._last_state
            or ch.fault is not self._last_fault
            or ch.offer_ma != self._last_offer
            or self.session_id is not self._last_session
        ):
            self._last_state = ch.state
            self._last_fault = ch.fault
            self._last_offer = ch.offer_ma
            self._last_session = self.session_id
            self._status_due = True
        if n % ENERGY_EVERY == 0:
            self._energy_step(n)
        if self._anchor is None and n % CLOCK_CHECK_EVERY == 0:
            self._check_clock()
        if self.link is not None and n % LINK_EVERY == 0:
            self._service_link()
        if self.ocpp is not None and n % LINK_EVERY == 0:
            self.ocpp.service(self)
        if self.rig_trace is not None:
            self.rig_trace.poll()

    def _flash_ok(self):
        return self.stalls.flash_ok(self.charger)

    def _nvlog_reclaim(self):
        """Erase one sector of checkpoint history, with the contactor open
        (never while it is closed: an erase stalls both cores 45-400 ms), and
        not while the EV asks for energy (a close would wait for the erase)
        unless erased space runs short."""
        nv = self.nvlog
        ch = self.charger
        if ch.state[0] in "CD" and nv.free_slots() >= nv.slots // 2:
            return
        nv.reclaim(ch.contactor_on)
        if nv.error and nv.error != self._nv_told:
            self._nv_told = nv.error
            self._event({"event": "note", "text": nv.error})

    def _nvlog_step(self, now, t):
        """A checkpoint record when one is due (after the decision; a page
        program, ~0.7 ms, 3 ms at most: no erase). Allocates nothing unless
        the ring has run out, which is reported once per session."""
        nv = self.nvlog
        e = self.meter.session_mwh
        if nv.due(now, e) and not nv.append(now, e, t.peak_ma, t.phases) and self._nv_told is None:
            self._nv_told = "full" if nv.full else nv.error
            self._event({"event": "nvlog_full" if nv.full else "note", "session": t.id,
                         "text": "checkpoints stopped: " + str(self._nv_told)})

    def _energy_step(self, n):
        """Load management (firmware/energy.py) after the charger's decision:
        its limit takes effect in the next tick; a phase switch it asks for is
        made only after PHASE_SAFE_MS with the pilot steady and the contactor
        open, and the charger checks that again before the relay moves."""
        e = self.energy
        hal = self.hal
        ch = self.charger
        now = hal.ticks_ms()
        if e.mode != "normal" and n % MAINS_CT_EVERY == 0:
            b = self._mains_buf
            if hal.mains_read(b):
                e.feed(now, b[0], b[1], b[2])
        e.step(now, self.meter.i_ma, ch.state not in ("A1", "A2", "E", "F"))
        lim = ch.limits
        lim.balance_ma = e.limit_ma
        if e.reason is not None:
            lim.balance_reason = e.reason
        if e.event:
            self._energy_event(e.event)
        if not e.switching:
            self._switch_safe_since = None
        elif ch.contactor_on or ch.duty_pm != 0:
            self._switch_safe_since = None
        elif self._switch_safe_since is None:
            self._switch_safe_since = now
        elif hal.ticks_diff(now, self._switch_safe_since) >= PHASE_SAFE_MS:
            if ch.switch_phases(e.want_phases) is None:
                e.switched(now, e.want_phases)
                self._switch_safe_since = None
                self._event({"event": "phases", "phases": e.phases})

    def _energy_event(self, bits):
        e = self.energy
        for bit, name in EVENT_NAMES:
            if bits & bit:
                ev = {"event": name, "mode": e.mode}
                if bit == EV_PHASES:
                    ev["phases"] = e.want_phases
                self._event(ev)

    def mains(self, payload):
        """A reading of the house's grid current (the mains topic, or a
        meter simulated by the scenario runner): (ok, error)."""
        v, err = parse_mains(payload)
        if err is None:
            err = self.energy.feed(self.hal.ticks_ms(), v[0], v[1], v[2])
        return err is None, err

    def _meter_step(self):
        hal = self.hal
        meter = self.meter
        ch = self.charger
        now = hal.ticks_ms()
        if not meter.sample(now, ch.contactor_on, self.stalls.watch(ch)):
            # The pilot moved during the burst (cut short): decide again now,
            # not a whole burst later.
            ch.tick()
            if ch.events_pending:
                self._drain_events()
            return
        t = self.tracker
        if t.active:
            used = 0
            i_ma = meter.i_ma
            p = meter.phases
            while p:  # (no range(): it would allocate an iterator every burst)
                p -= 1
                if i_ma[p] > _PHASE_FLOOR_MA:
                    used += 1
            t.sample(meter.max_ma(), used, hal.ticks_diff(now, self._meter_t))
            self._nvlog_step(now, t)
            if t.checkpoint_due(now, meter.session_mwh) and self._flash_ok():
                j = self.journal
                j.checkpoint(t.id, t.checkpoint(now, hal.wall_time(), meter.session_mwh, meter.lifetime_mwh()))
                if j.error:
                    self._check_journal()  # a full flash: this session goes on, no new one starts
        elif self.journal.error and self.ticks % JOURNAL_RETRY_EVERY < METER_EVERY:
            self.journal.retry()
            self._check_journal()
        self._meter_t = now
        if meter.checkpoint_due(now) and self._flash_ok():
            err = meter.persist(self._lifetime_path, now)
            if err:
                self._event({"event": "note", "text": err})

    def _check_clock(self):
        """Until the wall clock is set (NTP, or an RTC that kept it through a
        soft reset): once it is, remember when, and back-date the open
        session's start from the ticks (journaled at once, so a power cut
        keeps it). Closed records of this boot are back-dated when they are
        posted (_repost); those of earlier boots keep their mono stamps."""
        hal = self.hal
        now = hal.ticks_ms()
        up = self._up_ms + hal.ticks_diff(now, self._clock_t)
        self._up_ms = up if up < _ANCHOR_MAX_MS else _ANCHOR_MAX_MS
        self._clock_t = now
        wall = hal.wall_time()
        if wall is None:
            return
        self._anchor = (now, wall)
        t = self.tracker
        fixed = None
        start = self._from_ticks(t.start) if t.active else None
        if start is not None and start is not t.start:
            t.start = start
            m = self.meter
            self.journal.checkpoint(t.id, t.checkpoint(now, wall, m.session_mwh, m.lifetime_mwh()))
            fixed = t.id
        self._event({"event": "clock_set", "wall_s": wall, "restamped": fixed})
        self._status_due = True

    def _from_ticks(self, t):
        """A stamp of this boot from before the clock was set, as wall seconds."""
        a = self._anchor
        if a is None or self._up_ms >= _ANCHOR_MAX_MS:
            return t
        return _back_date(t, self.boot_id, a[0], a[1], self.hal.ticks_diff)

    def _drain_events(self):
        ch = self.charger
        hal = self.hal
        while True:
            ev = ch.pop_event()
            if ev is None:
                return
            kind, arg = ev
            now = hal.ticks_ms()
            if kind == chg.EV_SESSION_START:
                self.meter.session_begin()
                sid = self.tracker.begin(now, hal.wall_time(), self.meter.lifetime_mwh(), arg)
                self.session_id = sid
                nv = self.nvlog
                nv.begin(sid, now, self.meter.meter_wh())
                self._nv_told = None
                if nv.sectors and nv.free_slots() < nv.slots // 2:
                    # erased space short (a session right after another): it may run out
                    self._event({"event": "nvlog_low", "free": nv.free_slots(), "slots": nv.slots})
                if not self.journal.open_session(self.tracker.opening()):
                    self._event({"event": "journal_full", "session": sid})
                    self._check_journal()
                self._event({"event": "session_start", "session": sid, "tag": arg})
                if self.ocpp is not None:
                    self.ocpp.tx_start(self.tracker.opening(), hal.wall_time())
            elif kind == chg.EV_SESSION_END:
                if not self._flash_ok():
                    # An x1 stop with the contactor still closed: the session is
                    # closed (journal, lifetime counter) once it opens; the
                    # events after it wait with it, in order.
                    self._end_due = (now, arg)
                    return
                self._end_session(now, arg)
            elif kind == chg.EV_FAULT:
                self._event({"event": "fault", "fault": arg, "state": ch.state})
            elif kind == chg.EV_FAULT_CLEARED:
                self._event({"event": "fault_cleared", "fault": arg})
            elif kind == chg.EV_LATCHED:
                self._event({"event": "fault_latched", "fault": arg})

    def _end_session(self, now, reason):
        self._end_due = None
        hal = self.hal
        meter = self.meter
        t = self.tracker
        energy = meter.session_end()
        t.end(now, hal.wall_time(), energy, reason, meter.lifetime_mwh())
        rec = t.record()
        j = self.journal
        before = j.dropped
        j.close_session(rec)
        self.nvlog.end()
        if j.dropped != before:
            self._event({"event": "session_dropped", "session": rec["id"]})
        self._check_journal()
        self.session_id = None
        err = meter.persist(self._lifetime_path, now)
        if err:
            self._event({"event": "note", "text": err})
        if self.link is not None:
            self.link.post_session(rec["id"], to_json(rec).encode())
        if self.ocpp is not None:
            self.ocpp.tx_stop(rec, hal.wall_time(), self)
        if self.on_event is not None:
            self.on_event({"event": "session", "record": rec})

    def _check_journal(self):
        """A journal full of unacknowledged sessions refuses new sessions
        (docs/journal.md): no energy is sold that could not be billed. Say so
        when that starts and ends."""
        j = self.journal
        full = j.full()
        if full != self.charger.inhibit:
            self.charger.inhibit = full
            ev = {"event": "journal_full" if full else "journal_ok", "pending": j.pending_count()}
            if j.error:
                ev["error"] = j.error  # e.g. ENOSPC: the flash is full
            self._event(ev)

    def _event(self, ev):
        if self.link is not None:
            self.link.post_event(json.dumps(ev).encode())
        if self.on_event is not None:
            self.on_event(ev)

    # --- the link: commands in, acks/status/sessions out (never blocks) ----------------------
    def status(self):
        ch = self.charger
        m = self.meter
        i = m.i_ma
        st = {
            "state": ch.state,
            "fault": ch.fault,
            "offer_a": ch.offer_ma / 1000,
            "limit_ma": ch.limits.remote_ma if ch.limits.remote_ma < ch.limits.config_ma else ch.limits.config_ma,
            "current_a": [i[p] / 1000 for p in range(m.phases)],
            "current_ma": m.max_ma(),
            "power_w": m.power_w,
            "energy_wh": m.session_mwh / 1000,
            "session_wh": m.session_mwh / 1000,
            # What survives a power cut (persisted, or journaled by a session
            # checkpoint), so a published reading never goes backwards after
            # a reboot; it lags the meter by at most one checkpoint.
            "lifetime_wh": max(m.saved_wh(), self.journal.meter_mwh // 1000, self.nvlog.checkpoint_meter_wh()),
            "session": self.session_id,
            "enabled": ch.enabled,
            "limit_reason": ch.limits.reason,  # what decides the offer: config, cable, remote, thermal...
            "blocked": "journal_full" if ch.inhibit else None,
            "temp_c": None if ch.temp_dc == -32768 else ch.temp_dc / 10,
            "uptime_s": self.ticks * TICK_MS // 1000,
            "net": None if self.netup is None else self.netup.state,  # none, down, connecting, up
            "rssi_dbm": None if self.netup is None else self.netup.rssi_dbm,  # WiFi signal; null on Ethernet
            "clock_set": self._anchor is not None,  # false: times are {"boot", "mono_ms"}
        }
        e = self.energy
        st["mode"] = e.mode
        st["mains_max_a"] = e.mains_max_ma / 1000
        st["solar_import_a"] = e.import_ma / 1000
        st["phases_active"] = e.phases
        age = e.age_ms(self.hal.ticks_ms())
        st["mains_a"] = [g / 1000 for g in e.grid_ma] if age >= 0 else None
        st["mains_age_s"] = age // 1000 if age >= 0 else None
        if e.mode == "solar":
            st["solar"] = e.solar_on
            st["surplus_a"] = e.surplus_ma / 1000
        return st

    def _service_link(self):
        link = self.link
        m = link.poll_mains()
        if m is not None:
            ok, err = self.mains(m)
            if not ok and err != self._mains_err:
                self._event({"event": "mains_error", "error": err})  # once per kind of error
            self._mains_err = err
        while True:
            cmd = link.poll_command()
            if cmd is None:
                break
            name, payload = cmd
            ok, err = self.command(name, payload)
            link.post_ack(name, ok, err, self.command_note)
            self._status_due = True
        while True:
            sid = link.poll_acked()
            if sid is None:
                break
            self._acked.append(sid)
        if self._acked and self._flash_ok():
            self._journal_acks()
        link.hold_tls = self.charger.contactor_on  # no TLS handshake while charging
        every = STATUS_CHARGING_EVERY if self.charger.contactor_on else STATUS_IDLE_EVERY
        if self._status_due or self.ticks % every < LINK_EVERY:
            self._status_due = False
            link.post_status(json.dumps(self.status()).encode())
        if self.ticks % REPOST_EVERY < LINK_EVERY:
            self._repost()

    def _journal_acks(self):
        for sid in self._acked:
            self.journal.ack(sid)
        self._acked = []
        self._check_journal()

    def _repost(self):
        """Offer the journal's unacknowledged sessions to the link (it ignores
        ids it already holds, and refuses when its queue is full). Not while
        acks wait for the journal: those sessions are delivered."""
        if self._acked:
            return
        if self.journal.pending_count() > self.link.pending_sessions():
            for rec in self.journal.pending(limit=8):
                rec = _restamped(rec, self._from_ticks)
                if not self.link.post_session(rec["id"], to_json(rec).encode()):
                    break

    # --- the main loop --------------------------------------------------------------------------
    def run(self):
        """Forever at TICK_MS. Leaves the board safe on any exception
        (KeyboardInterrupt and SystemExit included) and re-raises."""
        hal = self.hal
        try:
            self.start()
            while True:
                self.tick()
                if self.ticks == HEALTHY_AFTER:
                    slots.mark_good()  # the A/B slot proved itself (firmware/slots.py)
                    imagestate.mark_valid(hal)  # and the image: no bootloader rollback (firmware/imagestate.py)
                w = WDT_MS if self.charger.contactor_on else WDT_IDLE_MS
                if w != self._wdt_ms:
                    self._wdt_ms = w
                    hal.wdt_start(w)  # (re)starting it feeds it
                else:
                    hal.wdt_feed()
                hal.wait_tick(TICK_MS)
        except BaseException as e:
            hal.safe()
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                # A clean stop (Ctrl-C from mpremote, the deploy tool, a bench
                # rig): an ESP32 watchdog cannot be stopped, so it gets a long
                # maintenance window; an abandoned REPL then ends in a reset
                # that puts the charger back in service.
                hal.wdt_start(MAINTENANCE_WDT_MS)
                if self.netup is not None:
                    self.netup.stop()
                if self.link is not None:
                    self.link.stop(1000)  # online 0; the thread ends
                if self.ocpp is not None:
                    self.ocpp.stop(1000)
            raise

    # --- remote commands ----------------------------------------------------------------------------
    def command(self, name, payload):
        """Validate and apply one remote command. Returns (ok, error); sets
        command_note to what the ack says besides "ok" (None: nothing)."""
        self.command_note = None
        value, err = commands.parse(name, payload, self.cfg)
        if err is None and name == "authorize" and self.ocpp is not None:
            return self.ocpp.authorize(value)  # a card: the central system decides (Authorize)
        if err is None:
            if name == "mode":
                err = self.energy.set_mode(value)
            elif name in commands.ENERGY_SETTINGS:
                err = self.energy.set_limit(name, value)
            else:
                err = self.charger.command(name, value)
        if err is None:
            self.command_note = commands.note(name, value)
            self._event({"event": "command", "cmd": name})
        return err is None, err

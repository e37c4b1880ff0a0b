"""Wiring and the fixed-rate main loop.

Owns: building the parts from the configuration, the order of work inside one
loop iteration, the bookkeeping around the charger (meter -> session tracker ->
journal -> MQTT link), and the rule that any exception, KeyboardInterrupt or
SystemExit leaves the board safe (contactor open, pilot steady) before it
propagates. Never decides anything about energy: firmware/charger.py does.

One iteration, every TICK_MS:
1. every METER_EVERY ticks: one current-sense burst (meter), session sampling;
2. charger.tick(): inputs -> decision -> outputs (allocation free);
3. only when something happened: session start/end, faults -> journal, link;
4. every LINK_EVERY ticks: commands, acks and status to and from the link
   thread (non-blocking queue operations; the network never runs here).
Flash writes (journal, lifetime counter) happen in steps 1 and 3, after the
charger has already acted in the same iteration.
"""

import json

from micropython import const

from firmware import VERSION, commands, slots
from firmware import charger as chg
from firmware import config as config_mod
from firmware.charger import TICK_MS, Charger
from firmware.journal import Journal, exists
from firmware.meter import Meter
from firmware.session import SessionTracker, stamp, to_json

METER_EVERY = const(10)  # one current-sense burst every 10 ticks (100 ms)
LINK_EVERY = const(10)  # look at the link's queues every 100 ms
# A fresh status goes to the link on every change of state, fault, offer or
# session, and otherwise this often (uptime alone must not publish every second).
STATUS_CHARGING_EVERY = const(1000)  # 10 s while the contactor is closed: current, energy
STATUS_IDLE_EVERY = const(6000)  # 60 s otherwise
REPOST_EVERY = const(1000)  # offer unacknowledged sessions again every 10 s
WDT_MS = const(2000)  # the control loop must come round this often or the board resets
MAINTENANCE_WDT_MS = const(900000)  # after Ctrl-C: 15 min of REPL before the watchdog resets
HEALTHY_AFTER = const(3000)  # ticks (30 s) of running before a new slot is marked good
_PHASE_FLOOR_MA = const(500)  # a phase carrying more than this counts as used

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

        self.journal = Journal(data)
        self.boot_id = self.journal.boot()
        now = hal.ticks_ms()
        self.recovered = self.journal.recover(stamp(self.boot_id, now, hal.wall_time()))
        self.tracker = SessionTracker(hal, cfg["id"], self.boot_id)
        self.charger = Charger(hal, cfg, meter)
        self.charger.inhibit = self.journal.full()  # reported by start()

        self.link = None
        if cfg["mqtt_host"]:
            from firmware.link import Link

            self.link = Link(cfg, hal.net, hal.net)
        self.session_id = None
        self.ticks = 0
        self.bench = None  # bench mode: trace records on the console (firmware/bench.py)
        if cfg["bench_trace"]:
            from firmware.bench import BenchTrace

            self.bench = BenchTrace(self)
        self.on_event = None  # optional callable(dict) for the host side (rig, tests)
        self._meter_t = now
        self._last_state = None
        self._last_fault = None
        self._last_offer = 0
        self._last_session = None
        self._status_due = True

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
                "slot": slots.boot_report(),  # which A/B slot runs, and why it rolled back if it did
            }
        )
        if self.charger.inhibit:
            self._event({"event": "journal_full", "pending": self.journal.pending_count()})
        for e in self.config_errors:
            self._event({"event": "config_error", "error": e})
        for n in self.notes:
            self._event({"event": "note", "text": n})
        if self.link is not None:
            self.link.start()
            self._repost()

    def shutdown(self, flush_ms=0):
        """A clean stop: outputs safe, then (with MQTT) give queued sessions up
        to flush_ms to be acknowledged, publish online 0 and close the link."""
        self.hal.safe()
        link = self.link
        if link is None:
            return
        net = self.hal.net
        t0 = net.ticks_ms()
        while link.pending_sessions() and net.ticks_diff(net.ticks_ms(), t0) < flush_ms:
            self._service_link()
            net.sleep_ms(10)
        self._service_link()
        link.stop(2000)

    # --- one loop iteration ------------------------------------------------------------
    def tick(self):
        ch = self.charger
        n = self.ticks
        self.ticks = n + 1
        if n % METER_EVERY == 0:
            self._meter_step()
        ch.tick()
        if ch.events_pending:
            self._drain_events()
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
        if self.link is not None and n % LINK_EVERY == 0:
            self._service_link()
        if self.bench is not None:
            self.bench.poll()

    def _meter_step(self):
        hal = self.hal
        meter = self.meter
        ch = self.charger
        now = hal.ticks_ms()
        meter.sample(now, ch.contactor_on)
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
            if t.checkpoint_due(now, meter.session_mwh):
                self.journal.checkpoint(
                    t.id, t.checkpoint(now, hal.wall_time(), meter.session_mwh, meter.lifetime_mwh())
                )
        self._meter_t = now
        if meter.checkpoint_due(now):
            err = meter.persist(self._lifetime_path, now)
            if err:
                self._event({"event": "note", "text": err})

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
                if not self.journal.open_session(self.tracker.opening()):
                    self._event({"event": "journal_full", "session": sid})
                self._event({"event": "session_start", "session": sid, "tag": arg})
            elif kind == chg.EV_SESSION_END:
                self._end_session(now, arg)
            elif kind == chg.EV_FAULT:
                self._event({"event": "fault", "fault": arg, "state": ch.state})
            elif kind == chg.EV_FAULT_CLEARED:
                self._event({"event": "fault_cleared", "fault": arg})
            elif kind == chg.EV_LATCHED:
                self._event({"event": "fault_latched", "fault": arg})

    def _end_session(self, now, reason):
        hal = self.hal
        meter = self.meter
        t = self.tracker
        energy = meter.session_end()
        t.end(now, hal.wall_time(), energy, reason, meter.lifetime_mwh())
        rec = t.record()
        j = self.journal
        before = j.dropped
        j.close_session(rec)
        if j.dropped != before:
            self._event({"event": "session_dropped", "session": rec["id"]})
        self._check_journal()
        self.session_id = None
        err = meter.persist(self._lifetime_path, now)
        if err:
            self._event({"event": "note", "text": err})
        if self.link is not None:
            self.link.post_session(rec["id"], to_json(rec).encode())
        if self.on_event is not None:
            self.on_event({"event": "session", "record": rec})

    def _check_journal(self):
        """A journal full of unacknowledged sessions refuses new sessions
        (docs/journal.md): no energy is sold that could not be billed. Say so
        when that starts and ends."""
        full = self.journal.full()
        if full != self.charger.inhibit:
            self.charger.inhibit = full
            self._event({"event": "journal_full" if full else "journal_ok", "pending": self.journal.pending_count()})

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
        return {
            "state": ch.state,
            "fault": ch.fault,
            "offer_a": ch.offer_ma / 1000,
            "limit_ma": ch.limits.remote_ma if ch.limits.remote_ma < ch.limits.config_ma else ch.limits.config_ma,
            "current_a": [i[p] / 1000 for p in range(m.phases)],
            "current_ma": m.max_ma(),
            "power_w": m.power_w,
            "energy_wh": m.session_mwh / 1000,
            "session_wh": m.session_mwh / 1000,
            "lifetime_wh": m.lifetime_wh,
            "session": self.session_id,
            "enabled": ch.enabled,
            "limit_reason": ch.limits.reason,  # what decides the offer: config, cable, remote, thermal...
            "blocked": "journal_full" if ch.inhibit else None,
            "temp_c": None if ch.temp_dc == -32768 else ch.temp_dc / 10,
            "uptime_s": self.ticks * TICK_MS // 1000,
        }

    def _service_link(self):
        link = self.link
        while True:
            cmd = link.poll_command()
            if cmd is None:
                break
            name, payload = cmd
            ok, err = self.command(name, payload)
            link.post_ack(name, ok, err)
            self._status_due = True
        while True:
            sid = link.poll_acked()
            if sid is None:
                break
            self.journal.ack(sid)
            self._check_journal()
        every = STATUS_CHARGING_EVERY if self.charger.contactor_on else STATUS_IDLE_EVERY
        if self._status_due or self.ticks % every < LINK_EVERY:
            self._status_due = False
            link.post_status(json.dumps(self.status()).encode())
        if self.ticks % REPOST_EVERY < LINK_EVERY:
            self._repost()

    def _repost(self):
        """Offer the journal's unacknowledged sessions to the link (it ignores
        ids it already holds, and refuses when its queue is full)."""
        if self.journal.pending_count() > self.link.pending_sessions():
            for rec in self.journal.pending(limit=8):
                if not self.link.post_session(rec["id"], to_json(rec).encode()):
                    break

    # --- the main loop --------------------------------------------------------------------------
    def run(self):
        """Forever at TICK_MS. Leaves the board safe on any exception
        (KeyboardInterrupt and SystemExit included) and re-raises."""
        hal = self.hal
        try:
            self.start()
            hal.wdt_start(WDT_MS)
            while True:
                self.tick()
                if self.ticks == HEALTHY_AFTER:
                    slots.mark_good()  # the A/B slot proved itself (firmware/slots.py)
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
                if self.link is not None:
                    self.link.stop(1000)  # online 0; the thread ends
            raise

    # --- remote commands ----------------------------------------------------------------------------
    def command(self, name, payload):
        """Validate and apply one remote command. Returns (ok, error)."""
        value, err = commands.parse(name, payload, self.cfg)
        if err is None:
            err = self.charger.command(name, value)
        if err is None:
            self._event({"event": "command", "cmd": name})
        return err is None, err

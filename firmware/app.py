"""Wiring and the fixed-rate main loop.

Owns: building the parts from the configuration, the order of work inside one
loop iteration, and the rule that any exception, KeyboardInterrupt or
SystemExit leaves the board safe (contactor open, pilot steady) before it
propagates. Never decides anything about energy (firmware/charger.py does).
"""

from micropython import const

from firmware import charger as chg
from firmware import commands
from firmware import config as config_mod
from firmware.charger import Charger, TICK_MS

METER_EVERY = const(10)  # one current-sense burst every 10 ticks (100 ms)


class Firmware:
    def __init__(self, hal, overrides=None, config_path=None):
        self.hal = hal
        if config_path is not None:
            cfg, errors = config_mod.load(config_path)
            if overrides:
                cfg, more = config_mod.validate(overrides, cfg)
                errors += more
        else:
            cfg, errors = config_mod.validate(overrides or {})
        self.cfg = cfg
        self.config_errors = errors
        for e in errors:
            print("config:", e)
        self.meter = self._make_meter(hal, cfg)
        self.charger = Charger(hal, cfg, self.meter)
        self.session_id = None
        self.session_seq = 0
        self.boot_id = 0
        self.ticks = 0
        self.on_event = None  # optional callable(kind, arg) for the host side

    @staticmethod
    def _make_meter(hal, cfg):
        from firmware.meter import Meter

        return Meter(hal, phases=cfg["phases"], voltage_v=cfg["voltage_v"])

    # --- one loop iteration ------------------------------------------------------
    def tick(self):
        ch = self.charger
        meter = self.meter
        if self.ticks % METER_EVERY == 0:
            meter.sample(self.hal.ticks_ms(), ch.contactor_on)
        self.ticks += 1
        ch.tick()
        if ch._ev_len:
            self._drain_events()

    def _drain_events(self):
        ch = self.charger
        while True:
            ev = ch.pop_event()
            if ev is None:
                return
            kind, arg = ev
            if kind == chg.EV_SESSION_START:
                self.session_seq += 1
                self.session_id = "%s-%d-%d" % (self.cfg["id"], self.boot_id, self.session_seq)
                self.meter.session_begin()
            elif kind == chg.EV_SESSION_END:
                self.meter.session_end()
                self.session_id = None
            if self.on_event is not None:
                self.on_event(kind, arg)

    def run(self):
        """The main loop: forever at TICK_MS. Leaves the board safe on any
        exception (including KeyboardInterrupt and SystemExit) and re-raises."""
        hal = self.hal
        try:
            hal.wdt_start(2000)
            while True:
                self.tick()
                hal.wdt_feed()
                hal.wait_tick(TICK_MS)
        except BaseException:
            hal.safe()
            raise

    # --- remote commands ------------------------------------------------------------
    def command(self, name, payload):
        """Validate and apply one remote command. Returns (ok, error)."""
        value, err = commands.parse(name, payload, self.cfg)
        if err is None:
            err = self.charger.command(name, value)
        return err is None, err

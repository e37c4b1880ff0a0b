# boot.py and the A/B slot module on a "board" faked here: the outputs are
# driven safe even when the HAL cannot be imported, and a rollback leaves
# none of the failed slot's modules behind. (Rollback itself, on a flash with
# real slots: tests/host/test_deploy.py.)
import sys

import tmpdirs

BOARD_FILE = "hal/boards/esp32_devkit.json"  # contactor 26, 27 active high; RCD test 4; pilot 25


class _FakeMachine:
    """machine with only Pin: every output it was asked for, in order."""

    def __init__(self):
        self.set = []
        m = self

        class Pin:
            OUT = 1
            IN = 0

            def __init__(self, n, mode=-1, value=None, **kw):
                if mode == Pin.OUT and value is not None:
                    m.set.append((n, value))

            def value(self, v=None):
                return 0

        self.Pin = Pin


def _boot_source(board_file):
    with open("boot.py") as f:
        src = f.read()
    assert '"/data/board.json"' in src
    return src.replace('"/data/board.json"', repr(board_file))


def test_without_a_usable_hal_boot_py_drives_contactor_rcd_test_and_pilot_safe_with_bare_pins():
    fake = _FakeMachine()
    real = sys.modules.get("machine")
    sys.modules["machine"] = fake
    saved = dict(sys.modules)
    try:
        exec(_boot_source(BOARD_FILE), {"__name__": "boot"})  # the HAL fails: no PWM, no ADC here
    finally:
        for k in list(sys.modules):
            if k not in saved:
                del sys.modules[k]
        if real is None:
            del sys.modules["machine"]
        else:
            sys.modules["machine"] = real
    assert (26, 0) in fake.set and (27, 0) in fake.set, fake.set  # coils off (active high)
    assert (4, 0) in fake.set  # RCD test released
    assert (25, 1) in fake.set  # pilot steady high: +12 V, no charging
    assert all(v == 0 for n, v in fake.set if n in (26, 27, 4))  # never an active level


def test_bare_pins_honour_active_low_coils_and_an_inverting_pilot_stage():
    import json

    d = tmpdirs.make("evse-boot")
    try:
        with open(BOARD_FILE) as f:
            b = json.load(f)
        b["contactor"]["active_level"] = 0
        b["rcd"]["test_active_level"] = 0
        b["pilot"]["pwm_invert"] = True
        p = d + "/board.json"
        with open(p, "w") as f:
            json.dump(b, f)
        ns = {"__name__": "boot"}
        exec(_boot_source(p), ns)  # (no machine.Pin on the unix port: nothing driven at import)
        fake = _FakeMachine()
        assert ns["_bare_pins"](fake, [d + "/missing.json", p])
        assert sorted(fake.set) == [(4, 1), (25, 0), (26, 1), (27, 1)]
    finally:
        tmpdirs.remove(d)


def test_a_damaged_installer_board_file_drives_no_pins_rather_than_the_default_boards():
    d = tmpdirs.make("evse-boot")
    try:
        p = d + "/board.json"
        with open(p, "w") as f:
            f.write('{"name": "mine", "contactor": ')  # cut short
        ns = {"__name__": "boot"}
        exec(_boot_source(p), ns)
        fake = _FakeMachine()
        assert ns["_board_files"]() == [p]  # the default board's pins are not this board's
        assert not ns["_bare_pins"](fake, ns["_board_files"]())
        assert fake.set == []
    finally:
        tmpdirs.remove(d)


def test_a_rollback_forgets_the_failed_slots_modules_and_path():
    from firmware import slots

    class _Mod:
        def __init__(self, f):
            self.__file__ = f

    sys.modules["hal.fake_esp32"] = _Mod("/slot_b/hal/fake_esp32.mpy")
    sys.modules["keep_me"] = _Mod("/slot_a/keep_me.mpy")
    sys.path.insert(0, "/slot_b")
    sys.path.insert(0, "/slot_b/lib")
    try:
        slots.forget("b")
        assert "hal.fake_esp32" not in sys.modules and "keep_me" in sys.modules
        assert "/slot_b" not in sys.path and "/slot_b/lib" not in sys.path
    finally:
        sys.modules.pop("keep_me", None)
        sys.modules.pop("hal.fake_esp32", None)


def test_main_arms_the_watchdog_before_the_firmware_is_built_and_a_ctrl_c_meanwhile_leaves_a_repl_window():
    seen = {}

    class _Board:
        data_dir = "/tmp"
        name = "fake"
        wdt = None
        safe_calls = 0

        def wdt_start(self, ms):
            self.wdt = ms

        def safe(self):
            self.safe_calls += 1

    board = _Board()

    class _Firmware:
        def __init__(self, hal, config_path=None):
            seen["wdt_at_build"] = hal.wdt
            raise KeyboardInterrupt  # a deploy's Ctrl-C while the firmware is being built

    class _AppModule:
        Firmware = _Firmware
        MAINTENANCE_WDT_MS = 900000

    with open("main.py") as f:
        src = f.read()
    ns = {"__name__": "main_under_test"}
    exec(src, ns)
    ns["_board"] = lambda: board
    real = sys.modules.get("firmware.app")
    sys.modules["firmware.app"] = _AppModule()
    try:
        ns["main"]()
        raise AssertionError("main() returned")
    except KeyboardInterrupt:
        pass
    finally:
        if real is None:
            del sys.modules["firmware.app"]
        else:
            sys.modules["firmware.app"] = real
    assert seen["wdt_at_build"] == ns["BOOT_WDT_MS"]
    assert board.wdt == 900000 and board.safe_calls == 1

# Where a board imports from after boot.py put the active A/B slot on sys.path.
import sys

from firmware import slots


def _use_with(path):
    saved = sys.path[:]
    try:
        sys.path[:] = path
        slots.use({"active": "a"})
        return sys.path[:]
    finally:
        sys.path[:] = saved


def test_the_active_slot_comes_first_so_its_firmware_is_what_runs():
    got = _use_with(["", ".frozen", "/lib"])
    assert got[0] == "/slot_a", got


def test_a_library_frozen_into_the_image_wins_over_the_slots_copy_in_lib():
    # Stock ESP32 images freeze umqtt.simple: importing the slot's copy too
    # would load a second one into RAM.
    got = _use_with(["", ".frozen", "/lib"])
    assert got.index(".frozen") < got.index("/slot_a/lib") < got.index("/lib"), got


def test_without_frozen_modules_the_slots_lib_still_comes_before_the_flash_lib():
    got = _use_with(["", "/lib"])
    assert got.index("/slot_a/lib") < got.index("/lib") and got[0] == "/slot_a", got


def test_using_the_slot_twice_keeps_one_entry_each():
    saved = sys.path[:]
    try:
        sys.path[:] = ["", ".frozen", "/lib"]
        slots.use({"active": "a"})
        slots.use({"active": "a"})
        assert sys.path.count("/slot_a") == 1 and sys.path.count("/slot_a/lib") == 1, sys.path
    finally:
        sys.path[:] = saved


class _Mod:
    def __init__(self, path):
        self.__file__ = path


def test_firmware_modules_imported_before_the_slot_was_chosen_give_way_to_the_slots():
    # On an image with the firmware frozen, /slots.mpy without /store.mpy
    # takes `firmware.store` from the image before boot.py puts the slot on
    # sys.path; left in sys.modules, the image's firmware package would run
    # instead of the slot's (seen on the emulated esp32 board: slot_b's
    # version in the boot report, the image's version running).
    saved_path, saved_mods = sys.path[:], dict(sys.modules)
    image, mine = _Mod("firmware/store.py"), _Mod("/slot_a/firmware/trace.mpy")
    try:
        sys.path[:] = ["", ".frozen", "/lib"]
        sys.modules["firmware.zz_image"] = image
        sys.modules["firmware.zz_slot"] = mine
        slots.use({"active": "a"})
        assert "firmware.zz_image" not in sys.modules
        assert sys.modules.get("firmware.zz_slot") is mine
    finally:
        sys.path[:] = saved_path
        sys.modules.clear()
        sys.modules.update(saved_mods)

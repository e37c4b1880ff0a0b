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

# heapsize: 96k
# timeout: 20
"""MicroPython behaviour the firmware relies on, checked on the unix port the device tests use."""

import gc
import sys
from array import array

HEAP_LIMIT_BYTES = 96 * 1024  # must match the heapsize header above


def test_runs_on_micropython_not_cpython():
    assert sys.implementation.name == "micropython"


def test_heapsize_header_limits_the_heap():
    gc.collect()
    total = gc.mem_free() + gc.mem_alloc()
    assert total <= HEAP_LIMIT_BYTES, total
    # and most of it is really there to use
    assert total > HEAP_LIMIT_BYTES // 2, total


def test_allocation_larger_than_the_heap_raises_memoryerror():
    try:
        bytearray(HEAP_LIMIT_BYTES * 2)
    except MemoryError:
        return
    raise AssertionError("a buffer twice the heap was allocated")


def test_preallocated_array_is_filled_in_place_without_allocating():
    buf = array("i", (0 for _ in range(64)))
    gc.collect()
    before = gc.mem_alloc()
    for i in range(64):
        buf[i] = i * 1000  # small ints in a typed array: no boxing
    total = 0
    for i in range(64):
        total += buf[i]
    after = gc.mem_alloc()
    assert total == 1000 * (63 * 64 // 2)
    assert after == before, (before, after)


def test_array_stores_signed_32_bit_values_exactly():
    buf = array("i", [0, 0])
    buf[0] = 2**30 - 1
    buf[1] = -(2**30)
    assert buf[0] == 1073741823 and buf[1] == -1073741824


def test_const_folds_to_a_plain_int():
    from micropython import const

    tick_ms = const(10)
    assert tick_ms * 100 == 1000 and type(tick_ms) is int


def test_umqtt_simple_imports_from_lib_without_an_init_file():
    # tools/deps.py installs only lib/umqtt/simple.py; MicroPython imports a
    # package folder that has no __init__.py, so none is added.
    import os

    assert "__init__.py" not in os.listdir("lib/umqtt")
    from umqtt.simple import MQTTClient

    assert MQTTClient.__name__ == "MQTTClient"

"""The simulator's deterministic PRNG step (seeded runs repeat exactly).

An LCG modulo 2**30 with glibc's multiplier reduced mod 2**30: its states
stay small ints on a 32-bit port (an ESP32's word size) too. Shared by the
simulated board (sim/board.py) and its pilot front end (sim/frontend.py).
"""

import micropython
from micropython import const

RNG_MASK = const(0x3FFFFFFF)
LCG_A = const(29773421)  # 1103515245 % 2**30


@micropython.viper
def lcg(r: int) -> int:
    # The next PRNG state, in machine words: r * LCG_A is no small int on a
    # 32-bit port, and a big int would allocate in the tick.
    return (r * LCG_A + 12345) & RNG_MASK

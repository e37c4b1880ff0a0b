"""Reconnect delays with full jitter, shared by the MQTT link and the network.

Owns the back-off rule: the n-th failure in a row waits a uniform random time
in [0, min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2^n)], so a fleet that lost its
broker or access point at the same moment does not come back in one storm.
Never sleeps or touches the network itself: callers wait the time it gives.
"""

from micropython import const

BACKOFF_MIN_MS = const(1000)
BACKOFF_MAX_MS = const(300000)  # 5 min


class Backoff:
    """Reconnect delays with full jitter. Its own small generator (30-bit
    xorshift: small ints on an ESP32) so each device, and each simulated
    device in a test, has an independent, seedable sequence."""

    def __init__(self, seed):
        self._s = (seed & 0x3FFFFFFF) or 1
        self.failures = 0

    def _rand(self):
        s = self._s
        s ^= (s << 7) & 0x3FFFFFFF
        s ^= s >> 9
        s ^= (s << 8) & 0x3FFFFFFF
        self._s = s
        return s

    def next_ms(self):
        n = self.failures
        ceiling = BACKOFF_MAX_MS if n >= 9 else min(BACKOFF_MAX_MS, BACKOFF_MIN_MS << n)
        self.failures = n + 1
        return self._rand() % (ceiling + 1)

    def reset(self):
        self.failures = 0


def seed_for(dev_id, extra=0):
    """30-bit seed from the device id (FNV-1a folded) mixed with `extra`."""
    h = 0x811C9DC5 & 0x3FFFFFFF
    for b in dev_id.encode() if isinstance(dev_id, str) else dev_id:
        h = ((h ^ b) * 0x01000193) & 0x3FFFFFFF
    return h ^ (extra & 0x3FFFFFFF)

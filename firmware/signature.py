"""RSA PKCS#1 v1.5 SHA-256 signature verification, in plain integer arithmetic.

Owns the check that a firmware image was signed by the holder of the private
key whose public half is on the board (tools/sign.py makes both). The whole
encoded message is rebuilt and compared byte for byte (00 01 FF.. 00
DigestInfo digest, RFC 8017 section 8.2.2): nothing of the signature is parsed,
so no malformed padding can slip through a lenient parser. verify() never
raises: anything wrong is False. Uses MicroPython's long ints (pow(s, e, n));
one verify of a 2048-bit key allocates a few KB and is never run in the
control tick. Never imports machine.
"""

from firmware import store

# DER of DigestInfo{ AlgorithmIdentifier{ sha256, NULL }, OCTET STRING(32) }
# (RFC 8017 section 9.2, note 1), followed by the 32 digest bytes.
_SHA256_INFO = b"\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20"
_DIGEST_BYTES = 32
_MIN_BITS = 2048  # below this a key is not worth trusting
_MAX_BITS = 4096  # bounds the work and the heap of one verify
KEY_MAX_BYTES = 2048  # a 4096-bit modulus is 1,024 hex digits


class PublicKey:
    """An RSA public key: modulus n, exponent e, modulus length k in bytes."""

    def __init__(self, n, e):
        self.n = n
        self.e = e
        self.k = (_bits(n) + 7) // 8


def _bits(x):
    n = 0
    while x >= 0x10000:  # whole 16-bit steps keep the loop short
        x >>= 16
        n += 16
    while x:
        x >>= 1
        n += 1
    return n


def parse_key(obj):
    """(PublicKey, None) or (None, why) from {"n": "<hex>", "e": 65537}."""
    if not isinstance(obj, dict):
        return None, "key is not a JSON object"
    n_hex = obj.get("n")
    e = obj.get("e")
    if not isinstance(n_hex, str) or not n_hex or len(n_hex) > _MAX_BITS // 4:
        return None, "key n is not a hex string of at most %d bits" % _MAX_BITS
    try:
        n = int(n_hex, 16)
    except ValueError:
        return None, "key n is not hex"
    if not isinstance(e, int) or isinstance(e, bool) or e < 3 or e >= 1 << 30 or not e & 1:
        return None, "key e must be an odd integer from 3 below 2^30"
    bits = _bits(n)
    if bits < _MIN_BITS or bits > _MAX_BITS or not n & 1:
        return None, "key n must be an odd modulus of %d to %d bits" % (_MIN_BITS, _MAX_BITS)
    return PublicKey(n, e), None


def load_key(path):
    """(PublicKey, None), or (None, why) when the file is missing, too big,
    not JSON or not a usable key. Never raises."""
    obj, err = store.load_json(path, KEY_MAX_BYTES)
    if obj is None:
        return None, err or "no key file %s" % path
    key, err = parse_key(obj)
    if key is None:
        return None, "%s: %s" % (path, err)
    return key, None


def verify(digest, sig, key):
    """True only when sig is key's PKCS#1 v1.5 signature of the SHA-256
    digest (32 bytes). Never raises: bad input of any kind is False."""
    try:
        k = key.k
        if len(digest) != _DIGEST_BYTES or len(sig) != k:
            return False
        s = int.from_bytes(bytes(sig), "big")
        if s >= key.n:
            return False
        em = pow(s, key.e, key.n).to_bytes(k, "big")
        pad = k - 3 - len(_SHA256_INFO) - _DIGEST_BYTES
        if pad < 8:
            return False
        want = b"\x00\x01" + b"\xff" * pad + b"\x00" + _SHA256_INFO + bytes(digest)
        diff = 0
        for i in range(k):  # every byte, whatever the first difference
            diff |= em[i] ^ want[i]
        return diff == 0
    except Exception:  # MemoryError, a key of the wrong shape: never a yes
        return False

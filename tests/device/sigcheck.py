# Run by tests/host/test_signature.py on each MicroPython interpreter:
#     micropython tests/device/sigcheck.py VECTORS.json
# VECTORS.json (made by the host test with tools/sign.py) holds the key file
# paths and cases {"name", "digest" hex, "sig" hex, "key"}; this prints one
# JSON object: {"results": {name: bool}, "key_errors": {path: text or None},
# "verify_us": [microseconds of each timed verify], "heap_bytes": n}.
import gc
import json
import sys
import time

from firmware import signature


def main(path):
    with open(path) as f:
        vec = json.load(f)
    keys, errs = {}, {}
    for name, p in vec["keys"].items():
        k, err = signature.load_key(p)
        keys[name] = k
        errs[name] = err
    out = {}
    for c in vec["cases"]:
        key = keys.get(c["key"])
        out[c["name"]] = signature.verify(bytes.fromhex(c["digest"]), bytes.fromhex(c["sig"]), key)
    good = vec["cases"][0]
    d, s, k = bytes.fromhex(good["digest"]), bytes.fromhex(good["sig"]), keys[good["key"]]
    times = []
    gc.collect()
    before = gc.mem_alloc()
    gc.disable()
    t = time.ticks_us()
    signature.verify(d, s, k)
    heap = gc.mem_alloc() - before
    gc.enable()
    times.append(time.ticks_diff(time.ticks_us(), t))
    for _ in range(vec.get("timed", 5)):
        gc.collect()
        t = time.ticks_us()
        signature.verify(d, s, k)
        times.append(time.ticks_diff(time.ticks_us(), t))
    print(json.dumps({"results": out, "key_errors": errs, "verify_us": times, "heap_bytes": heap}))


main(sys.argv[1])

"""firmware/signature.py on both MicroPython interpreters, with keys and
signatures made here by tools/sign.py (openssl): a good signature verifies,
every damaged one (wrong key, flipped bit, truncated, wrong length, wrong
digest) is False, and damaged key files are refused with a reason. Also
tools/sign.py itself and the image format of firmware/fwimage.py.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
SIGN = REPO / "tools" / "sign.py"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sign  # noqa: E402
from mpscript import run_json  # noqa: E402

from firmware import fwimage  # noqa: E402


def _sign_cli(*args, cwd=None):
    return subprocess.run([sys.executable, str(SIGN), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs made by tools/sign.py keygen: (dir, {name: (pem, json)})."""
    d = tmp_path_factory.mktemp("sigkeys")
    out = {}
    for name in ("good", "other"):
        pem, pub = d / (name + ".pem"), d / (name + ".json")
        r = _sign_cli("keygen", "--private", str(pem), "--public", str(pub))
        assert r.returncode == 0, r.stderr
        out[name] = (pem, pub)
    return d, out


def _run_mp(exe, vectors_path):
    return run_json(exe, "sigcheck.py", vectors_path)


def _vectors(d, keys):
    """Cases: (name, digest, sig, key name); the first is the good one."""
    image = os.urandom(5000)
    digest = hashlib.sha256(image).digest()
    good_pem = keys["good"][0]
    sig = sign.sign(good_pem, image)
    assert len(sig) == 256
    other_sig = sign.sign(keys["other"][0], image)
    flipped = [bytearray(sig) for _ in range(3)]
    flipped[0][0] ^= 0x01
    flipped[1][128] ^= 0x80
    flipped[2][255] ^= 0x01
    n = int(json.loads(keys["good"][1].read_text())["n"], 16)
    cases = [
        ("good", digest, sig, "good"),
        ("wrong_key", digest, sig, "other"),
        ("signed_by_other_key", digest, other_sig, "good"),
        ("flipped_first_bit", digest, bytes(flipped[0]), "good"),
        ("flipped_middle_bit", digest, bytes(flipped[1]), "good"),
        ("flipped_last_bit", digest, bytes(flipped[2]), "good"),
        ("truncated_sig", digest, sig[:-1], "good"),
        ("empty_sig", digest, b"", "good"),
        ("sig_one_byte_longer", digest, b"\x00" + sig, "good"),
        ("sig_equal_to_modulus", digest, n.to_bytes(256, "big"), "good"),
        ("all_ones_sig", digest, b"\xff" * 256, "good"),
        ("zero_sig", digest, b"\x00" * 256, "good"),
        ("other_digest", hashlib.sha256(image + b"x").digest(), sig, "good"),
        ("digest_flipped_bit", bytes([digest[0] ^ 1]) + digest[1:], sig, "good"),
        ("short_digest", digest[:31], sig, "good"),
        ("sha1_length_digest", digest[:20], sig, "good"),
        ("no_key", digest, sig, "missing"),
    ]
    # A signature over the same digest with a SHA-1 DigestInfo is no SHA-256 signature.
    sha1_sig = subprocess.run(
        ["openssl", "dgst", "-sha1", "-sign", str(good_pem)], input=image, capture_output=True, check=True
    ).stdout
    cases.append(("sha1_signature", hashlib.sha1(image).digest() + b"\x00" * 12, sha1_sig, "good"))
    bad_keys = {
        "not_json": b"{n: 1",
        "not_hex": json.dumps({"n": "zz" * 256, "e": 65537}).encode(),
        "short_modulus": json.dumps({"n": "c" + "f" * 255, "e": 65537}).encode(),
        "even_exponent": json.dumps({"n": "%x" % n, "e": 65536}).encode(),
        "float_exponent": json.dumps({"n": "%x" % n, "e": 65537.0}).encode(),
        "list": b"[1, 2]",
        "huge": b" " * 3000 + json.dumps({"n": "%x" % n, "e": 65537}).encode(),
    }
    key_paths = {"good": str(keys["good"][1]), "other": str(keys["other"][1]), "missing": str(d / "nope.json")}
    for name, data in bad_keys.items():
        p = d / ("bad_%s.json" % name)
        p.write_bytes(data)
        key_paths["bad_" + name] = str(p)
    vec = {
        "keys": key_paths,
        "cases": [{"name": c[0], "digest": c[1].hex(), "sig": c[2].hex(), "key": c[3]} for c in cases],
        "timed": 5,
    }
    path = d / "vectors.json"
    path.write_text(json.dumps(vec))
    return path, [c[0] for c in cases], list(bad_keys)


@pytest.fixture(scope="module")
def results(keys):
    d, k = keys
    return d, _vectors(d, k)


def test_good_signature_verifies_and_every_damaged_one_is_refused(results, mp_interpreter):
    d, (path, names, _bad) = results
    out = _run_mp(mp_interpreter[1], path)["results"]
    assert set(out) == set(names)
    assert out["good"] is True
    refused = {n: v for n, v in out.items() if n != "good"}
    assert refused and all(v is False for v in refused.values()), refused


def test_load_key_takes_the_sign_tool_json_and_refuses_damaged_key_files_with_a_reason(results, mp_interpreter):
    d, (path, _names, bad) = results
    errs = _run_mp(mp_interpreter[1], path)["key_errors"]
    assert errs["good"] is None and errs["other"] is None
    assert errs["missing"]
    for name in bad:
        assert isinstance(errs["bad_" + name], str) and errs["bad_" + name], name


def test_benchmark_verify_time_and_heap(results, mp_interpreter):
    d, (path, _names, _bad) = results
    r = _run_mp(mp_interpreter[1], path)
    us = sorted(r["verify_us"])
    print(
        "\nsignature.verify RSA-2048 on %s: median %d us, max %d us, heap %d bytes per verify"
        % (mp_interpreter[0], us[len(us) // 2], us[-1], r["heap_bytes"])
    )
    assert len(us) == 6 and r["heap_bytes"] > 0


def test_sign_tool_signature_is_the_openssl_one_and_openssl_verifies_it(keys, tmp_path):
    _d, k = keys
    f = tmp_path / "image.bin"
    f.write_bytes(b"firmware" * 1000)
    r = _sign_cli("sign", "--private", str(k["good"][0]), str(f))
    assert r.returncode == 0, r.stderr
    pub_pem = tmp_path / "pub.pem"
    subprocess.run(
        ["openssl", "rsa", "-in", str(k["good"][0]), "-pubout", "-out", str(pub_pem)], check=True, capture_output=True
    )
    v = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(pub_pem), "-signature", str(f) + ".sig", str(f)],
        capture_output=True,
    )
    assert v.returncode == 0, v.stderr
    pub = json.loads(k["good"][1].read_text())
    assert pub["e"] == 65537 and len(pub["n"]) == 512


def test_pack_writes_header_with_length_digest_and_signature_then_the_image(keys, tmp_path):
    _d, k = keys
    f = tmp_path / "image.bin"
    data = os.urandom(3000)
    f.write_bytes(data)
    out = tmp_path / "image.evfw"
    r = _sign_cli("pack", "--private", str(k["good"][0]), str(f), "--out", str(out))
    assert r.returncode == 0, r.stderr
    blob = out.read_bytes()
    n, err = fwimage.sig_bytes(blob[: fwimage.FIXED_BYTES])
    assert err is None and n == 256
    size, digest, sig = fwimage.fields(blob[: fwimage.FIXED_BYTES + n])
    assert size == len(data) and digest == hashlib.sha256(data).digest()
    assert sig == sign.sign(k["good"][0], data)
    assert blob[fwimage.FIXED_BYTES + n :] == data


def test_sign_tool_fails_with_exit_1_and_a_message(tmp_path):
    r = _sign_cli("sign", "--private", str(tmp_path / "none.pem"), str(tmp_path / "none.bin"))
    assert r.returncode == 1 and "cannot read" in r.stderr
    (tmp_path / "x.bin").write_bytes(b"x")
    r = _sign_cli("sign", "--private", str(tmp_path / "none.pem"), str(tmp_path / "x.bin"))
    assert r.returncode == 1 and "openssl" in r.stderr
    (tmp_path / "k.pem").write_text("exists")
    r = _sign_cli("keygen", "--private", str(tmp_path / "k.pem"), "--public", str(tmp_path / "k.json"))
    assert r.returncode == 1 and "exists" in r.stderr
    assert _sign_cli("frobnicate").returncode == 2

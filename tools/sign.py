#!/usr/bin/env python3
"""Firmware signing keys and signed images, with the `openssl` command line.

    .venv/bin/python tools/sign.py keygen --private KEY.pem --public KEY.json
    .venv/bin/python tools/sign.py pubkey --private KEY.pem --public KEY.json
    .venv/bin/python tools/sign.py sign --private KEY.pem IMAGE [--out IMAGE.sig]
    .venv/bin/python tools/sign.py pack --private KEY.pem IMAGE --out IMAGE.evfw

keygen  a new RSA-2048 key pair: the private key as PEM (mode 0600; it never
        goes near a board) and its public half as the JSON the board holds,
        {"n": "<hex modulus>", "e": 65537} (firmware/signature.py load_key).
pubkey  the public JSON of an existing private key.
sign    the raw signature of a file: RSA PKCS#1 v1.5 over its SHA-256
        (`openssl dgst -sha256 -sign`), 256 bytes for RSA-2048.
pack    the signed image a charger downloads (UpdateFirmware): the header of
        firmware/fwimage.py (magic, length, SHA-256, signature), then the file.

Exit codes: 0 done, 1 failure (openssl missing or failing, unreadable file,
bad key), 2 usage error. Every failure says what went wrong on stderr.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from firmware import fwimage  # noqa: E402  (the one definition of the format)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
KEY_BITS = 2048


class SignError(Exception):
    pass


def _openssl(*args, data=None):
    exe = shutil.which("openssl")
    if exe is None:
        raise SignError("openssl not found on PATH (Debian: apt-get install openssl)")
    r = subprocess.run([exe, *args], input=data, capture_output=True, check=False)
    if r.returncode != 0:
        raise SignError("openssl %s failed: %s" % (args[0], r.stderr.decode(errors="replace").strip()))
    return r.stdout


def keygen(private, bits=KEY_BITS):
    """Write a new RSA private key (PEM, mode 0600) to private."""
    private = Path(private)
    if private.exists():
        raise SignError("%s exists; not overwriting a private key" % private)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:%d" % bits, "-out", str(private))
    except SignError:
        private.unlink()
        raise


def public_key(private):
    """{"n": hex, "e": int} of a private key file."""
    text = _openssl("rsa", "-in", str(private), "-noout", "-text").decode()
    m = re.search(r"publicExponent: (\d+)", text)
    mod = _openssl("rsa", "-in", str(private), "-noout", "-modulus").decode().strip()
    if m is None or not mod.startswith("Modulus="):
        raise SignError("%s is not an RSA private key" % private)
    return {"n": mod[len("Modulus=") :].lower(), "e": int(m.group(1))}


def write_public(private, public):
    Path(public).write_text(json.dumps(public_key(private)) + "\n")


def sign(private, data):
    """PKCS#1 v1.5 SHA-256 signature of data (bytes) with the private key file."""
    return _openssl("dgst", "-sha256", "-sign", str(private), data=data)


def pack(private, image):
    """The signed image (fwimage header + image bytes)."""
    return fwimage.header(len(image), hashlib.sha256(image).digest(), sign(private, image)) + image


def _write_atomic(path, data):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Make firmware signing keys and signed images (docs/ocpp.md, 'Firmware images and keys').",
        epilog="exit codes: 0 done, 1 failure, 2 usage error",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen", help="new RSA-2048 key pair: private PEM and the board's public JSON")
    k.add_argument("--private", required=True, metavar="KEY.pem")
    k.add_argument("--public", required=True, metavar="KEY.json")
    k = sub.add_parser("pubkey", help="the board's public JSON of a private key")
    k.add_argument("--private", required=True, metavar="KEY.pem")
    k.add_argument("--public", required=True, metavar="KEY.json")
    s = sub.add_parser("sign", help="raw signature (PKCS#1 v1.5, SHA-256) of a file")
    s.add_argument("--private", required=True, metavar="KEY.pem")
    s.add_argument("file")
    s.add_argument("--out", help="signature file (default FILE.sig)")
    s = sub.add_parser("pack", help="signed image: header (length, SHA-256, signature) + file")
    s.add_argument("--private", required=True, metavar="KEY.pem")
    s.add_argument("file")
    s.add_argument("--out", required=True, help="the signed image to serve")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.cmd == "keygen":
            keygen(args.private)
            write_public(args.private, args.public)
        elif args.cmd == "pubkey":
            write_public(args.private, args.public)
        else:
            try:
                data = Path(args.file).read_bytes()
            except OSError as e:
                raise SignError("cannot read %s: %s" % (args.file, e.strerror)) from None
            if args.cmd == "sign":
                _write_atomic(args.out or args.file + ".sig", sign(args.private, data))
            else:
                if not 0 < len(data) <= fwimage.MAX_IMAGE_BYTES:
                    raise SignError("%s: %d bytes, must be 1..%d" % (args.file, len(data), fwimage.MAX_IMAGE_BYTES))
                _write_atomic(args.out, pack(args.private, data))
    except SignError as e:
        print("sign: %s" % e, file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""The signed firmware image format: one header, then the image.

Owns the layout every signed image has on the wire (tools/sign.py writes it,
the OCPP firmware update reads it, docs/ocpp.md describes it):

    offset  size  field
    0       8     magic b"EVSEFW1\\n"
    8       4     image length in bytes, big-endian
    12      2     signature length in bytes, big-endian (256 for RSA-2048)
    14      2     zero (reserved)
    16      32    SHA-256 of the image
    48      S     RSA PKCS#1 v1.5 signature of that SHA-256 (firmware/signature.py)
    48+S    N     the image

The header travels with the image, so one download carries both and the
length is known before the first image byte (begin(size) of the installer).
Never imports machine.
"""

MAGIC = b"EVSEFW1\n"
FIXED_BYTES = 48  # magic + lengths + digest, before the signature
MAX_SIG_BYTES = 512  # RSA-4096
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # larger than any ESP32 app partition


def header(size, digest, sig):
    """The header bytes for an image of size bytes with this digest and signature."""
    if len(digest) != 32 or not 0 < len(sig) <= MAX_SIG_BYTES or not 0 < size <= MAX_IMAGE_BYTES:
        raise ValueError("bad image header fields")
    return MAGIC + size.to_bytes(4, "big") + len(sig).to_bytes(2, "big") + b"\x00\x00" + bytes(digest) + bytes(sig)


def sig_bytes(fixed):
    """(signature length, None) from the first FIXED_BYTES of a download, or
    (0, why) when they are not a header of this format."""
    if len(fixed) < FIXED_BYTES or fixed[:8] != MAGIC:
        return 0, "not a signed image (bad magic)"
    n = int.from_bytes(fixed[12:14], "big")
    if not 0 < n <= MAX_SIG_BYTES or fixed[14:16] != b"\x00\x00":
        return 0, "bad signature length in the image header"
    return n, None


def fields(head):
    """(image size, sha256 digest, signature) of a whole header (FIXED_BYTES +
    signature length), or None when it is not valid."""
    n, err = sig_bytes(head)
    if err is not None or len(head) != FIXED_BYTES + n:
        return None
    size = int.from_bytes(head[8:12], "big")
    if not 0 < size <= MAX_IMAGE_BYTES:
        return None
    return size, bytes(head[16:48]), bytes(head[48:])

# Scratch directories for device tests: a fresh flash directory per board.


def make(prefix):
    """A new, empty directory /tmp/<prefix>-<random>."""
    import os

    d = "/tmp/%s-%s" % (prefix, "".join("%02x" % b for b in os.urandom(6)))
    os.mkdir(d)
    return d


def remove(d):
    """Remove d and everything below it."""
    import os

    for name in os.listdir(d):
        p = d + "/" + name
        try:
            os.remove(p)
        except OSError:
            remove(p)
    os.rmdir(d)

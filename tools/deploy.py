#!/usr/bin/env python3
"""Deploy the firmware to a MicroPython board: A/B slots, verified, with rollback.

    .venv/bin/python tools/deploy.py --port /dev/ttyUSB0 [--dry-run] [--force] [--board-file FILE]
    .venv/bin/python tools/deploy.py --port PORT --image [FILE] [--sign-key KEY.pem]

The command line; docs/deploy.md has the board layout and the reasoning. Both
ways start alike (tools/deploy_board.py): connect, interrupt the firmware with
Ctrl-C (its exception path opens the contactor and sets the pilot steady)
without a soft reset, refuse while a session charges (state C2/D2 or
contactor on) unless --force, refuse always if the contactor still reads
closed, read the board's info. Then:
- by default the firmware's .mpy files go into the inactive A/B slot,
  verified, and /slot.json switches to it (tools/deploy_slots.py);
- with --image [FILE] a whole firmware image (MicroPython with the firmware
  frozen) goes into the inactive OTA app partition, verified by the board
  and set to boot pending verify (tools/deploy_image.py).
The board is reset and watched as it comes up.

Exit codes: 0 done (or nothing to do), 1 usage/build error, 2 no board,
3 board busy, 4 wrong bytecode version, 5 filesystem full, 6 hash mismatch
after upload (nothing switched), 7 the new version did not come up (the board
rolled back or never confirmed it), 8 the board's MicroPython is too old for
the ESP32 driver (nothing written). --image: 3 also while the running image
is not yet marked valid, 5 the image is larger than the partition, 6 the board
refused it (hash or signature). The last line is always
"N files, M bytes uploaded".
"""

import argparse
import sys

from deploy_board import (
    EXIT_BUSY,
    EXIT_BYTECODE,
    EXIT_ERROR,
    EXIT_FULL,
    EXIT_HASH,
    EXIT_NO_BOARD,
    EXIT_NOT_UP,
    EXIT_OK,
    EXIT_OLD,
    REPO,
    WATCH_S,
    DeployError,
)
from deploy_image import ImageDeploy
from deploy_slots import SlotDeploy

# The exit codes are this command's contract (scripts and tests read them here).
__all__ = ["main", "parse_args", "EXIT_OK", "EXIT_ERROR", "EXIT_NO_BOARD", "EXIT_BUSY", "EXIT_BYTECODE", "EXIT_FULL",
           "EXIT_HASH", "EXIT_NOT_UP", "EXIT_OLD"]  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit 2 means "no board" here
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, "%s: error: %s\n" % (self.prog, message))


def parse_args(argv):
    p = _Parser(
        description="Deploy the firmware to a MicroPython board into the inactive A/B slot, verify it "
        "and switch; the board falls back to the previous slot if the new one fails to boot 3 times "
        "or is never marked good. See docs/deploy.md.",
        epilog="exit codes: 0 ok, 1 usage/build error, 2 no board, 3 board busy (charging), "
        "4 wrong bytecode version, 5 filesystem full, 6 hash mismatch after upload, "
        "7 the new version did not come up, 8 MicroPython on the board too old",
    )
    p.add_argument("--port", required=True, help="serial device (/dev/ttyUSB0) or pyserial URL (socket://host:port)")
    p.add_argument("--dry-run", action="store_true", help="show what would be uploaded; write nothing")
    p.add_argument("--force", action="store_true", help="deploy even while a session is charging (it is stopped)")
    p.add_argument("--board-file", metavar="FILE", help="board description (hal/boards/*.json) to install as /data/board.json")
    p.add_argument("--update-key", metavar="PUB.json", help="public key (tools/sign.py pubkey) to install as "
                   "/data/update_key.json: from then on the board takes only images signed for it")  # fmt: skip
    p.add_argument("--source", default=str(REPO), help="tree to deploy (holds firmware/, hal/, boot.py, main.py); default: this checkout")
    p.add_argument("--watch", type=float, default=WATCH_S, metavar="S", help="seconds to watch the board come up (default %(default)s)")
    p.add_argument("--image", nargs="?", const="build", metavar="FILE",
                   help="install a whole firmware image (the firmware frozen into MicroPython) into the inactive "
                   "OTA app partition instead of the .mpy slots; without FILE it is built (the emulated board's: "
                   "tools/mpbuild.py image); an ESP32's is built with ESP-IDF (docs/deploy.md)")  # fmt: skip
    p.add_argument("--sign-key", metavar="KEY.pem", help="--image: sign the image with this private key "
                   "(tools/sign.py); needed when the board has /data/update_key.json")  # fmt: skip
    return p.parse_args(argv)


def main(argv=None, before_write=None):
    args = parse_args(argv)
    d = (SlotDeploy if args.image is None else ImageDeploy)(args, before_write=before_write)
    try:
        code = d.run()
    except DeployError as e:
        print("deploy: %s" % e, file=sys.stderr)
        code = e.code
    print("%d files, %d bytes uploaded" % (d.files, d.bytes))
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())

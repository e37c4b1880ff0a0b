"""The emulated board's bootloader over its two OTA app partitions, for
tools/simboard.py (the ESP32-faithful interpreter, unless --no-ota).

The partitions are files in the board's flash folder (FLASH/.ota: ota_0.bin,
ota_1.bin, otadata.json, boot.json), kept by sim/ota.py, which the board's
own update calls use too. An image is an interpreter program: at each hard
reset the bootloader chooses the partition (ESP-IDF's rollback: an image
still pending verify from the last boot is aborted, the other one boots) and
runs the program in it; a soft reset runs the same image again. An image that
does not start at all is marked invalid and never booted again.

Owns: which partition runs, flashing a fresh board's ota_0.
Never does: talk on the serial line (beyond the bootloader's own message) or
run board code.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sim import ota  # noqa: E402  (the partitions' files: one definition for the board and its bootloader)

OTA_DIR = ota.OTA_DIR_NAME  # in the flash folder; the board sees it as /.ota (main.py)


class Bootloader:
    def __init__(self, flash, log, console):
        """flash: the board's flash folder; log(msg): simboard's -v log;
        console(bytes): what the bootloader prints on the serial line."""
        self.dir = os.path.join(flash, OTA_DIR)
        self.log = log
        self.console = console
        self.image = None  # the label running (None: not chosen yet)

    def flash_fresh(self, image_file, reflash=False):
        """A fresh board (or reflash): image_file in ota_0, valid, as esptool
        flashes one; a flash folder that has partitions keeps its image."""
        if reflash or ota.read_otadata(self.dir) is None:
            ota.flash(self.dir, image_file)
            self.log("flashed %s into %s/ota_0" % (image_file, self.dir))

    def boot(self, run, hard, rollback=None):
        """Start the image: at a hard reset (or when none was chosen yet) the
        partition is chosen first (rollback: the label that failed, to
        record). run(program) starts it; an OSError from it means the image
        is not a program at all: marked failed, the other partition boots.
        Returns what run returned, or None when no partition is bootable."""
        while True:
            if hard or self.image is None:
                self.image = ota.select(self.dir, rollback)
                if self.image is None:
                    return None
                self.log("bootloader: booting %s" % self.image)
            program = ota.part_path(self.dir, self.image)
            try:
                os.chmod(program, 0o755)
                return run(program)
            except OSError as e:  # not a program at all (exec format error)
                rollback = self.not_started("%s: %s" % (self.image, e))
                hard = True

    def not_started(self, why):
        """The image in the running partition did not start: the bootloader
        never boots it again (an ESP32's checks an image before it jumps to
        it); returns its label, the rollback to record."""
        label = self.image
        self.log("bootloader: %s did not start: %s" % (label, why))
        self.console(b"\r\nsimboard: the image in %s did not start; booting the other app partition\r\n"
                     % label.encode())  # fmt: skip
        ota.failed(self.dir, label)
        self.image = None
        return label

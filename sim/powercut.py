"""Power cuts during a charge on the simulated board, for the checkpoint ring
(firmware/nvlog.py): its specifications (tests/device/test_nvlog.py) and its
measures (tools/bench_mp.py nvlog) build the same board here.

The board: the firmware on a SimBoard whose flash is a folder (the
filesystem's files and the NOR checkpoint area, sim/nor.py, which writes
through to its image there), an EV that draws 32 A on 3 phases and a charger
configured for 32 A: 22 kW, a checkpoint step every ~8 s on the default
64 KB area. A copy of that folder between two ticks is what a power cut at
that moment leaves; the same board built on the copy is the boot after it,
which closes the interrupted session from what survived.

Imports the firmware: never imported by the board itself. Never deployed.
"""

from firmware.app import Firmware
from sim.board import SimBoard

CFG = {"max_current_a": 32}  # 3 x 32 A x 230 V = 22 kW


def board(data_dir, nvlog_kb=64, **sim_kw):
    """(sim, fw): the firmware booted on a board with its flash in data_dir
    and a checkpoint area of nvlog_kb (0: none), the 32 A EV unplugged
    (sim.set_ev("C") starts the charge). sim_kw: more SimBoard options."""
    sim = SimBoard(ev_draw_a=32, data_dir=data_dir, nvlog_kb=nvlog_kb, **sim_kw)
    return sim, Firmware(sim, CFG)


def copy_flash(src, dst):
    """Copy the flash folder src to the new folder dst as it is now: what a
    power cut at this moment leaves (every file the firmware wrote is closed
    between ticks). In pieces: a 64 KB image does not fit a 112 KB heap twice."""
    import os

    os.mkdir(dst)
    buf = bytearray(1024)
    for name in os.listdir(src):
        with open(src + "/" + name, "rb") as f, open(dst + "/" + name, "wb") as g:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                g.write(buf if n == len(buf) else buf[:n])


def power_loss_records(fw):
    """The journal's records of sessions a power cut ended, as fw booted."""
    return [r for r in fw.journal.pending() if r["reason"] == "power_loss"]

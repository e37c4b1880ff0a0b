"""Which firmware image runs, whether the bootloader rolled the last one back,
and marking the running one valid.

Owns the board's note of the image firmware/update.py installed (NOTE_FILE,
under the board's data_dir): {"to": label set to boot or None, "from",
"sha256", "version", "rollback": text or None}. An image set to boot that is
not the one running at the next boot was rolled back by the bootloader (an
ESP32 under MicroPython has no call that says so); report() notices it once
and keeps the text until the next install. Used at every boot (main.py's
`image:` line that tools/deploy.py --image watches, the MQTT boot event) and
once after HEALTHY_AFTER ticks (mark_valid(), firmware/app.py); kept apart
from the Installer so that a boot loads only this much.

Never raises; never runs in the control tick; never imports machine.
"""

from firmware import store

NOTE_FILE = "ota.json"  # under board.data_dir
_NOTE_MAX_BYTES = 512

_report = None  # this boot's report, computed once


def _note_path(board):
    return board.data_dir + "/" + NOTE_FILE


def _read_note(board):
    note, _ = store.load_json(_note_path(board), _NOTE_MAX_BYTES)
    return note if isinstance(note, dict) else None


def write_note(board, note):
    import json

    store.write(_note_path(board), json.dumps(note))


def report(board):
    """{"partition": running label, "state": "valid"|"pending"|"unknown",
    "rollback": None or "<label> (version v, sha256 abc...) did not confirm:
    running <label>"}, or None on a board without OTA partitions. The first
    call of a boot notices a rollback and records it in the note; later calls
    return the same (as of the last mark_valid()), each a copy of its own: a
    queued boot event keeps what the boot saw. Never raises."""
    global _report
    if _report is not None:
        return dict(_report)
    try:
        info = board.ota_info()
        if info is None:
            return None
        note = _read_note(board) or {}
        rollback = note.get("rollback")
        to = note.get("to")
        if to is not None and to != info["running"]:
            rollback = "%s (version %s, sha256 %s) did not confirm: running %s" % (
                to, note.get("version"), str(note.get("sha256"))[:12], info["running"])
            note["to"] = None
            note["rollback"] = rollback
            write_note(board, note)
            print("update: rollback:", rollback)
        state = info["state"]
        if state == "unknown" and to is not None and to == info["running"]:
            state = "pending"  # installed, not yet marked valid (an ESP32 cannot say so itself)
        _report = {"partition": info["running"], "state": state, "rollback": rollback}
    except Exception as e:
        print("update: report failed:", repr(e))
        _report = None
    return None if _report is None else dict(_report)


def mark_valid(board):
    """The firmware ran healthily (firmware/app.py, with slots.mark_good()):
    cancel the bootloader's rollback unless the board says the image is
    already valid. Never raises."""
    try:
        info = board.ota_info()
        if info is None or info["state"] == "valid":
            return
        board.ota_mark_valid()
        note = _read_note(board)
        if note and note.get("to") == info["running"]:
            note["to"] = None
            write_note(board, note)
        if _report is not None:
            _report["state"] = "valid"
        print("update: image in %s marked valid" % info["running"])
    except Exception as e:
        print("update: mark_valid failed:", repr(e))

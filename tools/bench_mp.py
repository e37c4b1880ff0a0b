"""MicroPython-side measurements for tools/bench.py and `tools/rig.py calibrate`.

    MICROPYPATH=<repo>:<repo>/lib micropython tools/bench_mp.py MODE [ARGS]

Runs on the unix port against the simulated board (sim/board.py) and the real
firmware (firmware/app.py). Each mode prints one JSON object on its last line:

    tick [WARM_S] [N]        control-tick time (us) and heap bytes per tick while
                             charging at 16 A x 3 (gc disabled while measuring)
    session LOAD MINUTES     one charging session: metered vs true energy, flash
                             writes (counted by a VFS wrapper), simulated seconds
                             per wall second. LOAD: 16a3, 32a3, 80a3, 6a1n
    mqtt HOST PORT N         QoS 1 publish round trips with the link's own client
                             (firmware.link) on hal/net.py, and post-to-PUBACK
                             latency as the loop sees it through Link
    nvlog MINUTES CUTS       the checkpoint ring: energy lost by power cuts at CUTS
                             random moments of a 22 kW charge, with and without
                             the area; the timed (esp32 profile) tick with a
                             checkpoint program against the others
    blackhole HOST PORT S    the longest Firmware.tick() (wall ms) while the link
                             talks to a broker that never answers, for S seconds
    pilot N                  pilot misread rates: N readings per state (A-D) and
                             duty (10, 50, 96 %) through the ESP32 front-end model
                             (sim/frontend.py), phase-classified and with the
                             older unsynchronised split; false diode faults and
                             unseen low levels of a healthy diode
    calibrate DIR ERR_PM REF_A MINUTES
                             meter with a CT reading ERR_PM per mille high, then
                             store per-channel gains in DIR/cal.json from a known
                             REF_A load, then meter again with a fresh boot

Never prints a constant: every figure comes from a run made here.
"""

import gc
import json
import os
import sys
import time

import vfs

from firmware.app import CAL_FILE, Firmware
from firmware.facts import TICK_MS
from sim import powercut
from sim.board import SimBoard
from sim.scenario import _fresh_dir, _remove_tree  # one run's flash directory


# --- counting flash: a VFS that forwards to the host directory and counts writes ---
class CountingFS:
    """Mounted at a path (the board's data_dir); forwards every call to the
    host directory `root` and counts files opened for writing, bytes written,
    renames and removes. (VfsPosix(root).rename is not used: in v1.29 it
    fails with ENOENT, so this class joins the root itself.)"""

    def __init__(self, root):
        self._v = vfs.VfsPosix()
        self._r = root
        self.opens = 0
        self.bytes = 0
        self.renames = 0
        self.removes = 0

    def writes(self):
        return self.opens + self.renames + self.removes

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        f = self._v.open(self._r + path, mode)
        if "w" in mode or "a" in mode or "+" in mode:
            self.opens += 1
            return _CountingFile(f, self)
        return f

    def rename(self, a, b):
        self.renames += 1
        return self._v.rename(self._r + a, self._r + b)

    def remove(self, p):
        self.removes += 1
        return self._v.remove(self._r + p)

    def stat(self, p):
        return self._v.stat(self._r + p)

    def mkdir(self, p):
        return self._v.mkdir(self._r + p)

    def rmdir(self, p):
        return self._v.rmdir(self._r + p)

    def ilistdir(self, p):
        return self._v.ilistdir(self._r + p)

    def statvfs(self, p):
        return self._v.statvfs(self._r + p)

    def chdir(self, p):
        pass

    def getcwd(self):
        return "/"


class _CountingFile:
    def __init__(self, f, fs):
        self._f = f
        self._fs = fs

    def write(self, b):
        n = self._f.write(b)
        self._fs.bytes += n
        return n

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def _pct(sorted_list, q):
    return sorted_list[min(len(sorted_list) - 1, len(sorted_list) * q // 100)]


def _run_ticks(fw, sim, n):
    for _ in range(n):
        fw.tick()
        sim.wait_tick(TICK_MS)


# --- tick: time and allocation of the control tick ----------------------------------
def mode_tick(warm_s=40, n=3000):
    d = _fresh_dir()
    fs = CountingFS(d)
    mnt = d + "-m"
    vfs.mount(fs, mnt)
    try:
        # the checkpoint area is a partition, not a file: outside the counted filesystem
        sim = SimBoard(data_dir=mnt, ev_draw_a=16, pp=220, nvlog_path=d + "/nvlog.img")
        fw = Firmware(sim, {"max_current_a": 32})
        sim.set_ev("B")
        _run_ticks(fw, sim, 100)
        sim.set_ev("C")
        _run_ticks(fw, sim, warm_s * 1000 // TICK_MS)
        ch = fw.charger
        if not ch.contactor_on or fw.meter.max_ma() < 15000:
            raise RuntimeError("not charging at 16 A after warm-up: %s %r" % (ch.state, fw.meter.i_ma))
        us = []
        us_meter = []
        alloc_total = 0
        alloc_ticks = []  # (index, bytes, meter tick?) of ticks without a flash write
        flash_ticks = 0
        flash_alloc = 0
        nv_ticks = 0  # ticks that programmed a checkpoint record (counted in the figures above)
        nor = sim.nor
        ticks_us = time.ticks_us
        ticks_diff = time.ticks_diff
        mem_alloc = gc.mem_alloc
        gc.collect()
        gc.disable()
        try:
            for i in range(n):
                meter_tick = fw.ticks % 10 == 0
                w0 = fs.writes()
                p0 = nor.programs
                a = mem_alloc()
                t0 = ticks_us()
                fw.tick()
                t1 = ticks_us()
                b = mem_alloc()
                dt = ticks_diff(t1, t0)
                if nor.programs != p0:
                    nv_ticks += 1
                if fs.writes() != w0:
                    flash_ticks += 1
                    flash_alloc += b - a
                else:
                    (us_meter if meter_tick else us).append(dt)
                    if b != a:
                        alloc_total += b - a
                        alloc_ticks.append((i, b - a, meter_tick))
                sim.wait_tick(TICK_MS)
        finally:
            gc.enable()
        plain = len(us) + len(us_meter)
        every = us + us_meter
        every.sort()
        us.sort()
        us_meter.sort()
        print(
            json.dumps(
                {
                    "ticks": n,
                    "state": ch.state,
                    "current_ma": fw.meter.max_ma(),
                    "tick_us_median": _pct(every, 50),
                    "tick_us_p99": _pct(every, 99),
                    "tick_us_max": every[-1],
                    "tick_us_plain_median": _pct(us, 50),
                    "tick_us_meter_median": _pct(us_meter, 50),
                    "tick_alloc_bytes_total": alloc_total,
                    "tick_alloc_ticks": plain,
                    # rounded up: any allocation at all shows as >= 1
                    "tick_alloc_bytes": (alloc_total + plain - 1) // plain if alloc_total > 0 else 0,
                    "tick_alloc_where": alloc_ticks[:8],
                    "flash_ticks": flash_ticks,
                    "flash_tick_alloc_bytes": flash_alloc,
                    "nvlog_ticks": nv_ticks,
                }
            )
        )
    finally:
        vfs.umount(mnt)
        _remove_tree(d)


# --- session: energy accuracy, flash writes, simulation speed -----------------------------
LOADS = {
    # name: (sim kwargs, config, what it is)
    "16a3": ({"ev_draw_a": 16, "pp": 220}, {"max_current_a": 32}, "16 A three-phase"),
    "32a3": ({"ev_draw_a": 32, "pp": 220}, {"max_current_a": 32}, "32 A three-phase"),
    "80a3": (
        {"ev_draw_a": 80, "pp": False},
        {"max_current_a": 80, "hw_max_current_a": 80},
        "80 A three-phase, tethered",
    ),
    "6a1n": (
        {"ev_draw_a": 6, "phases": 1, "ev_phases": 1, "pp": 220, "adc_noise_counts": 3},
        {"max_current_a": 6, "phases": 1},
        "6 A single-phase, ADC noise +-3 counts",
    ),
}


class _Stop(Exception):
    pass


def mode_session(load, minutes):
    sim_args, cfg, label = LOADS[load]
    d = _fresh_dir()
    fs = CountingFS(d)
    mnt = d + "-m"
    vfs.mount(fs, mnt)
    charge_ms = minutes * 60000
    plug_ms = 1000
    end_ms = plug_ms + 2000 + charge_ms
    try:
        sim = SimBoard(data_dir=mnt, nvlog_path=d + "/nvlog.img", **sim_args)
        fw = Firmware(sim, cfg)
        records = []
        fw.on_event = lambda ev: records.append(ev["record"]) if ev.get("event") == "session" else None
        t_start = sim.now_ms
        marks = {}

        def on_tick(s):
            t = s.now_ms - t_start
            if t == plug_ms:
                s.set_ev("B")
            elif t == plug_ms + 1000:
                s.set_ev("C")
                marks["w0"] = fs.writes()
                marks["b0"] = fs.bytes
            elif t == end_ms:
                s.set_ev("B")  # the car is full: S2 opens
            elif t == end_ms + 1000:
                s.set_ev("A")  # unplugged: the session ends
            elif t >= end_ms + 3000:
                raise _Stop()

        sim.on_tick = on_tick
        wall0 = time.ticks_ms()
        try:
            fw.run()
        except _Stop:
            pass
        wall_ms = time.ticks_diff(time.ticks_ms(), wall0)
        if len(records) != 1:
            raise RuntimeError("expected one session record, got %d" % len(records))
        rec = records[0]
        truth_mwh = sim.truth_energy_wh * 1000
        err = (rec["energy_mwh"] - truth_mwh) / truth_mwh * 100
        hours = charge_ms / 3600000
        sim_s = (sim.now_ms - t_start) / 1000
        print(
            json.dumps(
                {
                    "load": load,
                    "label": label,
                    "minutes": minutes,
                    "session_mwh": rec["energy_mwh"],
                    "truth_mwh": int(truth_mwh + 0.5),
                    "err_pct": err,
                    "flash_writes_per_h": (fs.writes() - marks["w0"]) / hours,
                    "flash_bytes_per_h": (fs.bytes - marks["b0"]) / hours,
                    "flash_opens": fs.opens,
                    "flash_renames": fs.renames,
                    "flash_removes": fs.removes,
                    # the checkpoint ring (firmware/nvlog.py): records per charged hour, and the
                    # sectors erased for this session (after it, while idle)
                    "nvlog_programs_per_h": sim.nor.programs / hours,
                    "nvlog_erases": sim.nor.erases,
                    "nvlog_energized_erases": sim.nor.energized_erases(),
                    "sim_seconds": sim_s,
                    "wall_seconds": wall_ms / 1000,
                    "sim_speed_x": sim_s * 1000 / wall_ms if wall_ms else None,
                }
            )
        )
    finally:
        vfs.umount(mnt)
        _remove_tree(d)


# --- nvlog: what a power cut costs, and what the checkpoints cost the loop -----------------
def _cut_losses(nvlog_kb, minutes, cuts, seed):
    """A 22 kW charge of `minutes`, its flash copied at `cuts` random ticks
    (a power cut there leaves that copy); each copy booted: the energy the
    meter had at the cut minus what the recovered record holds (Wh)."""
    import random

    d = _fresh_dir()
    random.seed(seed)
    n = minutes * 6000
    at = sorted(6000 + random.getrandbits(24) % (n - 6000) for _ in range(cuts))
    losses = []
    try:
        sim, fw = powercut.board(d, nvlog_kb)
        sim.set_ev("C")
        tick = 0
        snaps = []
        for k in at:
            _run_ticks(fw, sim, k - tick)
            tick = k
            snap = d + "-cut%d" % len(snaps)
            powercut.copy_flash(d, snap)
            snaps.append((snap, fw.meter.session_mwh))
        for snap, metered in snaps:
            _, fw2 = powercut.board(snap, nvlog_kb)
            rec = powercut.power_loss_records(fw2)[0]
            losses.append((metered - rec["energy_mwh"]) / 1000)
            _remove_tree(snap)
    finally:
        _remove_tree(d)
    return losses


def _timed_ticks(minutes):
    """A 22 kW charge on the esp32 timing profile: virtual time of each
    Firmware.tick() (us), the ticks that programmed a checkpoint apart."""
    d = _fresh_dir()
    try:
        sim, fw = powercut.board(d, profile="esp32")
        sim.set_ev("C")
        _run_ticks(fw, sim, 3000)
        nor = sim.nor
        hist = [0] * 1001  # the other ticks, in 0.1 ms steps (the last: 100 ms or more)
        prog = []
        for _ in range(minutes * 6000):
            p0 = nor.programs
            t0 = sim.now_ms * 1000 + sim._us
            fw.tick()
            dt = sim.now_ms * 1000 + sim._us - t0
            if nor.programs != p0:
                prog.append(dt)
            else:
                hist[dt // 100 if dt < 100000 else 1000] += 1
            sim.wait_tick(TICK_MS)
        prog.sort()
        erased_closed = nor.energized_erases()
    finally:
        _remove_tree(d)
    return hist, prog, erased_closed


def _hist_pct(hist, q):
    """The q-th percentile of a 0.1 ms histogram, in us (its bucket's top)."""
    n = sum(hist)
    want = n * q // 100
    if want >= n:
        want = n - 1  # the maximum
    seen = 0
    for i in range(len(hist)):
        seen += hist[i]
        if seen > want:
            return (i + 1) * 100
    return len(hist) * 100


def mode_nvlog(minutes, cuts):
    after = _cut_losses(64, minutes, cuts, 1)
    before = _cut_losses(0, minutes, cuts, 1)
    hist, prog, erased_closed = _timed_ticks(min(minutes, 10))
    print(
        json.dumps(
            {
                "minutes": minutes,
                "cuts": cuts,
                "loss_wh_max": max(after),
                "loss_wh_mean": sum(after) / len(after),
                "loss_wh_max_before": max(before),
                "loss_wh_mean_before": sum(before) / len(before),
                "tick_us_max_with_program": prog[-1] if prog else None,
                "tick_us_p50_with_program": _pct(prog, 50) if prog else None,
                "tick_us_max_without": _hist_pct(hist, 100),
                "tick_us_p99_without": _hist_pct(hist, 99),
                "program_ticks": len(prog),
                "energized_erases": erased_closed,
            }
        )
    )


# --- MQTT -------------------------------------------------------------------------------------
def _mqtt_cfg(host, port, dev_id):
    from firmware import config

    cfg, _errors = config.validate({"mqtt_host": host, "mqtt_port": port, "id": dev_id, "mqtt_keepalive_s": 30})
    return cfg


def mode_mqtt(host, port, n):
    from firmware.link import Link, _Client
    from hal import net

    # 1. the link's client class on hal/net.py (TCP_NODELAY), driven directly: the
    #    round trip of one QoS 1 publish until its PUBACK.
    c = _Client("bench-direct", host, port=port, keepalive=30)
    c.net = net
    c.connect(timeout=5)
    rtt = []
    for _ in range(n):
        t0 = time.ticks_us()
        c.publish(b"bench/direct", b"x" * 300, qos=1)
        rtt.append(time.ticks_diff(time.ticks_us(), t0))
    c.disconnect()
    rtt.sort()
    # 2. through Link as the control loop sees it: post a session, poll until acked.
    link = Link(_mqtt_cfg(host, port, "bench-link"), net, net)
    link.start()
    t0 = time.ticks_ms()
    while not link.connected and time.ticks_diff(time.ticks_ms(), t0) < 5000:
        time.sleep_ms(5)
    if not link.connected:
        raise RuntimeError("link did not connect: %s" % link.stats["last_error"])
    post = []
    for i in range(n // 4 or 1):
        sid = "bench-%d" % i
        t0 = time.ticks_us()
        link.post_session(sid, b'{"id": "%s"}' % sid)
        while True:
            got = link.poll_acked()
            if got is not None:
                break
            time.sleep_ms(1)
        post.append(time.ticks_diff(time.ticks_us(), t0))
    link.stop(2000)
    post.sort()
    print(
        json.dumps(
            {
                "mqtt_publish_ms_median": _pct(rtt, 50) / 1000,
                "mqtt_publish_ms_p99": _pct(rtt, 99) / 1000,
                "mqtt_post_to_ack_ms_median": _pct(post, 50) / 1000,
                "mqtt_post_to_ack_ms_max": post[-1] / 1000,
                "publishes": n,
            }
        )
    )


def mode_blackhole(host, port, seconds):
    d = _fresh_dir()
    try:
        sim = SimBoard(data_dir=d, ev_draw_a=16, pp=220)
        fw = Firmware(
            sim,
            {
                "max_current_a": 32,
                "mqtt_host": host,
                "mqtt_port": port,
                "id": "bench-bh",
            },
        )
        fw.start()
        sim.set_ev("B")
        worst = 0
        ticks = 0
        n = seconds * 1000 // TICK_MS
        t_end = time.ticks_add(time.ticks_ms(), seconds * 1000)
        due = time.ticks_ms()
        while time.ticks_diff(t_end, time.ticks_ms()) > 0:
            if ticks == n // 5:
                sim.set_ev("C")  # charge: events, status changes, a session for the link
            if ticks == n * 3 // 4:
                sim.set_ev("B")  # the car is full
            if ticks == n * 3 // 4 + 20:
                sim.set_ev("A")  # unplugged: the session ends, a record the link cannot deliver
            t0 = time.ticks_us()
            fw.tick()
            dt = time.ticks_diff(time.ticks_us(), t0)
            if dt > worst:
                worst = dt
            ticks += 1
            sim.wait_tick(TICK_MS)
            due = time.ticks_add(due, TICK_MS)  # real-time pacing: the link thread runs meanwhile
            w = time.ticks_diff(due, time.ticks_ms())
            if w > 0:
                time.sleep_ms(w)
        connected = fw.link.connected
        pending = fw.link.pending_sessions()
        fw.link.stop(100)  # the thread may be stuck in a read: do not wait for it
        print(
            json.dumps(
                {
                    "tick_delay_ms_max_blackholed": worst / 1000,
                    "blackhole_ticks": ticks,
                    "blackhole_link_connected": connected,
                    "blackhole_sessions_pending": pending,
                }
            )
        )
    finally:
        _remove_tree(d)


# --- calibration (tools/rig.py calibrate) -----------------------------------------------------
def _meter_run(data_dir, err_pm, ref_a, minutes, calibrate_bursts=0):
    """Boot the firmware on data_dir, charge at ref_a for `minutes`, return
    (metered mWh, true mWh over those minutes, gains in use, gains found or
    None); with calibrate_bursts, then calibrate and store the gains."""
    sim = SimBoard(data_dir=data_dir, ev_draw_a=ref_a, pp=220, ct_error_pm=err_pm)
    fw = Firmware(sim, {"max_current_a": 32})
    found = None
    sim.set_ev("B")
    _run_ticks(fw, sim, 100)
    sim.set_ev("C")
    _run_ticks(fw, sim, minutes * 6000)
    meter = fw.meter
    gains_used = meter.gains()
    metered = meter.session_mwh  # before calibrate() changes the gains
    truth = sim.truth_energy_wh * 1000
    if calibrate_bursts:
        # The reference load is steady now: average the gain each burst asks for.
        ref_ma = int(ref_a * 1000)
        sums = [0] * meter.phases
        for _ in range(calibrate_bursts):
            _run_ticks(fw, sim, 10)  # one burst per 10 ticks
            for c in range(meter.phases):
                sums[c] += meter.calibrate(c, ref_ma)
        found = [(s + calibrate_bursts // 2) // calibrate_bursts for s in sums]
    sim.set_ev("B")
    _run_ticks(fw, sim, 300)
    if found is not None:
        # Store through the firmware's own writer: set the averaged gains by
        # loading them, then save_cal() (atomic) where app.py reads them at boot.
        tmp = data_dir + "/cal-new.json"
        with open(tmp, "w") as f:
            f.write(json.dumps({"gain_ppm": found}))
        err = meter.load_cal(tmp)
        os.remove(tmp)
        if err:
            raise RuntimeError(err)
        err = meter.save_cal(data_dir + "/" + CAL_FILE)
        if err:
            raise RuntimeError(err)
    return metered, truth, gains_used, found


def mode_calibrate(data_dir, err_pm, ref_a, minutes):
    errs = (err_pm, err_pm, err_pm)
    m0, t0, g0, found = _meter_run(data_dir, errs, ref_a, minutes, calibrate_bursts=50)
    m1, t1, g1, _ = _meter_run(data_dir, errs, ref_a, minutes)
    print(
        json.dumps(
            {
                "ct_error_pm": err_pm,
                "reference_a": ref_a,
                "before_gain_ppm": g0,
                "before_err_pct": (m0 - t0) / t0 * 100,
                "stored_gain_ppm": found,
                "after_gain_ppm": g1,
                "after_err_pct": (m1 - t1) / t1 * 100,
                "cal_file": data_dir + "/" + CAL_FILE,
            }
        )
    )


# --- pilot: misread rates of the two samplings on the front-end model ---------------------
PILOT_DUTIES_PM = (100, 500, 960)


def mode_pilot(n):
    from array import array

    from firmware import iec61851 as iec
    from hal.pilotadc import UNSEEN

    states = {"A": iec.P_A, "B": iec.P_B, "C": iec.P_C, "D": iec.P_D}
    out = array("i", (0, 0))
    res = {"pilot_reads": n}
    for key, frontend in (("phase", "esp32"), ("split", "esp32_split")):
        mis, dio, uns = {}, {}, {}
        for duty in PILOT_DUTIES_PM:
            m, d, u = {}, {}, {}
            for ev in "ABCD":
                sim = SimBoard(seed=duty + ord(ev), data_dir="/tmp", frontend=frontend)
                sim.set_ev(ev)
                sim.pilot_pwm(duty)
                for _ in range(60):  # the EV closes S2 on the offer
                    sim.wait_tick(TICK_MS)
                bad = false_diode = unseen = 0
                for _ in range(n):
                    sim.pilot_read(out)
                    if iec.classify(out[0]) != states[ev]:
                        bad += 1
                    if out[1] == UNSEEN:
                        unseen += 1
                    elif ev != "A" and out[1] > iec.DIODE_LOW_MAX_MV:
                        false_diode += 1
                m[ev] = round(bad * 100 / n, 2)
                d[ev] = round(false_diode * 100 / n, 2)
                u[ev] = round(unseen * 100 / n, 2)
            mis[str(duty // 10)] = m
            dio[str(duty // 10)] = d
            uns[str(duty // 10)] = u
        res["pilot_misread_pct_" + key] = mis
        res["pilot_false_diode_pct_" + key] = dio
        res["pilot_low_unseen_pct_" + key] = uns
        if key == "phase":
            fe = sim.frontend
            res["pilot_tau_us"] = fe.tau_us
            res["pilot_noise_counts"] = fe.noise_counts
            res["pilot_settle_us"] = fe.settle_us
    print(json.dumps(res))


def main(argv):
    if not argv:
        print(__doc__)
        sys.exit(2)
    mode = argv[0]
    a = argv[1:]
    if mode == "tick":
        mode_tick(*[int(x) for x in a])
    elif mode == "session":
        mode_session(a[0], int(a[1]))
    elif mode == "mqtt":
        mode_mqtt(a[0], int(a[1]), int(a[2]))
    elif mode == "blackhole":
        mode_blackhole(a[0], int(a[1]), int(a[2]))
    elif mode == "nvlog":
        mode_nvlog(int(a[0]), int(a[1]))
    elif mode == "pilot":
        mode_pilot(int(a[0]) if a else 1000)
    elif mode == "calibrate":
        mode_calibrate(a[0], int(a[1]), float(a[2]), int(a[3]))
    else:
        print(__doc__)
        sys.exit(2)


main(sys.argv[1:])

"""tools/mpbuild.py and the board manifest: the pinned MicroPython source is
verified before use, a build with unchanged inputs does nothing, failures say
what to do with exit code 2, the launcher behaves like the port it wraps, and
manifest.py freezes the firmware, the HAL and umqtt.simple on top of the stock
ESP32 board manifest but never the simulator."""

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import mpbuild  # noqa: E402

TOOL = [sys.executable, str(REPO / "tools" / "mpbuild.py")]


def run_tool(*args, env=None):
    return subprocess.run(TOOL + list(args), capture_output=True, text=True, timeout=600, env=env, check=False)


def fake_archive(path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = b"not micropython\n"
        info = tarfile.TarInfo(mpbuild.MP_TOPDIR + "/README.md")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


def test_an_archive_that_is_not_the_pinned_one_is_refused_before_anything_is_unpacked(tmp_path):
    archive = fake_archive(tmp_path / mpbuild.MP_ARCHIVE)
    cache = tmp_path / "cache"
    p = run_tool("build", "--source", str(archive), "--cache", str(cache))
    assert p.returncode == 2, p.stderr
    assert mpbuild.MP_ARCHIVE_SHA256 in p.stderr and "not the pinned MicroPython source" in p.stderr
    assert not (cache / "src").exists()


def test_a_missing_source_says_where_it_looked_and_how_to_give_one(tmp_path):
    p = run_tool("build", "--source", str(tmp_path / "nowhere.tar.gz"), "--cache", str(tmp_path / "c"))
    assert p.returncode == 2
    assert "does not exist" in p.stderr and "git checkout" in p.stderr


def test_the_source_can_come_from_the_environment(tmp_path):
    archive = fake_archive(tmp_path / "other.tar.gz")
    env = dict(os.environ, **{mpbuild.SOURCE_ENV: str(archive)})
    p = run_tool("paths", "--cache", str(tmp_path / "c"), env=env)
    assert p.returncode == 2 and str(archive) in p.stderr  # it was the one checked


def test_a_directory_that_is_not_a_checkout_of_the_pinned_commit_is_refused(tmp_path):
    p = run_tool("build", "--source", str(tmp_path), "--cache", str(tmp_path / "c"))
    assert p.returncode == 2
    assert "not a git checkout of MicroPython commit " + mpbuild.MP_COMMIT in p.stderr


def test_a_second_build_with_unchanged_inputs_does_nothing(esp32_build):
    p = run_tool("build")
    assert p.returncode == 0, p.stderr
    assert "up to date" in p.stderr and "building" not in p.stderr
    assert run_tool("check").returncode == 0


def test_check_reports_a_missing_build_with_exit_1(esp32_build, tmp_path):
    p = run_tool("check", "--cache", str(tmp_path / "empty"))
    assert p.returncode == 1 and "make esp32" in p.stderr


def test_the_inputs_digest_changes_with_a_frozen_file(esp32_build, tmp_path, monkeypatch):
    top = Path(esp32_build["source"])
    before = mpbuild.inputs_digest("x", top)
    assert mpbuild.inputs_digest("x", top) == before
    assert mpbuild.inputs_digest("y", top) != before  # another source
    # a copy of the repository's manifests pointing at a changed firmware tree
    fake = tmp_path / "repo"
    (fake / "tools").mkdir(parents=True)
    for d in ("firmware", "hal", "sim"):
        (fake / d).mkdir()
        for f in (REPO / d).glob("*.py"):
            (fake / d / f.name).write_bytes(f.read_bytes())
    (fake / "manifest.py").write_bytes(mpbuild.BOARD_MANIFEST.read_bytes())
    (fake / "tools" / "esp32_unix_manifest.py").write_bytes(mpbuild.UNIX_MANIFEST.read_bytes())
    monkeypatch.setattr(mpbuild, "BOARD_MANIFEST", fake / "manifest.py")
    monkeypatch.setattr(mpbuild, "UNIX_MANIFEST", fake / "tools" / "esp32_unix_manifest.py")
    base = mpbuild.inputs_digest("x", top)
    with open(fake / "firmware" / "pilot.py", "a") as f:
        f.write("# changed\n")
    assert mpbuild.inputs_digest("x", top) != base


def frozen(esp32_build, manifest, port, **options):
    return dict(mpbuild.manifest_files(Path(esp32_build["source"]), manifest, port, **options))


def test_the_board_manifest_freezes_firmware_hal_and_umqtt_on_the_stock_esp32_manifest(esp32_build):
    files = frozen(esp32_build, mpbuild.BOARD_MANIFEST, "esp32")
    for pkg in ("firmware", "hal"):
        for src in (REPO / pkg).glob("*.py"):
            target = "%s/%s" % (pkg, src.name)
            assert target in files, target
            assert Path(files[target]) == src
    assert "hal/net.py" in files  # the network layer
    assert files["umqtt/simple.py"].endswith("micropython/umqtt.simple/umqtt/simple.py")  # 1.8.0, from the stock manifest
    assert "inisetup.py" in files  # the ESP32 port's own modules: the stock manifest is included
    assert not [t for t in files if t.startswith(("sim/", "tests/", "tools/"))]


def test_the_esp32_unix_build_freezes_the_same_plus_the_simulator(esp32_build):
    board = frozen(esp32_build, mpbuild.BOARD_MANIFEST, "esp32")
    unix = frozen(esp32_build, mpbuild.UNIX_MANIFEST, "unix")
    ours = {t for t in board if t.startswith(("firmware/", "hal/"))}
    assert ours and ours <= set(unix)
    assert unix["umqtt/simple.py"] == board["umqtt/simple.py"]
    assert "sim/board.py" in unix and "inisetup.py" not in unix


def launcher(esp32_build, *args, cwd=REPO):
    env = dict(os.environ, MICROPYPATH="%s:%s" % (REPO, REPO / "lib"))
    return subprocess.run([esp32_build["micropython"]] + list(args), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_the_launcher_runs_a_module_as_main_with_its_arguments_and_exit_code(esp32_build, tmp_path):
    (tmp_path / "probe.py").write_text(
        "import sys\nprint(__name__, sys.argv, sys.path[0])\nif __name__ == '__main__':\n    sys.exit(int(sys.argv[1]))\n"
    )
    env_dir = str(tmp_path)
    p = subprocess.run([esp32_build["micropython"], "-m", "probe", "7", "x"], cwd=tmp_path,
                       env=dict(os.environ, MICROPYPATH=env_dir), capture_output=True, text=True, timeout=60,
                       check=False)  # fmt: skip
    assert p.returncode == 7, p.stdout + p.stderr
    assert p.stdout.strip() == "__main__ ['probe', '7', 'x'] .frozen"


def test_the_launcher_gives_112_kb_unless_told_otherwise_and_frozen_code_wins_over_the_checkout(esp32_build):
    code = "import gc, sys, firmware.app as a\\nprint(gc.mem_free() + gc.mem_alloc(), a.__file__, sys.argv)"
    p = launcher(esp32_build, "-c", code.replace("\\n", "\n"), "arg")
    assert p.returncode == 0, p.stdout + p.stderr
    total, where, argv = p.stdout.split(" ", 2)
    assert 100 * 1024 < int(total) <= 112 * 1024 and where == "firmware/app.py" and argv.strip() == "['-c', 'arg']"
    p = launcher(esp32_build, "-X", "heapsize=64k", "-c", "import gc; print(gc.mem_free() + gc.mem_alloc())")
    assert int(p.stdout) <= 64 * 1024, p.stdout + p.stderr


def test_paths_prints_the_interpreter_and_mpy_cross(esp32_build):
    p = run_tool("paths")
    assert p.returncode == 0
    paths = json.loads(p.stdout)
    assert Path(paths["micropython"]).name == "micropython" and Path(paths["mpy_cross"]).name == "mpy-cross"
    assert paths["heap"] == mpbuild.ESP32_HEAP


@pytest.mark.parametrize("bad", ["--jobs", "--nope"])
def test_bad_arguments_exit_2(bad):
    assert run_tool(bad).returncode == 2

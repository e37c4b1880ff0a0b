"""tools/deps.py: pinned MicroPython packages land in lib/ verified, or not at all.

Every test here runs against a package index served from 127.0.0.1 (or a closed
port), built from a fake sdist made in the test: no test needs the real network.
"""

import hashlib
import io
import json
import socket
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import deps

PROJECT = "micropython-fake.pkg"
ARCHIVE = "micropython-fake.pkg-0.1.tar.gz"
CODE = b"def hello():\n    return 42\n"
INIT = b""


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _sdist(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


GOOD_ARCHIVE = _sdist(
    {
        "fake-0.1/fake/pkg.py": CODE,
        "fake-0.1/fake/extra.py": INIT,
        "fake-0.1/PKG-INFO": b"x",
    }
)


class _Index(BaseHTTPRequestHandler):
    archive = GOOD_ARCHIVE
    hits: list = []  # noqa: RUF012 (replaced per test by the index fixture)

    def do_GET(self):
        self.hits.append(self.path)
        if self.path.startswith("/simple/"):
            body = (
                f'<html><body><a href="/files/{ARCHIVE}">{ARCHIVE}</a></body></html>'
            ).encode()
            ctype = "text/html"
        elif self.path == "/files/" + ARCHIVE:
            body, ctype = self.archive, "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def index():
    """A PyPI-like simple index on 127.0.0.1; yields (url, handler class)."""
    handler = type("Index", (_Index,), {"archive": GOOD_ARCHIVE, "hits": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple/", handler
    server.shutdown()
    server.server_close()


def _closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple/"


@pytest.fixture
def manifest(tmp_path):
    pins = {
        "packages": [
            {
                "name": "fake.pkg",
                "registry": "pypi",
                "project": PROJECT,
                "version": "0.1",
                "archive": ARCHIVE,
                "archive_sha256": _sha(GOOD_ARCHIVE),
                "files": [
                    {
                        "member": "fake-0.1/fake/pkg.py",
                        "path": "fake/pkg.py",
                        "size": len(CODE),
                        "sha256": _sha(CODE),
                    }
                ],
            }
        ]
    }
    path = tmp_path / "pins.json"
    path.write_text(json.dumps(pins))
    return path


def _run(capsys, manifest, lib, *argv, index_url=None):
    extra = ["--index-url", index_url] if index_url else []
    code = deps.main(
        ["--manifest", str(manifest), "--lib", str(lib), "--timeout", "5"]
        + extra
        + list(argv)
    )
    out, err = capsys.readouterr()
    return code, out, err


def _tree(root):
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in Path(root).rglob("*")
        if p.is_file()
    }


def test_install_writes_only_the_pinned_file_with_its_pinned_hash(
    tmp_path, index, manifest, capsys
):
    lib = tmp_path / "lib"
    code, out, err = _run(capsys, manifest, lib, "install", index_url=index[0])
    assert code == 0, err
    assert _tree(lib) == {
        "fake/pkg.py": CODE
    }  # no extra.py, no PKG-INFO, no __init__.py, no temp files
    assert oct((lib / "fake" / "pkg.py").stat().st_mode & 0o777) == "0o644"
    assert "fake.pkg" in out


def test_second_install_is_a_no_op_without_network(tmp_path, index, manifest, capsys):
    lib = tmp_path / "lib"
    assert _run(capsys, manifest, lib, "install", index_url=index[0])[0] == 0
    mtime = (lib / "fake" / "pkg.py").stat().st_mtime_ns
    code, out, err = _run(
        capsys, manifest, lib, "install", index_url=_closed_port_url()
    )
    assert code == 0, err
    assert "nothing to do" in out
    assert (lib / "fake" / "pkg.py").stat().st_mtime_ns == mtime


def test_archive_hash_mismatch_exits_2_and_leaves_lib_untouched(
    tmp_path, index, manifest, capsys, monkeypatch
):
    url, handler = index
    handler.archive = _sdist({"fake-0.1/fake/pkg.py": b"import evil\n"})
    lib = tmp_path / "lib"
    (lib / "fake").mkdir(parents=True)
    (lib / "fake" / "pkg.py").write_bytes(b"old local edit\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(deps.tempfile, "tempdir", None)  # make tempfile re-read TMPDIR
    code, _, err = _run(capsys, manifest, lib, "install", index_url=url)
    assert code == 2
    assert (
        "fake.pkg" in err and "sha256" in err and "nothing was written to lib/" in err
    )
    assert _tree(lib) == {"fake/pkg.py": b"old local edit\n"}
    assert list(scratch.iterdir()) == []  # the downloaded archive was deleted
    assert "/files/" + ARCHIVE in handler.hits  # it really was downloaded, then refused


def test_unreachable_registry_exits_2_with_a_clear_message(tmp_path, manifest):
    # A real process: the exit code is what `make deps` sees.
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "deps.py"),
            "--manifest",
            str(manifest),
            "--lib",
            str(tmp_path / "lib"),
            "--index-url",
            _closed_port_url(),
            "--timeout",
            "5",
            "install",
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert (
        "fake.pkg" in proc.stderr
        and "unreachable" in proc.stderr
        and "--index-url" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "lib").exists()


def test_file_missing_from_archive_exits_2_and_names_it(
    tmp_path, index, manifest, capsys
):
    url, handler = index
    handler.archive = _sdist({"fake-0.1/other.py": CODE})
    pins = json.loads(manifest.read_text())
    pins["packages"][0]["archive_sha256"] = _sha(handler.archive)
    manifest.write_text(json.dumps(pins))
    code, _, err = _run(capsys, manifest, tmp_path / "lib", "install", index_url=url)
    assert code == 2
    assert "fake-0.1/fake/pkg.py is missing from " + ARCHIVE in err
    assert not (tmp_path / "lib").exists()


def test_check_detects_a_modified_and_a_missing_file(tmp_path, index, manifest, capsys):
    lib = tmp_path / "lib"
    assert _run(capsys, manifest, lib, "install", index_url=index[0])[0] == 0
    assert _run(capsys, manifest, lib, "check")[0] == 0
    (lib / "fake" / "pkg.py").write_bytes(CODE + b"# tweak\n")
    code, out, _ = _run(capsys, manifest, lib, "check")
    assert code == 1 and "modified" in out and "pkg.py" in out
    (lib / "fake" / "pkg.py").unlink()
    code, out, _ = _run(capsys, manifest, lib, "check")
    assert code == 1 and "missing" in out


def test_list_prints_the_pinned_files_as_json(tmp_path, manifest, capsys):
    code, out, _ = _run(capsys, manifest, tmp_path / "lib", "list")
    assert code == 0
    listed = json.loads(out)
    assert listed["files"] == [
        {
            "package": "fake.pkg",
            "version": "0.1",
            "path": "fake/pkg.py",
            "size": len(CODE),
            "sha256": _sha(CODE),
        }
    ]
    assert listed["lib"] == str((tmp_path / "lib").resolve())


def test_pin_file_with_a_path_escaping_lib_is_refused(tmp_path, manifest, capsys):
    pins = json.loads(manifest.read_text())
    pins["packages"][0]["files"][0]["path"] = "../outside.py"
    manifest.write_text(json.dumps(pins))
    code, _, err = _run(
        capsys, manifest, tmp_path / "lib", "install", index_url=_closed_port_url()
    )
    assert code == 2 and "fake.pkg" in err and ".." in err


def test_repository_pins_umqtt_simple_1_3_4_without_an_init_file():
    packages = deps.load_manifest(deps.DEFAULT_MANIFEST)
    umqtt = [p for p in packages if p["name"] == "umqtt.simple"]
    assert len(umqtt) == 1
    assert (
        umqtt[0]["project"] == "micropython-umqtt.simple"
        and umqtt[0]["version"] == "1.3.4"
    )
    assert [f["path"] for f in umqtt[0]["files"]] == ["umqtt/simple.py"]


def test_help_explains_the_subcommands():
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "deps.py"), "--help"],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    for word in ("install", "check", "list", "--lib"):
        assert word in proc.stdout
    assert "Exit codes" in proc.stdout


def _vendored_pins(tmp_path, data):
    pins = {
        "packages": [],
        "vendored": [
            {
                "name": "fake.pkg",
                "version": "9.9",
                "source": "fake-9.9",
                "into": "build/fake-9.9",
                "files": [{"member": "fake/pkg.py", "path": "fake/pkg.py", "sha256": _sha(data)}],
            }
        ],
    }
    path = tmp_path / "vpins.json"
    path.write_text(json.dumps(pins))
    return deps.load_vendored(path)[0]


def test_a_vendored_package_is_copied_only_when_its_sha256_matches_the_pin(tmp_path):
    vendor = tmp_path / "vendor"
    (vendor / "fake-9.9" / "fake").mkdir(parents=True)
    src = vendor / "fake-9.9" / "fake" / "pkg.py"
    src.write_bytes(CODE)
    pkg = _vendored_pins(tmp_path, CODE)
    repo = tmp_path / "repo"
    assert deps.install_vendored(pkg, tmp_path / "nowhere", repo) == "absent"
    src.write_bytes(CODE + b"# tampered\n")
    with pytest.raises(deps.DepsError, match="sha256"):
        deps.install_vendored(pkg, vendor, repo)
    assert not (repo / "build").exists()
    src.write_bytes(CODE)
    assert deps.install_vendored(pkg, vendor, repo) == "installed"
    assert (repo / "build" / "fake-9.9" / "fake" / "pkg.py").read_bytes() == CODE
    assert deps.install_vendored(pkg, tmp_path / "nowhere", repo) == "ok"  # already there: no vendor folder needed


def test_repository_pins_the_vendored_umqtt_simple_1_8_0_outside_lib():
    pkg = [p for p in deps.load_vendored(deps.DEFAULT_MANIFEST) if p["name"] == "umqtt.simple"][0]
    assert pkg["version"] == "1.8.0" and not pkg["into"].startswith("lib")
    assert deps.vendored_lib("umqtt.simple") == REPO / pkg["into"]
    listed = {f["path"] for p in deps.load_manifest(deps.DEFAULT_MANIFEST) for f in p["files"]}
    assert listed == {"umqtt/simple.py"}  # `list` (what deploy sends to /lib) holds 1.3.4 only

#!/usr/bin/env python3
"""Install the pinned third-party MicroPython packages into lib/.

The pins live in tools/mp_packages.json: per package the registry project,
version, archive file name and its sha256, and the files to take from the
archive with their path under lib/ (as /lib on a board) and their own sha256.
Archives come from a PyPI simple index (via the pypi-simple package); pip is
not used because MicroPython sdists are not installable by it.

Vendored packages (the "vendored" list in the pin file: versions the registry
does not have, umqtt.simple 1.8.0) are copied from a local vendor folder
(--vendor-dir, else $EVSE_VENDOR_DIR, else ../shared/vendor next to the
repository) into their own untracked folder under the repository (never lib/,
never deployed), each file checked against its pinned sha256 first. Without
the vendor folder `install` says so and skips them (the tests that need them
skip too).

Subcommands:
  install   make lib/ (and the vendored folders) match the pins; does no network
            work when lib/ already does
  check     exit 1 if any pinned file under lib/ is missing or differs
  list      print the pinned files as JSON (for the deploy tool)

Exit codes: 0 success, 1 `check` found a difference, 2 failure (registry
unreachable, hash mismatch, file missing from the archive, bad pin file, bad
arguments). Every failure message names the package, the reason and what to do.
Files are written atomically (temporary file + rename) and only after the
archive and every extracted file matched their pinned sha256.
"""

import argparse
import hashlib
import json
import os
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = REPO / "tools" / "mp_packages.json"
DEFAULT_LIB = REPO / "lib"
DEFAULT_INDEX = "https://pypi.org/simple/"
DEFAULT_VENDOR = REPO.parent / "shared" / "vendor"
EXIT_OK, EXIT_DIFFERS, EXIT_FAILED = 0, 1, 2
_HEX = set("0123456789abcdef")


class DepsError(Exception):
    """A failure the user must act on; the message says which package, why and what to do."""


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    """sha256 hex of a file, or None if it does not exist."""
    try:
        with open(path, "rb") as f:  # the files are small (kB): one read
            return sha256_bytes(f.read())
    except FileNotFoundError:
        return None


def _is_sha256(value):
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def load_manifest(path):
    """Read and validate the pin file; return its list of packages."""
    try:
        with open(path, encoding="utf-8") as f:
            packages = json.load(f)["packages"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DepsError(
            f"pin file {path} is unreadable ({exc}): restore it from git"
        ) from None
    for pkg in packages:
        name = pkg.get("name", "?")
        for key in ("name", "project", "version", "archive", "archive_sha256", "files"):
            if key not in pkg:
                raise DepsError(
                    f"{name}: pin file {path} lacks {key!r} for this package: fix the entry"
                )
        if not _is_sha256(pkg["archive_sha256"]):
            raise DepsError(
                f"{name}: archive_sha256 in {path} is not a lowercase sha256 hex digest"
            )
        for entry in pkg["files"]:
            rel = PurePosixPath(entry.get("path", ""))
            if not entry.get("member") or not _is_sha256(entry.get("sha256")):
                raise DepsError(
                    f"{name}: a file entry in {path} lacks 'member' or a valid 'sha256'"
                )
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise DepsError(
                    f"{name}: file path {str(rel)!r} in {path} must be relative to lib/ without '..'"
                )
    return packages


def load_vendored(path):
    """The pin file's vendored packages (an empty list when it has none)."""
    try:
        with open(path, encoding="utf-8") as f:
            vendored = json.load(f).get("vendored", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise DepsError(f"pin file {path} is unreadable ({exc}): restore it from git") from None
    for pkg in vendored:
        into = PurePosixPath(pkg.get("into", ""))
        if into.is_absolute() or ".." in into.parts or not into.parts or not pkg.get("source"):
            raise DepsError(f"{pkg.get('name', '?')}: vendored entry in {path} needs 'source' and a relative 'into'")
        for entry in pkg.get("files", ()):
            if not _is_sha256(entry.get("sha256")) or not entry.get("member") or not entry.get("path"):
                raise DepsError(f"{pkg.get('name', '?')}: a vendored file entry in {path} lacks member/path/sha256")
    return vendored


def vendored_lib(name, manifest=DEFAULT_MANIFEST):
    """The folder a vendored package is installed into (put it on MICROPYPATH)."""
    for pkg in load_vendored(manifest):
        if pkg["name"] == name:
            return REPO / pkg["into"]
    raise DepsError(f"{name} is not in the vendored list of {manifest}")


def vendor_dir(arg=None):
    return Path(arg or os.environ.get("EVSE_VENDOR_DIR") or DEFAULT_VENDOR)


def install_vendored(pkg, vendor, repo=REPO):
    """Copy one vendored package's files into repo/<into> once every file
    matched its pinned sha256. Returns "ok" (already there), "installed" or
    "absent" (no vendor folder for it)."""
    into = Path(repo) / pkg["into"]
    if all(sha256_file(into / f["path"]) == f["sha256"] for f in pkg["files"]):
        return "ok"
    src = Path(vendor) / pkg["source"]
    if not src.is_dir():
        return "absent"
    files = {}
    for entry in pkg["files"]:
        try:
            data = (src / entry["member"]).read_bytes()
        except OSError as exc:
            raise DepsError(f"{pkg['name']} {pkg['version']}: cannot read {src / entry['member']} ({exc})") from None
        if sha256_bytes(data) != entry["sha256"]:
            raise DepsError(
                "{} {}: {} has sha256 {}, pinned {}: the vendored copy is not the reviewed one; nothing was "
                "written".format(pkg["name"], pkg["version"], src / entry["member"], sha256_bytes(data), entry["sha256"])
            )
        files[entry["path"]] = data
    for rel, data in files.items():
        write_atomic(into / rel, data)
    return "installed"


def file_state(lib, entry):
    """'ok', 'missing' or 'modified' for one pinned file under lib/."""
    digest = sha256_file(Path(lib) / entry["path"])
    if digest is None:
        return "missing"
    return "ok" if digest == entry["sha256"] else "modified"


def fetch_archive(pkg, index_url, dest_dir, timeout):
    """Download the package's pinned archive into dest_dir; return its path. Network only here."""
    name = pkg["name"]
    try:
        import requests
        from pypi_simple import NoSuchProjectError, PyPISimple
    except ImportError:
        raise DepsError(
            f"{name}: the pypi-simple package is missing: run `make deps` and use .venv/bin/python"
        ) from None
    target = Path(dest_dir) / pkg["archive"]
    try:
        with PyPISimple(endpoint=index_url) as client:
            page = client.get_project_page(pkg["project"], timeout=timeout)
            found = [p for p in page.packages if p.filename == pkg["archive"]]
            if not found:
                raise DepsError(
                    "{}: {} is not listed for project {!r} on {}: check the pin in tools/mp_packages.json".format(
                        name, pkg["archive"], pkg["project"], index_url
                    )
                )
            client.download_package(found[0], target, verify=False, timeout=timeout)
    except NoSuchProjectError:
        raise DepsError(
            "{}: project {!r} does not exist on {}: check the pin in tools/mp_packages.json".format(
                name, pkg["project"], index_url
            )
        ) from None
    except requests.RequestException as exc:
        raise DepsError(
            "{} {}: package registry unreachable at {} ({}). Check the network or proxy, or pass "
            "--index-url for a mirror, then run again; lib/ was left as it was.".format(
                name,
                pkg["version"],
                index_url,
                exc.__class__.__name__ + ": " + str(exc)[:200],
            )
        ) from None
    return target


def extract(pkg, archive):
    """Return {path under lib/: bytes} for the pinned files, each verified against its sha256."""
    name, out = pkg["name"], {}
    try:
        if archive.name.endswith((".zip", ".whl")):
            with zipfile.ZipFile(archive) as zf:
                names = set(zf.namelist())
                for entry in pkg["files"]:
                    out[entry["path"]] = (
                        zf.read(entry["member"]) if entry["member"] in names else None
                    )
        else:
            with tarfile.open(archive, "r:*") as tf:
                for entry in pkg["files"]:
                    try:
                        member = tf.getmember(entry["member"])
                    except KeyError:
                        member = None
                    fobj = (
                        tf.extractfile(member)
                        if member is not None and member.isfile()
                        else None
                    )
                    out[entry["path"]] = fobj.read() if fobj is not None else None
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise DepsError(
            f"{name}: cannot read archive {archive.name} ({exc}): nothing was written to lib/"
        ) from None
    for entry in pkg["files"]:
        data = out[entry["path"]]
        if data is None:
            raise DepsError(
                "{} {}: file {} is missing from {}: the pin in tools/mp_packages.json names the wrong "
                "member; nothing was written to lib/".format(
                    name, pkg["version"], entry["member"], archive.name
                )
            )
        if sha256_bytes(data) != entry["sha256"]:
            raise DepsError(
                "{} {}: {} in the archive has sha256 {}, pinned {}: fix the pin; nothing was written to lib/".format(
                    name,
                    pkg["version"],
                    entry["member"],
                    sha256_bytes(data),
                    entry["sha256"],
                )
            )
    return out


def write_atomic(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix="." + path.name + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(
                f.fileno(), 0o644
            )  # mkstemp makes 0600; lib/ files are ordinary readable sources
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def install_package(pkg, lib, index_url, timeout):
    """Download, verify and write one package's files. Nothing is written unless all verify."""
    with tempfile.TemporaryDirectory(
        prefix="mp-deps-"
    ) as tmp:  # the archive never outlives this
        archive = fetch_archive(pkg, index_url, tmp, timeout)
        digest = sha256_file(archive)
        if digest != pkg["archive_sha256"]:
            raise DepsError(
                "{} {}: archive {} has sha256 {} but {} is pinned. The download is corrupt or the "
                "registry file changed; the archive was deleted and nothing was written to lib/. Retry; "
                "if it persists, review the new archive before changing the pin.".format(
                    pkg["name"],
                    pkg["version"],
                    pkg["archive"],
                    digest,
                    pkg["archive_sha256"],
                )
            )
        files = extract(pkg, archive)
    for rel, data in files.items():
        write_atomic(Path(lib) / rel, data)


def cmd_install(args, packages):
    vendor = vendor_dir(args.vendor_dir)
    for pkg in load_vendored(args.manifest):
        state = install_vendored(pkg, vendor)
        if state == "installed":
            print("deps: installed {} {} (vendored) -> {}".format(pkg["name"], pkg["version"], pkg["into"]))
        elif state == "absent":
            print(
                "deps: {} {} skipped: no {} in {} (pass --vendor-dir or set EVSE_VENDOR_DIR); its tests will "
                "skip".format(pkg["name"], pkg["version"], pkg["source"], vendor)
            )
    todo = [
        p for p in packages if any(file_state(args.lib, f) != "ok" for f in p["files"])
    ]
    if not todo:
        print(
            f"deps: lib/ matches the pins ({len(packages)} package(s)); nothing to do"
        )
        return EXIT_OK
    for pkg in todo:
        install_package(pkg, args.lib, args.index_url, args.timeout)
        print(
            "deps: installed {} {} -> {}".format(
                pkg["name"], pkg["version"], ", ".join(f["path"] for f in pkg["files"])
            )
        )
    return EXIT_OK


def cmd_check(args, packages):
    bad = 0
    for pkg in packages:
        for entry in pkg["files"]:
            state = file_state(args.lib, entry)
            if state != "ok":
                bad += 1
                print(
                    "{}: {} ({} {})".format(
                        state,
                        Path(args.lib) / entry["path"],
                        pkg["name"],
                        pkg["version"],
                    )
                )
    if bad:
        print(
            f"deps: {bad} pinned file(s) differ: run `tools/deps.py install` (or `make deps`) to restore them"
        )
        return EXIT_DIFFERS
    print(
        f"deps: all {sum(len(p['files']) for p in packages)} pinned files in {args.lib} match"
    )
    return EXIT_OK


def cmd_list(args, packages):
    files = [
        {
            "package": p["name"],
            "version": p["version"],
            "path": f["path"],
            "size": f.get("size"),
            "sha256": f["sha256"],
        }
        for p in packages
        for f in p["files"]
    ]
    json.dump(
        {"lib": str(Path(args.lib).resolve()), "files": files}, sys.stdout, indent=2
    )
    print()
    return EXIT_OK


def build_parser():
    parser = argparse.ArgumentParser(
        prog="deps.py",
        description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 ok, 1 check found differences, 2 failure (message says what to do).",
    )
    parser.add_argument(
        "--lib",
        type=Path,
        default=DEFAULT_LIB,
        help="install directory (default: %(default)s)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=DEFAULT_MANIFEST,
        help="pin file (default: %(default)s)",
    )
    parser.add_argument(
        "--index-url",
        default=DEFAULT_INDEX,
        help="PyPI simple index (default: %(default)s)",
    )
    parser.add_argument(
        "--vendor-dir",
        type=Path,
        default=None,
        help="folder holding the vendored packages (default: $EVSE_VENDOR_DIR or %s)" % DEFAULT_VENDOR,
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="network timeout in seconds (default: 30)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "install", help="make lib/ match the pins (no network when it already does)"
    ).set_defaults(func=cmd_install)
    sub.add_parser(
        "check", help="exit 1 if a pinned file in lib/ is missing or modified"
    ).set_defaults(func=cmd_check)
    sub.add_parser(
        "list", help="print the pinned files as JSON for a deploy tool"
    ).set_defaults(func=cmd_list)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, load_manifest(args.manifest))
    except DepsError as exc:
        print(f"deps: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

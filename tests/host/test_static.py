"""Static checks over the whole repository.

- ruff (configured in ruff.toml: MicroPython-aware, lib/ and .venv excluded)
  reports zero findings on every Python file;
- firmware/ never imports machine, socket, network or other port modules: it
  reaches the board only through the HAL object it is given (README, docs/architecture.md).

The ESP32 type check (mypy against micropython-esp32-stubs) lives in
tests/host/test_esp32_hal.py.
"""

import ast
import glob
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUFF = os.path.join(REPO, ".venv", "bin", "ruff")
PORT_MODULES = {"machine", "socket", "usocket", "network", "esp32", "esp", "ssl", "tls"}


def test_ruff_reports_no_findings():
    proc = subprocess.run(
        [RUFF, "check", "--no-cache", "--output-format", "concise", "."],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, "ruff findings (fix them, or `ruff check --fix` for the safe ones):\n" + (
        proc.stdout + proc.stderr
    )


def test_ruff_config_excludes_vendored_and_venv_code():
    proc = subprocess.run(
        [RUFF, "check", "--no-cache", "--show-files", "."], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    files = proc.stdout.splitlines()
    assert any(f.endswith(os.path.join("firmware", "charger.py")) for f in files), "ruff does not see firmware/"
    assert not [f for f in files if os.sep + "lib" + os.sep in f or os.sep + ".venv" + os.sep in f]


def _imports(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module.split(".")[0]


def test_firmware_never_imports_port_modules():
    bad = []
    for path in sorted(glob.glob(os.path.join(REPO, "firmware", "*.py"))):
        for line, mod in _imports(path):
            if mod in PORT_MODULES:
                bad.append("%s:%d imports %s" % (os.path.relpath(path, REPO), line, mod))
    assert bad == [], "firmware/ must reach the board only through the HAL object:\n" + "\n".join(bad)

"""Every board implementation keeps the board contract (hal/contract.py).

The boards are MicroPython code that CPython cannot import as it is
(`machine`, viper, `const`), and MicroPython keeps no parameter names at run
time, so the check reads the source: each class that implements the contract
(the ESP32 driver, the simulated board, the test fakes and their subclasses,
found in hal/, sim/ and tests/) must define, itself or through a base other
than the contract, every method of `hal.contract.Board` with the documented
parameters (the same names in the same order; extra parameters only with a
default), and every attribute the contract declares (`name`, `adc_channels`,
... and `net`, `netif`). Inheriting the contract's NotImplementedError stub does
not count. The same for the network interface contract (`NetIf`): HostIf,
WlanIf, LanIf (hal/net.py) and SimNetIf (sim/net.py).
"""

import ast
import glob
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTRACT = os.path.join(REPO, "hal", "contract.py")
# Classes that must be found, so that discovery cannot miss them silently.
EXPECTED = {"Esp32Board", "SimBoard", "FakeBoard"}
# Not boards: host-side serial sessions and tools.
SEARCHED = ("hal", "sim", os.path.join("tests", "device"), os.path.join("tests", "host"))


def _classes(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    return [n for n in tree.body if isinstance(n, ast.ClassDef)]


def _base_names(cls):
    out = []
    for b in cls.bases:
        if isinstance(b, ast.Name):
            out.append(b.id)
        elif isinstance(b, ast.Attribute):
            out.append(b.attr)
    return out


def _members(cls):
    """(methods {name: FunctionDef}, attributes {name}) a class body defines
    itself: defs, class-level assignments, `self.x = ...` in its methods."""
    methods, attrs = {}, set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list):
                attrs.add(node.name)
            else:
                methods[node.name] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    attrs.add(t.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            attrs.add(node.target.id)
    for fn in methods.values():
        for node in ast.walk(fn):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []  # fmt: skip
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    attrs.add(t.attr)
    # `name = other_method` at class level: an alias of a def
    for node in cls.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id in methods:
            for t in node.targets:
                if isinstance(t, ast.Name):
                    methods[t.id] = methods[node.value.id]
                    attrs.discard(t.id)
    return methods, attrs


def _contract(iface="Board"):
    (cls,) = [c for c in _classes(CONTRACT) if c.name == iface]
    methods, attrs = _members(cls)
    methods = {k: v for k, v in methods.items() if not k.startswith("_")}
    if iface == "Board":
        attrs |= {"net", "netif"}  # "every board also has `net` ... and `netif`" (its comment)
    return methods, attrs


def _params(fn):
    a = fn.args
    pos = [p.arg for p in a.posonlyargs + a.args]
    return pos, len(a.defaults), a.vararg is not None, a.kwarg is not None


def _signature_problem(want, got):
    """None when `got` accepts every call the contract documents for `want`."""
    wpos, _wdef, _, _ = _params(want)
    gpos, gdef, gvar, gkw = _params(got)
    text = "(%s)" % ", ".join(gpos)
    if gpos[: len(wpos)] != wpos:
        return "has %s, the contract says (%s)" % (text, ", ".join(wpos))
    if len(gpos) - gdef > len(wpos):
        return "has %s: parameters beyond the contract's (%s) need defaults" % (text, ", ".join(wpos))
    if gvar or gkw:
        return "has %s with *args/**kwargs: say the parameters" % text
    return None


def _imported_names(path):
    """{local name: (module file, name)} of a file's `from M import N [as A]`
    (M relative to the repository, or a sibling module as tests/device uses)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            for cand in (os.path.join(REPO, *parts) + ".py", os.path.join(os.path.dirname(path), *parts) + ".py"):
                if os.path.exists(cand):
                    for a in node.names:
                        out[a.asname or a.name] = (os.path.abspath(cand), a.name)
                    break
    return out


def _all_classes():
    """{(path, name): ClassDef} over the searched folders, with hal/contract.py."""
    found = {}
    for folder in SEARCHED:
        for path in sorted(glob.glob(os.path.join(REPO, folder, "**", "*.py"), recursive=True)):
            for cls in _classes(path):
                found[(os.path.abspath(path), cls.name)] = cls
    return found


CONTRACT_KEY = (os.path.abspath(CONTRACT), "Board")
CONTRACT_KEYS = {(os.path.abspath(CONTRACT), "Board"), (os.path.abspath(CONTRACT), "NetIf")}


def _bases(key, every):
    """The (path, name) keys of a class's bases that can be found."""
    path, _name = key
    imports = _imported_names(path) if os.path.exists(path) else {}
    out = []
    for base in _base_names(every[key]):
        if (path, base) in every:
            out.append((path, base))
        elif base in imports and imports[base] in every:
            out.append(imports[base])
    return out


def boards(iface="Board"):
    """Every class that implements the contract: derives from hal.contract's
    Board, or defines two or more of its methods beyond the clock (a fake of the
    time module has ticks_ms() too), or derives from such a class (subclasses
    override methods too)."""
    want_methods, _ = _contract(iface)
    # Names that other classes use too do not count towards "implements it":
    # a time fake has ticks_ms(), a test server up() and down().
    board_only = {m for m in want_methods if not m.startswith("ticks_") and m not in ("up", "down", "state")}
    every = _all_classes()
    contract_key = (os.path.abspath(CONTRACT), iface)
    picked = set()
    for key, cls in every.items():
        if key in CONTRACT_KEYS:
            continue
        own, _ = _members(cls)
        if contract_key in _bases(key, every) or len(set(own) & board_only) >= 2:
            picked.add(key)
    grew = True
    while grew:
        grew = False
        for key in every:
            if key not in picked and key not in CONTRACT_KEYS and set(_bases(key, every)) & picked:
                picked.add(key)
                grew = True
    return {(name, path): every[(path, name)] for path, name in picked}, every


def _resolve(key, every, seen=()):
    """Methods and attributes of a class with its bases (the contract's Board,
    whose methods are stubs, excluded)."""
    methods, attrs = _members(every[key])
    for base in _bases(key, every):
        if base in CONTRACT_KEYS or base in seen:
            continue
        bm, ba = _resolve(base, every, seen + (key,))
        for k, v in bm.items():
            methods.setdefault(k, v)
        attrs |= ba
    return methods, attrs


def _problems(key, every, iface="Board"):
    want_methods, want_attrs = _contract(iface)
    methods, attrs = _resolve(key, every)
    out = []
    for name, fn in sorted(want_methods.items()):
        if name not in methods:
            out.append("no %s()" % name)
            continue
        p = _signature_problem(fn, methods[name])
        if p:
            out.append("%s() %s" % (name, p))
    for name in sorted(want_attrs):
        if name not in attrs and name not in methods:
            out.append("no attribute %s" % name)
    return out


BOARDS, EVERY = boards()
NETIFS, _ = boards("NetIf")


def test_discovery_finds_the_esp32_the_simulated_and_the_fake_boards_and_every_network_interface():
    names = {n for n, _ in BOARDS}
    assert EXPECTED <= names, sorted(names)
    assert {"HostIf", "WlanIf", "LanIf", "SimNetIf"} <= {n for n, _ in NETIFS}, sorted(NETIFS)


@pytest.mark.parametrize("key", sorted(NETIFS), ids=["%s:%s" % (os.path.relpath(p, REPO), n) for n, p in sorted(NETIFS)])
def test_network_interface_provides_every_netif_method_with_its_documented_signature(key):
    name, path = key
    problems = _problems((path, name), EVERY, "NetIf")
    assert problems == [], "%s (%s) breaks hal/contract.py's NetIf:\n  %s" % (
        name, os.path.relpath(path, REPO), "\n  ".join(problems))


@pytest.mark.parametrize("key", sorted(BOARDS), ids=["%s:%s" % (os.path.relpath(p, REPO), n) for n, p in sorted(BOARDS)])
def test_board_provides_every_contract_method_with_its_documented_signature(key):
    name, path = key
    problems = _problems((path, name), EVERY)
    assert problems == [], "%s (%s) breaks hal/contract.py:\n  %s" % (key[0], os.path.relpath(key[1], REPO),
                                                                     "\n  ".join(problems))


def test_the_check_catches_a_missing_method_and_a_renamed_or_extra_parameter():
    src = (
        "class Bad:\n"
        "    name = 'x'\n"
        "    def ticks_ms(self): return 0\n"
        "    def ticks_diff(self, a, c): return 0\n"  # renamed parameter
        "    def pilot_pwm(self, duty_pm, extra): pass\n"  # an extra one without default
        "    def contactor(self, closed, why=None): pass\n"  # extra with default: fine
    )
    (cls,) = [n for n in ast.parse(src).body if isinstance(n, ast.ClassDef)]
    problems = _problems(("<test>", "Bad"), {("<test>", "Bad"): cls})
    assert "no wait_tick()" in problems
    assert any(p.startswith("ticks_diff() has (self, a, c)") for p in problems), problems
    assert any(p.startswith("pilot_pwm() has (self, duty_pm, extra)") for p in problems), problems
    assert not [p for p in problems if p.startswith("contactor()")], problems
    assert "no attribute adc_channels" in problems and "no attribute name" not in problems

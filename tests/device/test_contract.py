# The board contract at run time, on MicroPython: the simulated board and the
# charger tests' fake answer every method and attribute of hal/contract.py's
# Board, none of them with the contract's NotImplementedError stub. (MicroPython
# keeps no parameter names: tests/host/test_contract.py checks the signatures,
# and the ESP32 driver, which needs `machine`, from the source.)

from fakeboard import FakeBoard

from hal import contract
from sim.board import SimBoard


def _contract_names():
    return [n for n in dir(contract.Board) if not n.startswith("_")]


def _check(board):
    missing = []
    for name in _contract_names() + ["net", "netif"]:
        if not hasattr(board, name):
            missing.append(name)
            continue
        want = getattr(contract.Board, name, None)
        if callable(want):
            assert callable(getattr(board, name)), name
            if getattr(type(board), name, None) is want:
                missing.append(name + " (the contract's stub)")
    assert missing == [], "%s lacks %s" % (board.name, missing)


def test_the_simulated_board_answers_every_contract_method_and_attribute():
    _check(SimBoard())


def test_the_fake_board_answers_every_contract_method_and_attribute():
    _check(FakeBoard())


def test_the_check_sees_a_board_that_inherits_a_stub():
    class Partial(FakeBoard):
        led = contract.Board.led

    try:
        _check(Partial())
    except AssertionError as e:
        assert "led" in str(e)
    else:
        raise AssertionError("a stub passed for an implementation")

# OCPP Reset on the simulated board (firmware/ocpp.py): the transaction ends
# with reason SoftReset/HardReset, the Accepted goes out first, a soft reset
# waits for its StopTransaction to be answered (bounded), then the firmware
# shuts down (outputs safe) and the board resets (SimBoard.reset() on the
# unix port counts it); the queue on flash survives it.
# timeout: 120
from test_ocpp_reserve import _Rig

from firmware import ocpp


def _charging(rig):
    rig.sim.set_ev("C")
    rig.run(500)
    rig.authorize_answer("CARD", {"status": "Accepted"})
    rig.run(3000)
    assert rig.fw.charger.contactor_on


def _link_sends_answers(rig):
    """What the link thread does with the loop's answers: sends them."""
    cp = rig.cp
    n = len(cp._results)
    cp._results.clear()
    cp._answers_out += n


def _central_system_answers_the_queue(rig):
    cp = rig.cp
    for e in list(cp.txq.entries):
        cp._done.append((e[0], 500 if e[1] == "StartTransaction" else None))
    rig.run(200)


def test_soft_reset_stops_the_transaction_waits_for_its_delivery_then_resets_the_board():
    rig = _Rig(require_auth=True)
    try:
        _charging(rig)
        _central_system_answers_the_queue(rig)  # StartTransaction answered: transaction 500
        assert rig.call("Reset", {"type": "Soft"}) == {"status": "Accepted"}
        _link_sends_answers(rig)
        rig.run(5000)  # the car is asked to stop, the contactor opens, the session ends
        ch = rig.fw.charger
        assert not ch.contactor_on and not ch.session_active
        stop = [e for e in rig.cp.txq.entries if e[1] == "StopTransaction"]
        assert len(stop) == 1 and stop[0][3]["reason"] == "SoftReset"
        assert rig.sim.resets == 0  # the StopTransaction is not answered yet
        _central_system_answers_the_queue(rig)
        rig.run(200)
        assert rig.sim.resets == 1
        assert not rig.sim.contacts_closed and rig.fw.ocpp.stats["resets"] == 1
        rig.run(2000)
        assert rig.sim.resets == 1  # once
    finally:
        rig.close()


def test_hard_reset_resets_once_its_accepted_is_out_and_the_stop_stays_queued_for_after_the_reboot():
    rig = _Rig(require_auth=True)
    try:
        _charging(rig)
        assert rig.call("Reset", {"type": "Hard"}) == {"status": "Accepted"}
        _link_sends_answers(rig)
        rig.run(5000)
        assert rig.sim.resets == 1  # without waiting for the StopTransaction's answer
        q = ocpp.TxQueue(rig.d + "/" + ocpp.TX_FILE)  # what the next boot finds on flash
        assert [e[1] for e in q.entries][-1] == "StopTransaction"
        assert q.entries[-1][3]["reason"] == "HardReset"
    finally:
        rig.close()


def test_an_idle_reset_waits_for_its_accepted_to_go_out():
    rig = _Rig(require_auth=True)
    try:
        rig.run(500)
        assert rig.call("Reset", {"type": "Hard"}) == {"status": "Accepted"}
        rig.run(1000)
        assert rig.sim.resets == 0
        _link_sends_answers(rig)
        rig.run(200)
        assert rig.sim.resets == 1
    finally:
        rig.close()


def test_a_reset_whose_accepted_or_stop_is_never_delivered_resets_all_the_same():
    rig = _Rig(require_auth=True)
    try:
        _charging(rig)
        assert rig.call("Reset", {"type": "Soft"}) == {"status": "Accepted"}
        rig.run(ocpp.RESET_SOFT_MS + 4000)  # the link never sent anything
        assert rig.sim.resets == 1
    finally:
        rig.close()

"""The MQTT link over TLS (broker certificate verified against a CA file) and
with a user name and password, against a real Mosquitto configured for each.
Certificates are made for the test with openssl; the link runs on the unix
port through tests/host/test_link.py's Driver (the main loop as a child, run
until the test has seen what it waits for: a TLS handshake may take long on a
loaded machine, and no test here depends on how long), with umqtt.simple 1.3.4
and 1.8.0 (the `umqtt` fixture)."""

import os
import subprocess

import pytest
from broker import Broker
from test_link import Driver, _cfg, umqtt_fixture  # noqa: F401 - the umqtt fixture

pytestmark = pytest.mark.usefixtures("umqtt")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _pki(d):
    """A CA, a server certificate for localhost signed by it, and a second,
    unrelated CA. Returns their paths."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "30", "-subj", "/CN=evse-test-ca", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=d)  # fmt: skip
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "30", "-extfile", "ext.cnf", cwd=d)  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.crt",
             "-days", "30", "-subj", "/CN=some-other-ca", cwd=d)  # fmt: skip
    for name in os.listdir(d):
        os.chmod(os.path.join(d, name), 0o644)  # mosquitto drops to its own user
    return {k: os.path.join(d, k + ".crt") for k in ("ca", "server", "other")}


def _tls_broker():
    """A TLS broker; its files live in the broker's own folder (mosquitto drops
    to its own user and cannot read pytest's private temp folders)."""
    b = Broker()
    d = os.path.join(b.dir, "pki")
    os.mkdir(d)
    os.chmod(d, 0o755)
    pki = _pki(d)
    with open(b.conf, "a") as f:
        f.write("cafile %s\ncertfile %s\nkeyfile %s\n" % (pki["ca"], pki["server"], os.path.join(d, "server.key")))
    return b.start(), pki


def test_tls_with_the_brokers_ca_connects_and_delivers_a_session(tmp_path):
    b, pki = _tls_broker()
    drv = Driver(tmp_path, _cfg(b.port, mqtt_host="localhost", mqtt_tls=True, mqtt_ca=pki["ca"]),
                 sessions=["tls-1"])  # fmt: skip
    try:
        drv.wait_for("connected", 60)
        acked = drv.wait_for("acked", 60)
        assert acked["session"] == "tls-1"  # the broker's PUBACK came back over TLS
        drv.finish()
        assert drv.kinds("stats")[0]["stats"]["connects"] >= 1
    finally:
        drv.kill()
        b.close()


def test_tls_refuses_a_broker_whose_certificate_another_ca_signed(tmp_path):
    b, pki = _tls_broker()
    drv = Driver(tmp_path, _cfg(b.port, mqtt_host="localhost", mqtt_tls=True, mqtt_ca=pki["other"]),
                 sessions=["tls-2"])  # fmt: skip
    try:
        drv.wait_for("failed", 60)  # a whole attempt: TCP connect, handshake, refusal
        lines = drv.finish()
        stats = drv.kinds("stats")[0]["stats"]
        assert stats["connects"] == 0 and stats["reconnects"] >= 1, stats
        assert not [r for r in lines if r["kind"] in ("connected", "acked")]
    finally:
        drv.kill()
        b.close()


def _auth_broker():
    b = Broker()
    pw = os.path.join(b.dir, "passwd")
    subprocess.run(["mosquitto_passwd", "-b", "-c", pw, "charger7", "s3cret"], check=True, capture_output=True)
    os.chmod(pw, 0o644)
    with open(b.conf) as f:
        conf = f.read().replace("allow_anonymous true", "allow_anonymous false\npassword_file %s" % pw)
    with open(b.conf, "w") as f:
        f.write(conf)
    return b.start()


def test_user_and_password_are_sent_and_a_wrong_password_is_refused(tmp_path):
    b = _auth_broker()
    try:
        good = Driver(tmp_path, _cfg(b.port, mqtt_user="charger7", mqtt_password="s3cret"),
                      sessions=["auth-1"])  # fmt: skip
        try:
            good.wait_for("connected", 60)
            assert good.wait_for("acked", 60)["session"] == "auth-1"
            good.finish()
        finally:
            good.kill()
        bad_dir = tmp_path / "bad"
        bad_dir.mkdir()
        bad = Driver(bad_dir, _cfg(b.port, mqtt_user="charger7", mqtt_password="wrong"))
        try:
            bad.wait_for("failed", 60)  # the broker's CONNACK refused it
            bad.finish()
            stats = bad.kinds("stats")[0]["stats"]
            assert stats["connects"] == 0 and stats["reconnects"] >= 1, stats
            assert "MQTTException(5" in (stats["last_error"] or ""), stats  # 5: not authorised
        finally:
            bad.kill()
    finally:
        b.close()

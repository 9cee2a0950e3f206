"""`shelfgate pki`: the CA and certificates it writes, their permissions, and what it refuses to do."""

from __future__ import annotations

import os
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from edge.config import Identifier
from shelfgate.cli import build_parser
from shelfgate.pki import (
    CA_DAYS,
    LEAF_DAYS,
    PkiError,
    PkiLayout,
    check_identifier,
    init_ca,
    issue_broker,
    issue_gateway,
    issue_hub,
)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def cn(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def pki_cli(*args: str) -> int:
    """`shelfgate pki …` through the real parser, in-process (without the CLI's logging setup)."""
    parsed = build_parser().parse_args(["pki", *args])
    code: int = parsed.func(parsed)
    return code


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_init_writes_the_documented_layout_with_private_keys_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the modes must not depend on the operator's umask
    try:
        ca, broker = init_ca(tmp_path)
        gateway = issue_gateway(tmp_path, "s042")
        hub = issue_hub(tmp_path)
    finally:
        os.umask(old_umask)
    layout = PkiLayout(tmp_path)
    assert (ca.cert_path, ca.key_path) == (layout.ca_cert, layout.ca_key)
    assert (broker.cert_path, broker.key_path) == (
        tmp_path / "broker/broker.crt",
        tmp_path / "broker/broker.key",
    )
    assert (gateway.cert_path, gateway.key_path) == (
        tmp_path / "gateways/s042.crt",
        tmp_path / "gateways/s042.key",
    )
    assert (hub.cert_path, hub.key_path) == (tmp_path / "hubs/main.crt", tmp_path / "hubs/main.key")
    for issued in (ca, broker, gateway, hub):
        assert mode(issued.key_path) == 0o600
        assert mode(issued.cert_path) == 0o644
        assert b"PRIVATE KEY" in issued.key_path.read_bytes()
    assert {mode(layout.ca_dir), mode(layout.gateways_dir), mode(layout.hubs_dir)} == {0o700}
    assert mode(layout.broker_dir) == 0o755
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name.startswith(".")) == []  # no temp files left


def test_certificates_carry_the_identities_and_constraints_the_broker_relies_on(tmp_path: Path) -> None:
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    init_ca(tmp_path, broker_sans=["localhost", "127.0.0.1", "mqtt.store.example", "10.0.0.5"], now=now)
    issue_gateway(tmp_path, "s042", now=now)
    issue_hub(tmp_path, "hq-2", days=30, now=now)
    layout = PkiLayout(tmp_path)
    ca, broker = load(layout.ca_cert), load(layout.broker_cert)
    gateway, hub = load(layout.gateway_cert("s042")), load(layout.hub_cert("hq-2"))

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.not_valid_after_utc == now + timedelta(days=CA_DAYS)

    assert (cn(gateway), cn(hub), cn(broker)) == ("s042", "hub:hq-2", "shelfgate-broker")
    assert eku(gateway) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert eku(hub) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert eku(broker) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "mqtt.store.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.5"]
    for leaf in (broker, gateway, hub):
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert leaf.not_valid_before_utc < now  # backdated for clock skew
    assert gateway.not_valid_after_utc == now + timedelta(days=LEAF_DAYS)
    assert hub.not_valid_after_utc == now + timedelta(days=30)


def test_openssl_accepts_each_certificate_only_for_its_purpose(tmp_path: Path) -> None:
    init_ca(tmp_path)
    issue_gateway(tmp_path, "s1")
    layout = PkiLayout(tmp_path)

    def verify(cert: Path, purpose: str) -> bool:
        done = subprocess.run(
            ["openssl", "verify", "-CAfile", str(layout.ca_cert), "-purpose", purpose, str(cert)],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.returncode == 0

    assert verify(layout.gateway_cert("s1"), "sslclient")
    assert not verify(
        layout.gateway_cert("s1"), "sslserver"
    )  # a leaked gateway key cannot pose as the broker
    assert verify(layout.broker_cert, "sslserver")
    assert not verify(layout.broker_cert, "sslclient")


def test_a_strict_tls_handshake_succeeds_with_the_issued_certificates(tmp_path: Path) -> None:
    """Python 3.13 turns on VERIFY_X509_STRICT by default; the certificates must already pass it."""
    init_ca(tmp_path)
    issue_gateway(tmp_path, "s1")
    layout = PkiLayout(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(layout.broker_cert, layout.broker_key)
    server.load_verify_locations(layout.ca_cert)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=str(layout.ca_cert))
    client.load_cert_chain(layout.gateway_cert("s1"), layout.gateway_key("s1"))
    for context in (server, client):
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):  # a TLS 1.3 handshake needs a few flights
        for name, end in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    peer = s.getpeercert()
    assert peer is not None
    assert ((("commonName", "s1"),)) in peer["subject"]


def test_an_existing_ca_or_certificate_is_never_replaced_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pki_cli("--dir", str(tmp_path), "init") == 0
    layout = PkiLayout(tmp_path)
    ca_before = layout.ca_cert.read_bytes()
    key_before = layout.ca_key.read_bytes()
    assert pki_cli("--dir", str(tmp_path), "init") == 2
    assert "a CA already exists" in capsys.readouterr().err
    assert (layout.ca_cert.read_bytes(), layout.ca_key.read_bytes()) == (ca_before, key_before)

    assert pki_cli("--dir", str(tmp_path), "issue-gateway", "s1") == 0
    gateway_key = layout.gateway_key("s1").read_bytes()
    assert pki_cli("--dir", str(tmp_path), "issue-gateway", "s1") == 2
    assert "--force" in capsys.readouterr().err
    assert layout.gateway_key("s1").read_bytes() == gateway_key
    assert pki_cli("--dir", str(tmp_path), "issue-gateway", "s1", "--force") == 0
    assert layout.gateway_key("s1").read_bytes() != gateway_key
    assert mode(layout.gateway_key("s1")) == 0o600

    assert pki_cli("--dir", str(tmp_path), "init", "--force") == 0
    assert layout.ca_cert.read_bytes() != ca_before
    assert "re-issue every gateway and hub certificate" in capsys.readouterr().out


def test_issuing_without_a_ca_or_with_bad_names_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pki_cli("--dir", str(tmp_path / "none"), "issue-gateway", "s1") == 2
    assert "run `shelfgate pki --dir" in capsys.readouterr().err
    init_ca(tmp_path)
    for bad in ("s/1", "s+", "#", "hub:main", "", "-lead", "x" * 65, "a b", "ü"):
        with pytest.raises(PkiError, match="is not an identifier"):
            issue_gateway(tmp_path, bad)
    with pytest.raises(PkiError, match="hub name"):
        issue_hub(tmp_path, "a/b")
    with pytest.raises(PkiError, match="neither an IP address nor a DNS name"):
        issue_broker(tmp_path, sans=["bad name"], force=True)
    assert pki_cli("--dir", str(tmp_path), "issue-gateway", "../escape") == 2
    assert not (tmp_path / "escape.key").exists()


def test_the_cli_prints_paths_and_fingerprints_never_key_material(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pki_cli("--dir", str(tmp_path), "init", "--san", "broker.lan") == 0
    assert pki_cli("--dir", str(tmp_path), "issue-gateway", "s7") == 0
    assert pki_cli("--dir", str(tmp_path), "issue-hub", "hq") == 0
    out = capsys.readouterr()
    printed = out.out + out.err
    layout = PkiLayout(tmp_path)
    for key in (layout.ca_key, layout.broker_key, layout.gateway_key("s7"), layout.hub_key("hq")):
        assert str(key) in printed
        for line in key.read_text(encoding="ascii").splitlines():
            if not line.startswith("-----"):
                assert line not in printed
    assert "PRIVATE KEY" not in printed
    assert "hub: hub:hq" in printed
    assert "SHA-256" in printed


@given(st.text(max_size=70))
def test_property_store_ids_follow_the_gateway_config_grammar(value: str) -> None:
    """A certificate can be issued for exactly the store ids a gateway config accepts."""
    try:
        TypeAdapter(Identifier).validate_python(value)
        config_accepts = True
    except ValidationError:
        config_accepts = False
    try:
        check_identifier(value, "store id")
        pki_accepts = True
    except PkiError:
        pki_accepts = False
    assert pki_accepts == config_accepts

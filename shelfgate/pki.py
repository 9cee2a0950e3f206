"""`shelfgate pki`: a small private CA for the MQTT broker, the store gateways and the hub (mutual TLS).

Why a private CA: the broker authenticates every client by its certificate (Mosquitto `require_certificate
true`) and takes the certificate's Common Name as the MQTT username (`use_identity_as_username true`); the
ACL (`config/mosquitto/acl`) then lets a store write only under its own topic root. So the CN *is* the
authorisation identity, and only certificates we issue may be trusted — a public CA would vouch for anyone.

Key type: ECDSA on P-256 (secp256r1) with SHA-256. Every TLS stack a store gateway, the hub or a broker is
likely to use accepts it in TLS 1.2 and 1.3: OpenSSL (Mosquitto, Python's ``ssl`` under paho/aiomqtt),
mbedTLS and BearSSL on microcontrollers, Java, Go, browsers (CA/Browser Forum Baseline Requirements §6.1.5
list it). Ed25519 would be smaller and faster, but RFC 8410 certificates are unsupported by many embedded
TLS stacks and by some brokers and MQTT clients, and nothing here is CPU-bound. RSA-2048 would also work but
makes larger handshakes on a slow uplink for no gain.

Identities (the certificate CN, which becomes the MQTT username):

- a store gateway: the store's id (`store_id` in its config, the `{store_id}` of the topic root
  ``shelfgate/v1/stores/{store_id}/``), same grammar as `edge.config.Identifier`;
- a hub worker: ``hub:{name}``. The colon cannot occur in a store id, so no gateway certificate can ever
  carry a hub identity, whatever the store is called;
- the broker: CN ``shelfgate-broker`` with subjectAltNames (RFC 5280 §4.2.1.6) for ``localhost`` and
  ``127.0.0.1`` plus any given; clients check the name they dial against them (Python's
  ``ssl.create_default_context`` does).

Layout under the PKI directory (default ``var/pki``)::

    ca/ca.crt                 the CA certificate: copy to the broker, every gateway and the hub
    ca/ca.key                 the CA key (0600, dir 0700): keep it off the broker and gateways
    broker/broker.crt|.key    the broker's server certificate and key (key 0600)
    gateways/{store_id}.crt|.key   one client certificate per store (keys 0600, dir 0700)
    hubs/{name}.crt|.key      one client certificate per hub worker name (keys 0600, dir 0700)

Private keys are PKCS #8 PEM, unencrypted (the services start unattended), written 0600 through an
exclusive temporary file and an atomic rename, and never printed or logged: commands print paths, the
identity, the expiry and the SHA-256 fingerprint of the certificate only.

This module imports `cryptography` lazily (inside the functions), so building the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shelfgate.exits import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

DEFAULT_PKI_DIR: Final = Path("var/pki")
CA_DAYS: Final = 3650
"""Ten years: replacing a CA means re-issuing every certificate of the fleet."""
LEAF_DAYS: Final = 825
"""About 27 months for gateway, hub and broker certificates: long enough that a store is not cut off by a
forgotten renewal within a normal maintenance cycle, short enough that a lost key stops working by itself
(825 days is also the ceiling the CA/Browser Forum used for server certificates 2018–2020)."""
BACKDATE: Final = timedelta(hours=1)
"""notBefore is set this far in the past, so a client or broker whose clock runs a little behind (a
Raspberry Pi without an RTC before NTP sync) does not reject a certificate issued minutes ago."""

BROKER_CN: Final = "shelfgate-broker"
DEFAULT_BROKER_SANS: Final = ("localhost", "127.0.0.1")
HUB_IDENTITY_PREFIX: Final = "hub:"
DEFAULT_HUB_NAME: Final = "main"
ORGANIZATION: Final = "shelfgate"

IDENTIFIER_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""Store ids and hub names: the grammar of `edge.config.Identifier` (1–64 characters). It has no ``/``,
``+``, ``#`` or ``:``, so an identity can never widen an ACL ``%u`` pattern or pose as a hub."""
IDENTIFIER_MAX_LEN: Final = 64
_IDENTIFIER: Final = re.compile(IDENTIFIER_PATTERN)

KEY_MODE: Final = 0o600
PRIVATE_DIR_MODE: Final = 0o700


class PkiError(Exception):
    """A PKI operation was refused or failed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class PkiLayout:
    """Where every file of one PKI directory lives (see the module docstring)."""

    root: Path

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def broker_cert(self) -> Path:
        return self.broker_dir / "broker.crt"

    @property
    def broker_key(self) -> Path:
        return self.broker_dir / "broker.key"

    @property
    def gateways_dir(self) -> Path:
        return self.root / "gateways"

    def gateway_cert(self, store_id: str) -> Path:
        return self.gateways_dir / f"{store_id}.crt"

    def gateway_key(self, store_id: str) -> Path:
        return self.gateways_dir / f"{store_id}.key"

    @property
    def hubs_dir(self) -> Path:
        return self.root / "hubs"

    def hub_cert(self, name: str) -> Path:
        return self.hubs_dir / f"{name}.crt"

    def hub_key(self, name: str) -> Path:
        return self.hubs_dir / f"{name}.key"


@dataclass(frozen=True, slots=True)
class Issued:
    """One certificate written to disk (never the key's content)."""

    identity: str
    """The subject CN: what Mosquitto takes as the MQTT username."""
    cert_path: Path
    key_path: Path
    not_after: datetime
    fingerprint_sha256: str
    """Colon-separated hex of SHA-256 over the DER certificate, as `openssl x509 -fingerprint -sha256` prints it."""


def check_identifier(value: str, what: str) -> str:
    """`value` if it is a valid store id / hub name, else PkiError naming `what`."""
    if not (0 < len(value) <= IDENTIFIER_MAX_LEN) or not _IDENTIFIER.fullmatch(value):
        raise PkiError(
            f"{what} {value!r} is not an identifier: 1-{IDENTIFIER_MAX_LEN} characters of A-Z a-z 0-9 _ . -,"
            " starting with a letter or digit"
        )
    return value


def hub_identity(name: str) -> str:
    """The certificate CN (and MQTT username) of hub worker `name`."""
    return HUB_IDENTITY_PREFIX + check_identifier(name, "hub name")


# --- writing files ------------------------------------------------------------------------------------------


def _ensure_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write through an exclusive temporary file created with `mode`, fsync, then rename into place.

    The key is never readable by anyone else, not even for an instant: the temporary file is created 0600
    (O_EXCL refuses a pre-planted file or symlink), and the umask can only remove bits.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _refuse_overwrite(paths: Iterable[Path], force: bool, what: str) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise PkiError(f"{what} already exists ({existing[0]}); pass --force to replace it")


# --- certificates ------------------------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """`AA:BB:…` over the DER encoding, comparable with `openssl x509 -noout -fingerprint -sha256`."""
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _name(common_name: str, unit: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _load_ca(layout: PkiLayout) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not layout.ca_cert.exists() or not layout.ca_key.exists():
        raise PkiError(f"no CA in {layout.root}: run `shelfgate pki --dir {layout.root} init` first")
    cert = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(layout.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{layout.ca_key} is not an EC private key")
    if cert.public_key() != key.public_key():
        raise PkiError(f"{layout.ca_key} does not belong to {layout.ca_cert}")
    return cert, key


def _san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses for subjectAltName; an entry that parses as an IP is an iPAddress."""
    from cryptography import x509

    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in names:
        name = raw.strip()
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?", name):
                raise PkiError(f"subjectAltName {name!r} is neither an IP address nor a DNS name") from None
            out.append(x509.DNSName(name))
    return out


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """RFC 5280 §4.2.1.3: every certificate signs (ECDSA handshakes); only the CA signs certificates and CRLs."""
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write_pair(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    *,
    identity: str,
    cert_path: Path,
    key_path: Path,
    dir_mode: int,
) -> Issued:
    """Write the key (0600) before the certificate, so a certificate on disk always has its key beside it."""
    _ensure_dir(cert_path.parent, dir_mode)
    _write_atomic(key_path, _key_pem(key), KEY_MODE)
    _write_atomic(cert_path, _cert_pem(cert), 0o644)
    return Issued(identity, cert_path, key_path, cert.not_valid_after_utc, fingerprint_sha256(cert))


def _issue(
    layout: PkiLayout,
    *,
    identity: str,
    unit: str,
    server: bool,
    sans: Sequence[str],
    days: int,
    force: bool,
    what: str,
    cert_path: Path,
    key_path: Path,
    dir_mode: int,
    now: datetime | None,
) -> Issued:
    """Refuse to overwrite (unless `force`), sign a new leaf key pair with the CA, write both files.

    The one body behind `issue_broker`, `issue_gateway` and `issue_hub`: they differ only in identity, unit,
    usage (server or client), subjectAltNames, paths and directory mode.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    _refuse_overwrite((cert_path, key_path), force, what)
    if days < 1:
        raise PkiError(f"validity must be at least 1 day, got {days}")
    ca_cert, ca_key = _load_ca(layout)
    start = (now or datetime.now(UTC)) - BACKDATE
    not_after = min(start + BACKDATE + timedelta(days=days), ca_cert.not_valid_after_utc)
    key = _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(identity, unit))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        # RFC 5280 §4.2.1.12: OpenSSL refuses a server certificate offered as a client one and vice versa,
        # so a leaked gateway key cannot impersonate the broker.
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(_san_entries(sans)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _write_pair(
        cert, key, identity=identity, cert_path=cert_path, key_path=key_path, dir_mode=dir_mode
    )


def init_ca(
    root: Path,
    *,
    force: bool = False,
    ca_days: int = CA_DAYS,
    broker_sans: Sequence[str] = DEFAULT_BROKER_SANS,
    broker_days: int = LEAF_DAYS,
    now: datetime | None = None,
) -> tuple[Issued, Issued]:
    """Create the CA (refused if one exists, unless `force`) and the broker's server certificate.

    Replacing a CA invalidates every certificate it issued: re-issue the broker, gateways and hubs after it.
    Returns (ca, broker).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    if ca_days < 1:
        raise PkiError(f"CA validity must be at least 1 day, got {ca_days}")
    layout = PkiLayout(root)
    _refuse_overwrite((layout.ca_cert, layout.ca_key), force, "a CA")
    start = (now or datetime.now(UTC)) - BACKDATE
    key = _new_key()
    name = _name(f"shelfgate CA {start:%Y-%m-%d}", "ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + BACKDATE + timedelta(days=ca_days))
        # path_length=0: this CA signs leaf certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    ca = _write_pair(
        ca_cert,
        key,
        identity=ca_cert.subject.rfc4514_string(),
        cert_path=layout.ca_cert,
        key_path=layout.ca_key,
        dir_mode=PRIVATE_DIR_MODE,
    )
    broker = issue_broker(root, sans=broker_sans, days=broker_days, force=True, now=now)
    return ca, broker


def issue_broker(
    root: Path,
    *,
    sans: Sequence[str] = DEFAULT_BROKER_SANS,
    days: int = LEAF_DAYS,
    force: bool = False,
    now: datetime | None = None,
) -> Issued:
    """The broker's server certificate, valid for the names and addresses in `sans`."""
    layout = PkiLayout(root)
    if not any(s.strip() for s in sans):
        raise PkiError("the broker certificate needs at least one subjectAltName")
    return _issue(
        layout,
        identity=BROKER_CN,
        unit="broker",
        server=True,
        sans=sans,
        days=days,
        force=force,
        what="a broker certificate",
        cert_path=layout.broker_cert,
        key_path=layout.broker_key,
        dir_mode=0o755,  # the broker's service user must reach its key; the key itself stays 0600
        now=now,
    )


def issue_gateway(
    root: Path, store_id: str, *, days: int = LEAF_DAYS, force: bool = False, now: datetime | None = None
) -> Issued:
    """A client certificate whose CN is `store_id`: the broker's ACL keys the store's topic root on it."""
    layout = PkiLayout(root)
    check_identifier(store_id, "store id")
    return _issue(
        layout,
        identity=store_id,
        unit="gateway",
        server=False,
        sans=(),
        days=days,
        force=force,
        what=f"a certificate for {store_id}",
        cert_path=layout.gateway_cert(store_id),
        key_path=layout.gateway_key(store_id),
        dir_mode=PRIVATE_DIR_MODE,
        now=now,
    )


def issue_hub(
    root: Path,
    name: str = DEFAULT_HUB_NAME,
    *,
    days: int = LEAF_DAYS,
    force: bool = False,
    now: datetime | None = None,
) -> Issued:
    """A client certificate with CN ``hub:{name}``, the identity the ACL lets write `cmd/` and read all stores."""
    layout = PkiLayout(root)
    identity = hub_identity(name)
    return _issue(
        layout,
        identity=identity,
        unit="hub",
        server=False,
        sans=(),
        days=days,
        force=force,
        what=f"a certificate for {identity}",
        cert_path=layout.hub_cert(name),
        key_path=layout.hub_key(name),
        dir_mode=PRIVATE_DIR_MODE,
        now=now,
    )


# --- CLI ---------------------------------------------------------------------------------------------------


def _print_issued(what: str, issued: Issued) -> None:
    print(f"{what}: {issued.identity}")
    print(f"  certificate  {issued.cert_path}")
    print(f"  private key  {issued.key_path} (mode 0600; never share it)")
    print(f"  valid until  {issued.not_after:%Y-%m-%d %H:%M} UTC")
    print(f"  SHA-256      {issued.fingerprint_sha256}")


def _run_pki_command(args: argparse.Namespace) -> None:
    root: Path = args.pki_dir
    command: str = args.pki_command
    if command == "init":
        ca, broker = init_ca(
            root,
            force=args.force,
            ca_days=args.ca_days,
            broker_sans=[*DEFAULT_BROKER_SANS, *args.san],
            broker_days=args.days,
        )
        _print_issued("CA", ca)
        _print_issued("broker", broker)
        if args.force:
            print("a new CA: re-issue every gateway and hub certificate (`--force`)")
    elif command == "issue-broker":
        sans = [*DEFAULT_BROKER_SANS, *args.san]
        _print_issued("broker", issue_broker(root, sans=sans, days=args.days, force=args.force))
    elif command == "issue-gateway":
        _print_issued("gateway", issue_gateway(root, args.store_id, days=args.days, force=args.force))
    else:  # argparse accepts only the four sub-commands
        _print_issued("hub", issue_hub(root, args.name, days=args.days, force=args.force))


def run_pki(args: argparse.Namespace) -> int:
    """Entry point of `shelfgate pki …`: 0 done, 2 refused (bad input, would overwrite), 1 I/O failure."""
    try:
        _run_pki_command(args)
    except PkiError as exc:
        print(f"shelfgate pki: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"shelfgate pki: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `pki init | issue-broker | issue-gateway STORE_ID | issue-hub [NAME]`."""
    p = sub.add_parser("pki", help="private CA and certificates for the broker, gateways and hub (mTLS)")
    p.add_argument(
        "--dir",
        dest="pki_dir",
        type=Path,
        default=DEFAULT_PKI_DIR,
        help=f"PKI directory (default {DEFAULT_PKI_DIR}; docs/security.md shows its layout)",
    )
    p.set_defaults(func=run_pki)
    cmds = p.add_subparsers(dest="pki_command", required=True, metavar="PKI_COMMAND")

    def days_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument("--days", type=int, default=LEAF_DAYS, help=f"validity in days (default {LEAF_DAYS})")
        q.add_argument("--force", action="store_true", help="replace an existing certificate and key")

    def san_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--san",
            action="append",
            default=[],
            metavar="NAME_OR_IP",
            help="extra broker DNS name or IP (repeatable); localhost and 127.0.0.1 are always included",
        )

    i = cmds.add_parser("init", help="create the CA and the broker's server certificate")
    days_arg(i)
    i.add_argument("--ca-days", type=int, default=CA_DAYS, help=f"CA validity in days (default {CA_DAYS})")
    san_arg(i)

    b = cmds.add_parser("issue-broker", help="re-issue the broker's server certificate (e.g. other names)")
    days_arg(b)
    san_arg(b)

    g = cmds.add_parser("issue-gateway", help="client certificate for a store gateway (CN = store id)")
    g.add_argument("store_id", metavar="STORE_ID")
    days_arg(g)

    h = cmds.add_parser("issue-hub", help="client certificate for a hub worker (CN = hub:NAME)")
    h.add_argument("name", nargs="?", default=DEFAULT_HUB_NAME, metavar="NAME")
    days_arg(h)


__all__ = [
    "BROKER_CN",
    "CA_DAYS",
    "DEFAULT_BROKER_SANS",
    "DEFAULT_HUB_NAME",
    "DEFAULT_PKI_DIR",
    "HUB_IDENTITY_PREFIX",
    "IDENTIFIER_PATTERN",
    "LEAF_DAYS",
    "Issued",
    "PkiError",
    "PkiLayout",
    "add_parser",
    "check_identifier",
    "fingerprint_sha256",
    "hub_identity",
    "init_ca",
    "issue_broker",
    "issue_gateway",
    "issue_hub",
    "run_pki",
]

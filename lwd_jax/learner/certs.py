"""Certificates for a fleet that has none yet: one private CA, the learner's server certificate, a client
certificate per robot (mTLS). Teams with a PKI point the config at their own files instead.

    python -m lwd_jax.learner.certs init --out certs --host learner.example.org [--host 10.0.0.7]
    python -m lwd_jax.learner.certs robot --out certs robot-0 [robot-1 ...]     # mTLS client certs

`init` writes ca.pem / ca.key (keep the key offline once robots have their certs), learner.pem /
learner.key for `online.tls_cert` / `online.tls_key` (the names robots dial, plus localhost and 127.0.0.1 so
embedded robots and `fleet status` on the learner's machine verify too). `robot` writes <id>.pem / <id>.key
whose common name is the robot id: under mTLS the learner refuses a robot id that is not its certificate's.
Keys are EC P-256, written 0600; certificates are valid for `--days` (825 by default, the longest most
TLS clients accept).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_api.wire import ID_PATTERN

DEFAULT_DAYS = 825
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lwd-jax fleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _sign(subject: str, issuer: x509.Name, issuer_key, public_key, days: int, extensions) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days)))
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys([*hosts, *LOCAL_NAMES]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_ca(out: Path, days: int = DEFAULT_DAYS) -> None:
    """ca.pem / ca.key: the fleet's own certificate authority."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign("lwd-jax fleet CA", _name("lwd-jax fleet CA"), key, key.public_key(), days, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                       decipher_only=False), True),
    ])
    _write_key(out / "ca.key", key)
    (out / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(out: Path):
    try:
        cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
    except FileNotFoundError as e:
        raise ValueError(f"{e.filename}: no CA here; run `python -m lwd_jax.learner.certs init --out {out}` first") from None
    return cert, key


def make_leaf(out: Path, name: str, *, server_hosts: Sequence[str] = (), days: int = DEFAULT_DAYS) -> None:
    """<name>.pem / <name>.key signed by the CA in `out`: a server certificate when `server_hosts` is given
    (its subject alternative names), else a client certificate whose common name is `name`."""
    ca_cert, ca_key = _load_ca(out)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_hosts else ExtendedKeyUsageOID.CLIENT_AUTH
    exts = [(x509.BasicConstraints(ca=False, path_length=None), True), (x509.ExtendedKeyUsage([usage]), False)]
    if server_hosts:
        exts.append((_san(server_hosts), False))
    cert = _sign(server_hosts[0] if server_hosts else name, ca_cert.subject, ca_key, key.public_key(), days, exts)
    _write_key(out / f"{name}.key", key)
    (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lwd_jax.learner.certs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    init = sub.add_parser("init", help="a new CA and the learner's server certificate")
    init.add_argument("--out", required=True)
    init.add_argument("--host", action="append", default=[], help="a name or IP robots dial (repeat)")
    init.add_argument("--days", type=int, default=DEFAULT_DAYS)
    robot = sub.add_parser("robot", help="client certificates (mTLS), common name = robot id")
    robot.add_argument("--out", required=True)
    robot.add_argument("--days", type=int, default=DEFAULT_DAYS)
    robot.add_argument("robot_ids", nargs="+")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        if args.cmd == "init":
            if (out / "ca.key").exists():
                raise ValueError(f"{out / 'ca.key'} exists: refusing to replace a CA robots may already trust")
            out.mkdir(parents=True, exist_ok=True)
            make_ca(out, args.days)
            make_leaf(out, "learner", server_hosts=args.host or ["localhost"], days=args.days)
            print(f"{out}/ca.pem (give to every robot: tls_root_ca), {out}/learner.pem + learner.key "
                  f"(online.tls_cert / tls_key) for {', '.join([*args.host, *LOCAL_NAMES])}")
        else:
            for rid in args.robot_ids:
                if not ID_PATTERN.fullmatch(rid):
                    raise ValueError(f"robot id {rid!r}: expected {ID_PATTERN.pattern}")
                make_leaf(out, rid, days=args.days)
                print(f"{out}/{rid}.pem + {rid}.key (that robot's tls_cert / tls_key)")
    except (OSError, ValueError) as e:
        print(f"lwd_jax.learner.certs: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

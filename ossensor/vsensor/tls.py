"""TLS for the reference vSensor: a self-made CA when no certificate is given, and the server context.

``ensure_self_signed(out_dir, extra_names)`` keeps, in ``out_dir``:

* ``ca.pem`` / ``ca.key`` - a small EC P-256 CA (10 years). The sensor trusts it with
  ``OSSENSOR_TLS_CA_FILE=<out_dir>/ca.pem``.
* ``server.pem`` / ``server.key`` - a server certificate signed by that CA, with SANs ``localhost``,
  ``127.0.0.1``, ``::1``, this machine's host name and ``extra_names`` (e.g. the listen address).

Existing files are reused when they are valid, so a restart keeps the same CA (sensors need not be
reconfigured). A server certificate that is expiring, lacks a name or does not match the CA/key is
re-issued from the same CA; the CA itself is only re-created when it is missing or unusable.
Private keys are written 0600.

``server_context(cert, key, client_ca=None)`` builds the ``ssl.SSLContext``. With ``client_ca`` the
server requires client certificates signed by that CA (mutual TLS).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CERT_FILE = "server.pem"
KEY_FILE = "server.key"

CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_BEFORE = _dt.timedelta(days=30)


class TLSSetupError(Exception):
    """A certificate/key problem the CLI reports as one line (exit 2)."""


def default_names(extra_names: list[str] | tuple[str, ...] = ()) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1"]
    try:
        names.append(socket.gethostname())
    except OSError:
        pass
    names.extend(extra_names)
    out: list[str] = []
    for name in names:
        name = (name or "").strip().strip("[]")
        if name and name not in ("0.0.0.0", "::") and name.lower() not in (n.lower() for n in out):
            out.append(name)
    return out


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name.lower())


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ossensor"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"ossensor reference vSensor CA ({socket.gethostname()})"),
    ])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(hours=1))
        .not_valid_after(now + _dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server(ca: x509.Certificate, ca_key, names: list[str]) -> tuple[x509.Certificate,
                                                                            ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ossensor"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(hours=1))
        .not_valid_after(min(now + _dt.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _load_pair(cert_path: Path, key_path: Path):
    """(cert, key) if both files exist, parse, and belong together; else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if cert.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo):
        return None
    return cert, key


def _usable(cert: x509.Certificate) -> bool:
    now = _now()
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - now > RENEW_BEFORE


def _names_of(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {n.lower() for n in san.get_values_for_type(x509.DNSName)} | \
        {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def _norm(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def ensure_self_signed(out_dir: Path, extra_names: list[str]) -> tuple[Path, Path, Path]:
    """Create (or reuse) the CA and server certificate in out_dir. Returns (ca, cert, key) paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_path, ca_key_path = out_dir / CA_FILE, out_dir / CA_KEY_FILE
    cert_path, key_path = out_dir / CERT_FILE, out_dir / KEY_FILE
    names = default_names(extra_names)

    ca_pair = _load_pair(ca_path, ca_key_path)
    if ca_pair is None or not _usable(ca_pair[0]):
        ca, ca_key = _make_ca()
        _write_private(ca_key_path, _key_pem(ca_key))
        _write_public(ca_path, ca.public_bytes(serialization.Encoding.PEM))
        server_pair = None
    else:
        ca, ca_key = ca_pair
        server_pair = _load_pair(cert_path, key_path)

    if server_pair is not None:
        cert = server_pair[0]
        try:
            ca_key.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                                       ec.ECDSA(cert.signature_hash_algorithm))
            signed_by_ca = cert.issuer == ca.subject
        except (InvalidSignature, TypeError, ValueError):
            signed_by_ca = False
        if not (signed_by_ca and _usable(cert) and {_norm(n) for n in names} <= _names_of(cert)):
            server_pair = None

    if server_pair is None:
        cert, key = _make_server(ca, ca_key, names)
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return ca_path, cert_path, key_path


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """TLS >= 1.2 server context; with client_ca, client certificates signed by it are required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as err:
        raise TLSSetupError(f"cannot read {err.filename or cert}: {err.strerror}") from None
    except (ssl.SSLError, OSError) as err:
        raise TLSSetupError(f"cannot load certificate {cert} with key {key}: "
                            f"{getattr(err, 'reason', None) or err}") from None
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(client_ca))
        except FileNotFoundError as err:
            raise TLSSetupError(f"cannot read {err.filename or client_ca}: {err.strerror}") from None
        except (ssl.SSLError, OSError) as err:
            raise TLSSetupError(f"cannot load client CA {client_ca}: "
                                f"{getattr(err, 'reason', None) or err}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx

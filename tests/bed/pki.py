"""Certificates and keys for the test bed, made with `cryptography` (ECDSA P-256: fast to generate, accepted by
Go's TLS stack and by kube-apiserver as a service-account signing key, ES256).

Layout written by :func:`make_pki` under ``DIR/pki``::

    ca.crt ca.key                      the bed's CA (also the client CA and the cluster-signing CA)
    apiserver.crt apiserver.key        serving certificate of kube-apiserver
    admin.crt admin.key                client: CN=bed-admin, O=system:masters
    kube-controller-manager.crt/.key   client: CN=system:kube-controller-manager
    apiserver-kubelet-client.crt/.key  client used by kube-apiserver to reach kubelets (system:masters)
    node-<name>.crt/.key               client: CN=system:node:<name>, O=system:nodes (a kubelet's identity)
    sa.key sa.pub                      service-account token signing key pair

Other code (the node agent, webhook servers in tests) can sign more certificates with :func:`issue_cert`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The first address of --service-cluster-ip-range: the ClusterIP of the `kubernetes` Service.
KUBERNETES_SERVICE_IP = "198.18.0.1"

APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
#: The real node's address (bed.realnode.NODE_IP): the `kubernetes` Service's endpoint when node="real".
NODE_IP = "198.19.255.254"
APISERVER_IPS = ("127.0.0.1", "::1", KUBERNETES_SERVICE_IP, NODE_IP)

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class KeyPair:
    """Paths of a PEM certificate and its PEM private key."""

    cert: Path
    key: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def make_ca(directory: Path, common_name: str = "alembic-operator-bed-ca") -> KeyPair:
    """Create a self-signed CA in ``directory`` (ca.crt, ca.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY * 10)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = KeyPair(directory / "ca.crt", directory / "ca.key")
    _write_key(key, pair.key)
    _write_cert(cert, pair.cert)
    return pair


def _load_ca(ca: KeyPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca.key}: expected an EC private key")
    return cert, key


def issue_cert(
    ca: KeyPair,
    directory: Path,
    basename: str,
    common_name: str,
    *,
    organizations: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    server: bool = False,
    client: bool = False,
) -> KeyPair:
    """Sign a leaf certificate with ``ca``; writes ``<basename>.crt`` and ``<basename>.key`` in ``directory``."""
    if not (server or client):
        raise ValueError("a certificate must be for a server, a client or both")
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _load_ca(ca)
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organizations))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pair = KeyPair(directory / f"{basename}.crt", directory / f"{basename}.key")
    _write_key(key, pair.key)
    _write_cert(cert, pair.cert)
    return pair


def make_service_account_keys(directory: Path) -> KeyPair:
    """The service-account token signing key (sa.key) and its public key (sa.pub; in ``KeyPair.cert``)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    pair = KeyPair(directory / "sa.pub", directory / "sa.key")
    _write_key(key, pair.key)
    pair.cert.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pair


@dataclass(frozen=True)
class BedPKI:
    """Everything the control plane needs, as paths."""

    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    kubelet_client: KeyPair
    service_account: KeyPair
    node: KeyPair | None

    @classmethod
    def load(cls, directory: Path, node_name: str | None = None) -> BedPKI:
        def pair(base: str) -> KeyPair:
            return KeyPair(directory / f"{base}.crt", directory / f"{base}.key")

        return cls(
            ca=pair("ca"),
            apiserver=pair("apiserver"),
            admin=pair("admin"),
            controller_manager=pair("kube-controller-manager"),
            kubelet_client=pair("apiserver-kubelet-client"),
            service_account=KeyPair(directory / "sa.pub", directory / "sa.key"),
            node=pair(f"node-{node_name}") if node_name else None,
        )


def make_pki(directory: Path, node_name: str | None = None) -> BedPKI:
    """Create all the bed's keys and certificates in ``directory`` (overwriting what is there)."""
    ca = make_ca(directory)
    issue_cert(
        ca, directory, "apiserver", "kube-apiserver",
        dns_names=APISERVER_DNS_NAMES, ip_addresses=APISERVER_IPS, server=True,
    )  # fmt: skip
    issue_cert(ca, directory, "admin", "bed-admin", organizations=["system:masters"], client=True)
    issue_cert(ca, directory, "kube-controller-manager", "system:kube-controller-manager", client=True)
    issue_cert(
        ca, directory, "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
        organizations=["system:masters"], client=True,
    )  # fmt: skip
    if node_name:
        issue_cert(
            ca, directory, f"node-{node_name}", f"system:node:{node_name}",
            organizations=["system:nodes"], client=True,
        )  # fmt: skip
    make_service_account_keys(directory)
    return BedPKI.load(directory, node_name)

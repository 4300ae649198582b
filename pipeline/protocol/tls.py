"""Per-job public-key infrastructure for the mutual TLS of the XGBoost aggregator.

Hospitals that do not share a trust domain meet only through channels with their own
authentication (see ARCHITECTURE.md, trust model). For one federated XGBoost job the
coordinator mints a fresh certificate authority, one server certificate and one client
certificate per admitted site. The server accepts a connection only when the client
presents a certificate signed by this job's CA, and the site accepts the server only when
its certificate chains to the same CA and names the host it dialled. A certificate from
an earlier job, another federation, or none at all is refused during the TLS handshake.

The CA's private key is never written to disk: it signs the job's certificates and is
dropped, so nobody can issue another certificate for the job once it started. Keys come
from the operating system's randomness (never seeded, never logged), live in a directory
only its owner can open (mode 0700, keys 0600), and are short-lived: the certificates
expire after ``valid_for`` and :meth:`JobPKI.cleanup` deletes the directory after the job.

Example
-------
>>> with JobPKI.create(tmp / "job-42", ["northgate", "riverside"]) as pki:  # doctest: +SKIP
...     server = FederatedAggregator(pki).start()
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_CLOCK_SKEW = dt.timedelta(minutes=5)
DEFAULT_VALIDITY = dt.timedelta(hours=24)
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pipeline federated job"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # keep order, drop repeats
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def site_uri(site: str) -> str:
    """The subject alternative name (URI) that identifies a site in its certificate."""
    return f"urn:pipeline:site:{site}"


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate | None,
    now: dt.datetime,
    valid_for: dt.timedelta,
    *,
    usage: x509.ObjectIdentifier | None = None,
    hosts: Iterable[str] = (),
    uri: str | None = None,
) -> x509.Certificate:
    """Sign one certificate; `ca_cert` None means self-signed (the CA itself)."""
    is_ca = ca_cert is None
    issuer = _name(subject) if is_ca else ca_cert.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), True)
        .add_extension(_key_usage(cert_sign=is_ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    names = _host_names(hosts)
    if uri is not None:
        names.append(x509.UniformResourceIdentifier(uri))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the first byte on (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)  # the umask may have narrowed `mode`; make it exact


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # gRPC reads unencrypted PEM keys; the 0600 file inside a 0700 directory protects it.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class JobPKI:
    """The certificate files of one federated job, in one private directory.

    Build it with :meth:`create`; use it as a context manager (or call :meth:`cleanup`)
    so the keys are deleted when the job ends, whatever way it ends.

    Attributes
    ----------
    root : Path
        The job directory (mode 0700).
    sites : tuple of str
        The sites that hold a client certificate, in the order given.
    hosts : tuple of str
        Host names and IP addresses the server certificate is valid for.
    """

    def __init__(self, root: Path, sites: tuple[str, ...], hosts: tuple[str, ...]) -> None:
        self.root = root
        self.sites = sites
        self.hosts = hosts

    @classmethod
    def create(
        cls,
        job_dir: str | Path,
        sites: Iterable[str],
        hosts: Iterable[str] = (),
        *,
        valid_for: dt.timedelta = DEFAULT_VALIDITY,
    ) -> JobPKI:
        """Mint a CA, a server certificate and one client certificate per site.

        Parameters
        ----------
        job_dir : path
            Directory to create (mode 0700). It must not exist yet: a directory someone
            else prepared could be readable by them.
        sites : iterable of str
            Site names (lower-case letters, digits, ``-`` and ``_``); each gets a client
            certificate whose common name is the site name.
        hosts : iterable of str
            Extra host names or IP addresses the server is reached at, besides
            ``localhost`` and ``127.0.0.1``.
        valid_for : timedelta
            Lifetime of every certificate (a job's, not a year's).
        """
        sites = tuple(sites)
        if not sites:
            raise ValueError("a federated job needs at least one site")
        bad = [s for s in sites if not _SITE_NAME.match(s)]
        if bad:
            raise ValueError(f"site names must match {_SITE_NAME.pattern}: {bad}")
        dupes = sorted({s for s in sites if sites.count(s) > 1})
        if dupes:
            raise ValueError(f"site names appear twice: {dupes}")
        if valid_for <= dt.timedelta(0):
            raise ValueError("valid_for must be positive")
        all_hosts = tuple(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))

        root = Path(job_dir)
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700)  # FileExistsError when it exists: never reuse a directory
        os.chmod(root, 0o700)
        pki = cls(root, sites, all_hosts)
        try:
            pki._mint(valid_for)
        except BaseException:
            pki.cleanup()
            raise
        return pki

    def _mint(self, valid_for: dt.timedelta) -> None:
        now = dt.datetime.now(dt.UTC)
        ca_key = _new_key()
        label = self.root.name[:40] or "job"
        ca = _issue(f"pipeline job CA {label}", ca_key.public_key(), ca_key, None, now, valid_for)
        _write(self.ca_cert, _cert_pem(ca), 0o644)

        server_key = _new_key()
        server = _issue(
            "federated-server",
            server_key.public_key(),
            ca_key,
            ca,
            now,
            valid_for,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            hosts=self.hosts,
        )
        _write(self.server_key, _key_pem(server_key), 0o600)
        _write(self.server_cert, _cert_pem(server), 0o644)

        (self.root / "sites").mkdir(mode=0o700)
        for site in self.sites:
            key = _new_key()
            cert = _issue(
                site,
                key.public_key(),
                ca_key,
                ca,
                now,
                valid_for,
                usage=ExtendedKeyUsageOID.CLIENT_AUTH,
                uri=site_uri(site),
            )
            _write(self.client_key(site), _key_pem(key), 0o600)
            _write(self.client_cert(site), _cert_pem(cert), 0o644)

    # -- paths -------------------------------------------------------------------------
    @property
    def ca_cert(self) -> Path:
        """The job CA's certificate: the trust root of the server and of every site."""
        return self.root / "ca.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    def _site(self, site: str) -> str:
        if site not in self.sites:
            raise KeyError(f"no client certificate for site {site!r} in this job")
        return site

    def client_key(self, site: str) -> Path:
        return self.root / "sites" / f"{self._site(site)}.key"

    def client_cert(self, site: str) -> Path:
        return self.root / "sites" / f"{self._site(site)}.pem"

    # -- lifetime ----------------------------------------------------------------------
    def cleanup(self) -> None:
        """Delete the job directory and every key in it; safe to call twice."""
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> JobPKI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"JobPKI(root={str(self.root)!r}, sites={self.sites!r}, hosts={self.hosts!r})"

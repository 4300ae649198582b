"""The per-job PKI behind the federated server's mutual TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from pipeline.protocol.tls import JobPKI, site_uri

SITES = ["northgate", "riverside", "st-jude"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verifier(pki: JobPKI) -> PolicyBuilder:
    now = dt.datetime.now(dt.UTC)
    return PolicyBuilder().store(Store([_cert(pki.ca_cert)])).time(now)


@pytest.fixture
def pki(tmp_path: Path):
    with JobPKI.create(tmp_path / "job", SITES, hosts=["coordinator.example", "10.0.0.5"]) as p:
        yield p


def test_job_directory_and_keys_are_readable_only_by_their_owner(pki: JobPKI) -> None:
    assert _mode(pki.root) == 0o700
    keys = [pki.server_key, *(pki.client_key(s) for s in SITES)]
    for key in keys:
        assert _mode(key) == 0o600, key
    assert sorted(p.name for p in pki.root.rglob("*.key")) == sorted(k.name for k in keys)


def test_the_ca_private_key_is_never_written(pki: JobPKI) -> None:
    expected = {pki.server_key, *(pki.client_key(s) for s in SITES)}
    ca_public = _cert(pki.ca_cert).public_key()
    for path in pki.root.rglob("*"):
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes():
            assert path in expected
            key = load_pem_private_key(path.read_bytes(), password=None)
            assert key.public_key() != ca_public


def test_server_certificate_chains_to_the_job_ca_for_every_host(pki: JobPKI) -> None:
    server = _cert(pki.server_cert)
    for host in ["localhost", "coordinator.example"]:
        _verifier(pki).build_server_verifier(x509.DNSName(host)).verify(server, [])
    for ip in ["127.0.0.1", "10.0.0.5"]:
        name = x509.IPAddress(ipaddress.ip_address(ip))
        _verifier(pki).build_server_verifier(name).verify(server, [])
    with pytest.raises(VerificationError):
        _verifier(pki).build_server_verifier(x509.DNSName("elsewhere.example")).verify(server, [])


def test_each_site_certificate_chains_to_the_job_ca_and_names_the_site(pki: JobPKI) -> None:
    for site in SITES:
        cert = _cert(pki.client_cert(site))
        _verifier(pki).build_client_verifier().verify(cert, [])
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert cn == site
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [site_uri(site)]


def test_another_jobs_certificates_do_not_verify(pki: JobPKI, tmp_path: Path) -> None:
    with JobPKI.create(tmp_path / "other", SITES) as other:
        with pytest.raises(VerificationError):
            _verifier(pki).build_client_verifier().verify(_cert(other.client_cert(SITES[0])), [])
        with pytest.raises(VerificationError):
            _verifier(pki).build_server_verifier(x509.DNSName("localhost")).verify(
                _cert(other.server_cert), []
            )


def test_certificates_are_short_lived(pki: JobPKI) -> None:
    for path in [pki.ca_cert, pki.server_cert, pki.client_cert(SITES[0])]:
        cert = _cert(path)
        assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(hours=25)


def _handshake(pki: JobPKI, client_key: Path, client_cert: Path) -> str:
    """One mutual-TLS handshake over loopback; returns the client's common name seen by
    the server, or raises the client's SSL error."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.ca_cert)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca_cert)
    client_ctx.load_cert_chain(client_cert, client_key)
    seen: dict[str, object] = {}

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    subject = dict(x[0] for x in tls.getpeercert()["subject"])
                    seen["cn"] = subject["commonName"]
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError) as exc:
                seen["error"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                assert tls.recv(2) == b"ok"
        finally:
            thread.join(10)
    if "error" in seen:
        raise seen["error"]  # type: ignore[misc]
    return str(seen["cn"])


def test_mutual_tls_handshake_succeeds_with_the_jobs_certificates(pki: JobPKI) -> None:
    site = SITES[1]
    assert _handshake(pki, pki.client_key(site), pki.client_cert(site)) == site


def test_mutual_tls_handshake_fails_with_another_jobs_client_certificate(
    pki: JobPKI, tmp_path: Path
) -> None:
    with JobPKI.create(tmp_path / "other", SITES) as other, pytest.raises((ssl.SSLError, OSError)):
        _handshake(pki, other.client_key(SITES[0]), other.client_cert(SITES[0]))


def test_cleanup_removes_every_file(tmp_path: Path) -> None:
    with JobPKI.create(tmp_path / "job", SITES) as pki:
        assert pki.client_key(SITES[0]).exists()
    assert not pki.root.exists()
    assert list(tmp_path.iterdir()) == []
    pki.cleanup()  # a second call is harmless


def test_cleanup_runs_when_the_job_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), JobPKI.create(tmp_path / "job", SITES):
        raise RuntimeError("job failed")
    assert not (tmp_path / "job").exists()


def test_an_existing_directory_is_never_reused(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    with pytest.raises(FileExistsError):
        JobPKI.create(tmp_path / "job", SITES)


@pytest.mark.parametrize("sites", [[], ["../escape"], ["Upper"], ["a", "a"]])
def test_bad_site_lists_are_refused_before_any_file_is_written(
    tmp_path: Path, sites: list[str]
) -> None:
    with pytest.raises(ValueError):
        JobPKI.create(tmp_path / "job", sites)
    assert not (tmp_path / "job").exists()


def test_unknown_site_has_no_certificate(pki: JobPKI) -> None:
    with pytest.raises(KeyError, match="mercy-valley"):
        pki.client_cert("mercy-valley")

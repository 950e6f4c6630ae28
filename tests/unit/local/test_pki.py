"""The local cluster CA: the certificates it issues work in real TLS handshakes for the use
they were issued for, and only for it, and the CA is kept across restarts."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tuneforge.local.pki import CertificateAuthority, KeyPair


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> None:
    """A TLS handshake between the two contexts over memory buffers; raises ssl.SSLError
    when either side refuses the other, including the server refusing the client's
    certificate after a TLS 1.3 handshake has completed on the client's side."""
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    client_side = client.wrap_bio(client_in, client_out, server_hostname=server_hostname)
    done = {"server": False, "client": False}
    for _ in range(20):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            break
    client_side.write(b"ping")
    server_in.write(client_out.read())
    assert server_side.read(4) == b"ping"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.ensure(tmp_path / "pki", "test-ca")


def _server(ca: CertificateAuthority, serving: KeyPair) -> ssl.SSLContext:
    """The kubelet endpoint's TLS: its serving certificate, clients of the CA only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(serving.cert_file, serving.key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(ca.cert_file)
    return context


def _client(ca: CertificateAuthority, cert: KeyPair | None) -> ssl.SSLContext:
    """The API server's TLS towards a kubelet: the CA for the server, its client certificate."""
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    if cert is not None:
        context.load_cert_chain(cert.cert_file, cert.key_file)
    return context


def test_serving_and_client_certificates_each_work_for_their_use_only(ca: CertificateAuthority, tmp_path: Path):
    serving = ca.issue(KeyPair(tmp_path / "node.crt", tmp_path / "node.key"), "system:node:n", usage="server",
                       organizations=("system:nodes",), dns_names=("node.example",), ip_addresses=("127.0.0.1",))
    client = ca.issue(KeyPair(tmp_path / "api.crt", tmp_path / "api.key"), "kube-apiserver-kubelet-client",
                      usage="client")
    other = CertificateAuthority.ensure(tmp_path / "other", "other-ca")
    impostor = other.issue(KeyPair(tmp_path / "impostor.crt", tmp_path / "impostor.key"),
                           "kube-apiserver-kubelet-client", usage="client")

    for name in ("127.0.0.1", "node.example"):
        _handshake(_server(ca, serving), _client(ca, client), name)
    with pytest.raises(ssl.SSLCertVerificationError):  # not a name of the node
        _handshake(_server(ca, serving), _client(ca, client), "elsewhere.example")
    for refused in (None, serving, impostor):  # none; the CA's, but for serving; another CA's
        with pytest.raises(ssl.SSLError):
            _handshake(_server(ca, serving), _client(ca, refused), "127.0.0.1")
    with pytest.raises(ssl.SSLError):  # a client certificate cannot serve
        _handshake(_server(ca, client), _client(ca, client), "127.0.0.1")


def test_the_ca_is_kept_and_its_key_is_private(ca: CertificateAuthority, tmp_path: Path):
    again = CertificateAuthority.ensure(tmp_path / "pki", "test-ca")
    assert again.cert_file.read_bytes() == ca.cert_file.read_bytes()
    assert ca.pair.key_file.stat().st_mode & 0o777 == 0o600

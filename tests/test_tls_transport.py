"""shell.tls.TLSTransport over a socket pair: the server's side driven the way the loop drives
it (readiness, never a blocking call), a blocking client on a thread. And core.trust."""

from __future__ import annotations

import selectors
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, strategies as st

from core import trust
from shell import tls
from shell.tls import TLSTransport
from tests.harness import TIMEOUT
from tests.test_tls import Certificate, make_certificate

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command line")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("transport"))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    server.setblocking(False)
    client.settimeout(TIMEOUT)
    yield server, client
    server.close()
    client.close()


def drive(transport: TLSTransport, step, *, want: int = selectors.EVENT_READ):
    """Call ``step`` each time the socket is ready for what the last call asked, as the loop does."""
    with selectors.DefaultSelector() as selector:
        selector.register(transport, want)
        while True:
            assert selector.select(TIMEOUT), "the peer went quiet"
            result = step()
            if result is not None:
                return result


def client_thread(sock: socket.socket, certificate: Certificate, work) -> threading.Thread:
    def run() -> None:
        tls_sock = tls.client_context(str(certificate.cert)).wrap_socket(sock, server_hostname="localhost")
        work(tls_sock)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def handshake_step(transport: TLSTransport):
    events = transport.handshake()
    return True if events == 0 else None


@needs_openssl
def test_the_server_handshake_never_blocks_and_completes_on_readiness(pair, certificate: Certificate) -> None:
    server_sock, client_sock = pair
    context, _ = tls.server_context(str(certificate.cert), str(certificate.key))
    transport = TLSTransport(server_sock, accept=context)
    assert transport.handshake() == selectors.EVENT_READ  # nothing sent yet: wait, do not block
    with pytest.raises(BlockingIOError):
        transport.recv(100)
    received: list[bytes] = []
    thread = client_thread(client_sock, certificate, lambda s: received.append(s.recv(100)))
    drive(transport, lambda: handshake_step(transport))
    assert not transport.handshaking
    assert transport.send(b"hello") == 5
    thread.join(TIMEOUT)
    assert received == [b"hello"]


@needs_openssl
def test_a_record_larger_than_the_read_is_returned_whole_not_left_inside_the_ssl_object(
        pair, certificate: Certificate) -> None:
    server_sock, client_sock = pair
    context, _ = tls.server_context(str(certificate.cert), str(certificate.key))
    transport = TLSTransport(server_sock, accept=context)
    record = bytes(range(256)) * 60  # 15,360 bytes: one TLS record
    done = threading.Event()

    def send_one_record(sock: ssl.SSLSocket) -> None:
        sock.sendall(record)
        done.wait(TIMEOUT)

    thread = client_thread(client_sock, certificate, send_one_record)
    drive(transport, lambda: handshake_step(transport))

    def read_some():
        try:
            return transport.recv(100)
        except BlockingIOError:
            return None  # the record is not all here yet

    # once the whole record is in, select() would never wake for what stayed decrypted inside
    assert drive(transport, read_some) == record
    done.set()
    thread.join(TIMEOUT)


@needs_openssl
def test_a_server_flight_larger_than_the_socket_buffers_waits_for_writability(tmp_path: Path) -> None:
    # a certificate of ~30 KB (1,500 names) cannot fit in the smallest send and receive buffers
    names = ",".join(f"DNS:host{i}.example" for i in range(1500))
    cert, key = tmp_path / "big.pem", tmp_path / "big-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=big", "-addext", f"subjectAltName={names}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context, _ = tls.server_context(str(cert), str(key))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(listener.getsockname())
        server_sock, _ = listener.accept()
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server_sock.setblocking(False)
    client.settimeout(TIMEOUT)
    transport = TLSTransport(server_sock, accept=context)
    client_context = tls.client_context(None)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_tls = client_context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        client_tls.do_handshake()
    client.sendall(outgoing.read())  # the ClientHello; the client reads nothing yet
    try:
        assert drive(transport, lambda: transport.handshake() or None) == selectors.EVENT_WRITE

        def finish_client() -> None:  # now read, answer, until the client's side is done
            while True:
                incoming.write(client.recv(65536))
                try:
                    client_tls.do_handshake()
                except ssl.SSLWantReadError:
                    continue
                finally:
                    client.sendall(outgoing.read())
                return

        thread = threading.Thread(target=finish_client, daemon=True)
        thread.start()
        wanted = selectors.EVENT_WRITE
        while wanted:  # each step waits for what the previous one asked
            with selectors.DefaultSelector() as selector:
                selector.register(transport, wanted)
                assert selector.select(TIMEOUT), "the handshake stalled"
            wanted = transport.handshake()
        thread.join(TIMEOUT)
        assert not transport.handshaking and client_tls.version() is not None
    finally:
        transport.close()
        client.close()


@needs_openssl
def test_a_plain_peer_gets_the_refusal_in_plain_and_the_handshake_fails(pair, certificate: Certificate) -> None:
    server_sock, client_sock = pair
    context, _ = tls.server_context(str(certificate.cert), str(certificate.key))
    transport = TLSTransport(server_sock, accept=context, refusal=b"no plain here")
    client_sock.sendall(b"\x00\x00\x00\x10{\"type\":\"login\"")
    with pytest.raises(ConnectionRefusedError):
        drive(transport, transport.handshake)
    assert client_sock.recv(100) == b"no plain here"


def test_a_certificate_that_does_not_match_its_key_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    with pytest.raises(tls.TLSSetupError, match=r"^Cannot use the TLS certificate .*cert\.pem and key"):
        tls.server_context(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))


# --- core.trust -------------------------------------------------------------------------------

fingerprints = st.binary(min_size=1, max_size=64).map(trust.fingerprint)
servers = st.builds(trust.endpoint, st.sampled_from(["127.0.0.1", "example.org", "::1"]),
                    st.integers(1, 65535))


@given(st.dictionaries(servers, fingerprints, max_size=8), servers, fingerprints)
def test_known_servers_round_trip_and_only_the_stored_fingerprint_is_trusted(
        known: dict[str, str], server: str, presented: str) -> None:
    text = "# comment\n\n" + "".join(trust.entry(s, f) for s, f in known.items())
    assert trust.parse_known(text) == known
    verdict = trust.check(trust.parse_known(text), server, presented)
    if server not in known:
        assert verdict == trust.Verdict(trust.Trust.NEW, None)
    elif known[server] == presented:
        assert verdict == trust.Verdict(trust.Trust.KNOWN, presented)
    else:
        assert verdict == trust.Verdict(trust.Trust.CHANGED, known[server])


def test_a_fingerprint_reads_like_openssls() -> None:
    assert trust.fingerprint(b"") == (
        "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55")
    assert trust.endpoint("::1", 5000) == "[::1]:5000"

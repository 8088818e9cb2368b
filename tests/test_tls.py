"""TLS on the chat connection, end to end with real server.py and client.py processes.

Certificates are made with the ``openssl`` command line (``make test`` installs it as root);
without it these tests are skipped and say why.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from core import trust
from core.client_session import RECONNECTED, RECONNECTING
from tests.client_harness import LOGIN_LINES, PROMPT, ClientProcess, Output
from tests.harness import CREDENTIALS, PASSWORDS, ROOT, TIMEOUT, ServerProcess, wait_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="needs the openssl command line to make certificates (apt-get install openssl)")

TLS_ONLY = "Error. This server accepts TLS connections only: connect with --tls."
SERVER_FINGERPRINT = re.compile(r"TLS only; certificate SHA-256 fingerprint ([0-9A-F:]{95})")


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        return trust.fingerprint(ssl.PEM_cert_to_DER_cert(self.cert.read_text()))


def make_certificate(directory: Path) -> Certificate:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=test", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return Certificate(cert, key)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Certificate, Certificate]:
    base = tmp_path_factory.mktemp("certificates")
    return make_certificate(base / "one"), make_certificate(base / "two")


class TLSServer(ServerProcess):
    """server.py with --tls-cert/--tls-key, on ``port`` (0: the OS picks)."""

    def __init__(self, data_dir: Path, certificate: Certificate, port: int = 0, *flags: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(data_dir, 3, "--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key), *flags,
                         port=port)
        self.fingerprint = SERVER_FINGERPRINT.fullmatch(self.output.expect(SERVER_FINGERPRINT)).group(1)


@pytest.fixture
def tls_server(tmp_path: Path, certificates: tuple[Certificate, Certificate]) -> Iterator[TLSServer]:
    server = TLSServer(tmp_path / "tls-server", certificates[0], 0, "--login-timeout", "3")
    yield server
    server.stop()


def no_traceback(lines: list[str]) -> bool:
    return not any("Traceback" in line for line in lines)


def tls_client(server: ServerProcess, workdir: Path, certificate: Certificate) -> ClientProcess:
    return ClientProcess(server.port, workdir, "--tls-ca", str(certificate.cert))


def chat_works(server: ServerProcess, workdir: Path, certificate: Certificate | None) -> None:
    """A client logs in, asks who is online and leaves: the server is serving."""
    flags = ("--tls-ca", str(certificate.cert)) if certificate else ()
    client = ClientProcess(server.port, workdir, *flags)
    try:
        client.login("Luke")
        assert client.command("/activeuser") == ["no other active user"]
        client.type("/logout")
        assert client.output.rest() == ["Bye, Luke!"]
    finally:
        client.stop()


# --- the README's commands ------------------------------------------------------------------

class Make:
    """``make TARGET VARIABLES...`` in the repository, in a process group of its own (make
    starts python as its child; the whole group is stopped)."""

    def __init__(self, *arguments: str) -> None:
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "-s", "-C", str(ROOT), *arguments],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
        )
        self.output = Output(self.process.stdout)

    def type(self, *lines: str) -> None:
        self.process.stdin.write("".join(line + "\n" for line in lines))
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_server_and_run_client_speak_tls_with_a_certificate_made_on_first_run(tmp_path: Path) -> None:
    data, tls_dir, known = tmp_path / "data", tmp_path / "tls", tmp_path / "known_servers"
    data.mkdir()
    shutil.copy(CREDENTIALS, data / "credentials.txt")
    server = Make("run-server", "PORT=0", f"TLS_DIR={tls_dir}", f"SERVER_FLAGS=--data-dir {data} --host 127.0.0.1")
    clients: list[Make] = []
    try:
        assert server.output.expect(r"Made a self-signed TLS certificate: .*")
        port = re.search(r":(\d+) ", server.output.expect(r"TESSENGER server listening on .*")).group(1)
        fingerprint = SERVER_FINGERPRINT.fullmatch(server.output.expect(SERVER_FINGERPRINT.pattern)).group(1)
        assert fingerprint == Certificate(tls_dir / "cert.pem", tls_dir / "key.pem").fingerprint
        for name in ("Yoda", "Luke"):
            client = Make("run-client", f"PORT={port}", f"CLIENT_FLAGS=--known-servers {known}")
            clients.append(client)
            if name == "Yoda":  # first contact: the fingerprint is shown and stored
                assert client.output.expect(r"The server 127\.0\.0\.1:\d+ is new; .*") == (
                    f"The server 127.0.0.1:{port} is new; its certificate's SHA-256 fingerprint is {fingerprint}. "
                    f"Trusted from now on (stored in {known}).")
            client.type(name, PASSWORDS[name])
            assert client.output.until(PROMPT) == LOGIN_LINES  # the second one: no notice
        assert known.read_text() == f"127.0.0.1:{port} {fingerprint}\n"
        clients[1].type("/msgto Yoda over TLS")
        clients[0].output.expect(r".*Luke: over TLS")
    finally:
        for process in (*clients, server):
            process.stop()


# --- plain against TLS, TLS against plain ------------------------------------------------------

def test_a_plain_client_at_a_tls_server_gets_one_clear_line_and_the_server_serves_on(
        tls_server: TLSServer, certificates: tuple[Certificate, Certificate], tmp_path: Path) -> None:
    plain = ClientProcess(tls_server.port, tmp_path / "plain")
    try:
        plain.type("Yoda")
        assert plain.output.rest() == ["Please login", "Username:", TLS_ONLY]
        assert plain.exit_code() == 1
    finally:
        plain.stop()
    chat_works(tls_server, tmp_path / "luke", certificates[0])
    assert no_traceback(tls_server.output.settle())


def test_a_tls_client_at_a_plain_server_gets_one_clear_line_and_the_server_serves_on(
        server: ServerProcess, certificates: tuple[Certificate, Certificate], tmp_path: Path) -> None:
    assert "Not encrypted: passwords and messages cross the network in clear (use --tls-cert/--tls-key)" in (
        server.output.settle())
    client = tls_client(server, tmp_path / "tls", certificates[0])
    try:
        assert client.output.rest() == [
            f"The server at 127.0.0.1:{server.port} did not complete a TLS handshake (wrong version number): "
            "is it a TESSENGER server started with --tls-cert?"]
        assert client.exit_code() == 1
    finally:
        client.stop()
    chat_works(server, tmp_path / "luke", None)
    assert no_traceback(server.output.settle())


# --- stalled handshakes -------------------------------------------------------------------------

def half_handshake(port: int) -> socket.socket:
    """A peer that sends its ClientHello, reads the server's answer and then says nothing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(outgoing.read())
    assert sock.recv(65536)[:1] == b"\x16"  # the server's hello: it is mid-handshake, waiting for us
    return sock


def test_stalled_handshakes_cost_only_their_own_connections(
        tls_server: TLSServer, certificates: tuple[Certificate, Certificate], tmp_path: Path) -> None:
    silent = socket.create_connection(("127.0.0.1", tls_server.port), timeout=TIMEOUT)
    partial = socket.create_connection(("127.0.0.1", tls_server.port), timeout=TIMEOUT)
    partial.sendall(b"\x16\x03\x01\x02")  # the first bytes of a ClientHello, and no more
    stalled = [silent, partial, half_handshake(tls_server.port)]
    try:
        chat_works(tls_server, tmp_path / "luke", certificates[0])  # served while they stall
        for sock in stalled:  # and each is closed by the login timeout (3 s here)
            sock.settimeout(TIMEOUT)
            assert wait_for(lambda: closed(sock), what="the stalled connection to be closed")
    finally:
        for sock in stalled:
            sock.close()
    chat_works(tls_server, tmp_path / "leia", certificates[0])
    assert no_traceback(tls_server.output.settle())


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


# --- trust on first use -----------------------------------------------------------------------

def tofu_client(port: int, workdir: Path, known: Path) -> ClientProcess:
    return ClientProcess(port, workdir, "--tls", "--known-servers", str(known))


def login_after_notice(client: ClientProcess, username: str) -> None:
    client.type(username, PASSWORDS[username])
    assert client.output.until(PROMPT) == LOGIN_LINES


def test_a_changed_certificate_is_refused_with_both_fingerprints_and_the_way_to_accept_it(
        tmp_path: Path, certificates: tuple[Certificate, Certificate]) -> None:
    first, second = certificates
    known = tmp_path / "config" / "known_servers"
    server = TLSServer(tmp_path / "server", first)
    port = server.port
    try:
        client = tofu_client(port, tmp_path / "yoda", known)
        try:
            client.output.expect(rf"The server 127\.0\.0\.1:{port} is new; .* is {first.fingerprint}\. .*")
            login_after_notice(client, "Yoda")
            client.type("/logout")
            assert client.output.rest() == ["Bye, Yoda!"]
        finally:
            client.stop()
        assert server.fingerprint == first.fingerprint
    finally:
        server.stop()
    stored = known.read_text()
    server = TLSServer(tmp_path / "server", second, port)  # same host:port, another certificate
    try:
        client = tofu_client(port, tmp_path / "yoda", known)
        try:
            assert client.output.rest() == [
                f"Refused: the certificate of 127.0.0.1:{port} has changed: SHA-256 {first.fingerprint} was "
                f"trusted, {second.fingerprint} was presented. If the server's certificate was replaced on "
                f"purpose, delete the line for 127.0.0.1:{port} from {known} and connect again."]
            assert client.exit_code() == 1
        finally:
            client.stop()
        assert known.read_text() == stored  # nothing learnt from a refused server
        known.write_text("")  # the user accepts the new certificate as told
        client = tofu_client(port, tmp_path / "yoda", known)
        try:
            client.output.expect(rf"The server 127\.0\.0\.1:{port} is new; .* is {second.fingerprint}\. .*")
            login_after_notice(client, "Yoda")
        finally:
            client.stop()
        assert no_traceback(server.output.settle())
    finally:
        server.stop()


# --- what crosses the wire ----------------------------------------------------------------------

class Relay:
    """A TCP relay between one client and the server that records what the client sends."""

    def __init__(self, upstream: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream = upstream
        self.sent = bytearray()  # client -> server, as it crossed the wire
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.upstream))
        threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()
        self._pump(client, server, self.sent)

    def _pump(self, source: socket.socket, target: socket.socket, record: bytearray | None) -> None:
        try:
            while data := source.recv(65536):
                if record is not None:
                    with self._lock:
                        record += data
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def recorded(self) -> bytes:
        with self._lock:
            return bytes(self.sent)

    def close(self) -> None:
        self.listener.close()


def login_through_relay(server_port: int, workdir: Path, *flags: str) -> bytes:
    relay = Relay(server_port)
    client = ClientProcess(relay.port, workdir, *flags)
    try:
        client.login("Yoda")
        client.command("/msgto Luke the secret plans")
        client.type("/logout")
        assert client.output.rest()[-1] == "Bye, Yoda!"
    finally:
        client.stop()
        relay.close()
    return relay.recorded()


def test_no_password_or_message_crosses_the_wire_in_clear_with_tls(
        tls_server: TLSServer, server: ServerProcess, certificates: tuple[Certificate, Certificate],
        tmp_path: Path) -> None:
    password = PASSWORDS["Yoda"].encode()
    # the control: in plain mode the relay sees the password, so the check below can fail
    assert password in login_through_relay(server.port, tmp_path / "plain")
    wire = login_through_relay(tls_server.port, tmp_path / "tls", "--tls-ca", str(certificates[0].cert))
    assert wire[:1] == b"\x16" and len(wire) > 200  # a TLS stream, the whole session's worth
    for secret in (password, b"Yoda", b"the secret plans"):
        assert secret not in wire


def test_a_server_with_an_unusable_certificate_says_so_in_one_line(tmp_path: Path) -> None:
    shutil.copy(CREDENTIALS, tmp_path / "credentials.txt")
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "0", "3", "--host", "127.0.0.1", "--data-dir", str(tmp_path),
         "--tls-cert", str(tmp_path / "missing.pem")],
        capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"Cannot use the TLS certificate {tmp_path / 'missing.pem'} and key {tmp_path / 'missing.pem'}: "
        "No such file or directory"]


# --- reconnecting ---------------------------------------------------------------------------------

def test_a_reconnection_is_secured_in_the_loop_and_only_to_the_certificate_trusted_at_start(
        tmp_path: Path, certificates: tuple[Certificate, Certificate]) -> None:
    first, second = certificates
    known = tmp_path / "known_servers"
    server = TLSServer(tmp_path / "server", first)
    port = server.port
    client = ClientProcess(port, tmp_path / "yoda", "--tls", "--known-servers", str(known), "--reconnect")
    try:
        client.output.expect(r"The server .* is new; .*")
        login_after_notice(client, "Yoda")
        server.kill()
        client.output.expect(re.escape(RECONNECTING))
        server = TLSServer(tmp_path / "server", first, port)  # the same certificate: logged in again
        client.output.expect(re.escape(RECONNECTED))
        server.output.expect(re.compile(r"Yoda login from 127\.0\.0\.1 .*"))
        server.kill()
        client.output.expect(re.escape(RECONNECTING))
        server = TLSServer(tmp_path / "server", second, port)  # another one: refused, the client stops
        assert client.output.rest()[-1] == (
            f"Refused: the certificate of 127.0.0.1:{port} has changed: SHA-256 {first.fingerprint} was "
            f"trusted, {second.fingerprint} was presented. If the server's certificate was replaced on "
            f"purpose, delete the line for 127.0.0.1:{port} from {known} and connect again.")
        assert client.exit_code() == 1
        assert no_traceback(client.output.lines)
        assert not any("Yoda login" in line for line in server.output.settle())
    finally:
        client.stop()
        server.stop()

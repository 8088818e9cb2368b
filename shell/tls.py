"""TLS for the chat connection: contexts, a non-blocking transport, the client's trust.

The server's event loop reads and writes a connection through an object with the calls of a
non-blocking socket (``recv``, ``send``, ``fileno``, ``close``). For a TLS connection that
object is a ``TLSTransport``: it keeps the loop's rules ("nothing to read now" is
``BlockingIOError``, the end of the stream is ``b""``, a broken connection is another
``OSError``), so the loop's receive and write paths are the same for plain and TLS.

Non-blocking TLS has three traps, each handled here:

- ``SSLWantReadError``/``SSLWantWriteError`` mean "try again when the socket is ready"; they
  are ``OSError`` but not ``BlockingIOError``, so they are translated.
- A record is decrypted whole; what ``recv`` did not return stays inside the SSL object, where
  ``select`` cannot see it (the socket is not readable any more). ``recv`` drains
  ``pending()`` at once.
- The server's handshake is a sequence of steps driven by readiness (``handshake`` returns the
  events to wait for), never a blocking call. Before it starts, the first byte is peeked: a
  peer that speaks the plain protocol to a TLS port gets one plain error frame it can show,
  instead of a TLS alert it cannot read.

The client, by contrast, does its handshake blocking, with a timeout, right after connecting
and before its select loop starts (nothing else can happen yet), then checks the certificate
against its CA file or its ``known_servers`` (trust on first use, ``core.trust``) before a
single byte of the chat (the password included) is sent.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable
import re
import selectors
import socket
import ssl
from pathlib import Path

from core import trust

TLS_HANDSHAKE_RECORD = b"\x16"  # the content type of the record every TLS connection starts with
DISCARD = 4096  # what a plain peer sent is read off before the refusal, so the close is no reset
PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----")  # the first is ours


class TLSSetupError(Exception):
    """A certificate, key or trust file cannot be used, or the server cannot be trusted: the
    message is one line for the user."""


# --- contexts ------------------------------------------------------------------------------

def server_context(cert: str, key: str) -> tuple[ssl.SSLContext, str]:
    """The server's context (TLS 1.2 or later, the ``ssl`` module's secure defaults) and the
    SHA-256 fingerprint of its certificate, for the operator to publish."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION  # no handshake in the middle of the chat
    context.num_tickets = 0  # no session resumption: nothing to write after the handshake
    try:
        context.load_cert_chain(cert, key)
        first = PEM_CERTIFICATE.search(Path(cert).read_text(encoding="ascii", errors="replace"))
    except OSError as exc:  # ssl.SSLError included: a key that does not match, a bad file
        raise TLSSetupError(f"Cannot use the TLS certificate {cert} and key {key or cert}: {_reason(exc)}") from None
    if first is None:  # load_cert_chain has read one, so only an odd layout gets here
        raise TLSSetupError(f"Cannot use the TLS certificate {cert}: no PEM certificate block found")
    return context, trust.fingerprint(ssl.PEM_cert_to_DER_cert(first.group()))


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """With ``ca_file``: verify the chain and the host name against it. Without: accept any
    certificate in the handshake; ``connect`` then pins its fingerprint (trust on first use)."""
    if ca_file is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except OSError as exc:
            raise TLSSetupError(f"Cannot use the CA file {ca_file}: {_reason(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or exc.reason or str(exc)
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or str(exc)).replace("_", " ").lower()
    return exc.strerror or str(exc)


# --- the transport -------------------------------------------------------------------------

class TLSTransport:
    """A TLS stream over a non-blocking socket, read and written like the plain socket."""

    def __init__(self, sock: socket.socket, *, accept: ssl.SSLContext | None = None, refusal: bytes = b"") -> None:
        """``sock`` is an ``SSLSocket`` after its handshake (the client), or, with ``accept``,
        a plain accepted socket whose handshake ``handshake`` will drive (the server).
        ``refusal`` is sent in plain to a peer that does not start with TLS."""
        self._fd = sock.fileno()  # wrapping keeps the descriptor: the selector's key stays valid
        self._sock = sock
        self._accept = accept  # set until the peer's first byte shows it speaks TLS
        self._refusal = refusal
        self._verify: Callable[[bytes], None] | None = None  # a client's check of the certificate
        self.handshaking = accept is not None

    @classmethod
    def connecting(cls, sock: socket.socket, context: ssl.SSLContext, host: str,
                   verify: Callable[[bytes], None]) -> "TLSTransport":
        """A client's connected socket whose handshake ``handshake`` drives (a reconnection
        inside the client's loop); ``verify`` gets the server's certificate (DER) at the end
        and raises ``TLSSetupError`` to refuse it."""
        transport = cls(context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False))
        transport._verify = verify
        transport.handshaking = True
        return transport

    @property
    def family(self) -> int:
        return self._sock.family

    def getpeername(self) -> tuple:
        return self._sock.getpeername()

    def peer_fingerprint(self) -> str:
        return trust.fingerprint(self._sock.getpeercert(binary_form=True))

    def fileno(self) -> int:
        return self._fd

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def close(self) -> None:
        self._sock.close()

    def handshake(self) -> int:
        """Take the server's handshake as far as the socket allows; return the selector events
        to wait for before calling again, or 0 once it is done. Raises ``OSError`` when the
        connection fails: the peer closed, is not speaking TLS, or the handshake broke."""
        if self._accept is not None:
            try:
                first = self._sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return selectors.EVENT_READ
            if not first:
                raise ConnectionResetError("closed before the TLS handshake")
            if first != TLS_HANDSHAKE_RECORD:
                self._refuse()
                raise ConnectionRefusedError("a plain connection to the TLS port")
            self._sock = self._accept.wrap_socket(self._sock, server_side=True, do_handshake_on_connect=False)
            self._accept = None
        try:
            self._sock.do_handshake()
        except ssl.SSLWantReadError:
            return selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            return selectors.EVENT_WRITE
        except ssl.SSLCertVerificationError as exc:  # a client with --tls-ca
            raise TLSSetupError(f"Refused: the certificate of {self.getpeername()[0]} does not verify: "
                                f"{_reason(exc)}") from None
        if self._verify is not None:
            self._verify(self._sock.getpeercert(binary_form=True))
        self.handshaking = False
        return 0

    def _refuse(self) -> None:
        try:
            self._sock.recv(DISCARD)
            self._sock.send(self._refusal)  # a fresh socket's buffer takes it whole
        except OSError:
            pass

    def recv(self, size: int) -> bytes:
        if self.handshaking:
            raise BlockingIOError("the TLS handshake is not finished")
        sock = self._sock
        try:
            data = sock.recv(size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError from None
        except ssl.SSLZeroReturnError:  # the peer's close_notify
            return b""
        if not data:
            return data
        # a TLS read returns one record (at most 16 KiB, often one small frame): take the
        # records already here, up to ``size``, as one plain read would
        pieces = [data]
        left = size - len(data)
        while left > 0:
            try:
                data = sock.recv(left)
            except OSError:  # nothing more now (or an end the next read reports)
                break
            if not data:
                break
            pieces.append(data)
            left -= len(data)
        # the rest of a record larger than what was asked is already decrypted inside the SSL
        # object, where select() cannot see it: take it now (less than one record)
        while sock.pending():
            pieces.append(sock.recv(sock.pending()))
        return b"".join(pieces)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Like ``socket.send``. After ``BlockingIOError`` the caller must offer the same bytes
        again (more may follow them): OpenSSL holds a record it began to write."""
        if self.handshaking:
            # only a refusal (the login timed out) is ever sent this early: there is no one to
            # tell, so the connection just ends
            raise ConnectionAbortedError("the TLS handshake is not finished")
        try:
            return self._sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            raise BlockingIOError from None


# --- the client ----------------------------------------------------------------------------

def default_known_servers() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "tessenger" / "known_servers"


def connect(sock: socket.socket, host: str, port: int, ca_file: str | None, known_servers: Path) -> tuple[TLSTransport, str | None]:
    """The handshake on a connected socket (blocking, within the socket's timeout), then the
    trust check. Returns the transport and, on first use, a line to show. Raises
    ``TLSSetupError`` with one line for the user."""
    server = trust.endpoint(host, port)
    context = client_context(ca_file)
    try:
        tls = context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise TLSSetupError(f"Refused: the certificate of {server} does not verify against {ca_file}: "
                            f"{_reason(exc)}") from None
    except ssl.SSLError as exc:
        sock.close()
        raise TLSSetupError(f"The server at {server} did not complete a TLS handshake ({_reason(exc)}): "
                            "is it a TESSENGER server started with --tls-cert?") from None
    except (socket.timeout, TimeoutError):
        sock.close()
        raise TLSSetupError(f"The TLS handshake with {server} timed out") from None
    except OSError as exc:
        sock.close()
        raise TLSSetupError(f"The server at {server} closed the connection during the TLS handshake "
                            f"({_reason(exc)}): is it a TESSENGER server started with --tls-cert?") from None
    if ca_file is not None:
        return TLSTransport(tls), None
    try:
        notice = _trust_on_first_use(server, trust.fingerprint(tls.getpeercert(binary_form=True)), known_servers)
    except TLSSetupError:
        tls.close()
        raise
    return TLSTransport(tls), notice


def _changed(server: str, stored: str | None, presented: str, path: Path) -> str:
    return (f"Refused: the certificate of {server} has changed: SHA-256 {stored} was trusted, "
            f"{presented} was presented. If the server's certificate was replaced on purpose, delete the "
            f"line for {server} from {path} and connect again.")


def reconnector(host: str, port: int, ca_file: str | None, known_servers: Path,
                pinned: str) -> Callable[[socket.socket], TLSTransport]:
    """How the client secures a reconnection inside its loop: the same CA check, or the
    certificate it trusted at start (``pinned``) and no other."""
    context = client_context(ca_file)
    server = trust.endpoint(host, port)

    def verify(der: bytes) -> None:
        presented = trust.fingerprint(der)
        if ca_file is None and presented != pinned:
            raise TLSSetupError(_changed(server, pinned, presented, known_servers))

    return lambda sock: TLSTransport.connecting(sock, context, host, verify)


def _trust_on_first_use(server: str, presented: str, path: Path) -> str | None:
    try:
        known = trust.parse_known(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        known = {}
    except OSError as exc:
        raise TLSSetupError(f"Cannot read the known servers file {path}: {exc.strerror}") from None
    verdict = trust.check(known, server, presented)
    if verdict.trust is trust.Trust.KNOWN:
        return None
    if verdict.trust is trust.Trust.CHANGED:
        raise TLSSetupError(_changed(server, verdict.stored, presented, path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(trust.entry(server, presented))
    except OSError as exc:
        return (f"The server {server} is new; its certificate's SHA-256 fingerprint is {presented}. "
                f"It is trusted for this session only: cannot store it in {path}: {exc.strerror}.")
    return (f"The server {server} is new; its certificate's SHA-256 fingerprint is {presented}. "
            f"Trusted from now on (stored in {path}).")


# --- command lines ---------------------------------------------------------------------------

def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS only, with this PEM certificate (chain)")
    parser.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS; without --tls-ca the server's certificate is trusted on first use")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="with --tls: accept only a server whose certificate verifies against this CA or "
                             "self-signed certificate (and matches SERVER_IP)")
    parser.add_argument("--known-servers", metavar="FILE", type=Path, default=None,
                        help="with --tls and no --tls-ca: the fingerprints trusted on first use "
                             "(default: ~/.config/tessenger/known_servers)")

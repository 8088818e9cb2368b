"""Trust on first use for the server's TLS certificate, as SSH does for host keys.

The client remembers, per ``host:port``, the SHA-256 fingerprint of the certificate it
accepted the first time (the ``known_servers`` file, one ``HOST:PORT FINGERPRINT`` line per
server). Later connections are accepted only with the same certificate. This module decides;
``shell/tls.py`` reads and writes the file and does the handshake.

A fingerprint is written as ``openssl x509 -noout -fingerprint -sha256`` prints it (upper-case
hex pairs joined by colons), so a user can compare it with the server's start-up line or the
certificate file.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER-encoded certificate."""
    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest())


def endpoint(host: str, port: int) -> str:
    """The key of a server in ``known_servers``: ``host:port`` (``[v6]:port`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_known(text: str) -> dict[str, str]:
    """``known_servers`` as endpoint -> fingerprint. Blank lines, ``#`` comments and lines that
    are not two fields are ignored (a hand-edited file must not lock the user out); a later
    line for the same endpoint wins."""
    known: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and not fields[0].startswith("#"):
            known[fields[0]] = fields[1].upper()
    return known


def entry(server: str, print_: str) -> str:
    """The ``known_servers`` line that trusts ``print_`` for ``server``."""
    return f"{server} {print_}\n"


class Trust(enum.Enum):
    KNOWN = "known"  # the fingerprint stored for this server: go on
    NEW = "new"  # never seen: store it and go on (trust on first use)
    CHANGED = "changed"  # another fingerprint is stored: refuse


@dataclass(frozen=True)
class Verdict:
    trust: Trust
    stored: str | None  # the fingerprint on file for the server, if any


def check(known: dict[str, str], server: str, presented: str) -> Verdict:
    stored = known.get(server)
    if stored is None:
        return Verdict(Trust.NEW, None)
    return Verdict(Trust.KNOWN if stored == presented.upper() else Trust.CHANGED, stored)

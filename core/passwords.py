"""Passwords in ``credentials.txt``: plain, or a salted scrypt hash.

The PASSWORD field of a ``credentials.txt`` line is either the password itself or a hash
entry made by ``python3 server.py --hash-password``::

    scrypt$N$r$p$SALT$HASH

``N`` (a power of two), ``r`` and ``p`` are scrypt's cost parameters in decimal; ``SALT`` and
``HASH`` are standard base64 with padding (16 random bytes, 32 bytes of output). A field is a
hash entry exactly when it matches that form with sane parameters; any other field, including
one that merely starts with ``scrypt$``, is a plain password (``malformed_hash`` lets the
server warn about the latter). So a plain password that is itself a well-formed hash entry
cannot be stored in plain: store its hash instead, which is always unambiguous.

The server is one thread, so every login against a hash entry stalls every client for one
scrypt evaluation. The default cost is chosen for that: N=2**8, r=8, p=1 (256 KiB, about
1 ms of CPU per login on the 2-core test machine) keeps 1,000 logins under the 2 s target
of SPEC §8. That still makes a leaked file cost an attacker about 1 ms of CPU and 256 KiB
per guess instead of nothing; ``--hash-cost`` (``hash_entry(..., n=...)``) buys more at a
proportional stall per login: each doubling of N doubles both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "scrypt$"
DEFAULT_N = 2**8
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_N = 2**18  # with r=8 the most MAX_MEMORY allows: every cost --hash-cost takes is a valid entry
MAX_MEMORY = 256 * 1024 * 1024  # refuse entries whose evaluation would need more (128*r*N bytes)

_ENTRY = re.compile(r"scrypt\$(\d{1,8})\$(\d{1,3})\$(\d{1,3})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


def _b64decode(text: str) -> bytes | None:
    """The bytes of canonical padded base64 ``text``, or None."""
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        return None
    return data if base64.b64encode(data).decode() == text else None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, entry: str) -> ScryptHash | None:
        """The hash ``entry`` stands for, or None when it is no well-formed hash entry."""
        match = _ENTRY.fullmatch(entry)
        if match is None:
            return None
        n, r, p = (int(g) for g in match.group(1, 2, 3))
        salt, digest = _b64decode(match.group(4)), _b64decode(match.group(5))
        if not (2 <= n <= MAX_N and n & (n - 1) == 0 and 1 <= r and 1 <= p <= 16):
            return None
        if 128 * r * n > MAX_MEMORY or not salt or digest is None or len(digest) < 16:
            return None
        return cls(n, r, p, salt, digest)

    def matches(self, password: str) -> bool:
        derived = _scrypt(password, self.salt, self.n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(derived, self.digest)

    def entry(self) -> str:
        return f"{PREFIX}{self.n}${self.r}${self.p}${_b64encode(self.salt)}${_b64encode(self.digest)}"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # OpenSSL's default memory cap (32 MiB) would refuse the costlier entries parse() accepts
    memory = 128 * r * (n + p) + 1024 * 1024
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=memory)


def hash_entry(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """A new hash entry for ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    return ScryptHash(n, r, p, salt, _scrypt(password, salt, n, r, p, HASH_BYTES)).entry()


def verify(password: str, stored: str) -> bool:
    """Does ``password`` match ``stored``, a PASSWORD field of ``credentials.txt``?

    Both ways compare in constant time (``hmac.compare_digest``): how long a wrong guess
    takes says nothing about how much of it was right.
    """
    parsed = ScryptHash.parse(stored) if stored.startswith(PREFIX) else None
    if parsed is not None:
        return parsed.matches(password)
    return hmac.compare_digest(password.encode(), stored.encode())


def malformed_hash(stored: str) -> bool:
    """True for a field that looks meant as a hash entry but is not one (used as plain)."""
    return stored.startswith(PREFIX) and ScryptHash.parse(stored) is None

"""Start-up of the server: its command line, ``--hash-password``, the open-file limit, the
listening socket. Each failure is one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import gc
import getpass
import math
import resource
import socket
import sys
from typing import TYPE_CHECKING, Callable, NoReturn

from core import passwords
from core.admission import AddressLimits
from core.framing import DEFAULT_MAX_FRAME
from core.login_throttle import DEFAULT_BURST, DEFAULT_RATE
from core.messages import MAX_PASSWORD, valid_password
from core.rules import DEFAULT_MAX_GROUPS, DEFAULT_MAX_GROUPS_PER_USER
from shell.connections import LOGIN_FRAME
from core.rules import Chat
from shell import tls
from shell.logs import MAX_OPEN_LOGS

if TYPE_CHECKING:
    from shell.cluster import Node as ClusterNode

RESERVED_FDS = MAX_OPEN_LOGS + 32  # descriptors no connection may take: logs, userlog, stdio, selector
GC_THRESHOLD = 100_000  # allocations between cycle collections (CPython's default: 700)

USAGE = "python3 server.py SERVER_PORT NUMBER_OF_CONSECUTIVE_FAILED_ATTEMPTS [options]"


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"Error: {message}. Usage: {USAGE}")


def fail(line: str) -> NoReturn:
    print(line, file=sys.stderr)
    sys.exit(2)


def at_least(kind: type[int] | type[float], low: float) -> Callable[[str], int | float]:
    """An argparse type: a finite number of ``kind`` no smaller than ``low``."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (math.isfinite(value) and value >= low):
            raise argparse.ArgumentTypeError(f"{text!r}: must be at least {low:g}")
        return value

    return parse


def power_of_two(text: str) -> int:
    value = at_least(int, 2)(text)
    if value & (value - 1) or value > passwords.MAX_N:
        raise argparse.ArgumentTypeError(f"{text!r} is not a power of two up to {passwords.MAX_N}")
    return value


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="server.py", description="TESSENGER chat server.")
    parser.add_argument("port", metavar="SERVER_PORT", nargs="?", help="TCP port to listen on (0: let the OS choose)")
    parser.add_argument("attempts", metavar="NUMBER_OF_CONSECUTIVE_FAILED_ATTEMPTS", nargs="?",
                        help="failed logins in a row that block an account (1 to 5)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default: all interfaces)")
    parser.add_argument("--data-dir", default=".", help="where credentials.txt and the logs live (default: .)")
    parser.add_argument("--credentials", help="accounts file (default: DATA_DIR/credentials.txt)")
    parser.add_argument("--block-seconds", type=at_least(float, 0), default=10.0,
                        help="how long a blocked account stays blocked (default: 10)")
    parser.add_argument("--max-frame", type=at_least(int, 1024), default=DEFAULT_MAX_FRAME,
                        help=f"largest frame accepted, bytes (default: {DEFAULT_MAX_FRAME}; "
                             f"at most {LOGIN_FRAME} before login)")
    parser.add_argument("--login-timeout", type=at_least(float, 0.001), default=60.0,
                        help="seconds a connection has to log in (default: 60)")
    parser.add_argument("--max-output", type=at_least(int, 1024), default=1024 * 1024,
                        help="unsent bytes a client may hold: beyond it, those sending to it wait, and if it also "
                             "takes nothing for --stall-timeout it is dropped and logged out (default: 1048576)")
    parser.add_argument("--stall-timeout", type=at_least(float, 0.001), default=30.0,
                        help="seconds a client over --max-output may take nothing before it is dropped (default: 30)")
    parser.add_argument("--frame-timeout", type=at_least(float, 0.001), default=60.0,
                        help="seconds a begun request may take to arrive whole (default: 60)")
    parser.add_argument("--max-connections", type=at_least(int, 1), default=10_000,
                        help="connections served at once; one more gets an error and is closed (default: 10000)")
    parser.add_argument("--flood-rate", type=at_least(float, 0), default=10.0,
                        help="requests a second a connection may make after its burst; beyond, it is read more "
                             "slowly, never dropped (default: 10; 0: no flood control)")
    parser.add_argument("--flood-burst", type=at_least(float, 1), default=20.0,
                        help="requests a connection may make at once (default: 20)")
    parser.add_argument("--per-address", type=at_least(int, 0), default=AddressLimits.connections,
                        help=f"connections from one address at once (default: {AddressLimits.connections}; 0: no limit)")
    parser.add_argument("--per-address-waiting", type=at_least(int, 0), default=AddressLimits.waiting,
                        help=f"connections from one address not yet logged in (default: {AddressLimits.waiting}; "
                             "0: no limit)")
    parser.add_argument("--per-address-rate", type=at_least(int, 0), default=AddressLimits.per_minute,
                        help=f"new connections a minute from one address, as many at once (default: "
                             f"{AddressLimits.per_minute}; 0: no limit)")
    parser.add_argument("--max-waiting", type=at_least(int, 1), default=2048,
                        help="connections not yet logged in, from all addresses; one more closes the oldest of them "
                             "(default: 2048)")
    parser.add_argument("--failed-login-burst", type=at_least(int, 1), default=DEFAULT_BURST,
                        help=f"failed logins one address may make at once (default: {DEFAULT_BURST})")
    parser.add_argument("--failed-login-rate", type=at_least(float, 0), default=DEFAULT_RATE,
                        help=f"failed logins per second one address may make after that; its further logins "
                             f"wait their turn (default: {DEFAULT_RATE:g}; 0: no limit)")
    parser.add_argument("--max-groups-per-user", type=at_least(int, 0), default=DEFAULT_MAX_GROUPS_PER_USER,
                        help=f"groups one user may create (default: {DEFAULT_MAX_GROUPS_PER_USER})")
    parser.add_argument("--max-groups", type=at_least(int, 0), default=DEFAULT_MAX_GROUPS,
                        help=f"groups the server holds at most (default: {DEFAULT_MAX_GROUPS})")
    parser.add_argument("--fsync", action="store_true",
                        help="fsync the logs every turn before acknowledging: messages survive a power cut")
    parser.add_argument("--quiet", action="store_true", help="print nothing but start-up errors")
    parser.add_argument("--redis", metavar="URL",
                        help="run as a node of the cluster sharing redis://HOST:PORT/DB (needs hiredis; see README)")
    parser.add_argument("--reuse-port", action="store_true",
                        help="listen with SO_REUSEPORT, so several nodes on one host share SERVER_PORT")
    parser.add_argument("--hash-password", action="store_true",
                        help="read a password (without echo on a terminal, else one line of stdin), "
                             "print its hashed entry for credentials.txt and exit")
    parser.add_argument("--hash-cost", type=power_of_two, default=passwords.DEFAULT_N,
                        help=f"scrypt N for --hash-password (default: {passwords.DEFAULT_N}); "
                             "every login with the entry stalls the server in proportion")
    tls.add_server_arguments(parser)
    args = parser.parse_args(argv)
    if args.hash_password:
        return args
    missing = [name for name, value in (("SERVER_PORT", args.port), ("NUMBER_OF_CONSECUTIVE_FAILED_ATTEMPTS", args.attempts))
               if value is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    attempts = args.attempts
    if not (attempts.isdigit() and 1 <= int(attempts) <= 5):
        fail(f"Invalid number of allowed failed consecutive attempt: {attempts}. "
             "The valid value of argument number is an integer between 1 and 5")
    args.attempts = int(attempts)
    if not (args.port.isdigit() and int(args.port) <= 65535):
        fail(f"Invalid port: {args.port}. The port must be an integer between 0 and 65535")
    args.port = int(args.port)
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    return args


def hash_password(cost: int) -> int:
    """``--hash-password``: read a password, print its ``credentials.txt`` entry."""
    try:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if getpass.getpass("Repeat the password: ") != password:
                fail("The passwords differ.")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    except (EOFError, KeyboardInterrupt):
        fail("No password given.")
    if not valid_password(password):
        fail(f"A password is 1 to {MAX_PASSWORD} printable characters without spaces.")
    print(passwords.hash_entry(password, n=cost))
    return 0


def raise_file_limit(wanted: int) -> int:
    """Raise the open-file soft limit so ``wanted`` connections fit, as far as the hard limit
    allows; return how many connections fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + RESERVED_FDS
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # e.g. above the kernel's nr_open: keep what we have
            pass
    return wanted if soft == resource.RLIM_INFINITY else min(wanted, soft - RESERVED_FDS)


def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # the kernel spreads new connections over every node listening on the port
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        fail(f"Cannot listen on {host}:{port}: {exc.strerror}")
    listener.listen(1024)
    listener.setblocking(False)
    return listener


def join_cluster(args: argparse.Namespace, accounts: dict[str, str], history: dict[str, int],
                 new_chat: Callable[..., Chat]) -> "ClusterNode":
    """The cluster seam: start as a node (one bounded, blocking exchange with Redis before the loop)."""
    try:
        from shell import cluster  # the optional extra: hiredis
    except ImportError:
        fail("The cluster mode (--redis) needs hiredis: pip install '.[cluster]' (or pip install hiredis)")
    # what every node must agree on for the rules to decide alike
    rules = [args.attempts, args.block_seconds, args.failed_login_burst, args.failed_login_rate,
             args.max_groups_per_user, args.max_groups]
    try:
        return cluster.start(args.redis, accounts, rules, history, new_chat)
    except cluster.ClusterError as exc:
        fail(str(exc))


def collect_rarely() -> None:
    """Let the cycle collector run rarely, and never over the start-up's objects.

    What the loop allocates dies by reference count (messages, effects, frames hold no
    cycles), but one turn of the relay keeps tens of thousands of them alive until its
    replies are queued. At the default threshold (700) the collector ran dozens of times a
    turn, each time promoting the live ones, which soon made it scan the whole heap.
    """
    gc.freeze()  # everything made so far is permanent: no collection looks at it again
    gc.set_threshold(GC_THRESHOLD, 50, 100)

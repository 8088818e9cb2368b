"""Hostile input against the real server: every bad request gets an error frame and its
connection is closed, and nobody else notices.

Also: text with control characters, line breaks or bidi controls never reaches a log or
another user (the schema's rule is ``str.isprintable``), and hypothesis-generated sequences
of (often malformed) frames always get valid replies and an orderly end.
"""

from __future__ import annotations

import json
import random
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from hypothesis import given, settings, strategies as st

from core.framing import encode as frame
from core.messages import (
    ActiveUser, ActiveUsers, Bye, CheckUser, Error, Login, Message, MsgSent, MsgTo,
    PrivateMessage, SchemaError, Welcome, encode, replies, requests,
)
from tests.harness import TIMEOUT, ServerProcess, WireClient
from tests.test_server import login


def read_to_end(client: WireClient) -> list[Message]:
    """Every message until the server closes the connection; each must be a valid reply."""
    messages = list(client.pending)
    client.pending.clear()
    client.sock.settimeout(TIMEOUT)
    while True:
        try:
            data = client.sock.recv(65536)
        except ConnectionResetError:  # closed with our junk unread: what came before still counts
            break
        if not data:
            break
        messages += [replies.decode(payload) for payload in client.decoder.feed(data)]
    return messages


def json_frame(obj: Any) -> bytes:
    """A frame of ``obj`` as JSON; lone surrogates travel as ``\\ud800`` escapes."""
    return frame(json.dumps(obj).encode())


def assert_printable(text: str) -> None:
    """Only printable characters and newlines: no control character, no line or paragraph
    separator, no bidi or zero-width control."""
    unprintable = [c for c in text if not (c.isprintable() or c == "\n")]
    assert not unprintable, unprintable


def alive_without_traceback(server: ServerProcess) -> bool:
    return server.process.poll() is None and not any("Traceback" in line for line in server.output.settle(0.05))


# --- a hostile client among honest ones -------------------------------------------------------

@dataclass(frozen=True)
class Attack:
    name: str
    data: bytes
    error: str | None  # the protocol error it must get; None: nothing is due (half a frame)
    username: str | None = None  # log in as this user first


def too_long(data: bytes, limit: int) -> str:
    return f"Error. Bad frame: frame of {struct.unpack_from('!I', data)[0]} bytes exceeds the limit of {limit}."


RANDOM_BYTES = b"\xff" + random.Random(6).randbytes(5000)
ATTACKS = [
    Attack("random bytes", RANDOM_BYTES, too_long(RANDOM_BYTES, 4096)),
    Attack("random payload", frame(random.Random(7).randbytes(3000)), "Error. Bad request: payload is not UTF-8 JSON."),
    Attack("4 GiB length", b"\xff\xff\xff\xff", too_long(b"\xff\xff\xff\xff", 4096)),
    Attack("4 GiB length, logged in", b"\xff\xff\xff\xff", too_long(b"\xff\xff\xff\xff", 65536), "Leia"),
    Attack("half a frame, then silence", frame(b'{"type":"check_user","username":"Yoda"}')[:9], None),
    Attack("wrong field type", json_frame({"type": "login", "username": "Yoda", "password": "x", "udp_port": "7000"}),
           "Error. Bad request: login.udp_port must be a non-negative integer."),
    Attack("wrong field type, logged in", json_frame({"type": "msgto", "receivers": "Luke", "text": "hi"}),
           "Error. Bad request: msgto.receivers must be a list.", "obiwan"),
    Attack("a 5,000-digit number", frame(b'{"type":"p2pvideo","audience":"Luke","filename":"a","size":' + b"9" * 5000 + b"}"),
           "Error. Bad request: payload is not UTF-8 JSON.", "r2D2"),
    Attack("unknown type", json_frame({"type": "hack"}), "Error. Bad request: unknown message type 'hack'."),
    Attack("not an object", json_frame([1, 2, 3]), "Error. Bad request: payload must be a JSON object."),
    Attack("deep nesting", frame(b"[" * 4000), "Error. Bad request: payload is not UTF-8 JSON."),
    Attack("lone surrogate", json_frame({"type": "check_user", "username": "\ud800"}),
           "Error. Bad request: check_user.username must be 1 to 64 printable characters without spaces."),
    Attack("request before login", json_frame({"type": "activeuser"}), "Error. Please log in first."),
    Attack("login after login", json_frame({"type": "check_user", "username": "Luke"}),
           "Error. You are already logged in.", "c3p0"),
]


@pytest.fixture
def unthrottled(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server without flood control: the flood below is answered at once (fakelag is tested
    in test_abuse.py)."""
    server = ServerProcess(tmp_path, 3, "--flood-rate", "0")
    yield server
    server.stop()


def test_hostile_clients_while_honest_clients_chat(unthrottled: ServerProcess) -> None:
    server = unthrottled
    yoda, luke = login(server, "Yoda"), login(server, "Luke")
    flooder = login(server, "Hans")  # 10,000 requests in one burst; read only at the end
    flooder.send_raw(json_frame({"type": "msgto", "receivers": ["Ghost"], "text": "flood"}) * 10_000)
    hostiles: list[tuple[Attack, WireClient]] = []
    texts: list[str] = []
    for n, attack in enumerate(ATTACKS):
        hostile = login(server, attack.username) if attack.username else server.connect()
        hostile.send_raw(attack.data)
        hostiles.append((attack, hostile))
        for i in range(10):  # honest traffic in between, in both directions
            texts.append(f"honest {n}.{i}")
            yoda.send(MsgTo(["Luke"], f"{texts[-1]} from Yoda"))
            luke.send(MsgTo(["Yoda"], f"{texts[-1]} from Luke"))

    for attack, hostile in hostiles:
        if attack.error is not None:
            assert read_to_end(hostile) == [Error("protocol", attack.error)], attack.name
    for me, other in ((yoda, "Luke"), (luke, "Yoda")):  # each delivered and acknowledged once, in order
        got = [me.recv() for _ in range(2 * len(texts))]
        assert [m.receiver for m in got if isinstance(m, MsgSent)] == [other] * len(texts)
        assert [m.text for m in got if isinstance(m, PrivateMessage)] == [f"{t} from {other}" for t in texts]
    flood = [flooder.recv() for _ in range(10_000)]  # every request of the burst answered
    assert all(reply == Error("command", "Error. User Ghost does not exist.") for reply in flood)
    flooder.send(ActiveUser())
    assert isinstance(flooder.recv(), ActiveUsers)

    lines = server.log("messagelog.txt").splitlines()  # logged exactly once each
    assert [int(line.split(";")[0]) for line in lines] == list(range(1, len(lines) + 1))
    logged = sorted(line.split("; ", 3)[3] for line in lines)
    assert logged == sorted(f"{t} from {who}" for t in texts for who in ("Yoda", "Luke"))
    for user in ("Leia", "obiwan", "r2D2", "c3p0"):  # the logged-in hostiles were logged out
        server.output.expect(f"{user} logout")
    assert alive_without_traceback(server)


def test_requests_before_a_bad_frame_are_handled_before_it_is_refused(server: ServerProcess) -> None:
    yoda, luke = login(server, "Yoda"), login(server, "Luke")
    yoda.send_raw(frame(encode(MsgTo(["Luke"], "sent first"))) + b"\xff\xff\xff\xff")  # in one write
    assert isinstance(yoda.recv(), MsgSent)
    assert read_to_end(yoda) == [Error("protocol", too_long(b"\xff\xff\xff\xff", 65536))]
    assert luke.recv().text == "sent first"


# --- control characters -------------------------------------------------------------------------

UNPRINTABLE = [
    "line\nbreak", "carriage\rreturn", "tab\there", "escape \x1b[2J\x1b[Hclear", "bell\x07", "nul\x00",
    "delete\x7f", "C1 CSI \x9b31m", "next line\x85", "line separator\u2028", "paragraph separator\u2029",
    "bidi override \u202eevil", "bidi isolate \u2066x\u2069", "zero width\u200bspace", "byte order\ufeffmark",
    "no-break\u00a0space", "lone \ud800 surrogate",
]


def test_unprintable_text_never_reaches_a_log_or_a_user(server: ServerProcess) -> None:
    luke = login(server, "Luke")
    hostile_requests = [
        request
        for bad in UNPRINTABLE
        for request in (
            {"type": "msgto", "receivers": ["Luke"], "text": bad},
            {"type": "groupmsg", "group": "jedi", "text": bad},
            {"type": "msgto", "receivers": [bad], "text": "hi"},
            {"type": "p2pvideo", "audience": "Luke", "filename": bad, "size": 1},
        )
    ]
    for request in hostile_requests:
        sender = login(server, "Yoda")
        sender.send_raw(json_frame(request))
        (reply,) = read_to_end(sender)  # the error, then the end: the user is logged out
        assert reply.code == "protocol" and reply.text.startswith("Error. Bad request: "), request
    yoda = login(server, "Yoda")
    yoda.send(MsgTo(["Luke"], "clean"))
    assert isinstance(yoda.recv(), MsgSent)
    assert luke.recv().text == "clean"  # the first and only message Luke got
    assert server.log("messagelog.txt").endswith("; Luke; clean\n")
    assert len(server.log("messagelog.txt").splitlines()) == 1
    assert_printable(server.log("userlog.txt"))
    assert_printable("\n".join(server.output.settle(0.05)))
    assert alive_without_traceback(server)


# --- hypothesis: any sequence of frames -----------------------------------------------------------

ACCOUNTS = {"fuzz": "fuzz-pw", "other": "other-pw"}
good_names = st.sampled_from(["fuzz", "other", "Ghost", "jedi"])
good_texts = st.sampled_from(["hi", "ok \U0001f44d", "x" * 1000])
good_numbers = st.integers(0, 65_535)
bad_names = st.sampled_from(["a b", "", "x" * 65, "e\x1b[0m", "\u2028"]) | st.text(max_size=8)
bad_texts = st.sampled_from([" ", "", "a\nb", "\x1b[2J", "\u202eevil", "x" * 1001]) | st.text(max_size=20)
bad_numbers = st.integers(-2, 70_000) | st.booleans() | st.floats(allow_nan=False) | st.none()
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)


def request_dicts(names: st.SearchStrategy[Any], texts: st.SearchStrategy[Any],
                  numbers: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Requests of every type, their fields drawn from the given kinds."""

    @st.composite
    def login(draw: st.DrawFn) -> dict[str, Any]:
        # a known user always with the right password: wrong ones would block accounts across
        # examples (wrong passwords are the business of test_server.py)
        username = draw(names)
        password = ACCOUNTS.get(username) or draw(st.text(max_size=10))
        return {"type": "login", "username": username, "password": password, "udp_port": draw(numbers)}

    return st.one_of(
        st.builds(lambda u: {"type": "check_user", "username": u}, names),
        login(),
        st.builds(lambda r, t: {"type": "msgto", "receivers": r, "text": t}, st.lists(names, max_size=4), texts),
        st.just({"type": "activeuser"}),
        st.builds(lambda g, m: {"type": "creategroup", "group": g, "members": m}, names, st.lists(names, max_size=4)),
        st.builds(lambda g: {"type": "joingroup", "group": g}, names),
        st.builds(lambda g, t: {"type": "groupmsg", "group": g, "text": t}, names, texts),
        st.just({"type": "logout"}),
        st.builds(lambda a, f, n: {"type": "p2pvideo", "audience": a, "filename": f, "size": n}, names, texts, numbers),
        st.builds(lambda g, f, n: {"type": "groupvideo", "group": g, "filename": f, "size": n}, names, texts, numbers),
    )


valid = request_dicts(good_names, good_texts, good_numbers)
suspect = request_dicts(good_names | bad_names, good_texts | bad_texts, good_numbers | bad_numbers)


@st.composite
def mistyped(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with one field of the wrong JSON kind (never a wrong password string)."""
    request = dict(draw(valid))
    fields = [name for name in request if name != "type"]
    if fields:
        name = draw(st.sampled_from(fields))
        kind = type(request[name])
        request[name] = draw(json_values.filter(lambda v: type(v) is not kind and not isinstance(v, str)))
    return request


@st.composite
def payload(draw: st.DrawFn) -> bytes:
    # mostly valid requests, so that sequences get past their first frames
    odd = st.one_of(suspect, mistyped(), st.builds(lambda t: {"type": t}, st.text(max_size=10)), json_values)
    obj = draw(valid if draw(st.integers(0, 9)) < 7 else odd)
    if draw(st.booleans()):
        return json.dumps(obj).encode()  # surrogates as \ud800 escapes
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")  # raw: then not UTF-8 at all


LOGIN = json.dumps({"type": "login", "username": "fuzz", "password": ACCOUNTS["fuzz"], "udp_port": 7000}).encode()
frames = st.builds(lambda first, rest: first + rest,
                   st.sampled_from([[], [LOGIN]]), st.lists(payload() | st.binary(max_size=40), max_size=8))
tails = st.one_of(st.just(b""), st.binary(min_size=1, max_size=30),
                  st.integers(65_537, 2**32 - 1).map(lambda n: struct.pack("!I", n)))


@dataclass(frozen=True)
class Expected:
    end: str  # "protocol" (an error, then closed), "bye", "quiet" (no error) or "unknown" (junk at the end)
    welcome: bool  # a login succeeded


def expect(payloads: list[bytes], tail: bytes) -> Expected:
    """What the server must answer: it handles the frames in order until one breaks the protocol."""
    logged_in = False
    for data in payloads:
        try:
            request = requests.decode(data)
        except SchemaError:
            return Expected("protocol", logged_in)
        if isinstance(request, (CheckUser, Login)) == logged_in:
            return Expected("protocol", logged_in)  # before login only these two; after it never again
        if isinstance(request, Login) and request.username in ACCOUNTS:
            logged_in = True
        if request.TYPE == "logout":
            return Expected("bye", logged_in)
    if len(tail) == 4 and struct.unpack("!I", tail)[0] > 65_536:
        return Expected("protocol", logged_in)
    return Expected("unknown" if tail else "quiet", logged_in)


def converse(server: ServerProcess, payloads: list[bytes], tail: bytes) -> list[Message]:
    client = server.connect()
    try:
        client.send_raw(b"".join(frame(p) for p in payloads) + tail)
        client.sock.shutdown(socket.SHUT_WR)  # the end of our stream: the server closes when done
    except OSError:
        pass  # it already closed on an early error
    try:
        return read_to_end(client)
    finally:
        client.close()


def test_any_frame_sequence_gets_valid_replies_and_an_orderly_end(tmp_path: Path) -> None:
    (tmp_path / "credentials.txt").write_text("".join(f"{u} {p}\n" for u, p in ACCOUNTS.items()))
    server = ServerProcess(tmp_path)

    @settings(max_examples=200, deadline=None)
    @given(frames, tails)
    def check(payloads: list[bytes], tail: bytes) -> None:
        payloads = [p for p in payloads if len(p) <= 4096]  # the limit before login; tested elsewhere
        messages = converse(server, payloads, tail)
        expected = expect(payloads, tail)
        protocol = [i for i, m in enumerate(messages) if isinstance(m, Error) and m.code == "protocol"]
        assert protocol in ([], [len(messages) - 1])  # a protocol error is always the last word
        assert not any(isinstance(m, Error) and m.code == "blocked" for m in messages)
        assert sum(isinstance(m, Welcome) for m in messages) == expected.welcome, messages
        if expected.end == "protocol":
            assert protocol, messages
        elif expected.end == "bye":
            assert isinstance(messages[-1], Bye) and not protocol, messages
        elif expected.end == "quiet":
            assert not protocol, messages

    try:
        check()
        assert alive_without_traceback(server)
        fuzz = server.connect()  # and it still serves
        fuzz.send(Login("fuzz", ACCOUNTS["fuzz"], 7000), MsgTo(["fuzz"], "still up"))
        assert fuzz.recv() == Welcome("fuzz")
        assert {type(fuzz.recv()), type(fuzz.recv())} == {PrivateMessage, MsgSent}
        assert_printable(server.log("messagelog.txt"))
    finally:
        server.stop()

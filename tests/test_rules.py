"""The chat rules (SPEC §3–§5): exact lines, and a random-command state machine."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from core import logformat
from core.messages import (
    ActiveUser, ActiveUserEntry, ActiveUsers, Bye, CheckUser, CreateGroup, Error, GroupCreated,
    GroupInvite, GroupJoined, GroupMessage, GroupMsg, GroupSent, GroupVideo, JoinGroup, Login,
    Logout, Message, MsgSent, MsgTo, P2PVideo, PrivateMessage, TransferEnded, TransferOffer, TransferReady,
    TransferTarget, UserOk, Welcome,
)
from core.messages import Code
from core.login_throttle import LoginThrottle
from core.rules import MAX_REMEMBERED_TRANSFERS, Announce, Append, Chat, Close, Hold, Send, parse_credentials

ACCOUNTS = {"Yoda": "wise*!@#", "Hans": "solo$%()", "Leia": "=+_-org", "Luke": "x"}
UNKNOWN = ["Vader", "yoda", "Hans2"]
T0 = 1_685_631_601.0
MESSAGELOG = logformat.MESSAGELOG

BLOCKED_NOW = "Invalid Password. Your account has been blocked. Please try again later"
BLOCKED = "Your account is blocked due to multiple login failures. Please try again later"
INVALID_USERNAME = "Invalid Username. Please try again"
INVALID_PASSWORD = "Invalid Password. Please try again"


def ts(now: float) -> str:
    return time.strftime("%d %b %Y %H:%M:%S", time.localtime(int(now)))


def userlog(chat: Chat) -> str:
    """The text of ``userlog.txt`` as the chat has it now."""
    return chat.userlog().tobytes().decode()


def to(effects: list[Any], conn: int) -> list[Message]:
    """The messages ``conn`` receives, in order."""
    return [e.message for e in effects if isinstance(e, Send) and conn in e.conns]


def appends(effects: list[Any]) -> list[Append]:
    return [e for e in effects if isinstance(e, Append)]


def closes(effects: list[Any]) -> list[int]:
    return [e.conn for e in effects if isinstance(e, Close)]


def err(text: str, code: str = Code.COMMAND) -> Error:
    return Error(code, text)


# --- example-based: the exact lines of §4 and §5 ----------------------------------------

class Harness:
    def __init__(self, max_failures: int = 3, **kwargs: Any) -> None:
        ids = iter(f"{i:032x}" for i in range(1, 1000))
        keys = iter(f"{i:064x}" for i in range(1, 1000))
        self.chat = Chat(dict(ACCOUNTS), max_failures, new_transfer_id=lambda: next(ids),
                         new_transfer_key=lambda: next(keys), **kwargs)
        self.now = T0
        self.next_conn = 1
        self.conns: dict[str, int] = {}

    def connect(self, ip: str = "127.0.0.1") -> int:
        conn = self.next_conn
        self.next_conn += 1
        self.chat.connect(conn, ip)
        return conn

    def do(self, conn: int, request: Any) -> list[Any]:
        return self.chat.handle(conn, request, self.now)

    def login(self, name: str, port: int = 6000, ip: str = "127.0.0.1") -> int:
        conn = self.connect(ip)
        assert to(self.do(conn, CheckUser(name)), conn) == [UserOk()]
        effects = self.do(conn, Login(name, ACCOUNTS[name], port))
        assert to(effects, conn) == [Welcome(name)]
        self.conns[name] = conn
        return conn


@pytest.fixture
def h() -> Harness:
    return Harness()


def only_error(effects: list[Any], conn: int, text: str, code: str = Code.COMMAND) -> None:
    assert to(effects, conn) == [err(text, code)]
    assert not appends(effects)


def test_login_unknown_username(h: Harness) -> None:
    conn = h.connect()
    for request in (CheckUser("Vader"), Login("Vader", "x", 1), CheckUser("yoda")):  # case-sensitive
        effects = h.do(conn, request)
        only_error(effects, conn, INVALID_USERNAME, Code.INVALID_USERNAME)
        assert closes(effects) == []


def test_login_wrong_password_then_block_then_blocked_everywhere_then_unblocked(h: Harness) -> None:
    a = h.connect()
    assert to(h.do(a, CheckUser("Yoda")), a) == [UserOk()]
    for _ in range(2):
        effects = h.do(a, Login("Yoda", "wrong", 1))
        only_error(effects, a, INVALID_PASSWORD, Code.INVALID_PASSWORD)
        assert closes(effects) == []
    effects = h.do(a, Login("Yoda", "wrong", 1))
    only_error(effects, a, BLOCKED_NOW, Code.BLOCKED)
    assert closes(effects) == [a]
    h.chat.disconnect(a, h.now)
    # blocked: even the right password, from another client and another address; but
    # only once a password is given: the username step tells nothing
    h.now += 9.9
    b = h.connect("10.9.9.9")
    assert to(h.do(b, CheckUser("Yoda")), b) == [UserOk()]
    effects = h.do(b, Login("Yoda", "wrong", 1))
    only_error(effects, b, BLOCKED, Code.BLOCKED)
    assert closes(effects) == [b]
    c = h.connect()
    effects = h.do(c, Login("Yoda", ACCOUNTS["Yoda"], 1))
    only_error(effects, c, BLOCKED, Code.BLOCKED)
    assert closes(effects) == [c]
    # other users are not affected
    h.login("Hans")
    # 10 seconds after the third failure the block is over
    h.now = T0 + 10.0
    d = h.connect()
    assert to(h.do(d, Login("Yoda", ACCOUNTS["Yoda"], 1)), d) == [Welcome("Yoda")]


def test_failures_from_several_connections_add_up(h: Harness) -> None:
    conns = [h.connect(f"10.0.0.{i}") for i in range(3)]
    assert to(h.do(conns[0], Login("Leia", "no", 1)), conns[0]) == [err(INVALID_PASSWORD, Code.INVALID_PASSWORD)]
    assert to(h.do(conns[1], Login("Leia", "no", 1)), conns[1]) == [err(INVALID_PASSWORD, Code.INVALID_PASSWORD)]
    assert to(h.do(conns[2], Login("Leia", "no", 1)), conns[2]) == [err(BLOCKED_NOW, Code.BLOCKED)]
    assert to(h.do(conns[0], Login("Leia", ACCOUNTS["Leia"], 1)), conns[0]) == [err(BLOCKED, Code.BLOCKED)]


def test_success_resets_the_failure_count(h: Harness) -> None:
    a = h.connect()
    h.do(a, Login("Luke", "no", 1))
    h.do(a, Login("Luke", "no", 1))
    assert to(h.do(a, Login("Luke", "x", 1)), a) == [Welcome("Luke")]
    h.chat.disconnect(a, h.now)
    b = h.connect()
    for _ in range(2):  # two more failures are again below the limit of three
        assert to(h.do(b, Login("Luke", "no", 1)), b) == [err(INVALID_PASSWORD, Code.INVALID_PASSWORD)]
    assert to(h.do(b, Login("Luke", "no", 1)), b) == [err(BLOCKED_NOW, Code.BLOCKED)]


def test_count_starts_afresh_after_a_block() -> None:
    h = Harness(max_failures=2)
    a = h.connect()
    h.do(a, Login("Luke", "no", 1))
    assert to(h.do(a, Login("Luke", "no", 1)), a) == [err(BLOCKED_NOW, Code.BLOCKED)]
    h.now += 10
    b = h.connect()
    assert to(h.do(b, Login("Luke", "no", 1)), b) == [err(INVALID_PASSWORD, Code.INVALID_PASSWORD)]


def test_one_failure_blocks_when_the_limit_is_one() -> None:
    h = Harness(max_failures=1, block_seconds=0.5)
    a = h.connect()
    assert to(h.do(a, Login("Luke", "no", 1)), a) == [err(BLOCKED_NOW, Code.BLOCKED)]
    h.now += 0.49
    b = h.connect()
    assert to(h.do(b, Login("Luke", "x", 1)), b) == [err(BLOCKED, Code.BLOCKED)]
    h.now += 0.01
    assert h.login("Luke")


def test_already_logged_in_is_told_after_the_right_password_only(h: Harness) -> None:
    h.login("Yoda")
    b = h.connect()
    assert to(h.do(b, CheckUser("Yoda")), b) == [UserOk()]
    for _ in range(2):
        effects = h.do(b, Login("Yoda", ACCOUNTS["Yoda"], 1))
        only_error(effects, b, "Yoda is already logged in", Code.ALREADY_LOGGED_IN)
        assert closes(effects) == []
    # a wrong password tells nothing about who is online, and counts like any other
    effects = h.do(b, Login("Yoda", "wrong", 1))
    only_error(effects, b, INVALID_PASSWORD, Code.INVALID_PASSWORD)
    assert h.chat.failures["Yoda"] == 1


def test_requests_before_login_are_protocol_errors(h: Harness) -> None:
    for request in (MsgTo(["Yoda"], "hi"), ActiveUser(), CreateGroup("g", ["Yoda"]), JoinGroup("g"),
                    GroupMsg("g", "hi"), Logout(), P2PVideo("Yoda", "f", 1), GroupVideo("g", "f", 1)):
        conn = h.connect()
        effects = h.do(conn, request)
        assert to(effects, conn) == [err("Error. Please log in first.", Code.PROTOCOL)]
        assert closes(effects) == [conn]
        assert not appends(effects)


def test_login_requests_after_login_are_protocol_errors(h: Harness) -> None:
    conn = h.login("Yoda")
    effects = h.do(conn, Login("Hans", ACCOUNTS["Hans"], 1))
    assert to(effects, conn) == [err("Error. You are already logged in.", Code.PROTOCOL)]
    assert closes(effects) == [conn]
    assert "Hans" not in h.chat.active


def test_msgto_lines_log_and_errors(h: Harness) -> None:
    yoda = h.login("Yoda")
    hans = h.login("Hans")
    effects = h.do(yoda, MsgTo(["Hans"], "Hello there; general"))
    stamp = ts(h.now)
    assert appends(effects) == [Append(MESSAGELOG, f"1; {stamp}; Hans; Hello there; general\n")]
    assert to(effects, yoda) == [MsgSent("Hans", stamp)]
    assert to(effects, hans) == [PrivateMessage("Yoda", "Hello there; general", stamp)]
    assert Announce(f'Yoda message to Hans "Hello there; general" at {stamp}.') in effects
    only_error(h.do(yoda, MsgTo(["Vader"], "hi")), yoda, "Error. User Vader does not exist.")
    only_error(h.do(yoda, MsgTo(["Leia"], "hi")), yoda, "Error. Leia is not active.")
    only_error(h.do(yoda, MsgTo([], "hi")), yoda, "Error. Usage: /msgto USERNAME MESSAGE")
    # still in session after every error
    assert h.do(yoda, MsgTo(["Hans"], "again"))[0] == Append(MESSAGELOG, f"2; {stamp}; Hans; again\n")


def test_msgto_several_receivers(h: Harness) -> None:
    yoda = h.login("Yoda")
    hans = h.login("Hans")
    luke = h.login("Luke")
    effects = h.do(yoda, MsgTo(["Hans", "Vader", "Leia", "Luke", "Hans"], "all"))
    stamp = ts(h.now)
    assert to(effects, yoda) == [
        MsgSent("Hans", stamp),
        err("Error. User Vader does not exist."),
        err("Error. Leia is not active."),
        MsgSent("Luke", stamp),
    ]
    assert [a.line for a in appends(effects)] == [f"1; {stamp}; Hans; all\n", f"2; {stamp}; Luke; all\n"]
    assert to(effects, hans) == [PrivateMessage("Yoda", "all", stamp)]
    assert to(effects, luke) == [PrivateMessage("Yoda", "all", stamp)]


def test_activeuser(h: Harness) -> None:
    yoda = h.login("Yoda", port=6666, ip="129.64.1.11")
    assert to(h.do(yoda, ActiveUser()), yoda) == [ActiveUsers([])]
    h.now += 5
    h.login("Hans", port=7777, ip="10.0.0.2")
    h.now += 1
    h.login("Leia", port=0, ip="::1")
    assert to(h.do(yoda, ActiveUser()), yoda) == [
        ActiveUsers([ActiveUserEntry("Hans", "10.0.0.2", 7777, ts(T0 + 5)),
                     ActiveUserEntry("Leia", "::1", 0, ts(T0 + 6))])
    ]
    assert to(h.do(h.conns["Hans"], ActiveUser()), h.conns["Hans"]) == [
        ActiveUsers([ActiveUserEntry("Yoda", "129.64.1.11", 6666, ts(T0)),
                     ActiveUserEntry("Leia", "::1", 0, ts(T0 + 6))])
    ]


def test_userlog_renumbers_when_a_user_leaves(h: Harness) -> None:
    assert userlog(h.chat) == ""
    for i, name in enumerate(["Yoda", "Hans", "Leia"]):
        h.now = T0 + i
        h.login(name, port=6000 + i, ip=f"10.0.0.{i}")
    assert userlog(h.chat) == (
        f"1; {ts(T0)}; Yoda; 10.0.0.0; 6000\n2; {ts(T0 + 1)}; Hans; 10.0.0.1; 6001\n3; {ts(T0 + 2)}; Leia; 10.0.0.2; 6002\n"
    )
    assert h.chat.disconnect(h.conns["Yoda"], h.now) == [Announce("Yoda logout")]
    assert userlog(h.chat) == f"1; {ts(T0 + 1)}; Hans; 10.0.0.1; 6001\n2; {ts(T0 + 2)}; Leia; 10.0.0.2; 6002\n"
    assert h.chat.address_of("Hans") == ("10.0.0.1", 6001)
    assert h.chat.address_of("Yoda") is None


def test_userlog_is_right_whenever_it_is_asked_for(h: Harness) -> None:
    """Logins append to the kept text and logouts renumber it, with or without a look between."""
    h.login("Yoda", port=1)
    h.login("Hans", port=2)
    h.chat.disconnect(h.conns["Yoda"], h.now)
    h.login("Leia", port=3)  # no userlog() since the logout
    h.login("Yoda", port=4)
    assert userlog(h.chat) == f"1; {ts(T0)}; Hans; 127.0.0.1; 2\n2; {ts(T0)}; Leia; 127.0.0.1; 3\n3; {ts(T0)}; Yoda; 127.0.0.1; 4\n"
    h.login("Luke", port=5)
    assert userlog(h.chat).splitlines()[-1] == f"4; {ts(T0)}; Luke; 127.0.0.1; 5"


def test_creategroup_errors_and_nothing_created(h: Harness) -> None:
    yoda = h.login("Yoda")
    hans = h.login("Hans")
    only_error(h.do(yoda, CreateGroup("g1", [])), yoda, "Please enter at least one more active users.")
    only_error(h.do(yoda, CreateGroup("g1", ["Yoda"])), yoda, "Please enter at least one more active users.")
    for bad in ("bad-name", "grüppe", "a_b", "a.b"):
        only_error(h.do(yoda, CreateGroup(bad, ["Hans"])), yoda, "Error. Group name must contain only letters and digits.")
    only_error(h.do(yoda, CreateGroup("g1", ["Hans", "Vader"])), yoda, "Error. User Vader does not exist.")
    only_error(h.do(yoda, CreateGroup("g1", ["Leia", "Hans"])), yoda, "Error. Leia is not active.")
    # nothing was created by any of these
    only_error(h.do(hans, JoinGroup("g1")), hans, "Groupchat g1 doesn't exist.")
    effects = h.do(yoda, CreateGroup("g1", ["Hans", "Yoda", "Hans"]))
    assert appends(effects) == [Append("g1_messagelog.txt", "")]
    assert to(effects, yoda) == [GroupCreated("g1", ["Yoda", "Hans"])]
    assert to(effects, hans) == [GroupInvite("g1", "Yoda")]
    only_error(h.do(hans, CreateGroup("g1", ["Yoda"])), hans, "Failed to create the group chat g1: group name exists!")


def test_group_lines(h: Harness) -> None:
    yoda = h.login("Yoda")
    hans = h.login("Hans")
    luke = h.login("Luke")
    h.login("Leia")
    h.do(yoda, CreateGroup("Jedi", ["Hans", "Luke"]))
    only_error(h.do(yoda, JoinGroup("Jedi")), yoda, "You have already joined Groupchat Jedi")
    only_error(h.do(yoda, JoinGroup("Sith")), yoda, "Groupchat Sith doesn't exist.")
    leia = h.conns["Leia"]
    only_error(h.do(leia, JoinGroup("Jedi")), leia, "Error. You were not added to Groupchat Jedi.")
    only_error(h.do(leia, GroupMsg("Jedi", "hi")), leia, "You are not in this group chat.")
    only_error(h.do(hans, GroupMsg("Jedi", "hi")), hans, "Please join the group before sending messages.")
    only_error(h.do(hans, GroupMsg("Sith", "hi")), hans, "The group chat does not exist.")
    assert to(h.do(hans, JoinGroup("Jedi")), hans) == [GroupJoined("Jedi")]
    only_error(h.do(hans, JoinGroup("Jedi")), hans, "You have already joined Groupchat Jedi")
    effects = h.do(yoda, GroupMsg("Jedi", "May the force"))
    stamp = ts(h.now)
    assert appends(effects) == [Append("Jedi_messagelog.txt", f"1; {stamp}; Yoda; May the force\n")]
    assert to(effects, yoda) == [GroupSent("Jedi")]
    assert to(effects, hans) == [GroupMessage("Jedi", "Yoda", "May the force", stamp)]
    assert to(effects, luke) == []  # added but not joined
    assert to(effects, leia) == []  # not a member
    # logged even when no other member is online
    h.chat.disconnect(hans, h.now)
    effects = h.do(yoda, GroupMsg("Jedi", "alone"))
    assert appends(effects) == [Append("Jedi_messagelog.txt", f"2; {stamp}; Yoda; alone\n")]
    assert to(effects, yoda) == [GroupSent("Jedi")]
    assert [e for e in effects if isinstance(e, Send) and isinstance(e.message, GroupMessage)][0].conns == ()


def test_logout(h: Harness) -> None:
    yoda = h.login("Yoda")
    effects = h.do(yoda, Logout())
    assert to(effects, yoda) == [Bye("Yoda")]
    assert closes(effects) == [yoda]
    assert h.chat.disconnect(yoda, h.now) == [Announce("Yoda logout")]
    assert userlog(h.chat) == ""
    assert h.chat.disconnect(yoda, h.now) == []  # a second close is harmless
    h.login("Yoda")  # and the user may log in again


def test_p2pvideo(h: Harness) -> None:
    yoda = h.login("Yoda", port=5001, ip="10.0.0.1")
    hans = h.login("Hans", port=5002, ip="10.0.0.2")
    only_error(h.do(yoda, P2PVideo("Yoda", "f.mp4", 1)), yoda, "Error. You cannot send a file to yourself.")
    only_error(h.do(yoda, P2PVideo("Vader", "f.mp4", 1)), yoda, "Error. User Vader does not exist.")
    only_error(h.do(yoda, P2PVideo("Leia", "f.mp4", 1)), yoda, "Leia is offline")
    effects = h.do(yoda, P2PVideo("Hans", "f.mp4", 123))
    tid, key = f"{1:032x}", f"{1:064x}"
    assert to(effects, yoda) == [TransferReady("f.mp4", [TransferTarget("Hans", "10.0.0.2", 5002, tid, key)])]
    assert to(effects, hans) == [TransferOffer("Yoda", "f.mp4", 123, "10.0.0.1", 5001, tid, key)]


def test_each_transfer_gets_its_own_random_key() -> None:
    chat = Chat(dict(ACCOUNTS), 3)
    for conn, name in ((1, "Yoda"), (2, "Hans")):
        chat.connect(conn, "10.0.0.1")
        chat.handle(conn, Login(name, ACCOUNTS[name], 5000 + conn), T0)
    keys = [next(m for m in to(chat.handle(1, P2PVideo("Hans", "f", 1), T0), 2)).key for _ in range(20)]
    assert len(set(keys)) == 20 and all(len(bytes.fromhex(k)) == 32 for k in keys)


@pytest.mark.parametrize("leaver", ["Yoda", "Hans"])
def test_the_other_side_of_each_transfer_hears_at_once_when_a_user_leaves(h: Harness, leaver: str) -> None:
    yoda = h.login("Yoda")
    hans = h.login("Hans")
    luke = h.login("Luke")
    first = to(h.do(yoda, P2PVideo("Hans", "a.mp4", 1)), hans)[0].transfer_id
    second = to(h.do(hans, P2PVideo("Yoda", "b.mp4", 1)), yoda)[0].transfer_id
    h.do(yoda, P2PVideo("Luke", "c.mp4", 1))
    other = hans if leaver == "Yoda" else yoda
    effects = h.chat.disconnect(h.conns[leaver], h.now)
    assert to(effects, other) == [TransferEnded(first, leaver), TransferEnded(second, leaver)]
    assert to(effects, luke) == ([TransferEnded(f"{3:032x}", "Yoda")] if leaver == "Yoda" else [])
    assert effects[-1] == Announce(f"{leaver} logout")
    # told once: the transfers are forgotten on both sides
    assert to(h.chat.disconnect(other, h.now), h.conns[leaver]) == []


def test_a_user_remembers_only_the_latest_transfers(h: Harness) -> None:
    yoda = h.login("Yoda")
    hans = h.login("Hans")
    for _ in range(MAX_REMEMBERED_TRANSFERS + 10):
        h.do(yoda, P2PVideo("Hans", "a.mp4", 1))
    ended = to(h.chat.disconnect(yoda, h.now), hans)
    assert len(ended) == MAX_REMEMBERED_TRANSFERS
    assert ended[0] == TransferEnded(f"{11:032x}", "Yoda")


def test_groupvideo(h: Harness) -> None:
    yoda = h.login("Yoda")
    hans = h.login("Hans", port=7, ip="1.1.1.1")
    luke = h.login("Luke")
    only_error(h.do(yoda, GroupVideo("Jedi", "f", 1)), yoda, "The group chat does not exist.")
    h.do(yoda, CreateGroup("Jedi", ["Hans", "Luke"]))
    only_error(h.do(hans, GroupVideo("Jedi", "f", 1)), hans, "Please join the group before sending messages.")
    h.do(hans, JoinGroup("Jedi"))
    effects = h.do(yoda, GroupVideo("Jedi", "f", 9))
    (ready,) = to(effects, yoda)
    assert isinstance(ready, TransferReady) and [t.audience for t in ready.targets] == ["Hans"]
    assert ready.targets[0].ip == "1.1.1.1" and ready.targets[0].udp_port == 7
    assert [type(m) for m in to(effects, hans)] == [TransferOffer]
    assert to(effects, luke) == []


def test_numbering_continues_from_history() -> None:
    h = Harness(history={MESSAGELOG: 41, "Jedi_messagelog.txt": 7, "Other_messagelog.txt": 3})
    yoda = h.login("Yoda")
    h.login("Hans")
    assert appends(h.do(yoda, MsgTo(["Hans"], "a")))[0].line.startswith("42; ")
    assert appends(h.do(yoda, MsgTo(["Hans"], "b")))[0].line.startswith("43; ")
    h.do(yoda, CreateGroup("Jedi", ["Hans"]))
    assert appends(h.do(yoda, GroupMsg("Jedi", "c")))[0].line.startswith("8; ")
    h.do(yoda, CreateGroup("Fresh", ["Hans"]))
    assert appends(h.do(yoda, GroupMsg("Fresh", "d")))[0].line.startswith("1; ")
    assert appends(h.do(yoda, GroupMsg("Jedi", "e")))[0].line.startswith("9; ")


# --- parse_credentials -------------------------------------------------------------------

def test_parse_credentials_crlf_blank_lines_and_special_characters() -> None:
    text = "Yoda wise*!@#$%()=+_-\r\n\r\nHans solo\r\n   \r\n\nLeia p@ss;w0rd'\"\r\nJürgen ü\n"
    assert parse_credentials(text) == {
        "Yoda": "wise*!@#$%()=+_-", "Hans": "solo", "Leia": "p@ss;w0rd'\"", "Jürgen": "ü",
    }
    assert parse_credentials("") == {}
    assert parse_credentials("\n\r\n") == {}
    assert parse_credentials("a b") == {"a": "b"}  # no final newline
    assert parse_credentials("Yoda x\nyoda y\n") == {"Yoda": "x", "yoda": "y"}  # case-sensitive


@pytest.mark.parametrize(
    "text,line",
    [
        ("onlyname\n", 1),
        ("a b\nthree words here\n", 2),
        ("a b\n\nc  d\n", 3),  # two spaces
        ("a\tb\n", 1),
        ("a b c\r\n", 1),
    ],
)
def test_parse_credentials_malformed_lines(text: str, line: int) -> None:
    with pytest.raises(ValueError, match=f"line {line}"):
        parse_credentials(text)


# --- the state machine -------------------------------------------------------------------

NAMES = [*ACCOUNTS, *UNKNOWN]
GROUPS = ["g1", "Team7", "Zz9", "bad-name", "grüppe"]
group_names = st.one_of(st.sampled_from(GROUPS[:3]), st.sampled_from(GROUPS[:3]), st.sampled_from(GROUPS))
TEXTS = st.sampled_from(["hi", "Hello there", "x" * 1000, "ünï 🎉; ok", " padded "])
index = st.integers(min_value=0, max_value=1_000)
# a user named in a command: mostly one who is online now (index into the active list),
# sometimes any name at all, known or not
someone = st.one_of(index, index, st.sampled_from(NAMES))
# a group named in a command: mostly one that exists (index into the groups), sometimes any
some_group = st.one_of(index, index, st.sampled_from([*GROUPS, "nogroup"]))
WRONG = ["nope", "WISE*!@#", "wise*!@", *ACCOUNTS.values()]


def pick(items: list[Any], i: int) -> Any:
    return items[i % len(items)]


class ChatMachine(RuleBasedStateMachine):
    """Drives Chat with random requests against a model written from the spec alone."""

    @initialize(
        max_failures=st.integers(min_value=1, max_value=5),
        block=st.sampled_from([10.0, 2.5]),
        msg_history=st.integers(min_value=0, max_value=5),
        g1_history=st.integers(min_value=0, max_value=5),
        burst=st.sampled_from([1, 2, 5]),
        rate=st.sampled_from([1.0, 0.25, 0.0]),
        groups_per_user=st.sampled_from([1, 2, 100]),
        max_groups=st.sampled_from([1, 3, 10_000]),
    )
    def start(self, max_failures: int, block: float, msg_history: int, g1_history: int,
              burst: int, rate: float, groups_per_user: int, max_groups: int) -> None:
        ids = iter(f"{i:032x}" for i in range(1, 10**6))
        history = {MESSAGELOG: msg_history, "g1_messagelog.txt": g1_history}
        self.chat = Chat(dict(ACCOUNTS), max_failures, block_seconds=block, history=history,
                         new_transfer_id=lambda: next(ids), new_transfer_key=lambda: "0" * 64,
                         login_throttle=LoginThrottle(burst, rate),
                         max_groups_per_user=groups_per_user, max_groups=max_groups)
        self.max_failures = max_failures
        self.block = block
        self.burst, self.rate = burst, rate
        # per address, a token bucket of failed logins: (tokens, when last counted)
        self.tokens: dict[str, tuple[float, float]] = {}
        self.held: dict[int, tuple[float, Login]] = {}  # conn -> (until, the login put off)
        self.groups_per_user, self.max_groups = groups_per_user, max_groups
        self.created: dict[str, int] = {}
        self.now = T0
        self.next_conn = 1
        self.conns: dict[int, dict[str, Any]] = {}  # conn -> {"ip", "user"}
        self.active: list[str] = []  # login order
        self.login_info: dict[str, tuple[int, str, int, str]] = {}  # user -> conn, ip, port, since
        self.failures: dict[str, int] = {}
        self.blocked_until: dict[str, float] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.last_number = dict(history)  # log -> last number seen in an Append
        self.created_logs: set[str] = set()

    # helpers -----------------------------------------------------------------------------

    def logged_in(self) -> list[int]:
        return sorted(c for c, s in self.conns.items() if s["user"])

    def anonymous(self) -> list[int]:
        """Connections not logged in that the server reads (a held one sends nothing more)."""
        return sorted(c for c, s in self.conns.items() if not s["user"] and c not in self.held)

    def name(self, who: int | str) -> str:
        if isinstance(who, str):
            return who
        return pick(self.active, who) if self.active else pick(NAMES, who)

    def group(self, which: int | str) -> str:
        if isinstance(which, str):
            return which
        return pick(sorted(self.groups), which) if self.groups else pick(GROUPS, which)

    def invited_not_joined(self) -> list[tuple[int, str]]:
        return sorted(
            (self.login_info[u][0], g)
            for g, info in self.groups.items() for u in info["members"]
            if u in self.active and u not in info["joined"]
        )

    def blocked(self, user: str) -> bool:
        return self.now < self.blocked_until.get(user, float("-inf"))

    def run(self, conn: int, request: Any) -> list[Any]:
        version = self.chat.presence_version
        before = list(self.chat.active)
        effects = self.chat.handle(conn, request, self.now)  # no exception may escape
        self.check_effects(conn, effects)
        if list(self.chat.active) != before:
            assert self.chat.presence_version > version
        return effects

    def check_effects(self, conn: int, effects: list[Any]) -> None:
        assert effects  # every request is answered
        assert not any(isinstance(e, Close) for e in effects[:-1])  # the server looks only at the last
        for e in effects:
            assert isinstance(e, (Send, Append, Announce, Close, Hold))
            if isinstance(e, Hold):
                assert e.conn == conn and e.until > self.now and effects == [e]  # held: nothing else happened
            if isinstance(e, Close):
                assert e.conn == conn  # a request only ever closes its own connection
            if isinstance(e, Send):
                assert all(c in self.conns for c in e.conns)
                assert len(set(e.conns)) == len(e.conns)
        # logged before acknowledged: the k-th ack of a log follows its k-th line
        seen: dict[str, int] = {}
        acks: dict[str, int] = {}
        for e in effects:
            if isinstance(e, Append) and e.line:
                seen[e.log] = seen.get(e.log, 0) + 1
            if isinstance(e, Send) and isinstance(e.message, (MsgSent, GroupSent)):
                log = MESSAGELOG if isinstance(e.message, MsgSent) else logformat.group_log_name(e.message.group)
                acks[log] = acks.get(log, 0) + 1
                assert seen.get(log, 0) >= acks[log], "acknowledged before it was logged"
        assert acks == {log: n for log, n in seen.items()}  # one ack per line, no more, no less
        # every log's numbers go up by exactly one; each line is one line
        for e in appends(effects):
            if not e.line:
                assert e.log.endswith(logformat.GROUP_LOG_SUFFIX)
                self.created_logs.add(e.log)
                continue
            assert e.line.endswith("\n") and e.line.count("\n") == 1 and "\r" not in e.line
            assert e.line[:-1].isprintable()
            number = int(e.line.split("; ", 1)[0])
            assert number == self.last_number.get(e.log, 0) + 1
            self.last_number[e.log] = number

    def drop(self, conn: int) -> None:
        """The shell closes the connection: whoever was on it is logged out."""
        user = self.conns.pop(conn)["user"]
        self.held.pop(conn, None)
        version = self.chat.presence_version
        effects = self.chat.disconnect(conn, self.now)
        if user:
            assert [e for e in effects if isinstance(e, Announce)] == [Announce(f"{user} logout")]
            for e in effects:  # besides: the other side of each transfer, told at once
                if not isinstance(e, Announce):
                    assert isinstance(e, Send) and isinstance(e.message, TransferEnded)
                    assert e.message.username == user and all(c in self.conns for c in e.conns)
            self.active.remove(user)
            assert self.chat.presence_version > version
        else:
            assert effects == []

    def after(self, conn: int, effects: list[Any]) -> None:
        if conn in closes(effects):
            self.drop(conn)

    def protocol_error(self, conn: int, effects: list[Any], text: str) -> None:
        assert to(effects, conn) == [err(text, Code.PROTOCOL)]
        assert closes(effects) == [conn]
        assert not appends(effects)
        self.drop(conn)

    def bucket(self, ip: str) -> float:
        """The failed logins ``ip`` may make now."""
        tokens, then = self.tokens.get(ip, (float(self.burst), self.now))
        return min(float(self.burst), tokens + (self.now - then) * self.rate)

    def wait_for_turn(self, ip: str) -> float | None:
        """When a login from ``ip`` may be tried, if not now."""
        tokens = self.bucket(ip)
        if not self.rate or tokens >= 1 - 1e-9:
            return None
        return self.now + (1 - tokens) / self.rate

    def count_failure(self, ip: str) -> None:
        if self.rate:
            self.tokens[ip] = (self.bucket(ip) - 1, self.now)

    def expect_refusal(self, conn: int, effects: list[Any], refusal: tuple[str, str]) -> None:
        code, text = refusal
        assert to(effects, conn) == [err(text, code)]
        assert not appends(effects)
        assert closes(effects) == ([conn] if code == Code.BLOCKED else [])
        self.after(conn, effects)

    # rules -------------------------------------------------------------------------------

    def new_conn(self, ip: str) -> int:
        conn = self.next_conn
        self.next_conn += 1
        self.chat.connect(conn, ip)
        self.conns[conn] = {"ip": ip, "user": None}
        return conn

    @rule(ip=st.sampled_from(["127.0.0.1", "10.0.0.2", "::1"]))
    def connect(self, ip: str) -> None:
        if len(self.conns) < 8:
            self.new_conn(ip)

    @rule(dt=st.sampled_from([0.1, 1.0, 2.5, 4.0, 9.99, 10.0, 30.0]))
    def wait(self, dt: float) -> None:
        self.now += dt

    def blocked_users(self) -> list[str]:
        return sorted(u for u, until in self.blocked_until.items() if until > self.now and u not in self.active)

    @precondition(lambda self: self.blocked_users())
    @rule(i=index, early=st.sampled_from([0.0, 0.0, 0.001, 1.0]), port=st.integers(min_value=0, max_value=65535))
    def come_back_after_the_block(self, i: int, early: float, port: int) -> None:
        """A blocked user tries the right password at (or just before) the end of the block."""
        user = pick(self.blocked_users(), i)
        self.now = max(self.now, self.blocked_until[user] - early)  # time never runs backwards
        self.attempt(self.new_conn("10.0.0.3"), user, ACCOUNTS[user], port)
        assert (user in self.active) == (early == 0.0)

    @rule(name=st.sampled_from(list(ACCOUNTS)), times=st.integers(min_value=1, max_value=3),
          wrong=st.sampled_from(WRONG))
    def guess_passwords(self, name: str, times: int, wrong: str) -> None:
        """Wrong passwords for one user, each from a new connection: the failures add up."""
        for _ in range(times):
            self.attempt(self.new_conn("10.6.6.6"), name, wrong, 1)

    @precondition(lambda self: self.anonymous())
    @rule(i=index, name=st.sampled_from(NAMES))
    def check_user(self, i: int, name: str) -> None:
        conn = pick(self.anonymous(), i)
        effects = self.run(conn, CheckUser(name))
        if name not in ACCOUNTS:
            self.expect_refusal(conn, effects, (Code.INVALID_USERNAME, INVALID_USERNAME))
        else:  # blocked or online, the username step does not say
            assert effects == [Send((conn,), UserOk())]

    @rule(ip=st.sampled_from(["127.0.0.1", "10.0.0.2"]), name=st.sampled_from(list(ACCOUNTS)),
          port=st.integers(min_value=0, max_value=65535))
    def connect_and_login(self, ip: str, name: str, port: int) -> None:
        """A well-behaved client: keeps several users online at once."""
        self.attempt(self.new_conn(ip), name, ACCOUNTS[name], port)

    @precondition(lambda self: self.anonymous())
    @rule(i=index, name=st.sampled_from(["Yoda", "Yoda", "Leia", *NAMES]), right=st.sampled_from([False, False, True]),
          wrong=st.sampled_from(WRONG),
          port=st.integers(min_value=0, max_value=65535))
    def login(self, i: int, name: str, right: bool, wrong: str, port: int) -> None:
        self.attempt(pick(self.anonymous(), i), name, ACCOUNTS.get(name, "x") if right else wrong, port)

    def attempt(self, conn: int, name: str, password: str, port: int) -> None:
        request = Login(name, password, port)
        self.expect_login(conn, request, self.run(conn, request))

    @precondition(lambda self: self.held)
    @rule(i=index)
    def resume(self, i: int) -> None:
        """The server hands a held login back once its time has come."""
        conn = pick(sorted(self.held), i)
        until, request = self.held.pop(conn)
        self.now = max(self.now, until)  # it comes back once the hold ends
        effects = self.chat.resume(conn, self.now)
        self.check_effects(conn, effects)
        self.expect_login(conn, request, effects)

    def expect_login(self, conn: int, request: Login, effects: list[Any]) -> None:
        name, password, port = request.username, request.password, request.udp_port
        ip = self.conns[conn]["ip"]
        if name not in ACCOUNTS:
            return self.expect_refusal(conn, effects, (Code.INVALID_USERNAME, INVALID_USERNAME))
        wait = self.wait_for_turn(ip)
        if wait is not None:
            (hold,) = effects
            assert isinstance(hold, Hold) and hold.conn == conn and hold.until == pytest.approx(wait)
            self.held[conn] = (hold.until, request)
            return
        if self.blocked(name):  # any password, counted nowhere
            return self.expect_refusal(conn, effects, (Code.BLOCKED, BLOCKED))
        if password == ACCOUNTS[name] and name in self.active:
            return self.expect_refusal(conn, effects, (Code.ALREADY_LOGGED_IN, f"{name} is already logged in"))
        if password == ACCOUNTS[name]:
            assert to(effects, conn) == [Welcome(name)]
            assert closes(effects) == [] and not appends(effects)
            self.failures[name] = 0
            self.conns[conn]["user"] = name
            self.active.append(name)
            self.login_info[name] = (conn, self.conns[conn]["ip"], port, ts(self.now))
            return
        self.failures[name] = self.failures.get(name, 0) + 1
        self.count_failure(ip)
        assert not appends(effects)
        if self.failures[name] >= self.max_failures:
            self.failures[name] = 0
            self.blocked_until[name] = self.now + self.block
            assert to(effects, conn) == [err(BLOCKED_NOW, Code.BLOCKED)]
            assert closes(effects) == [conn]
            self.drop(conn)
        else:
            assert to(effects, conn) == [err(INVALID_PASSWORD, Code.INVALID_PASSWORD)]
            assert closes(effects) == []

    @precondition(lambda self: self.logged_in())
    @rule(i=index, request=st.sampled_from([CheckUser("Yoda"), Login("Hans", ACCOUNTS["Hans"], 1)]))
    def login_again(self, i: int, request: Any) -> None:
        conn = pick(self.logged_in(), i)
        self.protocol_error(conn, self.run(conn, request), "Error. You are already logged in.")

    @precondition(lambda self: self.anonymous())
    @rule(i=index, request=st.sampled_from([
        MsgTo(["Yoda"], "hi"), ActiveUser(), CreateGroup("g1", ["Hans"]), JoinGroup("g1"),
        GroupMsg("g1", "hi"), Logout(), P2PVideo("Hans", "f", 1), GroupVideo("g1", "f", 1),
    ]))
    def before_login(self, i: int, request: Any) -> None:
        conn = pick(self.anonymous(), i)
        self.protocol_error(conn, self.run(conn, request), "Error. Please log in first.")

    @precondition(lambda self: self.logged_in())
    @rule(i=index, who=st.lists(someone, max_size=4), text=TEXTS)
    def msgto(self, i: int, who: list[int | str], text: str) -> None:
        conn = pick(self.logged_in(), i)
        receivers = [self.name(w) for w in who]
        sender = self.conns[conn]["user"]
        number = self.last_number.get(MESSAGELOG, 0)
        effects = self.run(conn, MsgTo(receivers, text))
        stamp = ts(self.now)
        assert closes(effects) == []
        if not receivers:
            assert to(effects, conn) == [err("Error. Usage: /msgto USERNAME MESSAGE")]
            assert not appends(effects)
            return
        replies: list[Message] = []
        lines: list[str] = []
        deliveries: list[tuple[int, Message]] = []
        for receiver in dict.fromkeys(receivers):
            if receiver not in ACCOUNTS:
                replies.append(err(f"Error. User {receiver} does not exist."))
            elif receiver not in self.active:
                replies.append(err(f"Error. {receiver} is not active."))
            else:
                number += 1
                replies.append(MsgSent(receiver, stamp))
                lines.append(logformat.message_line(number, stamp, receiver, text))
                deliveries.append((self.login_info[receiver][0], PrivateMessage(sender, text, stamp)))
                assert Announce(f'{sender} message to {receiver} "{text}" at {stamp}.') in effects
        assert [m for m in to(effects, conn) if not isinstance(m, PrivateMessage)] == replies
        assert [a.line for a in appends(effects)] == lines
        assert all(a.log == MESSAGELOG for a in appends(effects))
        got = [(c, e.message) for e in effects if isinstance(e, Send) and isinstance(e.message, PrivateMessage)
               for c in e.conns]
        assert sorted(got, key=repr) == sorted(deliveries, key=repr)

    @precondition(lambda self: self.logged_in())
    @rule(i=index)
    def activeuser(self, i: int) -> None:
        conn = pick(self.logged_in(), i)
        me = self.conns[conn]["user"]
        effects = self.run(conn, ActiveUser())
        expected = [ActiveUserEntry(u, *self.login_info[u][1:]) for u in self.active if u != me]
        assert to(effects, conn) == [ActiveUsers(expected)]
        assert closes(effects) == [] and not appends(effects)

    @precondition(lambda self: self.logged_in())
    @rule(i=index, group=group_names, who=st.lists(someone, max_size=4))
    def creategroup_any(self, i: int, group: str, who: list[int | str]) -> None:
        self.creategroup(pick(self.logged_in(), i), group, [self.name(w) for w in who])

    @precondition(lambda self: len(self.active) >= 2)
    @rule(i=index, group=group_names, flags=st.lists(st.booleans(), min_size=5, max_size=5))
    def creategroup_with_others_online(self, i: int, group: str, flags: list[bool]) -> None:
        conn = pick(self.logged_in(), i)
        others = [u for u in self.active if u != self.conns[conn]["user"]]
        chosen = [u for u, f in zip(others, flags) if f] or others[:1]
        self.creategroup(conn, group, chosen)

    def creategroup(self, conn: int, group: str, members: list[str]) -> None:
        creator = self.conns[conn]["user"]
        effects = self.run(conn, CreateGroup(group, members))
        invited = [m for m in dict.fromkeys(members) if m != creator]
        problem = None
        if not invited:
            problem = "Please enter at least one more active users."
        elif not (group.isascii() and group.isalnum()):
            problem = "Error. Group name must contain only letters and digits."
        elif group in self.groups:
            problem = f"Failed to create the group chat {group}: group name exists!"
        elif self.created.get(creator, 0) >= self.groups_per_user:
            problem = (f"Failed to create the group chat {group}: "
                       f"you have created {self.groups_per_user} groups, the most one user may.")
        elif len(self.groups) >= self.max_groups:
            problem = f"Failed to create the group chat {group}: the server holds {self.max_groups} groups, the most it may."
        else:
            for m in invited:
                if m not in ACCOUNTS:
                    problem = f"Error. User {m} does not exist."
                elif m not in self.active:
                    problem = f"Error. {m} is not active."
                if problem:
                    break
        if problem:
            assert to(effects, conn) == [err(problem)]
            assert not appends(effects)
            return
        self.groups[group] = {"members": [creator, *invited], "joined": {creator}}
        self.created[creator] = self.created.get(creator, 0) + 1
        assert appends(effects) == [Append(logformat.group_log_name(group), "")]
        assert to(effects, conn) == [GroupCreated(group, [creator, *invited])]
        invites = [(c, e.message) for e in effects if isinstance(e, Send) and isinstance(e.message, GroupInvite)
                   for c in e.conns]
        assert sorted(invites, key=repr) == sorted(
            [(self.login_info[m][0], GroupInvite(group, creator)) for m in invited], key=repr)

    @precondition(lambda self: self.invited_not_joined())
    @rule(i=index)
    def accept_invitation(self, i: int) -> None:
        conn, group = pick(self.invited_not_joined(), i)
        self.joingroup(conn, group)

    @precondition(lambda self: self.logged_in())
    @rule(i=index, which=some_group)
    def join_any(self, i: int, which: int | str) -> None:
        self.joingroup(pick(self.logged_in(), i), self.group(which))

    def joingroup(self, conn: int, group: str) -> None:
        user = self.conns[conn]["user"]
        effects = self.run(conn, JoinGroup(group))
        g = self.groups.get(group)
        if g is None:
            expected: Message = err(f"Groupchat {group} doesn't exist.")
        elif user in g["joined"]:
            expected = err(f"You have already joined Groupchat {group}")
        elif user not in g["members"]:
            expected = err(f"Error. You were not added to Groupchat {group}.")
        else:
            expected = GroupJoined(group)
            g["joined"].add(user)
        assert to(effects, conn) == [expected]
        assert closes(effects) == [] and not appends(effects)

    def group_problem(self, user: str, group: str) -> str | None:
        g = self.groups.get(group)
        if g is None:
            return "The group chat does not exist."
        if user not in g["members"]:
            return "You are not in this group chat."
        if user not in g["joined"]:
            return "Please join the group before sending messages."
        return None

    def audience(self, group: str, sender: str) -> list[str]:
        g = self.groups[group]
        return [m for m in g["members"] if m != sender and m in g["joined"] and m in self.active]

    def joined_pairs(self) -> list[tuple[int, str]]:
        return sorted(
            (self.login_info[u][0], g)
            for g, info in self.groups.items() for u in info["joined"] if u in self.active
        )

    @precondition(lambda self: self.joined_pairs())
    @rule(i=index, text=TEXTS)
    def groupmsg_as_member(self, i: int, text: str) -> None:
        conn, group = pick(self.joined_pairs(), i)
        self.groupmsg(conn, group, text)

    @precondition(lambda self: self.logged_in())
    @rule(i=index, which=some_group, text=TEXTS)
    def groupmsg_any(self, i: int, which: int | str, text: str) -> None:
        self.groupmsg(pick(self.logged_in(), i), self.group(which), text)

    def groupmsg(self, conn: int, group: str, text: str) -> None:
        sender = self.conns[conn]["user"]
        effects = self.run(conn, GroupMsg(group, text))
        assert closes(effects) == []
        problem = self.group_problem(sender, group)
        if problem:
            assert to(effects, conn) == [err(problem)]
            assert not appends(effects)
            return
        stamp = ts(self.now)
        log = logformat.group_log_name(group)
        assert log in self.created_logs
        (line,) = appends(effects)
        assert line.log == log
        assert line.line.split("; ", 1)[1] == f"{stamp}; {sender}; {text}\n"
        assert to(effects, conn) == [GroupSent(group)]
        got = sorted(c for e in effects if isinstance(e, Send) and isinstance(e.message, GroupMessage) for c in e.conns)
        assert got == sorted(self.login_info[m][0] for m in self.audience(group, sender))
        for e in effects:
            if isinstance(e, Send) and isinstance(e.message, GroupMessage):
                assert e.message == GroupMessage(group, sender, text, stamp)

    @precondition(lambda self: self.logged_in())
    @rule(i=index, who=someone, size=st.integers(min_value=0, max_value=2**40))
    def p2pvideo(self, i: int, who: int | str, size: int) -> None:
        conn = pick(self.logged_in(), i)
        audience = self.name(who)
        me = self.conns[conn]["user"]
        effects = self.run(conn, P2PVideo(audience, "clip.mp4", size))
        if audience == me:
            assert to(effects, conn) == [err("Error. You cannot send a file to yourself.")]
        elif audience not in ACCOUNTS:
            assert to(effects, conn) == [err(f"Error. User {audience} does not exist.")]
        elif audience not in self.active:
            assert to(effects, conn) == [err(f"{audience} is offline")]
        else:
            (ready,) = to(effects, conn)
            (target,) = ready.targets
            a_conn, ip, port, _ = self.login_info[audience]
            assert (target.audience, target.ip, target.udp_port) == (audience, ip, port)
            _, my_ip, my_port, _ = self.login_info[me]
            assert to(effects, a_conn) == [
                TransferOffer(me, "clip.mp4", size, my_ip, my_port, target.transfer_id, target.key)
            ]
        assert not appends(effects) and closes(effects) == []

    @precondition(lambda self: self.logged_in())
    @rule(i=index, which=some_group)
    def groupvideo(self, i: int, which: int | str) -> None:
        conn = pick(self.logged_in(), i)
        group = self.group(which)
        me = self.conns[conn]["user"]
        effects = self.run(conn, GroupVideo(group, "clip.mp4", 5))
        problem = self.group_problem(me, group)
        if problem:
            assert to(effects, conn) == [err(problem)]
            return
        (ready,) = to(effects, conn)
        assert [t.audience for t in ready.targets] == self.audience(group, me)
        assert len({t.transfer_id for t in ready.targets}) == len(ready.targets)
        for t in ready.targets:
            assert to(effects, self.login_info[t.audience][0]) == [
                TransferOffer(me, "clip.mp4", 5, *self.login_info[me][1:3], t.transfer_id, t.key)
            ]

    @precondition(lambda self: self.logged_in())
    @rule(i=index)
    def logout(self, i: int) -> None:
        conn = pick(self.logged_in(), i)
        user = self.conns[conn]["user"]
        effects = self.run(conn, Logout())
        assert to(effects, conn) == [Bye(user)]
        assert closes(effects) == [conn]
        self.drop(conn)

    @precondition(lambda self: self.conns)
    @rule(i=index)
    def disconnect(self, i: int) -> None:
        self.drop(pick(sorted(self.conns), i))

    # invariants --------------------------------------------------------------------------

    @invariant()
    def userlog_matches_the_active_sessions(self) -> None:
        text = userlog(self.chat)
        lines = text.splitlines(keepends=True)
        assert len(lines) == len(self.active)
        for seq, (line, user) in enumerate(zip(lines, self.active), start=1):
            _, ip, port, since = self.login_info[user]
            assert line == logformat.userlog_line(seq, since, user, ip, port)
            assert line.split("; ")[0] == str(seq)
        assert list(self.chat.active) == self.active

    @invariant()
    def blocked_users_are_blocked(self) -> None:
        for user in ACCOUNTS:
            assert self.chat.is_blocked(user, self.now) == self.blocked(user)
        # a user online may be blocked by wrong passwords from elsewhere: the session stays


TestChatMachine = ChatMachine.TestCase
TestChatMachine.settings = settings(
    max_examples=100, stateful_step_count=60, deadline=None, report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

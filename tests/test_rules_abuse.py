"""The rules that keep one user or one address from hurting the others (issue 10, items 4, 6,
7 and 8): nothing told before the password, failed logins throttled per address, group
quotas, and what credentials.txt may hold."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from core.login_throttle import LoginThrottle
from core.messages import CheckUser, Code, CreateGroup, Error, GroupCreated, JoinGroup, Login, UserOk, Welcome
from core.rules import Append, Chat, Close, Hold, Send, parse_credentials, unusable_accounts
from tests.test_rules import ACCOUNTS, BLOCKED, BLOCKED_NOW, INVALID_PASSWORD, T0, Harness, closes, err, to

ATTACKER = "10.6.6.6"


# --- item 6: nothing is told before the password -------------------------------------------

def test_the_username_step_tells_only_whether_the_name_is_unknown() -> None:
    h = Harness(max_failures=1)
    h.login("Yoda")  # online
    h.do(h.connect("10.0.0.9"), Login("Luke", "wrong", 1))  # blocked
    for name in ("Yoda", "Luke", "Hans"):  # online, blocked, neither: the same answer
        conn = h.connect()
        assert h.do(conn, CheckUser(name)) == [Send((conn,), UserOk())]
    conn = h.connect()
    assert h.do(conn, CheckUser("Vader")) == [Send((conn,), Error(Code.INVALID_USERNAME, "Invalid Username. Please try again"))]


def test_blocked_is_told_for_any_password_and_a_password_during_the_block_is_not_counted() -> None:
    h = Harness(max_failures=3, login_throttle=LoginThrottle(rate=0))
    a = h.connect()
    for _ in range(2):
        h.do(a, Login("Luke", "no", 1))
    assert to(h.do(a, Login("Luke", "no", 1)), a) == [err(BLOCKED_NOW, Code.BLOCKED)]
    for password in ("no", ACCOUNTS["Luke"], "other", "again", "more"):
        h.now += 1
        conn = h.connect()
        effects = h.do(conn, Login("Luke", password, 1))
        assert to(effects, conn) == [err(BLOCKED, Code.BLOCKED)] and closes(effects) == [conn]
    # the block was neither extended nor counted: it ends on time, with a fresh count
    h.now = T0 + 10
    b = h.connect()
    for _ in range(2):
        assert to(h.do(b, Login("Luke", "no", 1)), b) == [err(INVALID_PASSWORD, Code.INVALID_PASSWORD)]
    assert to(h.do(b, Login("Luke", ACCOUNTS["Luke"], 1)), b) == [Welcome("Luke")]


# --- item 7: failed logins throttled per address -----------------------------------------------

def test_logins_from_an_address_are_held_once_its_failures_pass_the_burst() -> None:
    h = Harness(max_failures=5, login_throttle=LoginThrottle(burst=3, rate=1.0))
    conns = [h.connect(ATTACKER) for _ in range(3)]
    for conn, name in zip(conns, ["Yoda", "Hans", "Leia"]):  # three failures at once: answered
        assert to(h.do(conn, Login(name, "guess", 1)), conn) == [err(INVALID_PASSWORD, Code.INVALID_PASSWORD)]
    # the fourth waits a second, whatever it is and whichever connection of the address sends it
    assert h.do(conns[0], Login("Luke", ACCOUNTS["Luke"], 1)) == [Hold(conns[0], T0 + 1)]
    fresh = h.connect(ATTACKER)
    assert h.do(fresh, Login("Yoda", "guess", 1)) == [Hold(fresh, T0 + 1)]
    # not put off: unknown names (nothing to guess), the username step, other addresses
    assert to(h.do(fresh, CheckUser("Yoda")), fresh) == [UserOk()]
    assert to(h.do(fresh, Login("Vader", "x", 1)), fresh)[0].code == Code.INVALID_USERNAME
    assert h.login("Hans", ip="10.0.0.2")
    # a held login is handled when the server hands it back; one failure, one second more
    h.now = T0 + 1
    assert to(h.chat.resume(fresh, h.now), fresh) == [err(INVALID_PASSWORD, Code.INVALID_PASSWORD)]
    assert h.chat.resume(conns[0], h.now) == [Hold(conns[0], T0 + 2)]
    h.now = T0 + 2
    assert to(h.chat.resume(conns[0], h.now), conns[0]) == [Welcome("Luke")]
    assert h.chat.resume(conns[0], h.now) == []  # nothing is held twice


def test_a_held_login_is_forgotten_with_its_connection() -> None:
    h = Harness(login_throttle=LoginThrottle(burst=1, rate=1.0))
    conn = h.connect(ATTACKER)
    h.do(conn, Login("Yoda", "guess", 1))
    assert h.do(conn, Login("Yoda", ACCOUNTS["Yoda"], 1)) == [Hold(conn, T0 + 1)]
    h.chat.disconnect(conn, h.now)
    h.now += 1
    assert h.chat.resume(conn, h.now) == []
    assert "Yoda" not in h.chat.active


class Attacker:
    """One address that guesses passwords as fast as the server answers, on 50 connections at
    once, blocking one account after another (the next once the last is blocked)."""

    def __init__(self, throttle: LoginThrottle, accounts: int = 100, attempts: int = 3) -> None:
        self.names = [f"user{i}" for i in range(accounts)]
        self.chat = Chat({n: "secret" for n in self.names}, attempts, login_throttle=throttle)
        self.target = 0
        self.guesses = 0  # passwords the server checked
        self.most_blocked = 0  # accounts blocked at one time
        self.conns = 0

    def run(self, seconds: float, step: float = 0.05) -> None:
        ready = [self.connect() for _ in range(50)]  # each sends its next guess this step
        held: dict[int, float] = {}
        now = T0
        while now < T0 + seconds:
            due = [conn for conn, until in held.items() if until <= now]
            for conn in due:
                del held[conn]
            answers = [(conn, self.chat.resume(conn, now)) for conn in due]
            for conn in ready:
                answers.append((conn, self.chat.handle(conn, Login(self.names[self.target], "guess", 1), now)))
                self.answered(answers[-1][1])
            for conn, effects in answers[:len(due)]:
                self.answered(effects)
            ready = []
            for conn, effects in answers:
                if isinstance(effects[-1], Hold):
                    held[conn] = effects[-1].until
                elif isinstance(effects[-1], Close):  # blocked: the attacker opens another
                    self.chat.disconnect(conn, now)
                    ready.append(self.connect())
                else:
                    ready.append(conn)
            self.most_blocked = max(self.most_blocked, sum(self.chat.is_blocked(n, now) for n in self.names))
            now += step

    def connect(self) -> int:
        self.conns += 1
        self.chat.connect(self.conns, ATTACKER)
        return self.conns

    def answered(self, effects: list[Any]) -> None:
        for e in effects:
            if isinstance(e, Send) and e.message.text in (INVALID_PASSWORD, BLOCKED_NOW):
                self.guesses += 1
            if isinstance(e, Send) and e.message.text == BLOCKED_NOW:
                self.target = (self.target + 1) % len(self.names)


def test_one_address_can_neither_spray_passwords_nor_keep_every_account_blocked() -> None:
    attacker = Attacker(LoginThrottle(burst=5, rate=1.0))
    attacker.run(60)
    # 5 at once, then one a second
    assert attacker.guesses <= 5 + 60 * 1.0 + 1
    # each block takes 3 failures and lasts 10 s: (5 + 10 * 1.0) / 3 accounts at most
    assert attacker.most_blocked <= 5
    # without the throttle the same attack blocks every account
    unthrottled = Attacker(LoginThrottle(rate=0))
    unthrottled.run(5)
    assert unthrottled.most_blocked == 100 and unthrottled.guesses == 300


def test_the_throttle_keeps_only_recent_failures() -> None:
    throttle = LoginThrottle(burst=3, rate=1.0)
    for i in range(10_000):  # 10,000 addresses, each failing once, 10 a second
        now = T0 + i / 10
        assert throttle.wait_until(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", now) is None
        throttle.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", now)
        assert len(throttle) <= 3 * 10 + 1  # the last burst / rate seconds' worth
    assert LoginThrottle(rate=0).wait_until("x", T0) is None


# --- item 4: group quotas ---------------------------------------------------------------------

def test_groups_per_creator_and_in_total_are_capped_with_one_line() -> None:
    h = Harness(max_groups_per_user=2, max_groups=3)
    yoda, hans, luke = h.login("Yoda"), h.login("Hans"), h.login("Luke")
    for name in ("g1", "g2"):
        assert to(h.do(yoda, CreateGroup(name, ["Hans"])), yoda)[0] == GroupCreated(name, ["Yoda", "Hans"])
    effects = h.do(yoda, CreateGroup("g3", ["Hans"]))
    assert effects == [Send((yoda,), err("Failed to create the group chat g3: you have created 2 groups, "
                                          "the most one user may."))]  # nothing logged, nobody invited
    assert to(h.do(hans, JoinGroup("g3")), hans) == [err("Groupchat g3 doesn't exist.")]
    assert to(h.do(hans, CreateGroup("g3", ["Yoda"])), hans)[0] == GroupCreated("g3", ["Hans", "Yoda"])
    assert to(h.do(luke, CreateGroup("g4", ["Yoda"])), luke) == [
        err("Failed to create the group chat g4: the server holds 3 groups, the most it may.")]
    # the name check still comes first
    assert to(h.do(luke, CreateGroup("g1", ["Yoda"])), luke) == [
        err("Failed to create the group chat g1: group name exists!")]


def test_twenty_thousand_creategroups_from_one_user_stop_at_the_quota_and_memory_stays_bounded() -> None:
    h = Harness()  # the defaults: 100 groups per user
    yoda = h.login("Yoda")
    h.login("Hans")
    members = ["Hans"]

    def create(first: int, count: int) -> tuple[int, int]:
        made = refused = 0
        for i in range(first, first + count):
            effects = h.do(yoda, CreateGroup(f"g{i}", members))
            if any(isinstance(e, Append) for e in effects):
                made += 1
            else:
                assert effects == [Send((yoda,), err(f"Failed to create the group chat g{i}: "
                                                      "you have created 100 groups, the most one user may."))]
                refused += 1
        return made, refused

    assert create(0, 1_000) == (100, 900)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert create(1_000, 19_000) == (0, 19_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(h.chat.groups) == 100
    assert grown < 64 * 1024  # refusals keep nothing


# --- item 8: credentials.txt --------------------------------------------------------------------

def test_a_byte_order_mark_is_no_part_of_the_first_username() -> None:
    assert parse_credentials("\ufeffYoda x\r\nHans y\r\n") == {"Yoda": "x", "Hans": "y"}


def test_a_repeated_username_is_refused_naming_both_lines() -> None:
    with pytest.raises(ValueError, match="line 4 repeats the username Yoda of line 1"):
        parse_credentials("Yoda x\nHans y\n\nYoda z\n")
    assert parse_credentials("Yoda x\nyoda y\n") == {"Yoda": "x", "yoda": "y"}  # case-sensitive: two users


def test_accounts_no_one_can_type_are_named_one_line_each_never_their_password() -> None:
    accounts = parse_credentials(
        "Yoda ok\nzero\u200bwidth pw\nbell\x07 pw\n" + "L" * 65 + " pw\nHans " + "p" * 257 + "\nLeia s\u00a0cret\n")
    lines = unusable_accounts(accounts)
    assert lines == [
        r"the username 'zero\u200bwidth' cannot be typed (control or invisible characters, or too long); "
        "that account can never log in",
        r"the username 'bell\x07' cannot be typed (control or invisible characters, or too long); "
        "that account can never log in",
        f"the username {'L' * 65} cannot be typed (control or invisible characters, or too long); "
        "that account can never log in",
        "the password of Hans cannot be typed (control or invisible characters, or too long); "
        "that account can never log in",
        "the password of Leia cannot be typed (control or invisible characters, or too long); "
        "that account can never log in",
    ]
    assert all("\n" not in line and "cret" not in line and "ppp" not in line for line in lines)
    assert unusable_accounts({"Yoda": "ok", "Jürgen": "ü*!"}) == []

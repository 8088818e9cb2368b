"""The chat rules' state-machine test, run against three cluster nodes instead of one Chat.

``SimulatedCluster`` stands where the test's ``Chat`` stood: each connection lives on one of
three ``shell.cluster.Node`` objects, and their entries go through an in-memory stream in
place of Redis (every fifth entry appended twice, as a retried XADD whose first reply was
lost). Every node applies every entry; the effects the test sees are the union of the nodes'
shares. So the test's model of the spec checks the cluster's replies, logs and presence
exactly as it checks one server's, and this adds: every replica agrees, each log line is
written once (by the writer), and no other node acknowledges a message before the writer's
mark says its line is written.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings

pytest.importorskip("hiredis", reason="the cluster mode's extra hiredis is not installed")

from core.messages import GroupSent, MsgSent  # noqa: E402
from core.login_throttle import LoginThrottle  # noqa: E402
from core.rules import Announce, Append, Chat, Close, Effect, Hold, Send  # noqa: E402
from shell.cluster import WRITTEN, Node  # noqa: E402
from shell.cluster_share import CONN_BITS  # noqa: E402
from shell.resp import Address  # noqa: E402
from tests import test_rules  # noqa: E402

LOCAL = (1 << CONN_BITS) - 1
RETRIED = 5  # every RETRIED-th entry is appended twice


class SimulatedNode(Node):
    """A node whose entries carry the test's exact time (the test's clock is finer than Redis's
    milliseconds, and its model compares times exactly)."""

    times: dict[int, float]  # stream position -> the test's time

    def _time_of(self, entry: tuple[int, int]) -> float:
        return self.times[entry[1]]


class SimulatedCluster:
    """Three nodes around an in-memory stream; node 1 holds the writer lease."""

    def __init__(self, chat: Chat) -> None:
        history = dict(chat._history)
        def new_chat(accounts: dict[str, str], history: dict[str, int], **more: Any) -> Chat:
            throttle = LoginThrottle(chat.login_throttle.burst, chat.login_throttle.rate)
            return Chat(accounts, chat.max_failures, block_seconds=chat.block_seconds, history=history,
                        login_throttle=throttle, max_groups_per_user=chat.max_groups_per_user,
                        max_groups=chat.max_groups, **more)

        self.nodes = [SimulatedNode(Address("127.0.0.1", 0, 0), i, chat.accounts, history, b"cluster secret", new_chat)
                      for i in (1, 2, 3)]
        self.times: dict[int, float] = {}
        for node in self.nodes:
            node.times = self.times
        self.writer = self.nodes[0]
        self.writer._writer_until = float("inf")
        self.writer.share.last_numbers = dict(history)
        self.replica = self.writer.replica
        self.stream: list[tuple[bytes, bytes]] = []
        self.now = 0.0

    def _node(self, conn: int) -> Node:
        return self.nodes[conn % len(self.nodes)]

    def _global(self, conn: int) -> int:
        return self._node(conn).id << CONN_BITS | conn

    # the interface of Chat the state machine uses -------------------------------------

    def connect(self, conn: int, ip: str) -> None:
        self._node(conn).connect(self._global(conn), ip)
        assert self._pump() == []

    def handle(self, conn: int, request: Any, now: float) -> list[Effect]:
        self.now = now
        assert self._node(conn).request(self._global(conn), request) == []
        return self._pump()

    def disconnect(self, conn: int, now: float) -> list[Effect]:
        self.now = now
        self._node(conn).disconnect(self._global(conn))
        return self._pump()

    def resume(self, conn: int, now: float) -> list[Effect]:
        self.now = now
        self._node(conn).resume(self._global(conn))
        return self._pump()

    def __getattr__(self, name: str) -> Any:  # presence_version, active, userlog, is_blocked
        return getattr(self.replica, name)

    # the stream --------------------------------------------------------------------------

    def _append(self, entry: bytes) -> None:
        self.times[len(self.stream)] = self.now
        raw_id = b"%d-%d" % (round(self.now * 1000), len(self.stream))
        self.stream.append((raw_id, entry))
        for node in self.nodes:
            node._apply(raw_id, entry)

    def _pump(self) -> list[Effect]:
        """Append what the nodes submitted until nothing is left; the effects the nodes released."""
        while True:
            entries = [e for node in self.nodes for e in node._unconfirmed]
            for node in self.nodes:
                node._unconfirmed.clear()
            if not entries:
                break
            for entry in entries:
                self._append(entry)
                if len(self.stream) % RETRIED == 0:
                    self._append(entry)  # applied once all the same
            if not any(e.startswith(WRITTEN) for e in entries):
                for node in self.nodes[1:]:  # nothing acknowledged before the writer's mark
                    assert not any(type(e) is Send and isinstance(e.message, (MsgSent, GroupSent)) for e in node.share.released)
            if self.writer.share.mark_due:  # what Node.flush does after the server wrote the turn's lines
                self.writer.share.mark_due = False
                self.writer._submit(WRITTEN, 0, b"%d-%d" % self.writer.share.written)
        self._check_replicas()
        effects: list[Effect] = []
        for node in self.nodes:
            released = node.share.take()
            assert node is self.writer or not any(type(e) is Append for e in released)
            effects += [self._local(e) for e in released]
        # the writer's lines were written before any node released what they acknowledge
        return [e for e in effects if type(e) is Append] + [e for e in effects if type(e) is not Append]

    def _local(self, effect: Effect) -> Effect:
        if type(effect) is Send:
            return Send(tuple(c & LOCAL for c in effect.conns), effect.message)
        if type(effect) is Close:
            return Close(effect.conn & LOCAL)
        if type(effect) is Hold:
            return Hold(effect.conn & LOCAL, effect.until)
        assert type(effect) in (Append, Announce)
        return effect

    def _check_replicas(self) -> None:
        first = self.nodes[0].replica
        for node in self.nodes[1:]:
            other = node.replica
            assert list(other.active) == list(first.active)
            assert other.userlog() == first.userlog()
            assert other.failures == first.failures and other.blocked_until == first.blocked_until
            assert other.messages == first.messages
            assert {g: (x.members, x.joined, x.messages) for g, x in other.groups.items()} == \
                   {g: (x.members, x.joined, x.messages) for g, x in first.groups.items()}


class ClusterChatMachine(test_rules.ChatMachine):
    """The rules' state machine; whatever Chat it makes runs as a three-node cluster."""

    @property
    def chat(self) -> Any:
        return self._cluster

    @chat.setter
    def chat(self, chat: Chat) -> None:
        self._cluster = SimulatedCluster(chat)


TestClusterChatMachine = ClusterChatMachine.TestCase
# three replicas per step: fewer examples than the one-Chat test keeps the suite's time in bounds
TestClusterChatMachine.settings = settings(test_rules.TestChatMachine.settings, max_examples=30)

"""Cluster mode (SPEC §10): real server.py nodes sharing a real redis-server.

The behaviour tests of one server also run against a 3-node cluster (test_server.py and
test_client_e2e.py, parameter ``cluster``). These are the cluster's own: numbering under
concurrent senders on every node, a joining node, a node killed with kill -9 (the log writer
too), Redis restarted, Redis unreachable at start, nodes that disagree, one shared port.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from core.messages import ActiveUser, ActiveUsers, Error, Login, MsgSent, MsgTo, PrivateMessage, Welcome
from shell.cluster import UNAVAILABLE
from shell.resp import Parser, command, parse_url
from tests.cluster_harness import Cluster, Node, RedisServer, free_port, require_redis
from tests.harness import PASSWORDS, ROOT, TIMEOUT, WireClient, wait_for



@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(redis_server, tmp_path)
    yield nodes
    nodes.stop()


def login(cluster: Cluster, username: str, node: int) -> WireClient:
    client = cluster.connect(node)
    client.send(Login(username, PASSWORDS[username], 7000 + node))
    assert client.recv() == Welcome(username)
    return client


def active_names(client: WireClient) -> list[str]:
    client.send(ActiveUser())
    reply = client.recv()
    assert isinstance(reply, ActiveUsers), reply
    return [entry.username for entry in reply.users]


def userlog_names(cluster: Cluster) -> list[str]:
    return [line.split("; ")[2] for line in cluster.log("userlog.txt").splitlines()]


def send_all(sender: WireClient, receiver: str, texts: list[str]) -> None:
    """Pipeline the messages, then wait for every acknowledgement."""
    sender.send(*(MsgTo([receiver], text) for text in texts))
    for _ in texts:
        assert isinstance(sender.recv(), MsgSent)


def message_numbers_and_texts(cluster: Cluster) -> tuple[list[int], list[str]]:
    lines = cluster.log("messagelog.txt").splitlines()
    return [int(line.split("; ")[0]) for line in lines], [line.split("; ", 3)[3] for line in lines]


def test_resp_requests_and_replies() -> None:
    assert command("SET", "k", 5) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n"
    parser = Parser()
    assert parser.feed(b"*2\r\n$1\r\na\r\n:") == []  # half a reply waits for the rest
    assert parser.feed(b"5\r\n$-1\r\n") == [[b"a", 5], None]
    assert str(parse_url("redis://h:7/2")) == "redis://h:7/2"
    with pytest.raises(ValueError):
        parse_url("http://h:7/0")


def test_login_order_presence_and_messages_are_global(cluster: Cluster) -> None:
    yoda, luke, leia = login(cluster, "Yoda", 0), login(cluster, "Luke", 1), login(cluster, "Leia", 2)
    assert active_names(luke) == ["Yoda", "Leia"]  # login order, whichever node
    assert cluster.log("userlog.txt") and userlog_names(cluster) == ["Yoda", "Luke", "Leia"]  # written before Welcome
    yoda.send(MsgTo(["Luke", "Leia"], "across nodes"))
    acks = [yoda.recv(), yoda.recv()]
    assert [ack.receiver for ack in acks] == ["Luke", "Leia"]
    # logged before the acknowledgement, once, by one writer for the whole cluster
    assert message_numbers_and_texts(cluster) == ([1, 2], ["across nodes", "across nodes"])
    assert luke.recv() == PrivateMessage("Yoda", "across nodes", acks[0].timestamp)
    assert leia.recv() == PrivateMessage("Yoda", "across nodes", acks[1].timestamp)


def test_the_first_request_after_a_login_may_use_the_bigger_frame_limit(cluster: Cluster) -> None:
    yoda, luke = login(cluster, "Yoda", 0), login(cluster, "Luke", 1)
    text = "\U0001F600" * 1000  # 4,000 bytes: with the names, a frame over the limit before login (4 KiB)
    yoda.send(MsgTo(["Luke", *(letter * 20 for letter in "ABCDEF")], text))
    assert isinstance(yoda.recv(), MsgSent)
    message = luke.recv()
    assert isinstance(message, PrivateMessage) and (message.sender, message.text) == ("Yoda", text)


def test_numbering_is_global_under_concurrent_senders_on_every_node(cluster: Cluster) -> None:
    senders = [login(cluster, name, node) for node, name in enumerate(["Yoda", "Luke", "Leia"])]
    obiwan = login(cluster, "obiwan", 0)
    batches = [[f"{sender} {i}" for i in range(40)] for sender in ("Yoda", "Luke", "Leia")]
    for client, texts in zip(senders, batches):
        client.send(*(MsgTo(["obiwan"], text) for text in texts))
    for client, texts in zip(senders, batches):
        for _ in texts:
            assert isinstance(client.recv(), MsgSent)
    numbers, texts = message_numbers_and_texts(cluster)
    assert numbers == list(range(1, 121))  # each line once, numbered 1..n cluster-wide
    assert sorted(texts) == sorted(sum(batches, []))
    received = [obiwan.recv() for _ in range(120)]
    for batch in batches:  # each sender's messages arrive in the order sent
        assert [m.text for m in received if m.sender == batch[0].split()[0]] == batch


def test_a_node_joining_later_sees_the_cluster_as_it_is(cluster: Cluster) -> None:
    yoda = login(cluster, "Yoda", 0)
    cluster.nodes.append(Node(cluster))  # replays the shared log from its start
    late = login(cluster, "Luke", 3)
    assert active_names(late) == ["Yoda"]
    duplicate = cluster.connect(3)
    duplicate.send(Login("Yoda", PASSWORDS["Yoda"], 7009))
    assert duplicate.recv() == Error("already_logged_in", "Yoda is already logged in")
    assert active_names(yoda) == ["Luke"]


def test_node_killed_its_users_leave_everywhere_within_5_s(cluster: Cluster) -> None:
    yoda, luke, leia = login(cluster, "Yoda", 0), login(cluster, "Luke", 1), login(cluster, "Leia", 2)
    started = time.monotonic()
    cluster.nodes[1].kill()  # kill -9
    wait_for(lambda: userlog_names(cluster) == ["Yoda", "Leia"], what="Luke to leave userlog.txt")
    wait_for(lambda: active_names(yoda) == ["Leia"], what="Luke to leave /activeuser")
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"the killed node's user left after {elapsed:.1f} s"
    send_all(yoda, "Leia", ["still here"])  # the others are unaffected
    assert leia.recv().text == "still here"
    relogin = login(cluster, "Luke", 2)  # and Luke may log in again elsewhere
    assert active_names(relogin) == ["Yoda", "Leia"]


def test_log_writer_killed_another_node_takes_over_without_gaps_or_repeats(cluster: Cluster) -> None:
    writer = int(cluster.redis.call("GET", "tessenger:writer").split(b"\r\n")[1]) - 1  # node ids count from 1
    survivors = [i for i in range(3) if i != writer]
    sender, receiver = login(cluster, "Yoda", survivors[0]), login(cluster, "Luke", survivors[1])
    send_all(sender, "Luke", [f"before {i}" for i in range(20)])
    cluster.nodes[writer].kill()
    send_all(sender, "Luke", [f"after {i}" for i in range(20)])  # acknowledged once a new writer wrote them
    numbers, texts = message_numbers_and_texts(cluster)
    assert numbers == list(range(1, 41))
    assert texts == [f"before {i}" for i in range(20)] + [f"after {i}" for i in range(20)]
    assert [receiver.recv().text for _ in range(40)] == texts


def test_redis_restart_refuses_meanwhile_and_loses_no_acknowledged_message(tmp_path: Path) -> None:
    require_redis()
    redis = RedisServer(tmp_path / "redis")
    cluster = Cluster(redis, tmp_path, 2)
    try:
        yoda, luke = login(cluster, "Yoda", 0), login(cluster, "Luke", 1)
        acknowledged = [f"before {i}" for i in range(10)]
        send_all(yoda, "Luke", acknowledged)
        redis.stop()
        refused = 0
        for i in range(200):  # until the node has noticed: a request is refused, never lost silently
            yoda.send(MsgTo(["Luke"], f"during {i}"))
            reply = yoda.recv()
            if isinstance(reply, MsgSent):
                acknowledged.append(f"during {i}")
            else:
                assert reply == Error("command", UNAVAILABLE)
                refused += 1
                break
        assert refused
        redis.start()

        def sent_again() -> bool:
            yoda.send(MsgTo(["Luke"], "after"))
            reply = yoda.recv()
            assert isinstance(reply, (MsgSent, Error)), reply
            return isinstance(reply, MsgSent)

        wait_for(sent_again, timeout=15, what="the nodes to reconnect")
        acknowledged.append("after")
        numbers, texts = message_numbers_and_texts(cluster)
        assert texts == acknowledged and numbers == list(range(1, len(acknowledged) + 1))
        received = [luke.recv().text for _ in acknowledged]
        assert received == acknowledged
        # nobody was taken for dead while Redis was away
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert userlog_names(cluster) == ["Yoda", "Luke"]
            time.sleep(0.2)
    finally:
        cluster.stop()
        redis.stop()


def test_unreachable_redis_at_start_is_one_line_and_non_zero(tmp_path: Path) -> None:
    require_redis()
    (tmp_path / "credentials.txt").write_text("Yoda pw\n")
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run([sys.executable, str(ROOT / "server.py"), "0", "3", "--data-dir", str(tmp_path),
                             "--redis", url], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"Cannot reach Redis at {url}: Connection refused"]


def test_a_node_with_other_credentials_is_refused(redis_server: RedisServer, tmp_path: Path) -> None:
    cluster = Cluster(redis_server, tmp_path / "a", 1)
    try:
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "credentials.txt").write_text("Yoda other\n")
        result = subprocess.run([sys.executable, str(ROOT / "server.py"), "0", "3", "--data-dir", str(tmp_path / "b"),
                                 "--redis", redis_server.url], capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode != 0
        assert "differ from its cluster" in result.stderr and len(result.stderr.splitlines()) == 1
    finally:
        cluster.stop()


def test_nodes_share_one_port_with_reuse_port(redis_server: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    cluster = Cluster(redis_server, tmp_path, 0)
    try:
        cluster.nodes = [Node(cluster, "--reuse-port", port=port) for _ in range(2)]  # a second bind would fail without
        yoda, luke = login(cluster, "Yoda", 0), login(cluster, "Luke", 1)
        send_all(yoda, "Luke", ["one port"])
        assert luke.recv().text == "one port"
    finally:
        cluster.stop()


def test_without_hiredis_the_node_says_how_to_get_it(tmp_path: Path) -> None:
    (tmp_path / "credentials.txt").write_text("Yoda pw\n")
    hide_hiredis = ("import runpy, sys; sys.modules['hiredis'] = None; sys.argv = sys.argv[1:]; "
                    "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", hide_hiredis, str(ROOT / "server.py"), "0", "3", "--data-dir",
                             str(tmp_path), "--redis", "redis://127.0.0.1:1/0"],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        "The cluster mode (--redis) needs hiredis: pip install '.[cluster]' (or pip install hiredis)"]


def refused(client: WireClient) -> bool:
    """True if the node refuses a request because Redis is away."""
    client.send(ActiveUser())
    try:
        return client.recv(timeout=1.0) == Error("command", UNAVAILABLE)
    except AssertionError:  # asked before the node noticed: the request waits for Redis
        return False


def test_redis_back_without_its_data_stops_the_nodes_in_one_line(tmp_path: Path) -> None:
    require_redis()
    redis = RedisServer(tmp_path / "redis")
    cluster = Cluster(redis, tmp_path, 2)
    try:
        yoda = login(cluster, "Yoda", 0)
        redis.stop()
        wait_for(lambda: refused(yoda), what="the node to notice Redis is away")
        # A connection made meanwhile is an entry waiting for Redis (the node answers it, so
        # it took it): it must not land in the empty Redis before the node finds it empty.
        assert refused(cluster.connect(0))
        for leftover in (tmp_path / "redis").iterdir():  # as if it ran without its AOF
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        redis.start()
        for node in cluster.nodes:
            assert node.process.wait(timeout=TIMEOUT) != 0
        cluster.output.expect(re.compile(r"Redis at redis://\S+ lost the cluster's data .*; this node stops"))
        assert redis.call("XLEN", "tessenger:log") == b":0\r\n"  # and wrote nothing into it
    finally:
        cluster.stop()
        redis.stop()


def test_a_redis_with_a_password(tmp_path: Path) -> None:
    require_redis()
    redis = RedisServer(tmp_path / "redis", password="s3cret")
    cluster = Cluster(redis, tmp_path, 2)
    try:
        yoda, luke = login(cluster, "Yoda", 0), login(cluster, "Luke", 1)
        send_all(yoda, "Luke", ["through AUTH"])
        assert luke.recv().text == "through AUTH"
        wrong = redis.url.replace("s3cret", "guess")
        result = subprocess.run([sys.executable, str(ROOT / "server.py"), "0", "3", "--data-dir", str(tmp_path),
                                 "--redis", wrong], capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode != 0 and len(result.stderr.splitlines()) == 1
        assert "refused to start this node" in result.stderr and "guess" not in result.stderr
    finally:
        cluster.stop()
        redis.stop()


def test_a_login_held_for_its_address_waits_on_any_node_with_what_follows(redis_server: RedisServer,
                                                                          tmp_path: Path) -> None:
    from tests.test_abuse_e2e import ATTACKER

    cluster = Cluster(redis_server, tmp_path, 2, 3, "--failed-login-burst", "1", "--failed-login-rate", "2")
    try:
        start = time.monotonic()
        first = WireClient(("127.0.0.1", cluster.nodes[0].port), ATTACKER)
        first.send(Login("Yoda", "typo", 7000))
        assert first.recv() == Error("invalid_password", "Invalid Password. Please try again")
        # the address's failures count on every node
        second = WireClient(("127.0.0.1", cluster.nodes[1].port), ATTACKER)
        second.send(Login("Yoda", PASSWORDS["Yoda"], 7000), ActiveUser())
        assert second.recv() == Welcome("Yoda")  # put off half a second, then handled...
        assert time.monotonic() - start >= 0.5 - 0.05
        assert second.recv() == ActiveUsers([])  # ...and what came after it only after it
    finally:
        cluster.stop()

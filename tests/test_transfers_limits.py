"""The transfer engine's defences and recoveries (issues 11 and 12): an offer flood, a
hostile window advert, the server's news that a peer left, Ctrl-C before transfer_ready,
and resuming an interrupted download -- in memory, on a fake clock (see test_transfers)."""

from __future__ import annotations

import hashlib
import os

from core.client_session import Upload
from core.messages import TransferEnded, TransferOffer, TransferReady, TransferTarget
from core.transfer import Receiver, Sender, State
from core.transfer_wire import TAG_SIZE, Kind, decode_abort, encode_hello
from core.transfers import TransferEngine
from tests.test_transfer_digest import hash_list
from tests.test_transfers import LUKE, YODA, MemoryStorage, Net, Node, key, mac, send, tid


def data_bytes_sent(node: Node, since: int = 0) -> int:
    return sum(len(d) for d, _ in node.sent[since:] if d[1] == Kind.DATA)


# --- an offer flood ------------------------------------------------------------------------

def test_an_offer_flood_is_declined_beyond_the_limit_and_costs_no_file_nor_hello() -> None:
    net = Net(per_millisecond=50)
    yoda, luke = net.add(YODA), net.add(LUKE, max_incoming=8)
    data = os.urandom(30_000)
    send(net, yoda, [luke], "real.mp4", data, first=5000)  # a genuine transfer, under way first
    for n in range(1, 1001):
        offer = TransferOffer("Yoda", f"flood{n}", 10**9, *YODA, tid(n), key(n))
        net.apply(luke, luke.engine.download(offer, net.now))
    assert luke.storage.open_sinks == 8 and luke.engine.active() == 8  # 1 real + 7 flood
    declined = [line for line in luke.lines if "already receiving 8 files" in line]
    assert len(declined) == 1000 - 7
    assert declined[0] == "Error. Refused flood8 from Yoda: already receiving 8 files (--max-incoming)."
    hellos = [d for d, _ in luke.sent if d[1] == Kind.HELLO]
    assert len(hellos) == 8
    aborts = [d for d, _ in luke.sent if d[1] == Kind.ABORT]
    assert len(aborts) == 1000 - 7 and all(mac(int(d[2:18].hex(), 16)).check(d) for d in aborts)
    assert decode_abort(aborts[0][:-TAG_SIZE]) == "the receiver is already receiving 8 files"
    # the receiver stays responsive: the genuine transfer completes as if nothing happened
    net.run(lambda: "Received real.mp4 from Yoda (saved as Yoda_real.mp4)" in luke.lines, limit=120)
    assert luke.storage.files["Yoda_real.mp4"] == data


def test_a_declined_offer_is_a_clear_line_for_the_presenter_too() -> None:
    net = Net()
    yoda, luke = net.add(YODA), net.add(LUKE, max_incoming=1)
    send(net, yoda, [luke], "one", os.urandom(5_000), first=1)
    send(net, yoda, [luke], "two", os.urandom(5_000), first=2)
    net.run(lambda: any("two to Luke failed" in line for line in yoda.lines))
    assert "Error. Transfer of two to Luke failed: receiver aborted: the receiver is already receiving 1 files" \
        in yoda.lines


# --- the presenter's memory ------------------------------------------------------------------

def test_hostile_audiences_advertising_the_largest_window_cannot_pin_more_than_the_bound() -> None:
    bound = 2 * 1024 * 1024
    storage = MemoryStorage()
    storage.sources["f"] = bytes(64 * 1024 * 1024)
    engine = TransferEngine(storage, max_in_flight=bound, max_in_flight_total=bound + bound // 2)
    targets = [TransferTarget(f"Luke{n}", "10.0.0.2", 5000 + n, tid(n), key(n)) for n in (1, 2, 3)]
    engine.upload(Upload("f", TransferReady("f", targets), len(storage.sources["f"])), 0.0)
    for n in (1, 2, 3):  # HELLO: a 4 GiB window and the largest datagram; never an ACK
        hello = mac(n).seal(encode_hello(bytes.fromhex(tid(n)), 2**32 - 1, 65_507))
        engine.datagram(hello, ("10.0.0.2", 5000 + n), 0.0)
    held = []
    for step in range(200):
        engine.tick(step * 0.001)
        senders = [t.endpoint for t in engine._transfers.values()]
        assert all(isinstance(s, Sender) for s in senders)
        held.append([sum(len(d) for d in s._store.values()) for s in senders])  # type: ignore[union-attr]
    assert all(max(h) <= bound and sum(h) <= bound + bound // 2 for h in held)
    assert sum(held[-1]) > 0  # (with the congestion controller off, the bound alone limits: test_transfer_auth)


# --- fast failure ----------------------------------------------------------------------------

def test_the_presenter_stops_within_a_second_when_the_server_says_the_audience_left() -> None:
    net = Net(per_millisecond=20)
    yoda, luke = net.add(YODA), net.add(LUKE)
    send(net, yoda, [luke], "big", os.urandom(200_000))
    net.run(lambda: any(len(f) > 1000 for f in luke.storage.files.values()))
    del net.nodes[LUKE]  # killed: not a datagram more
    told = net.now
    net.apply(yoda, yoda.engine.ended(TransferEnded(tid(1), "Luke"), net.now))
    net.run(lambda: len(yoda.lines) == 2)
    assert yoda.lines[1] == "Error. Transfer of big to Luke failed: Luke left"
    assert net.now - told <= 1.0
    assert not [d for d, _ in yoda.sent if d[1] == Kind.ABORT]  # nobody to tell


def test_the_audience_stops_within_a_second_when_the_server_says_the_presenter_left() -> None:
    net = Net(per_millisecond=20)
    yoda, luke = net.add(YODA), net.add(LUKE)
    send(net, yoda, [luke], "big", os.urandom(200_000))
    net.run(lambda: any(len(f) > 1000 for f in luke.storage.files.values()))
    del net.nodes[YODA]
    net.queue.clear()  # with everything it had sent
    told = net.now
    net.apply(luke, luke.engine.ended(TransferEnded(tid(1), "Yoda"), net.now))
    net.run(lambda: len(luke.lines) == 2)
    assert luke.lines[1].startswith("Error. Receiving big from Yoda failed: Yoda left")
    assert net.now - told <= 1.0


def test_news_of_someone_else_or_of_a_finished_transfer_changes_nothing() -> None:
    net = Net()
    yoda, luke = net.add(YODA), net.add(LUKE)
    send(net, yoda, [luke], "f", os.urandom(5_000))
    assert yoda.engine.ended(TransferEnded(tid(1), "Leia"), 0.0) == []
    net.run(lambda: "f has been uploaded" in yoda.lines)
    yoda.engine.ended(TransferEnded(tid(1), "Luke"), net.now)
    net.settle()
    assert yoda.lines == ["Sending f (4.9 KiB) to Luke.", "f has been uploaded"]


def test_a_transfer_ready_after_ctrl_c_sends_abort_to_each_audience() -> None:
    net = Net()
    yoda, luke = net.add(YODA), net.add(LUKE)
    yoda.storage.sources["f"] = bytes(1000)
    net.apply(luke, luke.engine.download(TransferOffer("Yoda", "f", 1000, *YODA, tid(1), key(1)), 0.0))
    ready = TransferReady("f", [TransferTarget("Luke", *LUKE, tid(1), key(1))])
    net.apply(yoda, yoda.engine.upload(Upload("f", ready, 1000, cancelled=True), 0.0))
    assert [d[1] for d, _ in yoda.sent] == [Kind.ABORT]
    net.run(lambda: len(luke.lines) == 2)
    assert luke.lines[1] == ("Error. Receiving f from Yoda failed: sender aborted: "
                             "the presenter left before the transfer started")
    assert luke.storage.files == {}


# --- resume --------------------------------------------------------------------------------

def interrupted(data: bytes, fraction: float) -> tuple[Net, Node, Node]:
    """Yoda sends ``data`` to Luke, whose client is killed once ``fraction`` has arrived."""
    net = Net(per_millisecond=20)
    yoda, luke = net.add(YODA), net.add(LUKE)
    send(net, yoda, [luke], "clip.mp4", data)
    net.run(lambda: len(luke.storage.files.get(".Yoda_clip.mp4.part", b"")) >= fraction * len(data), limit=600)
    net.now += 1.0  # a second later: its last resume record is that old at most
    net.apply(luke, luke.engine.tick(net.now))
    del net.nodes[LUKE]
    net.apply(yoda, yoda.engine.ended(TransferEnded(tid(1), "Luke"), net.now))
    net.run(lambda: len(yoda.lines) == 2)
    return net, yoda, luke


def restart(net: Net, node: Node) -> Node:
    """The same client started again: a new engine over the same receive directory."""
    fresh = Node(node.address, TransferEngine(node.storage, datagram_size=200), node.storage)
    net.nodes[node.address] = fresh
    return fresh


def test_a_killed_audience_resumes_where_it_was_and_only_the_rest_is_sent() -> None:
    data = os.urandom(400_000)
    net, yoda, luke = interrupted(data, 0.5)
    (name, partial), = luke.storage.files.items()
    size, point = luke.storage.records[name]
    recorded = point.offset
    assert name == ".Yoda_clip.mp4.part" and size == len(data) and 0 < recorded <= len(partial)
    assert point.digest == hash_list(data[:recorded], 0, point.chunk, point.transfer_id, point.key)
    luke = restart(net, luke)
    before = len(yoda.sent)
    send(net, yoda, [luke], "clip.mp4", data, first=2)
    net.run(lambda: "clip.mp4 has been uploaded" in yoda.lines, limit=600)
    assert luke.storage.files["Yoda_clip.mp4"] == data and luke.storage.records == {}
    percent = 100 * recorded // len(data)
    assert any(line.startswith(f"Resuming clip.mp4 at {percent}% (") and line.endswith("already here)")
               for line in luke.lines)
    assert any(line.startswith(f"Resuming clip.mp4 at {percent}% (") and line.endswith("already at Luke)")
               for line in yoda.lines)
    payload = data_bytes_sent(yoda, before) * 174 // 200  # less the 10+16 header and tag bytes per 200
    assert len(data) - recorded <= payload <= 1.15 * (len(data) - recorded)  # the missing part (and a few resent)
    assert luke.lines[-1] == "Received clip.mp4 from Yoda (saved as Yoda_clip.mp4)"


def test_a_partial_copy_of_another_file_is_not_resumed_and_the_new_file_arrives() -> None:
    first, second = os.urandom(200_000), os.urandom(200_000)
    net, yoda, luke = interrupted(first, 0.5)
    luke = restart(net, luke)
    send(net, yoda, [luke], "clip.mp4", second, first=2)  # same name and size, other bytes
    net.run(lambda: len(yoda.lines) == 4 and len(luke.lines) == 2, limit=600)
    assert yoda.lines[-1] == ("Error. Transfer of clip.mp4 to Luke failed: the receiver's partial copy is not "
                              "of this file; it is discarded, send again")
    net.settle()
    assert luke.storage.files == {} and luke.storage.records == {}
    send(net, yoda, [luke], "clip.mp4", second, first=3)
    net.run(lambda: "Received clip.mp4 from Yoda (saved as Yoda_clip.mp4)" in luke.lines, limit=600)
    assert luke.storage.files["Yoda_clip.mp4"] == second


def test_a_partial_copy_of_another_size_is_not_resumed() -> None:
    data = os.urandom(200_000)
    net, yoda, luke = interrupted(data, 0.5)
    luke = restart(net, luke)
    send(net, yoda, [luke], "clip.mp4", data[:-1], first=2)
    net.run(lambda: "Received clip.mp4 from Yoda (saved as Yoda_clip.mp4)" in luke.lines, limit=600)
    assert not any(line.startswith("Resuming") for line in luke.lines)
    assert luke.storage.files == {"Yoda_clip.mp4": data[:-1]}


def test_the_receivers_hello_names_the_prefix_and_a_sender_checks_it() -> None:
    data = os.urandom(10_000)
    receiver = Receiver(bytes(16), len(data), 0.0, resume=4_000, prefix_hash=hashlib.sha256(data[:4_000]))
    sender = Sender(bytes(16), len(data), 0.0, datagram_size=1_000)
    for datagram in receiver.datagrams_to_send():
        sender.receive(datagram, 0.0)
    assert sender.want_data() == 4_000  # first the prefix: hashed, not sent
    sender.feed(data[:4_000], 0.0)
    assert sender.resumed == 4_000 and sender.bytes_acked == 4_000 and not sender.datagrams_to_send()
    fed = 4_000
    now = 0.0
    while not receiver.closed or not sender.closed:
        while n := sender.want_data():
            sender.feed(data[fed:fed + n], now)
            fed += n
        for datagram in sender.datagrams_to_send():
            receiver.receive(datagram, now)
        for datagram in receiver.datagrams_to_send():
            sender.receive(datagram, now)
        receiver.events()
        sender.events()
        now += 0.01
        for endpoint in (sender, receiver):
            endpoint.on_timer(now)
        assert now < 60
    assert sender.state is receiver.state is State.COMPLETED and receiver.bytes_received == len(data)

"""The client's peer-to-peer transfer engine: every upload and download of one client.

``TransferEngine`` implements ``core.client_session.Transfers``, the seam the client's select
loop drives: ``upload`` when the server answers ``/p2pvideo``/``/groupvideo`` with
``transfer_ready``, ``download`` when it pushes a ``transfer_offer``, ``datagram`` for every
datagram the client's UDP socket receives, ``tick`` on every loop turn, ``deadline`` for the
select timeout and ``close`` when the client leaves. Each answers with effects:
``Datagrams`` to send, ``Print`` lines, and ``Status`` (the progress line on a terminal).

It owns one ``core.transfer.Sender`` per audience member and one ``Receiver`` per offer,
keyed by the 16-byte transfer id the server issued, and decides everything around them:
which datagrams reach which state machine (the right id *and* the announced address, or
nothing happens), what a received file is called and whether it may be saved at all, the
receive window each download may use, how much of a file to read per turn, and which lines
the user sees. It does no I/O of its own: files go through a ``Storage`` (``client.py``
has the disk one; tests use a dictionary), sockets and clocks belong to the shell.

Naming: a file ``NAME`` from ``PRESENTER`` is saved as ``PRESENTER_NAME`` in the receive
directory, written first to a hidden temporary ``.PRESENTER_NAME.<id>.part`` created
exclusively, renamed over any existing ``PRESENTER_NAME`` (``os.replace``: atomic, so a
re-sent file replaces the old copy) only once the SHA-256 matched, and deleted on failure.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Protocol

from .client_session import Address, Datagrams, Effect, Print, Status, Upload
from .messages import TransferOffer, valid_filename
from .transfer import (
    DEFAULT_WINDOW, GIVE_UP, Completed, Data, Failed, Receiver, Sender, datagram_size_for,
    footprint, peek_transfer_id,
)
from .transfer_wire import COMMON, HELLO, MAX_DATAGRAM, MAX_REASON_BYTES, Kind

DEFAULT_MAX_RECEIVE_SIZE = 4 * 1024**3  # 4 GiB
READ_BLOCK = 1 << 20  # file bytes read and fed to one sender per loop turn
STATUS_INTERVAL = 0.2  # the progress line is redrawn at most five times a second
MAX_NAME_BYTES = 255  # a file name's limit on Linux and most file systems (NAME_MAX)
EARLY_DATAGRAMS = 16  # HELLOs and ABORTs kept for transfers whose transfer_ready is still on its way
EARLY_DATAGRAM_AGE = 2.0
_HELLO_SIZE = HELLO.size
_HELLO = int(Kind.HELLO)
_ABORT = int(Kind.ABORT)
MAX_EARLY_SIZE = COMMON.size + MAX_REASON_BYTES  # the longest ABORT


# --- file access -------------------------------------------------------------------------

class Source(Protocol):
    """A file being sent, opened once for every audience member of one command."""

    size: int

    def read_at(self, buffer: memoryview, offset: int) -> int:
        """Read up to ``len(buffer)`` bytes at ``offset`` into ``buffer``; 0 at the end."""
        ...

    def close(self) -> None: ...


class Sink(Protocol):
    """A temporary file being received."""

    def write(self, chunks: list[memoryview]) -> None:
        """Append every byte of ``chunks``, in order (raises OSError, e.g. a full disk)."""
        ...

    def close(self) -> None: ...


class Storage(Protocol):
    """The file system as the engine sees it; every method may raise OSError.

    Received files live in one directory; ``create``, ``commit`` and ``discard`` take plain
    names inside it (the engine has checked them: no separator, no ``..``).
    """

    def open_source(self, path: str) -> Source: ...

    def create(self, name: str) -> Sink:
        """Create ``name`` exclusively (never an existing file, never through a link)."""
        ...

    def commit(self, temporary: str, final: str) -> None:
        """Rename ``temporary`` to ``final`` atomically, replacing any file of that name."""
        ...

    def discard(self, name: str) -> None:
        """Delete ``name``; nothing if it is already gone."""
        ...


# --- names and lines ---------------------------------------------------------------------

def safe_component(name: str) -> bool:
    """True if ``name`` can be part of a file name in the receive directory: printable
    (so no NUL and no control character), no ``/`` or ``\\``, no ``..``, not ``.``."""
    return valid_filename(name)


def refusal(presenter: str, filename: str) -> str | None:
    """Why ``PRESENTER_FILENAME`` cannot be saved in the receive directory, or None."""
    if not safe_component(filename):
        return "unsafe file name"
    if not safe_component(presenter):
        return "unsafe presenter name"
    if len(os.fsencode(f"{presenter}_{filename}")) > MAX_NAME_BYTES:
        return "the file name is too long"
    return None


def temporary_name(final: str, transfer_id: bytes) -> str:
    """Where ``final`` is written until verified: hidden, unique to the transfer."""
    name = f".{final}.{transfer_id.hex()}.part"
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        name = f".tessenger.{transfer_id.hex()}.part"
    return name


def human_size(size: int) -> str:
    if size < 1024:
        return "1 byte" if size == 1 else f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _members(count: int) -> str:
    return "1 member" if count == 1 else f"{count} members"


# --- the engine --------------------------------------------------------------------------

class _Job:
    """One /p2pvideo or /groupvideo command: a file read by one sender per member."""

    __slots__ = ("filename", "group", "size", "source", "remaining", "uploaded", "members")

    def __init__(self, filename: str, group: str | None, size: int, source: Source | None, members: int) -> None:
        self.filename = filename
        self.group = group
        self.size = size
        self.source = source
        self.remaining = members  # senders without an outcome yet
        self.uploaded = 0
        self.members = members


class _Transfer:
    """One Sender or Receiver and what the engine knows around it."""

    __slots__ = ("endpoint", "peer", "filename", "who", "job", "offset", "sink", "temporary", "final",
                 "refused", "over", "size", "mark_bytes", "mark_time", "rate")

    def __init__(self, endpoint: Sender | Receiver, peer: Address, filename: str, who: str, size: int,
                 now: float) -> None:
        self.endpoint = endpoint
        self.peer = peer
        self.filename = filename
        self.who = who  # the audience member (upload) or the presenter (download)
        self.size = size
        self.job: _Job | None = None  # uploads only
        self.offset = 0  # bytes of the file fed to the sender
        self.sink: Sink | None = None  # downloads only
        self.temporary = ""
        self.final = ""
        self.refused = False  # a refused offer: its line is already shown
        self.over = False  # the outcome has been handled
        self.mark_bytes = 0  # progress at the last status line, for the rate
        self.mark_time = now
        self.rate = 0.0

    def done(self) -> int:
        endpoint = self.endpoint
        return endpoint.bytes_acked if isinstance(endpoint, Sender) else endpoint.bytes_received


class TransferEngine:
    """Every transfer of one client (see the module's docstring).

    ``receive_window``: bytes of the UDP socket's receive buffer that incoming transfers may
    fill, as the kernel counts them (3/4 of ``getsockopt(SO_RCVBUF)``); each new download
    gets an equal share with those already running. ``datagram_size``: the DATA datagram
    size to send and the largest to accept (None: ``datagram_size_for(peer)`` to send,
    anything to accept). ``max_receive_size``: larger offers are refused.
    ``show_progress``: emit ``Status`` lines (only when the console is a terminal).
    """

    def __init__(
        self,
        storage: Storage,
        *,
        receive_window: int = DEFAULT_WINDOW,
        datagram_size: int | None = None,
        max_receive_size: int = DEFAULT_MAX_RECEIVE_SIZE,
        show_progress: bool = False,
        give_up: float = GIVE_UP,
        read_block: int = READ_BLOCK,
    ) -> None:
        self.storage = storage
        self.receive_window = receive_window
        self.datagram_size = datagram_size
        self.max_receive_size = max_receive_size
        self.show_progress = show_progress
        self.give_up = give_up
        self._transfers: dict[bytes, _Transfer] = {}
        self._block = memoryview(bytearray(read_block))  # every file is read into this one
        self._hungry = False  # a sender could take more of its file right now
        self._early: OrderedDict[bytes, tuple[bytes, Address, float]] = OrderedDict()
        self._status_shown = False
        self._status_due = 0.0

    # --- the Transfers seam --------------------------------------------------------------

    def upload(self, request: Upload, now: float) -> list[Effect]:
        ready = request.ready
        filename = ready.filename
        if not ready.targets:
            if request.group is not None:
                return [Print(f"No other joined member of {request.group} is active: {filename} was not sent.")]
            return [Print(f"No one to send {filename} to.")]
        problem = None
        source: Source | None = None
        try:
            source = self.storage.open_source(request.path)
        except OSError as exc:
            problem = f"cannot read the file: {exc.strerror or exc}"
        else:
            if source.size != request.size:
                problem = "the file changed size since the command was given"
        job = _Job(filename, request.group, request.size, source, len(ready.targets))
        names = ", ".join(t.audience for t in ready.targets)
        if request.group is None:
            effects: list[Effect] = [Print(f"Sending {filename} ({human_size(request.size)}) to {names}.")]
        else:
            effects = [Print(f"Sending {filename} ({human_size(request.size)}) to "
                             f"{_members(len(ready.targets))} of {request.group}: {names}.")]
        for target in ready.targets:
            transfer_id = bytes.fromhex(target.transfer_id)
            peer = (target.ip, target.udp_port)
            size = self.datagram_size or datagram_size_for(target.ip)
            sender = Sender(transfer_id, request.size, now, datagram_size=size, give_up=self.give_up)
            transfer = _Transfer(sender, peer, filename, target.audience, request.size, now)
            transfer.job = job
            if transfer_id in self._transfers:  # the server repeated an id: never mix two transfers
                job.remaining -= 1
                effects.append(Print(f"Error. Transfer of {filename} to {target.audience} failed: "
                                     "the server gave a transfer id already in use"))
                continue
            self._transfers[transfer_id] = transfer
            self._starting(now)
            if problem is not None or not target.udp_port:
                sender.abort(problem or "the receiver has no UDP port", now)
            else:
                early = self._early.pop(transfer_id, None)
                if early is not None and early[1] == peer:
                    sender.receive(early[0], now)  # its HELLO or ABORT came before our transfer_ready
            self._service(transfer, now, effects)
        if job.remaining == 0:
            self._release_source(job)
        return effects

    def download(self, offer: TransferOffer, now: float) -> list[Effect]:
        try:
            transfer_id = bytes.fromhex(offer.transfer_id)
        except ValueError:
            transfer_id = b""
        if len(transfer_id) != 16:
            return [Print(f"Error. Refused {offer.filename} from {offer.presenter}: invalid transfer id.")]
        if transfer_id in self._transfers:
            return []  # the same offer again: it is under way already
        problem = refusal(offer.presenter, offer.filename)
        if problem is None and offer.size > self.max_receive_size:
            problem = (f"the file ({offer.size} bytes) exceeds the limit of {self.max_receive_size} bytes "
                       "(--max-receive-size)")
        if problem is None and not offer.udp_port:
            problem = "the presenter has no UDP port"
        max_datagram = self.datagram_size or MAX_DATAGRAM
        running = sum(1 for t in self._transfers.values() if isinstance(t.endpoint, Receiver) and not t.over)
        window = max(self.receive_window // (running + 1), footprint(max_datagram))
        # (a refused offer is aborted below with its own reason, so no max_size for it)
        receiver = Receiver(transfer_id, offer.size, now, max_size=None if problem else self.max_receive_size,
                            window=window, max_datagram=max_datagram, give_up=self.give_up)
        transfer = _Transfer(receiver, (offer.ip, offer.udp_port), offer.filename, offer.presenter, offer.size, now)
        self._transfers[transfer_id] = transfer
        effects: list[Effect] = []
        if problem is not None:
            receiver.datagrams_to_send()  # not its HELLO: the sender must not start
            receiver.abort(problem, now)
            transfer.refused = True
            effects.append(Print(f"Error. Refused {offer.filename} from {offer.presenter}: {problem}."))
        else:
            transfer.final = f"{offer.presenter}_{offer.filename}"
            transfer.temporary = temporary_name(transfer.final, transfer_id)
            try:
                transfer.sink = self.storage.create(transfer.temporary)
            except OSError as exc:
                transfer.temporary = ""
                receiver.datagrams_to_send()
                receiver.abort(f"the receiver cannot create the file: {exc.strerror or exc}", now)
            else:
                effects.append(Print(f"Receiving {offer.filename} ({human_size(offer.size)}) from {offer.presenter}."))
                self._starting(now)
        self._service(transfer, now, effects)
        return effects

    def datagram(self, data: bytes, address: Address, now: float) -> list[Effect]:
        # The hot path: bytes 2..18 are where a transfer id would be; the state machine checks
        # everything else (magic, kind, lengths), so anything else found here is dropped there.
        transfer = self._transfers.get(data[2:18])
        if transfer is None or transfer.peer != address:
            if transfer is None and len(data) <= MAX_EARLY_SIZE:
                transfer_id = peek_transfer_id(data)  # None unless long enough and of a known kind
                if transfer_id is not None and (data[1] == _ABORT or (data[1] == _HELLO and len(data) == _HELLO_SIZE)):
                    self._remember_early(transfer_id, data, address, now)
            return []  # not announced to us, or not from where it was announced: no effect
        endpoint = transfer.endpoint
        endpoint.receive(data, now)
        out = endpoint.datagrams_to_send()
        if out:
            return [Datagrams(out, address)]  # an ACK leaves now, not after the batch
        return []

    def tick(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        hungry = False
        for transfer in list(self._transfers.values()):
            endpoint = transfer.endpoint
            deadline = endpoint.next_deadline()
            if deadline is not None and deadline <= now:
                endpoint.on_timer(now)
            if transfer.job is not None:
                assert isinstance(endpoint, Sender)
                if endpoint.want_data():
                    self._feed(transfer, endpoint, now)
                    hungry = hungry or endpoint.want_data() > 0
            self._service(transfer, now, effects)
        self._hungry = hungry
        if self.show_progress:
            self._status(now, effects)
        return effects

    def deadline(self) -> float | None:
        if self._hungry:
            return 0.0  # long past: poll, so ACKs are read between blocks of the file
        deadlines = [d for t in self._transfers.values() if (d := t.endpoint.next_deadline()) is not None]
        if self.show_progress and (self._status_shown or self._running()):
            deadlines.append(self._status_due)
        return min(deadlines) if deadlines else None

    def close(self, now: float, reason: str = "the client closed") -> list[Effect]:
        """Abort every transfer still running (the peer gets an ABORT with ``reason``),
        delete every temporary file, and forget everything."""
        effects: list[Effect] = []
        for transfer in list(self._transfers.values()):
            if not transfer.over:
                transfer.endpoint.abort(reason, now)
            self._service(transfer, now, effects)
        self._transfers.clear()
        self._early.clear()
        self._hungry = False
        if self._status_shown:
            self._status_shown = False
            effects.append(Status(None))
        return effects

    # --- introspection (tests, status) ---------------------------------------------------

    def active(self) -> int:
        """Transfers known (running or lingering)."""
        return len(self._transfers)

    # --- inside --------------------------------------------------------------------------

    def _feed(self, transfer: _Transfer, sender: Sender, now: float) -> None:
        """At most one block of the file per turn, so ACKs are read between blocks."""
        job = transfer.job
        assert job is not None and job.source is not None
        wanted = min(sender.want_data(), len(self._block))
        block = self._block[:wanted]
        try:
            got = job.source.read_at(block, transfer.offset)
        except OSError as exc:
            sender.abort(f"cannot read the file: {exc.strerror or exc}", now)
            return
        if not got:
            sender.abort("the file shrank while being sent", now)
            return
        sender.feed(block[:got], now)
        transfer.offset += got

    def _service(self, transfer: _Transfer, now: float, effects: list[Effect]) -> None:
        """Act on the transfer's events, queue its datagrams, forget it once closed."""
        endpoint = transfer.endpoint
        while True:
            events = endpoint.events()
            if not events:
                break
            for event in events:
                if type(event) is Data:
                    sink = transfer.sink
                    if sink is not None and not transfer.over:
                        try:
                            sink.write(event.chunks)
                        except OSError as exc:
                            endpoint.abort(f"the receiver cannot write the file: {exc.strerror or exc}", now)
                elif type(event) is Completed:
                    self._completed(transfer, effects)
                elif type(event) is Failed:
                    self._failed(transfer, event.reason, effects)
        out = endpoint.datagrams_to_send()
        if out:
            effects.append(Datagrams(out, transfer.peer))
        if endpoint.closed:
            self._transfers.pop(endpoint.transfer_id, None)

    def _completed(self, transfer: _Transfer, effects: list[Effect]) -> None:
        if transfer.over:
            return
        transfer.over = True
        if transfer.job is not None:
            job = transfer.job
            job.uploaded += 1
            if job.group is None:
                effects.append(Print(f"{transfer.filename} has been uploaded"))
            else:
                effects.append(Print(f"{transfer.filename} has been uploaded to {transfer.who}"))
            self._job_member_done(job, effects)
            return
        self._close_sink(transfer)
        try:
            self.storage.commit(transfer.temporary, transfer.final)
        except OSError as exc:
            self._discard(transfer)
            effects.append(Print(f"Error. Receiving {transfer.filename} from {transfer.who} failed: "
                                 f"cannot save it as {transfer.final}: {exc.strerror or exc}"))
            return
        transfer.temporary = ""
        effects.append(Print(f"Received {transfer.filename} from {transfer.who}"))

    def _failed(self, transfer: _Transfer, reason: str, effects: list[Effect]) -> None:
        if transfer.over:
            return
        transfer.over = True
        if transfer.job is not None:
            effects.append(Print(f"Error. Transfer of {transfer.filename} to {transfer.who} failed: {reason}"))
            self._job_member_done(transfer.job, effects)
            return
        self._close_sink(transfer)
        self._discard(transfer)
        if not transfer.refused:
            effects.append(Print(f"Error. Receiving {transfer.filename} from {transfer.who} failed: {reason}"))

    def _job_member_done(self, job: _Job, effects: list[Effect]) -> None:
        job.remaining -= 1
        if job.remaining:
            return
        self._release_source(job)
        if job.group is not None:
            effects.append(Print(f"{job.filename}: uploaded to {job.uploaded} of {_members(job.members)}."))

    def _release_source(self, job: _Job) -> None:
        if job.source is not None:
            source, job.source = job.source, None
            try:
                source.close()
            except OSError:
                pass

    def _close_sink(self, transfer: _Transfer) -> None:
        if transfer.sink is not None:
            sink, transfer.sink = transfer.sink, None
            try:
                sink.close()
            except OSError:
                pass

    def _discard(self, transfer: _Transfer) -> None:
        if transfer.temporary:
            try:
                self.storage.discard(transfer.temporary)
            except OSError:
                pass
            transfer.temporary = ""

    def _remember_early(self, transfer_id: bytes, data: bytes, address: Address, now: float) -> None:
        """The audience hears of a transfer at about the time we do, and may answer before our
        ``transfer_ready`` arrives: with HELLO (the transfer would wait for the next one) or
        with ABORT when it refuses the offer (a sender waiting for HELLO would never hear
        it, and give up only after ``give_up`` seconds). Keep a few such datagrams, briefly;
        only a transfer the server then announces, from the announced address, uses one."""
        early = self._early
        early[transfer_id] = (data, address, now)
        early.move_to_end(transfer_id)
        while early and (len(early) > EARLY_DATAGRAMS or next(iter(early.values()))[2] < now - EARLY_DATAGRAM_AGE):
            early.popitem(last=False)

    # --- the progress line ---------------------------------------------------------------

    def _running(self) -> bool:
        return any(not t.over and not t.refused for t in self._transfers.values())

    def _starting(self, now: float) -> None:
        if self.show_progress and not self._status_shown and not self._running():
            self._status_due = now + STATUS_INTERVAL  # short transfers never show a bar

    def _status(self, now: float, effects: list[Effect]) -> None:
        running = [t for t in self._transfers.values() if not t.over and not t.refused]
        if not running:
            if self._status_shown:
                self._status_shown = False
                effects.append(Status(None))
            return
        if now < self._status_due:
            return
        self._status_due = now + STATUS_INTERVAL
        parts = []
        for transfer in running:
            done = transfer.done()
            elapsed = now - transfer.mark_time
            if elapsed > 0:
                rate = (done - transfer.mark_bytes) / elapsed
                transfer.rate = rate if not transfer.rate else 0.5 * transfer.rate + 0.5 * rate
            transfer.mark_bytes, transfer.mark_time = done, now
            percent = 100 * done // transfer.size if transfer.size else 100
            if transfer.job is not None:
                what = f"{transfer.filename} to {transfer.who}"
            else:
                what = f"{transfer.filename} from {transfer.who}"
            parts.append(f"{what}: {percent}% at {transfer.rate / 1e6:.1f} MB/s")
        effects.append(Status(" | ".join(parts)))
        self._status_shown = True



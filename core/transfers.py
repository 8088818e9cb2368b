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
the user sees. It does no I/O of its own: files go through a ``Storage`` (``shell/storage.py``
has the disk one; tests use a dictionary), sockets and clocks belong to the shell.

Naming: a file ``NAME`` from ``PRESENTER`` is saved as ``PRESENTER_NAME`` in the receive
directory, written first to a hidden temporary ``.PRESENTER_NAME.part`` (``.PRESENTER_NAME.<id>.part``
while another transfer of the same name is running), renamed over any existing
``PRESENTER_NAME`` (``os.replace``: atomic, so a re-sent file replaces the old copy) only once
the SHA-256 matched.

Resume: an interrupted download that got somewhere keeps its partial file and a record of
how much of it is verified (``Storage.checkpoint``); when the same presenter offers a file of
the same name and size again, the receiver's HELLO names that prefix and its SHA-256, and the
sender -- after checking the prefix against its own file -- sends only the rest. A failure
that gained nothing (or a digest mismatch) deletes the partial file.

Limits: at most ``max_incoming`` downloads at once (a further offer is declined with one
ABORT: no file, no HELLO); uploads keep at most ``max_in_flight`` bytes each and
``max_in_flight_total`` together for resending, whatever the audience advertises.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .client_session import Address, Datagrams, Effect, Print, Status, Upload
from .messages import TransferEnded, TransferOffer
from .progress import Progress, human_size, percent, progress_line, resuming
from .transfer_files import Sink, Source, Storage, refusal, temporary_name
from .transfer import (
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_WINDOW, GIVE_UP, Completed, Data, Failed, Receiver, Sender,
    datagram_size_for, footprint, peek_transfer_id,
)
from .transfer_wire import COMMON, HELLO, MAX_DATAGRAM, MAX_REASON_BYTES, TAG_SIZE, Kind, Mac, encode_abort, seal

DEFAULT_MAX_RECEIVE_SIZE = 4 * 1024**3  # 4 GiB
READ_BLOCK = 1 << 20  # file bytes read and fed to one sender per loop turn
STATUS_INTERVAL = 0.2  # the progress line is redrawn at most five times a second
CHECKPOINT_INTERVAL = 1.0  # a download's resume record is rewritten at most once a second
DEFAULT_MAX_INCOMING = 8
# The server says the peer left: its last datagrams (a DONE) may still be on their way.
PEER_GONE_GRACE = 0.25
EARLY_DATAGRAMS = 16  # HELLOs and ABORTs kept for transfers whose transfer_ready is still on its way
EARLY_DATAGRAM_AGE = 2.0
_HELLO_SIZE = HELLO.size + TAG_SIZE
_HELLO = int(Kind.HELLO)
_ABORT = int(Kind.ABORT)
MAX_EARLY_SIZE = COMMON.size + MAX_REASON_BYTES + TAG_SIZE  # the longest ABORT


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
                 "refused", "over", "size", "mark_bytes", "mark_time", "rate", "gone_at", "gone_reason",
                 "checkpoint_due", "announced")

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
        self.gone_at: float | None = None  # the server said the peer left: fail then
        self.gone_reason = ""
        self.checkpoint_due = now + CHECKPOINT_INTERVAL  # downloads: next resume record
        self.announced = False  # uploads: the "Resuming" line is shown

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
    ``max_incoming``: downloads at once. ``max_in_flight`` / ``max_in_flight_total``: bytes an
    upload / all uploads together keep for resending. ``authenticate=False`` (benchmarks
    only, and both peers must agree) ignores the server's keys: datagrams carry no MAC.
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
        max_incoming: int = DEFAULT_MAX_INCOMING,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_in_flight_total: int = DEFAULT_MAX_IN_FLIGHT,
        authenticate: bool = True,
    ) -> None:
        self.storage = storage
        self.receive_window = receive_window
        self.datagram_size = datagram_size
        self.max_receive_size = max_receive_size
        self.show_progress = show_progress
        self.give_up = give_up
        self.max_incoming = max_incoming
        self.max_in_flight = max_in_flight
        self.max_in_flight_total = max_in_flight_total
        self.authenticate = authenticate
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
        if request.cancelled:
            effects: list[Effect] = []
            problem = "the presenter left before the transfer started"
        elif request.group is None:
            effects: list[Effect] = [Print(f"Sending {filename} ({human_size(request.size)}) to {names}.")]
        else:
            effects = [Print(f"Sending {filename} ({human_size(request.size)}) to "
                             f"{_members(len(ready.targets))} of {request.group}: {names}.")]
        for target in ready.targets:
            transfer_id = bytes.fromhex(target.transfer_id)
            peer = (target.ip, target.udp_port)
            size = self.datagram_size or datagram_size_for(target.ip)
            sender = Sender(transfer_id, request.size, now, datagram_size=size, give_up=self.give_up,
                            key=self._key(target.key), max_in_flight=self.max_in_flight)
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
        key = self._key(offer.key)
        peer = (offer.ip, offer.udp_port)
        if self._incoming() >= self.max_incoming:
            return self._decline(offer, transfer_id, key, peer)
        problem = refusal(offer.presenter, offer.filename)
        if problem is None and offer.size > self.max_receive_size:
            problem = (f"the file ({offer.size} bytes) exceeds the limit of {self.max_receive_size} bytes "
                       "(--max-receive-size)")
        if problem is None and not offer.udp_port:
            problem = "the presenter has no UDP port"
        max_datagram = self.datagram_size or MAX_DATAGRAM
        window = max(self.receive_window // (self._incoming() + 1), footprint(max_datagram))
        final = f"{offer.presenter}_{offer.filename}"
        effects: list[Effect] = []
        sink, resumed, cannot = None, None, ""
        if problem is None:
            sink, resumed, cannot = self._open_sink(final, transfer_id, offer.size)
        offset, prefix_hash = resumed if resumed is not None else (0, None)
        # (a refused offer is aborted below with its own reason, so no max_size for it)
        receiver = Receiver(transfer_id, offer.size, now, max_size=None if problem else self.max_receive_size,
                            window=window, max_datagram=max_datagram, give_up=self.give_up, key=key,
                            resume=offset, prefix_hash=prefix_hash)
        transfer = _Transfer(receiver, peer, offer.filename, offer.presenter, offer.size, now)
        self._transfers[transfer_id] = transfer
        if problem is not None:
            receiver.datagrams_to_send()  # not its HELLO: the sender must not start
            receiver.abort(problem, now)
            transfer.refused = True
            effects.append(Print(f"Error. Refused {offer.filename} from {offer.presenter}: {problem}."))
        elif sink is None:
            receiver.datagrams_to_send()
            receiver.abort(f"the receiver cannot create the file: {cannot}", now)
        else:
            transfer.final, transfer.temporary, transfer.sink = final, sink[0], sink[1]
            transfer.mark_bytes = offset
            effects.append(Print(f"Receiving {offer.filename} ({human_size(offer.size)}) from {offer.presenter}."))
            if offset:
                effects.append(Print(resuming(offer.filename, offset, offer.size, "here")))
            self._starting(now)
        self._service(transfer, now, effects)
        return effects

    def ended(self, message: TransferEnded, now: float) -> list[Effect]:
        """The server says the other side left: the transfer fails shortly (its last
        datagrams may still be arriving), rather than after ``give_up`` seconds of silence."""
        transfer = self._transfers.get(bytes.fromhex(message.transfer_id))
        if transfer is not None and not transfer.over and transfer.who == message.username:
            if transfer.gone_at is None:
                transfer.gone_at = now + PEER_GONE_GRACE
                transfer.gone_reason = f"{message.username} left"
        return []

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
        budget = self._budget()  # once a turn, not per upload: only feeding adds to what is held meanwhile
        for transfer in list(self._transfers.values()):
            endpoint = transfer.endpoint
            deadline = endpoint.next_deadline()
            if deadline is not None and deadline <= now:
                endpoint.on_timer(now)
            if transfer.gone_at is not None and now >= transfer.gone_at:
                endpoint.abort(transfer.gone_reason, now, tell_peer=False)
            if transfer.job is not None:
                assert isinstance(endpoint, Sender)
                if endpoint.want_data():
                    held = endpoint.held_bytes
                    self._feed(transfer, endpoint, now, budget)
                    budget -= endpoint.held_bytes - held
                    hungry = hungry or (endpoint.want_data() > 0 and budget > 0)
                if endpoint.resumed and not transfer.announced:
                    transfer.announced = True
                    transfer.mark_bytes = endpoint.resumed
                    effects.append(Print(resuming(transfer.filename, endpoint.resumed, transfer.size,
                                                  f"at {transfer.who}")))
            self._service(transfer, now, effects)
            # after _service has written what was delivered: the record never runs ahead of the file
            if isinstance(endpoint, Receiver) and now >= transfer.checkpoint_due and not transfer.over:
                self._checkpoint(transfer, now)
        self._hungry = hungry
        if self.show_progress:
            self._status(now, effects)
        return effects

    def deadline(self) -> float | None:
        if self._hungry:
            return 0.0  # long past: poll, so ACKs are read between blocks of the file
        deadlines = [d for t in self._transfers.values() if (d := t.endpoint.next_deadline()) is not None]
        deadlines += [t.gone_at for t in self._transfers.values() if t.gone_at is not None and not t.over]
        deadlines += [t.checkpoint_due for t in self._transfers.values()
                      if t.sink is not None and not t.over]
        if self.show_progress and (self._status_shown or self._running()):
            deadlines.append(self._status_due)
        return min(deadlines) if deadlines else None

    def close(self, now: float, reason: str = "the client closed") -> list[Effect]:
        """Abort every transfer still running (the peer gets an ABORT with ``reason``),
        delete every temporary file not kept for a resume, and forget everything."""
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

    def _feed(self, transfer: _Transfer, sender: Sender, now: float, budget: int) -> None:
        """At most one block of the file per turn, so ACKs are read between blocks; at most
        what ``budget`` bytes of datagrams hold."""
        job = transfer.job
        assert job is not None and job.source is not None
        wanted = min(sender.want_data(), len(self._block), sender.payload_within(budget))
        if wanted <= 0:
            return  # every upload together holds max_in_flight_total: wait for ACKs
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
                            self._close_sink(transfer)  # what it holds is short: never resumed from
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
        effects.append(Print(f"Received {transfer.filename} from {transfer.who} (saved as {transfer.final})"))

    def _failed(self, transfer: _Transfer, reason: str, effects: list[Effect]) -> None:
        if transfer.over:
            return
        transfer.over = True
        if transfer.job is not None:
            effects.append(Print(f"Error. Transfer of {transfer.filename} to {transfer.who} failed: {reason}"))
            self._job_member_done(transfer.job, effects)
            return
        receiver = transfer.endpoint
        assert isinstance(receiver, Receiver)
        # Worth resuming: this attempt got further, and what it got is not known to be wrong
        keep = (transfer.sink is not None and receiver.bytes_received > receiver.resumed and not receiver.mismatch
                and transfer.temporary == temporary_name(transfer.final))
        if keep:
            self._checkpoint(transfer, 0.0)
            keep = bool(transfer.temporary)
        self._close_sink(transfer)
        if keep:
            transfer.temporary = ""  # kept for a resume; cleaned at a client start once stale
            reason += (f" (the {percent(receiver.bytes_received, transfer.size)}% received is kept: "
                       "sending the file again resumes there)")
        else:
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

    def _key(self, text: str) -> bytes | None:
        """A transfer's key as the server gave it (the schema checked: 64 hex digits)."""
        return bytes.fromhex(text) if self.authenticate else None

    def _incoming(self) -> int:
        return sum(1 for t in self._transfers.values() if isinstance(t.endpoint, Receiver) and not t.over)

    def _budget(self) -> int:
        """Bytes the uploads may still keep for resending, all together."""
        held = sum(t.endpoint.held_bytes for t in self._transfers.values() if isinstance(t.endpoint, Sender))
        return self.max_in_flight_total - held

    def _decline(self, offer: TransferOffer, transfer_id: bytes, key: bytes | None, peer: Address) -> list[Effect]:
        """Too many downloads already: one authenticated ABORT tells the presenter, and no
        file, HELLO or state is spent on the offer."""
        reason = f"the receiver is already receiving {self.max_incoming} files"
        effects: list[Effect] = [Print(f"Error. Refused {offer.filename} from {offer.presenter}: "
                                       f"already receiving {self.max_incoming} files (--max-incoming).")]
        if offer.udp_port:
            effects.append(Datagrams([seal(encode_abort(transfer_id, reason), Mac(key) if key else None)], peer))
        return effects

    def _open_sink(self, final: str, transfer_id: bytes, size: int
                   ) -> tuple[tuple[str, Sink] | None, tuple[int, Any] | None, str]:
        """Where a download of ``final`` goes: ((temporary name, sink), (bytes resumed, their
        hash) or None, why not if there is no sink)."""
        name = temporary_name(final)
        if any(t.temporary == name for t in self._transfers.values()):
            name = temporary_name(final, transfer_id)  # that name is busy: this one cannot resume
        else:
            try:
                found = self.storage.resume(name, size)
            except OSError:
                found = None
            if found is not None:
                offset, prefix_hash, sink = found
                return (name, sink), (offset, prefix_hash), ""
            try:
                self.storage.discard(name)  # a partial copy that is not this file's
            except OSError:
                pass
        try:
            return (name, self.storage.create(name)), None, ""
        except OSError as exc:
            return None, None, str(exc.strerror or exc)

    def _checkpoint(self, transfer: _Transfer, now: float) -> None:
        """Record how much of the download is written, for a resume; if that fails, the
        partial file would be unusable, so it is not kept."""
        receiver = transfer.endpoint
        assert isinstance(receiver, Receiver)
        transfer.checkpoint_due = now + CHECKPOINT_INTERVAL
        if transfer.temporary != temporary_name(transfer.final) or receiver.bytes_received == 0:
            return  # not the resumable name (another transfer of the name has it), or nothing yet
        try:
            self.storage.checkpoint(transfer.temporary, transfer.size, receiver.checkpoint())
        except OSError:
            self._discard(transfer)

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
        shown = []
        for transfer in running:
            done = transfer.done()
            elapsed = now - transfer.mark_time
            if elapsed > 0:
                rate = (done - transfer.mark_bytes) / elapsed
                transfer.rate = rate if not transfer.rate else 0.5 * transfer.rate + 0.5 * rate
            transfer.mark_bytes, transfer.mark_time = done, now
            if transfer.job is not None:
                what = f"{transfer.filename} to {transfer.who}"
            else:
                what = f"{transfer.filename} from {transfer.who}"
            shown.append(Progress(what, done, transfer.size, transfer.rate))
        effects.append(Status(progress_line(shown)))
        self._status_shown = True



"""Properties of the message schema (SPEC §5, §7, §9): round trips and hostile payloads."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any, get_args, get_origin, get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import messages as m
from core.messages import (
    MAX_FILENAME, MAX_LIST, MAX_NAME, MAX_PASSWORD, MAX_TEXT, REPLIES, REQUESTS, Codec, FileName,
    Message, Name, Password, Port, Record, SchemaError, Text, TransferId, TransferKey, encode, replies, requests,
)

SETTINGS = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])

# Printable, non-space characters: letters, marks, numbers, punctuation, symbols (never a
# surrogate, a control, a format character or a separator).
WORD_CHARS = st.characters(categories=("L", "M", "N", "P", "S"))
LINE_CHARS = st.one_of(WORD_CHARS, st.just(" "))


def word(max_size: int) -> st.SearchStrategy[str]:
    return st.text(WORD_CHARS, min_size=1, max_size=max_size)


names = st.one_of(
    st.sampled_from(["Yoda", "Hans", "a", "x" * MAX_NAME, "Ünïcödé", "名前", "a;b", "O'Neil"]),
    word(MAX_NAME),
).filter(m.valid_name)
passwords = st.one_of(st.sampled_from(["*!@#$%()=+_-", "p" * MAX_PASSWORD]), word(40))
texts = st.one_of(
    st.sampled_from(["hello", " leading and trailing ", "x" * MAX_TEXT, "emoji 🎉 ok", "semi; colon; ok"]),
    st.text(LINE_CHARS, min_size=1, max_size=200),
).filter(lambda t: t.strip() != "")
filenames = st.one_of(
    st.sampled_from(["test.mp4", ".hidden", "a.b.c", "f" * MAX_FILENAME, "vidéo 1.mp4", "a.", "x-y_z"]),
    st.text(LINE_CHARS, min_size=1, max_size=60),
).filter(m.valid_filename)
transfer_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
transfer_keys = st.binary(min_size=32, max_size=32).map(bytes.hex)
ports = st.integers(min_value=0, max_value=65535)
ints = st.integers(min_value=0, max_value=2**63)
plain_strs = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)

SCALARS: dict[Any, st.SearchStrategy[Any]] = {
    Name: names, Password: passwords, Text: texts, FileName: filenames, TransferId: transfer_ids, TransferKey: transfer_keys,
    Port: ports, int: ints, str: plain_strs,
}


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        return st.lists(strategy_for(item), max_size=4)
    if isinstance(annotation, type) and issubclass(annotation, Record):
        return message_strategy(annotation)
    return SCALARS[annotation]


def message_strategy(cls: type) -> st.SearchStrategy[Any]:
    hints = get_type_hints(cls)
    return st.builds(cls, **{f.name: strategy_for(hints[f.name]) for f in fields(cls)})


def codec_for(cls: type) -> Codec:
    return requests if cls in REQUESTS else replies


ALL = [*REQUESTS, *REPLIES]
any_message = st.one_of(*[message_strategy(cls) for cls in ALL])


def test_message_sets_are_disjoint_and_complete() -> None:
    types = [cls.TYPE for cls in ALL]
    assert len(types) == len(set(types))
    for cls in ALL:
        for f in fields(cls):
            annotation = get_type_hints(cls)[f.name]
            strategy_for(annotation)  # every field kind has a strategy here


# --- round trip --------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.TYPE)
@settings(deadline=None, max_examples=35)
@given(data=st.data())
def test_round_trip_of_every_message_type(cls: type, data: st.DataObject) -> None:
    message = data.draw(message_strategy(cls))
    payload = encode(message)
    assert isinstance(payload, bytes)
    text = payload.decode("utf-8")  # UTF-8, and non-ASCII is not escaped
    obj = json.loads(text)
    assert obj["type"] == cls.TYPE
    assert set(obj) == {"type", *(f.name for f in fields(cls))}
    decoded = codec_for(cls).decode(payload)
    assert type(decoded) is cls
    assert decoded == message
    assert encode(decoded) == payload


@SETTINGS
@given(any_message)
def test_encoding_is_exactly_compact_json_dumps(message: Message) -> None:
    """The compiled encoders write what json.dumps writes, byte for byte."""
    reference = {"type": message.TYPE, **asdict(message)}
    assert encode(message) == json.dumps(reference, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize("padding", [b" ", b"\n", b"\r\n\t "])
def test_json_white_space_around_the_object_is_allowed(padding: bytes) -> None:
    payload = encode(m.MsgTo(["Yoda"], "hi"))
    assert requests.decode(padding + payload + padding) == m.MsgTo(["Yoda"], "hi")


@pytest.mark.parametrize("payload", [b'{"type":"logout"} x', b'{"type":"logout"}{}', b"\x0c{\"type\":\"logout\"}"])
def test_anything_but_white_space_around_the_object_is_refused(payload: bytes) -> None:
    with pytest.raises(SchemaError, match="not UTF-8 JSON"):
        requests.decode(payload)


@SETTINGS
@given(any_message)
def test_a_message_is_refused_by_the_other_direction(message: Message) -> None:
    other = replies if type(message) in REQUESTS else requests
    with pytest.raises(SchemaError, match="unknown message type"):
        other.decode(encode(message))


def test_non_ascii_is_sent_as_utf8_not_escaped() -> None:
    payload = encode(m.MsgTo(["Jürgen"], "grüße 🎉"))
    assert "grüße 🎉".encode() in payload
    assert b"\\u" not in payload


def test_nested_records_round_trip() -> None:
    message = m.ActiveUsers([m.ActiveUserEntry("Yoda", "10.0.0.1", 6666, "01 Jun 2023 21:30:04")])
    payload = encode(message)
    assert json.loads(payload)["users"] == [
        {"username": "Yoda", "ip": "10.0.0.1", "udp_port": 6666, "since": "01 Jun 2023 21:30:04"}
    ]
    assert replies.decode(payload) == message
    assert type(replies.decode(payload).users[0]) is m.ActiveUserEntry


def test_extra_fields_are_ignored() -> None:
    assert requests.decode(b'{"type":"logout","extra":1}') == m.Logout()


# --- invalid payloads --------------------------------------------------------------------

def refused(codec: Codec, payload: bytes) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        codec.decode(payload)
    return info.value


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_give_schema_error_or_a_valid_message(payload: bytes) -> None:
    for codec in (requests, replies):
        try:
            message = codec.decode(payload)
        except SchemaError:
            continue
        assert isinstance(message, Message)  # astronomically unlikely, but it would be fine


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(json_values, st.sampled_from([None, *[cls.TYPE for cls in ALL], "nonsense"]))
def test_random_json_gives_schema_error_or_a_valid_message(value: Any, kind: str | None) -> None:
    if kind is not None and isinstance(value, dict):
        value = {**value, "type": kind}
    payload = json.dumps(value).encode()
    for codec in (requests, replies):
        try:
            message = codec.decode(payload)
        except SchemaError:
            continue
        assert isinstance(message, Message)
        assert codec.decode(encode(message)) == message


WRONG_FOR_STR = [None, True, False, 0, 1, 1.5, [], ["x"], {}, {"a": "b"}]
WRONG_FOR_INT = [None, True, False, "1", 1.0, 1.5, -1, [], {}, [1], float("nan")]
WRONG_FOR_LIST = [None, True, 0, "a", {}, {"0": "a"}]
WRONG_FOR_RECORD = [None, True, 0, "a", [], ["a"]]

BAD_NAMES = ["", "two words", "tab\there", "new\nline", "cr\rx", "nul\x00", "esc\x1b[31m", "x" * (MAX_NAME + 1),
             "nbsp\u00a0x", "sep\u2028x", "\u200b", "lone\ud800"]
BAD_PASSWORDS = ["", "with space", "tab\t", "nl\n", "x" * (MAX_PASSWORD + 1), "\x7f", "\ud800"]
BAD_TEXTS = ["", " ", "    ", "x" * (MAX_TEXT + 1), "two\nlines", "cr\rhere", "tab\there", "nul\x00",
             "bell\x07", "esc\x1b[2J", "del\x7f", "ls\u2028x", "ps\u2029x", "nel\x85x", "\u3000", "lone\ud800",
             "bidi\u202eevil"]
BAD_FILENAMES = ["", "a/b", "/etc/passwd", "../x", "..", ".", "a..b", "..hidden", "nul\x00x", "back\\slash",
                 "new\nline", "f" * (MAX_FILENAME + 1), "esc\x1b", "\ud800"]
BAD_TRANSFER_IDS = ["", "0" * 31, "0" * 33, "A" * 32, "g" * 32, " " + "0" * 31, "0" * 31 + "\n"]
BAD_TRANSFER_KEYS = ["", "0" * 32, "0" * 63, "0" * 65, "A" * 64, "g" * 64, "0" * 63 + "\n"]
BAD_PORTS = [65536, 2**31, -1, True, 80.0, "80"]


def bad_values(annotation: Any) -> list[Any]:
    """Values no field of this kind may hold."""
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        return WRONG_FOR_LIST + [[v] for v in bad_values(item)]
    if isinstance(annotation, type) and issubclass(annotation, Record):
        return WRONG_FOR_RECORD + [{}]
    return {
        Name: WRONG_FOR_STR + BAD_NAMES,
        Password: WRONG_FOR_STR + BAD_PASSWORDS,
        Text: WRONG_FOR_STR + BAD_TEXTS,
        FileName: WRONG_FOR_STR + BAD_FILENAMES,
        TransferId: WRONG_FOR_STR + BAD_TRANSFER_IDS,
        TransferKey: WRONG_FOR_STR + BAD_TRANSFER_KEYS,
        Port: WRONG_FOR_INT + BAD_PORTS,
        int: WRONG_FOR_INT,
        str: WRONG_FOR_STR,
    }[annotation]


FIELDS = [(cls, f.name) for cls in ALL for f in fields(cls)]


@pytest.mark.parametrize("cls,name", FIELDS, ids=[f"{c.TYPE}.{n}" for c, n in FIELDS])
@settings(deadline=None, max_examples=6)
@given(data=st.data())
def test_every_wrong_field_value_is_refused(cls: type, name: str, data: st.DataObject) -> None:
    message = data.draw(message_strategy(cls))
    obj = json.loads(encode(message))
    codec = codec_for(cls)
    for bad in bad_values(get_type_hints(cls)[name]):
        refused(codec, dumps({**obj, name: bad}))
    missing = dict(obj)
    del missing[name]
    assert "missing" in str(refused(codec, dumps(missing)))


RECORD_LISTS = [
    (m.ActiveUsers(users=[]), "users", {"username": "Yoda", "ip": "1.2.3.4", "udp_port": 5, "since": "t"}),
    (m.TransferReady(filename="f", targets=[]), "targets",
     {"audience": "Yoda", "ip": "1.2.3.4", "udp_port": 5, "transfer_id": "0" * 32, "key": "0" * 64}),
]


@pytest.mark.parametrize("message,field_name,good", RECORD_LISTS, ids=["active_users", "transfer_ready"])
def test_records_inside_lists_are_checked_too(message: Message, field_name: str, good: dict[str, Any]) -> None:
    base = json.loads(encode(message))
    decoded = replies.decode(dumps({**base, field_name: [good, good]}))
    records = getattr(decoded, field_name)
    assert all(isinstance(r, Record) for r in records)
    assert json.loads(encode(decoded))[field_name] == [good, good]
    for key in good:
        specific = {"username": ["a b", "x" * 100, ""], "audience": ["a b", ""], "udp_port": [70000, "5"],
                    "transfer_id": ["A" * 32, "0" * 31]}
        for bad in [None, True, -1, 1.5, [], {}, *specific.get(key, [])]:
            if key in ("ip", "since") and bad == -1:
                bad = 1  # any non-string
            refused(replies, dumps({**base, field_name: [good, {**good, key: bad}]}))
        partial = dict(good)
        del partial[key]
        refused(replies, dumps({**base, field_name: [partial]}))


def test_lists_longer_than_the_limit_are_refused() -> None:
    ok = {"type": "msgto", "receivers": ["a"] * MAX_LIST, "text": "hi"}
    assert len(requests.decode(dumps(ok)).receivers) == MAX_LIST
    refused(requests, dumps({**ok, "receivers": ["a"] * (MAX_LIST + 1)}))
    refused(requests, dumps({"type": "creategroup", "group": "g", "members": ["a"] * (MAX_LIST + 1)}))


def test_server_listings_are_not_capped_by_the_list_limit() -> None:
    """The active-user list of a busy server is bounded by the frame size only."""
    users = [m.ActiveUserEntry(f"user{i}", "10.0.0.1", i % 65536, "01 Jun 2023 21:30:04") for i in range(MAX_LIST + 500)]
    assert replies.decode(encode(m.ActiveUsers(users))) == m.ActiveUsers(users)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b" ",
        b"null",
        b"[]",
        b'"logout"',
        b"42",
        b"{",
        b'{"type":"logout"',
        b"{'type':'logout'}",
        b'{"type":null}',
        b'{"type":1}',
        b'{"type":["logout"]}',
        b'{"type":{"a":1}}',
        b'{"type":"LOGOUT"}',
        b'{"type":"nonsense"}',
        b'{"kind":"logout"}',
        b'{"type":"__init__"}',
        b"[" * 100_000,
        b'{"type":"msgto","receivers":' + b"[" * 100_000 + b"}",
        b'{"type":"login","username":"a","password":"b","udp_port":' + b"9" * 5000 + b"}",
        b'{"type":"login","username":"a","password":"b","udp_port":1e400}',
        b'{"type":"login","username":"a","password":"b","udp_port":NaN}',
        b'{"type":"login","username":"a","password":"b","udp_port":Infinity}',
    ],
)
def test_malformed_payloads_are_refused(payload: bytes) -> None:
    refused(requests, payload)
    refused(replies, payload)


@pytest.mark.parametrize(
    "payload",
    [
        '{"type":"logout"}'.encode("utf-16"),
        '{"type":"logout"}'.encode("utf-16-le"),
        '{"type":"logout"}'.encode("utf-16-be"),
        '{"type":"logout"}'.encode("utf-32"),
        '{"type":"logout"}'.encode("utf-32-le"),
        b"\xef\xbb\xbf" + b'{"type":"logout"}',  # a UTF-8 byte-order mark is no part of the protocol
        '{"type":"check_user","username":"Jürgen"}'.encode("latin-1"),
        b'{"type":"check_user","username":"a\xff"}',
        b'{"type":"check_user","username":"a\xc3"}',
        b'{"type":"check_user","username":"a\xed\xa0\x80"}',  # an encoded surrogate is not UTF-8
        b'{"type":"msgto","receivers":["a"],"text":"\xc0\xaf"}',  # overlong encoding
        b'{"type":"logout"}\xff',
    ],
)
def test_non_utf8_payloads_are_refused(payload: bytes) -> None:
    refused(requests, payload)
    refused(replies, payload)


def test_non_utf8_payload_of_a_valid_message_is_refused_for_encoding() -> None:
    for encoding in ("utf-16", "utf-32", "utf-16-le"):
        assert "UTF-8" in str(refused(requests, '{"type":"logout"}'.encode(encoding)))


@SETTINGS
@given(any_message, st.integers(min_value=0), st.binary(min_size=1, max_size=3))
def test_corrupting_a_valid_payload_never_gives_another_exception(message: Message, at: int, junk: bytes) -> None:
    payload = encode(message)
    at %= len(payload) + 1
    corrupted = payload[:at] + junk + payload[at:]
    for codec in (requests, replies):
        try:
            decoded = codec.decode(corrupted)
        except SchemaError:
            continue
        # junk that happens to keep it valid (e.g. spaces between tokens) is still a message
        assert codec.decode(encode(decoded)) == decoded


@SETTINGS
@given(names, st.sampled_from(["\n", "\r", "\x00", "\t", " ", "\x1b", "\u2028", "\x85", "\x7f"]), st.data())
def test_names_with_spaces_or_control_characters_are_refused(name: str, bad: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(name)))
    spoiled = name[:at] + bad + name[at:]
    refused(requests, dumps({"type": "check_user", "username": spoiled}))
    refused(requests, dumps({"type": "joingroup", "group": spoiled}))
    refused(requests, dumps({"type": "msgto", "receivers": ["ok", spoiled], "text": "hi"}))


@SETTINGS
@given(texts, st.sampled_from(["\n", "\r\n", "\r", "\x00", "\x1b", "\u2028", "\u2029", "\x85", "\x0b", "\x0c"]), st.data())
def test_multi_line_or_control_text_is_refused(text: str, bad: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(text)))
    spoiled = text[:at] + bad + text[at:]
    reason = str(refused(requests, dumps({"type": "msgto", "receivers": ["a"], "text": spoiled})))
    assert "control character" in reason or "line-breaking" in reason or "longer" in reason
    refused(requests, dumps({"type": "groupmsg", "group": "g", "text": spoiled}))


@SETTINGS
@given(filenames, st.sampled_from(["/", "\\", "..", "\x00", "\n"]), st.data())
def test_filenames_with_separators_dots_or_nul_are_refused(name: str, bad: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(name)))
    spoiled = name[:at] + bad + name[at:]
    refused(requests, dumps({"type": "p2pvideo", "audience": "a", "filename": spoiled, "size": 1}))
    assert not m.valid_filename(spoiled)


def test_text_limits_are_exact() -> None:
    assert m.valid_text("x" * MAX_TEXT) is None
    assert m.valid_text("x" * (MAX_TEXT + 1)) == f"message is longer than {MAX_TEXT} characters"
    assert m.valid_text("  ") == "message is empty"
    assert m.valid_text("a\nb") == "message contains a control character (U+000A)"
    assert m.valid_text("Ünïcödé, 漢字, emoji 🎉; punctuation!?") is None


def test_bool_is_never_an_int() -> None:
    for value in (True, False):
        refused(requests, dumps({"type": "login", "username": "a", "password": "b", "udp_port": value}))
        refused(requests, dumps({"type": "p2pvideo", "audience": "a", "filename": "f", "size": value}))

"""docs/protocol.md documents exactly what the code does.

Fails when an error code, a message type, a field, a field's required flag or a message's senders
differ between ``schedd.protocol`` and the document, or when a JSON example there does not decode.
"""

from __future__ import annotations

import pathlib
import re

import attrs
import orjson
import pytest

from schedd.config import Config, LimitsSection
from schedd.errors import ProtocolError
from schedd.protocol import (
    CLIENT_SENDS,
    ERROR_CODES,
    MESSAGE_TYPES,
    NODE_SENDS,
    BatchElement,
    ErrorInfo,
    RunningJob,
    decode,
    is_batch,
    split_batch,
)
from schedd.protocol.codec import _OMITTED_WHEN_DEFAULT
from schedd.sdk.client import _LOST_CHECK_INTERVAL
from schedd.session import MAX_VIOLATIONS

DOC_PATH = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
DOC = DOC_PATH.read_text(encoding="utf-8")


def _sections(level: int) -> dict[str, str]:
    """Headings of one level mapped to their text, up to the next heading of that level or above."""
    headings = [
        (match.end(), len(match.group(1)), match.group(2).strip())
        for match in re.finditer(r"^(#+) (.+)$", DOC, re.MULTILINE)
    ]
    sections: dict[str, str] = {}
    for index, (body, depth, title) in enumerate(headings):
        if depth == level:
            stop = next(
                (DOC.rfind("\n", 0, later) for later, d, _ in headings[index + 1 :] if d <= level),
                len(DOC),
            )
            sections[title] = DOC[body:stop]
    return sections


def _table_rows(text: str) -> list[list[str]]:
    """Cells of every markdown table row in ``text``, header and separator rows excluded."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= {"|", "-", " "}:
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] in {"field", "code", "type", "limit", "state", "role"}:
            continue
        rows.append(cells)
    return rows


def _unquote(cell: str) -> str:
    assert cell.startswith("`") and cell.endswith("`"), cell
    return cell[1:-1]


MESSAGE_SECTIONS = {
    _unquote(title): text
    for title, text in _sections(3).items()
    if title.startswith("`") and title.endswith("`")
}
OBJECT_SECTIONS = {
    _unquote(title.removeprefix("Object ")): text
    for title, text in _sections(3).items()
    if title.startswith("Object `")
}


def test_error_code_table_matches_error_codes() -> None:
    table = _sections(2)["Error codes"]
    documented = {_unquote(code): meaning for code, meaning in _table_rows(table)}
    assert documented == ERROR_CODES


def test_every_error_code_is_mentioned() -> None:
    for code in ERROR_CODES:
        assert f"`{code}`" in DOC, code


def test_every_message_type_has_a_section() -> None:
    assert sorted(MESSAGE_SECTIONS) == sorted(MESSAGE_TYPES)


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_message_section_lists_every_field(tag: str) -> None:
    cls = MESSAGE_TYPES[tag]
    rows = _table_rows(MESSAGE_SECTIONS[tag])
    assert [_unquote(row[0]) for row in rows] == [field.name for field in attrs.fields(cls)]
    for row, field in zip(rows, attrs.fields(cls), strict=True):
        required = field.default is attrs.NOTHING
        assert row[2].startswith("yes" if required else "no"), (tag, field.name, row[2])
        assert row[1] and row[3], (tag, field.name)


@pytest.mark.parametrize("cls", [ErrorInfo, RunningJob])
def test_object_section_lists_every_field(cls: type) -> None:
    rows = _table_rows(OBJECT_SECTIONS[cls.__name__])
    assert [_unquote(row[0]) for row in rows] == [field.name for field in attrs.fields(cls)]
    for row, field in zip(rows, attrs.fields(cls), strict=True):
        assert row[2].startswith("yes" if field.default is attrs.NOTHING else "no")


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_message_section_names_its_senders(tag: str) -> None:
    match = re.search(r"^\*\*Sent by:\*\* (.+)$", MESSAGE_SECTIONS[tag], re.MULTILINE)
    assert match is not None, tag
    senders = {sender.strip() for sender in match.group(1).split(",")}
    assert senders == set(MESSAGE_TYPES[tag].SENT_BY)


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_message_section_example_decodes_to_its_type(tag: str) -> None:
    examples = re.findall(r"```json\n(.*?)```", MESSAGE_SECTIONS[tag], re.DOTALL)
    assert examples, f"no JSON example for {tag}"
    for example in examples:
        message = decode(example)
        assert tag == message.TYPE
        # The daemon writes every field: the examples show every field too (but those a
        # message leaves out when they hold their default).
        omitted = set(_OMITTED_WHEN_DEFAULT.get(type(message), ()))
        assert set(orjson.loads(example)) - omitted == {"type"} | {
            f.name for f in attrs.fields(type(message)) if f.name not in omitted
        }


def test_every_json_block_decodes() -> None:
    arrays = 0
    for example in re.findall(r"```json\n(.*?)```", DOC, re.DOTALL):
        if not is_batch(example):
            decode(example)
            continue
        arrays += 1  # an array frame: each of its elements is a message
        for element in split_batch(example, 256):
            assert isinstance(element, BatchElement), element
            decode(element.data)
    assert arrays == 2


def test_example_session_lines_are_valid() -> None:
    lines = [
        line
        for block in re.findall(r"```text\n(.*?)```", DOC, re.DOTALL)
        for line in block.splitlines()
        if line.startswith(("> {", "< {"))
    ]
    assert len(lines) > 10
    decode_errors = {"E_MALFORMED", "E_UNKNOWN_TYPE", "E_BAD_FIELD"}
    for line, following in zip(lines, [*lines[1:], None], strict=True):
        reply = orjson.loads(following[2:]) if following is not None else {}
        if (
            line.startswith("> ")
            and reply.get("type") == "error"
            and reply["code"] in decode_errors
        ):
            # The documented error is exactly what the codec says about this line.
            with pytest.raises(ProtocolError) as caught:
                decode(line[2:])
            assert (caught.value.code, caught.value.message) == (reply["code"], reply["message"])
        else:
            decode(line[2:])


def test_roles_table_lists_what_each_role_may_send() -> None:
    rows = _table_rows(_sections(3)["Roles"])
    allowed = {role: set(re.findall(r"`(\w+)`", sends)) | {"hello"} for role, sends in rows}
    assert allowed == {"node": set(NODE_SENDS), "client": set(CLIENT_SENDS)}


def _defaults_table() -> dict[str, str]:
    """The ``| `[section] key` | value |`` rows under "Limits", as key -> value cell."""
    return {
        match.group(1): match.group(2).strip()
        for match in re.finditer(r"^\| `(\[\w+\] \w+)` \| ([^|]+) \|$", _sections(2)["Limits"],
                                 re.MULTILINE)
    }


def test_documented_defaults_are_the_configuration_defaults() -> None:
    table = _defaults_table()
    assert table, "no defaults table under Limits"
    config = Config()
    for key, cell in table.items():
        section, name = key[1:].split("] ")
        value = getattr(getattr(config, section), name)
        number = re.match(r"[\d.]+", cell)
        assert number is not None, (key, cell)
        assert float(number.group(0)) == value, (key, cell, value)
    assert {"[limits] " + f.name for f in attrs.fields(LimitsSection)} <= set(table)
    fixed = re.search(r"protocol violations before the connection is closed .*?: (\d+)\.",
                      _sections(2)["Limits"], re.DOTALL)
    assert fixed is not None and int(fixed.group(1)) == MAX_VIOLATIONS
    handshake = _sections(3)["Handshake"]
    assert f"within the handshake timeout ({LimitsSection().handshake_timeout:g} s" in handshake
    assert f"`E_ROLE` (`no hello within {LimitsSection().handshake_timeout:g}s`" in handshake
    assert f"`lost_check_interval`, {_LOST_CHECK_INTERVAL:g} s by default" in DOC


#: Codes only a client can get; the node checklist says what to do with every other one.
CLIENT_ONLY_CODES = {"E_INFLIGHT", "E_NO_CAPACITY", "E_QUEUE_FULL", "E_NOT_YOURS",
                     "E_DETACHED", "E_FORBIDDEN", "E_QUOTA", "E_RATE_LIMITED",
                     "E_BAD_DELAY", "E_BAD_TTL", "E_TOO_MANY_STAGES",
                     "E_TOO_MANY_BRANCHES", "E_BAD_STAGE",
                     "E_DUPLICATE_SEQ", "E_NO_SESSION", "E_TOO_BIG"}


def test_node_checklist_handles_every_error_a_node_can_get() -> None:
    checklist = _sections(3)["Writing a node: checklist"]
    missing = [code for code in ERROR_CODES
               if code not in CLIENT_ONLY_CODES and f"`{code}`" not in checklist]
    assert not missing

"""The link's copy of a message with a ref (schedd.sdk._conn.with_ref): what attrs.evolve
makes, without running the validators again."""

from __future__ import annotations

import attrs
from hypothesis import HealthCheck, given, settings

from schedd.protocol import Message, Result, encode
from schedd.sdk._conn import with_ref
from tests.protocol.test_codec import messages


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_with_ref_equals_evolve(message: Message) -> None:
    copy = with_ref(message, "j3.17")
    assert copy == attrs.evolve(message, ref="j3.17")
    assert type(copy) is type(message) and copy is not message
    assert encode(copy) == encode(attrs.evolve(message, ref="j3.17"))


def test_with_ref_leaves_the_original_alone() -> None:
    result = Result(job_id="j", attempt=2, ok=True, output={"n": 1}, ref="old")
    copy = with_ref(result, "new")
    assert (result.ref, copy.ref) == ("old", "new")
    assert copy.output is result.output
    assert attrs.asdict(copy) == {**attrs.asdict(result), "ref": "new"}

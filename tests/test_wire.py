"""The wire's messages across versions: a field added with a default leaves older frames
readable."""

from __future__ import annotations

import msgspec

from pypit import _wire


def test_a_call_without_a_session_id_decodes_as_one_with_none() -> None:
    """A Call framed before it carried session_id (nine fields: its tag and eight) decodes,
    with session_id None; a Call with one carries it across."""
    older = msgspec.msgpack.encode([1, 7, "predict", {"x": 1}, "corr", 5.0, False, None, 0])

    call = _wire.decode_to_worker(older)

    assert call == _wire.Call(7, "predict", {"x": 1}, "corr", 5.0)
    assert isinstance(call, _wire.Call)
    assert call.session_id is None
    newer = _wire.Call(8, "predict", None, "corr", session_id="user-42")
    assert _wire.decode_to_worker(_wire.encode(newer)[4:]) == newer

"""The embedded broker's KRaft cluster id never starts with "-": the storage tool would
read such an id as an option and refuse to format (one random id in 64 does)."""

from __future__ import annotations

import uuid

import pytest

from bridge import embedded


def test_cluster_id_draws_again_when_it_would_start_with_a_dash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 0xF8 encodes to "-" as the first URL-safe base64 character.
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" * 16)])
    monkeypatch.setattr(embedded.uuid, "uuid4", lambda: next(draws))
    cluster_id = embedded._cluster_id()
    assert cluster_id == "EBAQEBAQEBAQEBAQEBAQEA"
    assert len(cluster_id) == 22

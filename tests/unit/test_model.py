"""The API's times, as the controller writes and reads them."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from controller.model import api_timestamp, lease_time, parse_api_time

UTC = datetime.UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("2026-12-03T12:00:00Z", datetime.datetime(2026, 12, 3, 12, tzinfo=UTC), id="seconds"),
        pytest.param("2026-12-03T12:00:00.250000Z", datetime.datetime(2026, 12, 3, 12, 0, 0, 250000, tzinfo=UTC), id="micro"),
        pytest.param(
            "2026-12-03T13:00:00+01:00",
            datetime.datetime(2026, 12, 3, 13, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
            id="offset",
        ),
        pytest.param("2026-12-03T12:00:00", datetime.datetime(2026, 12, 3, 12, tzinfo=UTC), id="no-zone-is-utc"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
        pytest.param("yesterday", None, id="not-a-time"),
    ],
)
def test_parse_api_time(value: Any, expected: datetime.datetime | None) -> None:
    assert parse_api_time(value) == expected


def test_what_is_written_reads_back_as_now() -> None:
    before = datetime.datetime.now(UTC).replace(microsecond=0)
    written = parse_api_time(api_timestamp())
    precise = parse_api_time(lease_time())
    after = datetime.datetime.now(UTC)
    assert written is not None and precise is not None
    assert before <= written <= after and before <= precise <= after
    assert api_timestamp().endswith("Z") and lease_time().endswith("Z")

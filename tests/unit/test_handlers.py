"""kopf wiring: the restart delay after a watch error."""

from __future__ import annotations

import pytest

from controller import handlers


@pytest.mark.parametrize(
    ("runs", "delays"),
    [
        pytest.param([5.0, 5.0, 5.0], [1.0, 2.0, 4.0], id="failing-soon-doubles"),
        pytest.param([5.0] * 8, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0], id="up-to-the-last-delay"),
        pytest.param([5.0] * 7 + [600.0, 5.0], [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 1.0, 2.0], id="healthy-run-starts-over"),
        pytest.param([599.0, 5.0], [1.0, 2.0], id="just-short-of-healthy"),
    ],
)
def test_kopf_restart_delay_doubles_while_its_runs_fail_and_starts_over_after_a_healthy_run(
    runs: list[float], delays: list[float]
) -> None:
    backoff = handlers.RestartBackoff()
    assert [backoff.delay_after(ran_for) for ran_for in runs] == delays

"""sensor.alerts: listeners see every observation the alert stage receives (the metrics' way
in), suppressed repeats included, and one that fails cannot stop the alerts."""

from __future__ import annotations

from sensor.model import Observation
from tests.test_alerts import ident, stage


def test_listeners_see_every_observation_before_suppression() -> None:
    st, rec = stage()
    seen: list[Observation] = []
    st.add_listener(seen.append)
    st.add_listener(seen.append)  # twice: still one listener
    first, repeat = ident(), ident(ts=ident().ts + 1)
    assert st.observe(first) is not None
    assert st.observe(repeat) is None  # suppressed: no alert, still seen
    assert seen == [first, repeat]
    assert len(rec.alerts) == 1


def test_a_failing_listener_does_not_stop_the_alert() -> None:
    st, rec = stage()

    def broken(obs: Observation) -> None:
        raise RuntimeError("listener on fire")

    seen: list[Observation] = []
    st.add_listener(broken)
    st.add_listener(seen.append)
    alert = st.observe(ident())
    assert alert is not None and rec.alerts == [alert]
    assert len(seen) == 1


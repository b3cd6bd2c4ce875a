"""Traffic split: deterministic, sticky by session, monotone in the share, salted by canary version."""

from __future__ import annotations

import pytest

from cvplatform.errors import ConfigError
from cvplatform.serving.routing import (
    TrafficState,
    choose_variant,
    new_request_id,
    routing_key,
    should_shadow,
    unit_hash,
)


def test_unit_hash_is_stable_and_roughly_uniform():
    assert unit_hash("abc", "s") == unit_hash("abc", "s")
    assert unit_hash("abc", "s") != unit_hash("abc", "t")
    values = [unit_hash(f"key-{i}") for i in range(4000)]
    assert all(0.0 <= v < 1.0 for v in values)
    for lo in (0.0, 0.25, 0.5, 0.75):
        share = sum(lo <= v < lo + 0.25 for v in values) / len(values)
        assert 0.22 < share < 0.28


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_the_canary_gets_its_share(share):
    keys = [routing_key(new_request_id(), None) for _ in range(4000)]
    got = sum(choose_variant(k, share, "7") == "canary" for k in keys) / len(keys)
    assert abs(got - share) < 0.04


def test_edges_and_no_canary():
    assert choose_variant("r:x", 0.0, "2") == "champion"
    assert choose_variant("r:x", 1.0, "2") == "canary"
    assert choose_variant("r:x", 1.0, None) == "champion"


def test_routing_is_deterministic_and_sticky_by_session():
    assert routing_key("req-1", "sess-9") == routing_key("req-2", "sess-9")  # the session wins
    assert routing_key("req-1", None) != routing_key("req-2", None)
    for s in range(50):
        key = routing_key(new_request_id(), f"user-{s}")
        first = choose_variant(key, 0.3, "4")
        assert all(choose_variant(routing_key(new_request_id(), f"user-{s}"), 0.3, "4") == first for _ in range(5))


def test_raising_the_share_never_moves_a_key_back_to_the_champion():
    keys = [f"r:{i}" for i in range(2000)]
    on10 = {k for k in keys if choose_variant(k, 0.1, "3") == "canary"}
    on50 = {k for k in keys if choose_variant(k, 0.5, "3") == "canary"}
    assert on10 and on10 <= on50


def test_each_canary_version_samples_a_fresh_population():
    keys = [f"r:{i}" for i in range(2000)]
    a = {k for k in keys if choose_variant(k, 0.2, "3") == "canary"}
    b = {k for k in keys if choose_variant(k, 0.2, "4") == "canary"}
    assert a != b


def test_shadow_sampling():
    keys = [f"r:{i}" for i in range(4000)]
    assert not any(should_shadow(k, TrafficState(shadow=False)) for k in keys)
    assert all(should_shadow(k, TrafficState(shadow=True, shadow_share=1.0)) for k in keys)
    share = sum(should_shadow(k, TrafficState(shadow=True, shadow_share=0.25)) for k in keys) / len(keys)
    assert 0.21 < share < 0.29


def test_traffic_state_is_validated_and_updated_as_a_whole():
    s = TrafficState(canary_share=0.1)
    t = s.updated(canary_share=0.5, shadow=None)
    assert (s.canary_share, t.canary_share, t.shadow) == (0.1, 0.5, False)
    with pytest.raises(ConfigError, match="canary_share"):
        TrafficState(canary_share=1.5)
    with pytest.raises(ConfigError, match="shadow_share"):
        s.updated(shadow_share=-0.1)

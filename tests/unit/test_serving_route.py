"""The HTTPRoute edits: the model's rules only, weights as shares, state annotations, schema validity.
The shapes of shared routes and the property test are in test_route_shapes.py."""

from __future__ import annotations

import pytest

from include.serving import route as rt

S, C = "llm-v1", "llm-v2"


def _route():
    r = rt.new_route("llm", "llm-serving", backends={S: 100})
    # a second rule on another path with the same stable, and a third rule the rollout must not touch
    r["spec"]["rules"].append({"matches": [{"path": {"type": "PathPrefix", "value": "/health"}}],
                               "backendRefs": [{"name": S, "port": 8000, "weight": 1}]})
    r["spec"]["rules"].append({"matches": [{"path": {"type": "PathPrefix", "value": "/other"}}],
                               "backendRefs": [{"name": "unrelated", "port": 9000, "weight": 7}]})
    return r


def test_weight_edit_touches_only_named_backend_weights_in_every_rule():
    before = rt.attach(_route(), S, C)
    after = rt.set_weights(before, S, C, 25)
    changes = rt.weight_changes(before, after)
    assert sorted(changes) == sorted([(0, C, 0, 25), (0, S, 100, 75), (1, C, 0, 25), (1, S, 1, 75)])
    assert after["spec"]["rules"][2] == before["spec"]["rules"][2]
    assert rt.weights(after) == {S: 75, C: 25, "unrelated": 7}


def test_weight_check_refuses_other_changes():
    before = rt.attach(_route(), S, C)
    moved = rt.set_weights(before, S, C, 10)
    moved["spec"]["rules"][2]["backendRefs"][0]["port"] = 9001
    with pytest.raises(rt.RouteError, match="beyond backendRef weights"):
        rt.weight_changes(before, moved)
    with pytest.raises(rt.RouteError, match="backendRefs changed"):
        rt.weight_changes(_route(), before)


def test_set_weights_needs_the_canary_attached_and_a_valid_weight():
    with pytest.raises(rt.RouteError, match="rule 0 has no backendRef llm-v2: attach it first"):
        rt.set_weights(_route(), S, C, 10)
    with pytest.raises(rt.RouteError, match="canary weight=101: expected an integer with 0 <= value <= 100"):
        rt.set_weights(rt.attach(_route(), S, C), S, C, 101)


def test_attach_is_idempotent_and_detach_refuses_live_backend():
    once = rt.attach(_route(), S, C)
    assert rt.attach(once, S, C) == once
    with pytest.raises(rt.RouteError, match="weight"):
        rt.detach(once, S)
    promoted = rt.set_weights(once, S, C, 100)
    gone = rt.detach(promoted, S)
    assert rt.weights(gone) == {C: 100, "unrelated": 7}
    assert rt.read(rt.new_route("llm", "ns", backends={C: 100, S: 0}), "llm")["stable"] == C


def test_state_annotations_round_trip_and_in_progress():
    r = rt.with_state(_route(), {"phase": "Progressing", "step": 1, "weight": 25, "canary": "2", "stable": "1"})
    assert rt.in_progress(r) and rt.state(r)["step"] == 1
    done = rt.with_state(r, {**rt.state(r), "phase": "Promoted"})
    assert not rt.in_progress(done)
    with pytest.raises(rt.RouteError, match="phase"):
        rt.with_state(r, {"phase": "Bogus"})


def test_route_validates_against_the_httproute_crd():
    if rt.crds_dir() is None:
        pytest.skip("Gateway API CRDs not found beside the checkout (../shared/crds)")
    r = rt.with_state(rt.set_weights(rt.attach(_route(), S, C), S, C, 50), {"phase": "Progressing"})
    assert rt.validation_errors(r) == []
    bad = rt.set_weights(rt.attach(_route(), S, C), S, C, 50)
    bad["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    assert rt.validation_errors(bad)


def test_served_name_carries_the_version():
    assert rt.served_name("llmops-assistant", 7) == "llmops-assistant-v7"
    with pytest.raises(rt.RouteError):
        rt.served_name("m", "bad version!")

"""Label selectors: Kubernetes syntax, matching, and the protocol's LabelSelector both ways."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jumpstarter_protocol.jumpstarter.v1 import kubernetes_pb2

from jumpstarter_drivers.controller.selector import Operator, Requirement, Selector, SelectorError

LABELS = {"board": "rpi4", "arch": "arm64", "jumpstarter.dev/name": "lab-1"}


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("board=rpi4", True),
        ("board==rpi4", True),
        ("board!=rpi4", False),
        ("board!=imx8", True),
        ("missing!=x", True),  # as in Kubernetes: != holds for a missing label
        ("arch in (arm64,riscv64)", True),
        ("arch in (riscv64)", False),
        ("arch notin (arm64)", False),
        ("arch notin (x86)", True),
        ("board", True),
        ("missing", False),
        ("!broken", True),
        ("!board", False),
        ("jumpstarter.dev/name=lab-1", True),
        ("board=rpi4,  arch in ( arm64 , x86 ) , !broken", True),
        ("board=rpi4,arch=x86", False),
    ],
)
def test_matching(text: str, matches: bool) -> None:
    assert Selector.parse(text).matches(LABELS) is matches


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty selector"),
        ("board rpi4", "at character 7: expected =, ==, !=, in or notin after 'board'"),
        ("arch in arm64", "at character 9: expected '(' opening the value list of 'arch'"),
        ("arch in (arm64", "at the end: expected ',' or ')' closing the value list of 'arch'"),
        ("arch in ()", "at least one value for 'arch'"),
        ("=rpi4", "at character 1: expected a label key"),
        ("board=rpi4,", "at the end: expected a label key"),
        ("board=rpi4=x", "at character 11: expected ',' between requirements"),
        ("bo ard=x", "at character 4"),
        ("board=" + "x" * 64, "expected a label value for 'board'"),
        ("-board=x", "expected a label key"),
    ],
)
def test_malformed_selectors_say_where_and_what(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match="^") as caught:
        Selector.parse(text)
    assert message in str(caught.value)


def test_protocol_message_both_ways() -> None:
    selector = Selector.parse("board=rpi4,arch in (arm64,riscv64),!broken,kind")
    message = selector.to_proto()
    assert dict(message.match_labels) == {"board": "rpi4"}
    assert [(e.key, e.operator, list(e.values)) for e in message.match_expressions] == [
        ("arch", "In", ["arm64", "riscv64"]),
        ("broken", "DoesNotExist", []),
        ("kind", "Exists", []),
    ]
    assert Selector.from_proto(message) == selector


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ({"key": "a", "operator": "Equals", "values": ["x"]}, "operator 'Equals' of key 'a' is not one of In, NotIn"),
        ({"key": "a", "operator": "In", "values": []}, "In on 'a' needs values"),
        ({"key": "a", "operator": "Exists", "values": ["x"]}, "Exists on 'a' takes no values"),
        ({"key": "a b", "operator": "Exists"}, "'a b' is not a valid label key"),
        ({"key": "a", "operator": "In", "values": ["no way"]}, "value 'no way' of 'a' is not a valid label value"),
    ],
)
def test_bad_protocol_selectors_are_refused(expression: dict, message: str) -> None:
    proto = kubernetes_pb2.LabelSelector(match_expressions=[kubernetes_pb2.LabelSelectorRequirement(**expression)])
    with pytest.raises(SelectorError) as caught:
        Selector.from_proto(proto)
    assert message in str(caught.value)


names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
requirements = st.one_of(
    st.builds(lambda k, v: Requirement(k, Operator.IN, (v,)), names, names),
    st.builds(lambda k, v: Requirement(k, Operator.NOT_IN, (v,)), names, names),
    st.builds(lambda k, vs: Requirement(k, Operator.IN, tuple(vs)), names, st.lists(names, min_size=2, max_size=3)),
    st.builds(lambda k, vs: Requirement(k, Operator.NOT_IN, tuple(vs)), names, st.lists(names, min_size=2, max_size=3)),
    st.builds(lambda k: Requirement(k, Operator.EXISTS), names),
    st.builds(lambda k: Requirement(k, Operator.DOES_NOT_EXIST), names),
)
selectors = st.builds(lambda rs: Selector(tuple(rs)), st.lists(requirements, min_size=1, max_size=5))
labels = st.dictionaries(names, names, max_size=5)


@given(selectors, labels)
def test_text_and_protocol_round_trips_keep_the_meaning(selector: Selector, labels: dict[str, str]) -> None:
    assert Selector.parse(str(selector)) == selector
    assert Selector.from_proto(selector.to_proto()).matches(labels) == selector.matches(labels)


@given(st.text(max_size=30))
def test_any_text_parses_or_fails_with_a_selector_error(text: str) -> None:
    try:
        Selector.parse(text)
    except SelectorError as exc:
        assert str(exc)

"""buf.graph: parents/children/descendants/topological_order/heights/to_dot, cycles, unlink."""
import numpy as np
import pytest

import mmsb
from mmsb import errors as E


@pytest.fixture
def buf():
    b = mmsb.open(None)
    for n in ("a", "b", "c", "d", "e", "iso"):
        b.create_page(n, 3)
    b.link("c", "a", np.eye(3))
    b.link("c", "b", np.eye(3))
    b.derive("d", ["c"], lambda x: x + 1)
    b.derive("e", ["d", "a"], lambda x, y: x * y)
    yield b
    b.close()


def test_structure(buf):
    g = buf.graph
    assert g.parents("c") == ["a", "b"] and g.parents(buf["e"]) == ["d", "a"] and g.parents("a") == []
    assert g.children("a") == ["c", "e"] and g.children("e") == [] and g.children(buf["d"]) == ["e"]
    assert set(g.descendants("a")) == {"c", "d", "e"} and g.descendants("iso") == []
    assert set(g.descendants("b")) == {"c", "d", "e"}
    order = g.topological_order()
    assert sorted(order) == sorted(buf)
    pos = {n: i for i, n in enumerate(order)}
    for r in g.rules():
        for s in r.srcs:
            assert pos[s] < pos[r.dst]
    assert g.heights() == {"a": 0, "b": 0, "iso": 0, "c": 1, "d": 2, "e": 3}
    dot = g.to_dot()
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    for edge in ('"a" -> "c"', '"b" -> "c"', '"c" -> "d"', '"d" -> "e"', '"a" -> "e"'):
        assert edge in dot
    assert '"iso"' in dot
    for fn in (g.parents, g.children, g.descendants):
        with pytest.raises(E.PageNotFoundError):
            fn("nope")


@pytest.mark.parametrize("how", ["link", "derive", "closure", "self"])
def test_cycle_detection_names_cycle_and_changes_nothing(buf, how):
    before = (buf.epoch, buf.graph.to_dot(), len(buf.graph.rules()), list(buf.log.query()))
    with pytest.raises(E.CycleError) as info:
        if how == "link":
            buf.link("a", "e", np.eye(3))
        elif how == "derive":
            buf.derive("b", ["d"], lambda x: x)
        elif how == "closure":
            buf.create_page("m", 3, semiring="min_plus")
            buf.derive("m", ["a"], lambda x: x)
            buf.epoch
            before = (buf.epoch, buf.graph.to_dot(), len(buf.graph.rules()), list(buf.log.query()))
            buf.link("a", "m", np.eye(3))
        else:
            buf.derive("iso", ["iso"], lambda x: x)
    err = info.value
    assert isinstance(err, ValueError) and err.cycle and err.cycle[0] == err.cycle[-1]
    for n in err.cycle:
        assert n in str(err)
    for u, v in zip(err.cycle, err.cycle[1:]):      # every step of the cycle is an edge (or the new one)
        assert v in buf.graph.children(u) or (u, v) in {("e", "a"), ("d", "b"), ("m", "a"), ("iso", "iso")}
    after = (buf.epoch, buf.graph.to_dot(), len(buf.graph.rules()), list(buf.log.query()))
    assert before[:3] == after[:3] and len(before[3]) == len(after[3])
    buf.write("a", 1.0)                              # still works
    np.testing.assert_array_equal(buf["c"].read(), [1.0, 1.0, 1.0])


def test_one_kind_of_rule_per_page(buf):
    e = buf.epoch
    with pytest.raises(E.InvalidDeltaError, match="'d'"):
        buf.link("d", "a", np.eye(3))
    with pytest.raises(E.InvalidDeltaError, match="'c'"):
        buf.derive("c", ["iso"], lambda x: x)
    assert buf.epoch == e


def test_unlink_updates_graph(buf):
    buf.unlink("c", "a")
    assert buf.graph.parents("c") == ["b"] and buf.graph.children("a") == ["e"]
    assert buf.graph.heights()["c"] == 1
    buf.unlink("e")
    assert buf.graph.children("d") == [] and '"d" -> "e"' not in buf.graph.to_dot()
    with pytest.raises(E.InvalidDeltaError):
        buf.unlink("iso")
    with pytest.raises(E.PageNotFoundError):
        buf.unlink("nope")


def test_graph_view_at_past_epoch(buf):
    e = buf.epoch
    buf.unlink("e")
    past = buf.at(e)
    assert past.graph.parents("e") == ["d", "a"] and buf.graph.parents("e") == []

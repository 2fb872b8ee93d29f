"""The dependency DAG: pages are nodes, rules are edges (src -> dst) with a kind."""
from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Optional

from mmsb.errors import CycleError, PageNotFoundError
from mmsb.rules import Rule


def _name(p: Any) -> str:
    return p if isinstance(p, str) else p.name


class Graph:
    """Pages and the rules between them. Methods take a page or a name and return names.

    ``nodes``: a dict keyed by page name that the owner keeps (the buffer passes its page mapping, so a page costs
    no second dict entry); the owner inserts a name before :meth:`add_node` and removes it before
    :meth:`remove_node`. Without it the graph keeps its own node set.
    """

    def __init__(self, nodes: Optional[dict] = None) -> None:
        self._shared = nodes is not None
        self._nodes: dict[str, Any] = nodes if nodes is not None else {}
        self._rules: dict[int, Rule] = {}
        self._into: dict[str, list[int]] = {}
        self._out: dict[str, list[int]] = {}
        self._next_id = 1
        self._order_cache: Optional[list[str]] = None
        self._pos_cache: Optional[dict[str, int]] = None
        self._plans: dict[tuple, list] = {}
        #: bumped whenever the rules or pages change: caches built from plans compare it
        self.generation = 0

    # -- structure -----------------------------------------------------------------------------------------
    def add_node(self, name: str) -> None:
        if not self._shared:
            self._nodes[name] = None
        if self._order_cache is not None:          # a node without rules can go last
            self._order_cache.append(name)
            if self._pos_cache is not None:
                self._pos_cache[name] = len(self._order_cache) - 1

    def remove_node(self, name: str) -> None:
        if not self._shared:
            self._nodes.pop(name, None)
        self._into.pop(name, None)
        self._out.pop(name, None)
        self._invalidate()

    def _invalidate(self) -> None:
        self._order_cache = None
        self._pos_cache = None
        self._plans.clear()
        self.generation += 1

    def _check(self, p: Any) -> str:
        n = _name(p)
        if n not in self._nodes:
            raise PageNotFoundError(f"no page named {n!r}")
        return n

    def next_rule_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def add_rule(self, rule: Rule) -> None:
        """Add ``rule``; raise :class:`CycleError` naming the cycle (and change nothing) if it would close one."""
        for s in rule.srcs:
            path = self._path(rule.dst, s)
            if path is not None or s == rule.dst:
                cycle = (path or [s]) + [rule.dst] if s != rule.dst else [s, s]
                raise CycleError(f"rule {rule.kind} {rule.dst!r} <- {s!r} would close the cycle "
                                 f"{' -> '.join(cycle)}", cycle)
        self._rules[rule.id] = rule
        self._into.setdefault(rule.dst, []).append(rule.id)
        for s in dict.fromkeys(rule.srcs):
            self._out.setdefault(s, []).append(rule.id)
        self._next_id = max(self._next_id, rule.id + 1)
        self._invalidate()

    def remove_rule(self, rule_id: int) -> Rule:
        rule = self._rules.pop(rule_id)
        ids = self._into.get(rule.dst, [])
        ids.remove(rule_id)
        if not ids:
            self._into.pop(rule.dst, None)
        for s in dict.fromkeys(rule.srcs):
            out = self._out.get(s, [])
            if rule_id in out:
                out.remove(rule_id)
            if not out:
                self._out.pop(s, None)
        self._invalidate()
        return rule

    def _path(self, start: str, goal: str) -> Optional[list[str]]:
        """A path start -> ... -> goal along existing edges, or None."""
        prev = {start: None}
        queue = deque([start])
        while queue:
            u = queue.popleft()
            if u == goal:
                path = []
                while u is not None:
                    path.append(u)
                    u = prev[u]
                return path[::-1]
            for v in self._children(u):
                if v not in prev:
                    prev[v] = u
                    queue.append(v)
        return None

    # -- queries -------------------------------------------------------------------------------------------
    def rules_into(self, p: Any) -> list[Rule]:
        return [self._rules[i] for i in self._into.get(p if type(p) is str else p.name, ())]

    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    def has_rules_from(self, p: Any) -> bool:
        """Whether any rule reads page ``p``."""
        return bool(self._out.get(p if type(p) is str else p.name))

    def rules_from(self, p: Any) -> list[Rule]:
        return [self._rules[i] for i in self._out.get(_name(p), [])]

    def is_derived(self, p: Any) -> bool:
        return bool(self._into.get(p if type(p) is str else p.name))

    def _children(self, n: str) -> list[str]:
        return list(dict.fromkeys(self._rules[i].dst for i in self._out.get(n, [])))

    def parents(self, p: Any) -> list[str]:
        """Pages that ``p`` is computed from."""
        n = self._check(p)
        out: dict[str, None] = {}
        for r in self.rules_into(n):
            for s in r.srcs:
                out[s] = None
        return list(out)

    def children(self, p: Any) -> list[str]:
        """Pages computed from ``p``."""
        return self._children(self._check(p))

    @property
    def rule_count(self) -> int:
        """How many rules the graph holds."""
        return len(self._rules)

    def descendants(self, p: Any) -> list[str]:
        """Every page downstream of ``p``, in breadth-first order."""
        start = self._check(p)
        seen, order, queue = {start}, [], deque([start])
        while queue:
            for v in self._children(queue.popleft()):
                if v not in seen:
                    seen.add(v)
                    order.append(v)
                    queue.append(v)
        return order

    def topological_order(self) -> list[str]:
        """All pages, every page after the pages it depends on (creation order breaks ties)."""
        if self._order_cache is None:
            indeg = {n: 0 for n in self._nodes}
            kids: dict[str, list[str]] = {n: [] for n in self._nodes}
            for n in self._nodes:
                for par in {s for r in self.rules_into(n) for s in r.srcs}:
                    indeg[n] += 1
                    kids[par].append(n)
            queue = deque(n for n in self._nodes if indeg[n] == 0)
            order = []
            while queue:
                u = queue.popleft()
                order.append(u)
                for v in kids[u]:
                    indeg[v] -= 1
                    if indeg[v] == 0:
                        queue.append(v)
            self._order_cache = order
        return list(self._order_cache)

    def in_order(self, names: Iterable[str]) -> list[str]:
        """``names`` sorted in topological order."""
        if self._pos_cache is None:
            self._pos_cache = {n: i for i, n in enumerate(self.topological_order())}
        pos = self._pos_cache
        return sorted(names, key=pos.__getitem__)

    def plan(self, starts: tuple, also: tuple = ()) -> list[tuple[str, list[Rule]]]:
        """The pages downstream of the pages ``starts`` and the pages ``also`` themselves, each with the rules into
        it, in topological order, pages without rules left out (what a wave visits); kept until the rules change."""
        key = (starts, also)
        got = self._plans.get(key)
        if got is None:
            down: set = set(also)
            for name in starts + also:
                down.update(self.descendants(name))
            got = [(n, rules) for n in self.in_order(down) if (rules := self.rules_into(n))]
            if len(self._plans) >= 256:
                self._plans.clear()
            self._plans[key] = got
        return got

    def heights(self) -> dict[str, int]:
        """Wave height of each page: 0 for pages without rules, else 1 + the max height of its parents."""
        h: dict[str, int] = {}
        for n in self.topological_order():
            pars = {s for r in self.rules_into(n) for s in r.srcs}
            h[n] = 1 + max((h[s] for s in pars), default=-1) if pars else 0
        return h

    def to_dot(self) -> str:
        """The graph as Graphviz text."""
        lines = ["digraph mmsb {", "  rankdir=LR;"]
        for n in self._nodes:
            shape = "box" if self.is_derived(n) else "ellipse"
            lines.append(f'  "{n}" [shape={shape}];')
        for r in self._rules.values():
            label = r.kind + (f" {r.semiring.name}" if r.semiring is not None else "")
            if r.kind == "derive" and r.fn_name:
                label += f" {r.fn_name}"
            for s in r.srcs:
                lines.append(f'  "{s}" -> "{r.dst}" [label="{label}"];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        """A plain-text listing of the rules in topological order."""
        out = []
        for n in self.topological_order():
            for r in self.rules_into(n):
                sr = f" [{r.semiring.name}]" if r.semiring is not None else ""
                fn = f" fn={r.fn_name}" if r.fn_name else ""
                out.append(f"{n} <- {r.kind}({', '.join(r.srcs)}){sr}{fn}")
        return "\n".join(out)

    def __contains__(self, p: Any) -> bool:
        return _name(p) in self._nodes

    def names(self) -> Iterable[str]:
        return list(self._nodes)

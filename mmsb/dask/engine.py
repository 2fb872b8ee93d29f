"""The driver side: :class:`DistributedEngine`, a drop-in for :class:`mmsb.propagate.Engine` on a Dask cluster.

The driver keeps the authoritative pages, log and epochs. Derived pages are *placed* on workers (connected
components of the rule graph, biggest first onto the least-loaded worker; a page's metadata ``{"worker": addr}``
or :meth:`DistributedEngine.place` overrides it). Each worker keeps resident copies of the pages it computes and
of their inputs; a page is shipped in full once, afterwards only sparse ``(positions, values)`` updates travel.

A wave becomes one task per worker per *superstep*: pages on one worker run in topological order inside one task;
a dependency that crosses workers starts a new superstep whose task takes the earlier tasks' results (sparse
deltas, moved worker to worker by Dask) as arguments. All tasks of a wave are submitted at once and gathered once;
the changes come back as ``(idx, old, new)`` and are applied to the driver's pages and returned as Changes.

Failure: any error during a wave marks every worker copy stale (they are re-shipped from the driver's copies);
a lost worker, a restarted one, a cancelled task or a store that does not match makes the engine refresh the
worker list, re-place the pages and re-run the wave (``max_retries`` times). A rollback of the commit (the
buffer's UndoLog) also marks the copies stale.
"""
from __future__ import annotations

import itertools
import time
import uuid
import weakref
from typing import Any, Optional

import numpy as np

from mmsb.propagate import Change, UndoLog, WaveStats, changed_positions

from mmsb.dask import _worker
from mmsb.dask._errors import ClusterError


class _WorkerState:
    """What the driver knows a worker holds for this buffer."""

    def __init__(self) -> None:
        self.token: Optional[str] = None                   # None: nothing trusted there, init on next task
        self.pages: dict[str, int] = {}                     # name -> serial of the Page object shipped
        self.rules: set[int] = set()
        self.backlog: dict[str, list] = {}                  # name -> [(idx, vals)] not yet sent

    def reset(self) -> None:
        self.token = None
        self.pages.clear()
        self.rules.clear()
        self.backlog.clear()


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, (_worker.StaleState, OSError, TimeoutError, ConnectionError)):
        return True
    mod = type(exc).__module__ or ""
    name = type(exc).__name__
    return mod.startswith(("distributed", "tornado", "asyncio", "concurrent")) or name in (
        "CancelledError", "FutureCancelledError", "KilledWorker", "CommClosedError")


class DistributedEngine:
    """Runs propagation waves as Dask tasks on the workers that own the affected pages (see the module doc)."""

    max_retries = 3

    def __init__(self, buf: Any, client: Any, own_client: bool = False):
        self._buf = buf
        self.client = client
        self._own_client = own_client
        self.array = buf._array_of
        self.shape = lambda n: buf._pages[n].shape
        self.semiring = lambda n: buf._pages[n].semiring
        self.nthreads = 0
        self.stats = WaveStats()
        self.id = uuid.uuid4().hex
        self._overrides: dict[str, str] = {}
        self._owner: dict[str, str] = {}
        self._held: dict[str, set] = {}
        self._sig: Any = None
        self._workers: dict[str, _WorkerState] = {}
        self._alive: list[str] = []
        self._serials: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._serial = itertools.count(1)
        self._wave_no = 0
        self._epoch = buf._epoch
        self._counters = {"tasks": 0, "supersteps": 0, "retries": 0, "invalidations": 0, "full_ships": 0,
                          "full_bytes": 0, "delta_bytes": 0, "result_bytes": 0, "cluster_seconds": 0.0, "worker_seconds": 0.0}
        self._closed = False
        self._register_plugin()
        self._refresh_workers()
        from mmsb.dask.sharding import ShardManager

        self.shards = ShardManager(self)          # pages created with shards= (see mmsb.dask.sharding)

    @property
    def graph(self) -> Any:
        return self._buf._graph

    # -- cluster membership -----------------------------------------------------------------------------------
    def _register_plugin(self) -> None:
        try:
            self.client.register_plugin(_worker.PageStorePlugin(), name=_worker.PLUGIN_NAME)
        except Exception as exc:  # pragma: no cover - an old distributed: fall back to worker attributes
            if not _retryable(exc):
                raise

    def _refresh_workers(self) -> None:
        try:
            info = self.client.scheduler_info(n_workers=-1)
        except TypeError:  # pragma: no cover - older distributed
            info = self.client.scheduler_info()
        except Exception as exc:
            raise ClusterError(f"cannot reach the Dask scheduler: {exc}") from exc
        alive = sorted(info.get("workers", {}))
        if not alive:
            try:
                self.client.wait_for_workers(1, timeout=30)
                alive = sorted(self.client.scheduler_info().get("workers", {}))
            except Exception as exc:
                raise ClusterError("the Dask cluster has no workers") from exc
        for w in list(self._workers):
            if w not in alive:
                del self._workers[w]
        if alive != self._alive:
            self._sig = None
        self._alive = alive

    # -- placement --------------------------------------------------------------------------------------------
    def place(self, page: Any, worker: Optional[str]) -> None:
        """Pin ``page`` (a derived page, or any page of a component) to ``worker``; None removes the pin."""
        name = page if isinstance(page, str) else page.name
        if worker is None:
            self._overrides.pop(name, None)
        else:
            self._overrides[name] = str(worker)
        self._sig = None

    def placement(self) -> dict[str, str]:
        """``{derived page: worker address}`` as of the last wave (computed now if never)."""
        self._ensure_placement()
        return dict(self._owner)

    def _pin_of(self, name: str) -> Optional[str]:
        w = self._overrides.get(name)
        if w is None:
            meta = self._buf._pages[name].metadata or {}
            w = meta.get("worker")
        return w if w in self._alive else None

    def _page_serial(self, name: str) -> int:
        page = self._buf._pages[name]
        s = self._serials.get(page)
        if s is None:
            s = next(self._serial)
            self._serials[page] = s
        return s

    def _ensure_placement(self) -> None:
        g = self.graph
        sharded = self.shards.infos
        rules = [r for r in g.rules() if r.dst not in sharded]   # sharded pages: mmsb.dask.sharding
        sig = (tuple(sorted(r.id for r in rules)), tuple(self._page_serial(n) for n in self._buf._pages),
               tuple(sorted(self._overrides.items())), tuple(self._alive))
        if sig == self._sig:
            return
        parent: dict[str, str] = {}

        def find(a: str) -> str:
            while parent.setdefault(a, a) != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for r in rules:
            for s in r.srcs:
                ra, rb = find(r.dst), find(s)
                if ra != rb:
                    parent[ra] = rb
        comps: dict[str, list[str]] = {}
        for n in g.topological_order():
            if n in parent:
                comps.setdefault(find(n), []).append(n)
        weight = {}
        for root, names in comps.items():
            w = sum(self._buf._pages[n].nbytes for n in names)
            w += sum(r.matrix.nnz * 16 for n in names for r in g.rules_into(n) if r.matrix is not None)
            weight[root] = w
        load = {w: 0 for w in self._alive}
        comp_worker: dict[str, str] = {}
        for root, names in comps.items():          # pinned components first
            pin = next((p for p in map(self._pin_of, names) if p), None)
            if pin:
                comp_worker[root] = pin
                load[pin] += weight[root]
        for root in sorted(comps, key=lambda r: (-weight[r], comps[r][0])):
            if root not in comp_worker:
                w = min(self._alive, key=lambda a: (load[a], self._alive.index(a)))
                comp_worker[root] = w
                load[w] += weight[root]
        owner: dict[str, str] = {}
        held: dict[str, set] = {w: set() for w in self._alive}
        for root, names in comps.items():
            for n in names:
                if g.is_derived(n):
                    w = self._pin_of(n) or comp_worker[root]
                    owner[n] = w
                    held[w].add(n)
                    for r in g.rules_into(n):
                        held[w].update(r.srcs)
        self._owner, self._held, self._sig = owner, held, sig

    # -- the wave ---------------------------------------------------------------------------------------------
    def point_wave(self, name: str, ch: Change, undo: UndoLog) -> dict[str, Change]:
        """The wave of a change of a few values of one page: :meth:`wave`."""
        return self.wave({name: ch}, undo)

    def wave(self, changes: dict[str, Change], undo: UndoLog, force: Optional[set] = None) -> dict[str, Change]:
        """Propagate ``changes`` (and full recomputes of ``force``) on the cluster; same contract as Engine.wave."""
        if self._closed:
            raise ClusterError("the cluster connection of this buffer is closed")
        if self.shards.active(changes, force):      # sharded pages: supersteps on the workers that own them
            changes, force = self.shards.wave(changes, undo, force)
        t0 = time.perf_counter()
        force = set(force or ())
        g = self.graph
        affected = set(force)
        for name in list(changes) + list(force):
            affected.update(g.descendants(name))
        order = [n for n in g.topological_order() if n in affected and g.rules_into(n)]
        undo.action(self._invalidate_all)           # a rollback of this commit: worker copies are stale
        if not order:
            self._note_updates(changes, None)
            self.stats.waves += 1
            self.stats.seconds += time.perf_counter() - t0
            return {}
        last: Optional[BaseException] = None
        for attempt in range(self.max_retries + 1):
            try:
                self._ensure_placement()
                if attempt == 0:
                    self._note_updates(changes, None)
                results = self._run(order, changes, force)
                produced = self._apply(order, results, undo)
                break
            except BaseException as exc:
                self._invalidate_all()
                if not _retryable(exc) or isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                last = exc
                self._counters["retries"] += 1
                self._refresh_workers()
        else:
            raise ClusterError(f"propagation wave failed on the cluster after {self.max_retries + 1} attempts: "
                               f"{type(last).__name__}: {last}") from last
        self.stats.waves += 1
        self.stats.seconds += time.perf_counter() - t0
        return produced

    def _note_updates(self, changes: dict[str, Change], skip: Optional[dict]) -> None:
        """Queue the new values at changed positions for every worker holding a copy of the page."""
        cache: dict[str, np.ndarray] = {}
        for name, ch in changes.items():
            for w, st in self._workers.items():
                if name in st.pages and (skip is None or name not in skip.get(w, ())):
                    if name not in cache:
                        cache[name] = self.array(name)[ch.idx].copy()
                    st.backlog.setdefault(name, []).append((ch.idx, cache[name]))

    def _sync_for(self, w: str, scatter: dict) -> tuple[bool, dict]:
        st = self._workers.setdefault(w, _WorkerState())
        init = st.token is None
        if init:
            st.reset()
            st.token = uuid.uuid4().hex
        held = self._held.get(w, set())
        g = self.graph
        sync: dict = {}
        drop = [n for n in st.pages if n not in held or n not in self._buf._pages
                or st.pages[n] != self._page_serial(n)]
        for n in drop:
            del st.pages[n]
            st.backlog.pop(n, None)
        if drop and not init:
            sync["drop"] = drop
        want_rules = {r.id: r for n in held if n in self._owner and self._owner[n] == w for r in g.rules_into(n)}
        gone = [rid for rid in st.rules if rid not in want_rules]
        if gone:
            sync["rules_removed"] = gone
            st.rules.difference_update(gone)
        new_rules = [r for rid, r in want_rules.items() if rid not in st.rules]
        pages = {}
        for n in held:
            if n not in st.pages:
                arr = self.array(n)
                pages[n] = (self._buf._pages[n].shape, arr.copy())
                st.pages[n] = self._page_serial(n)
                st.backlog.pop(n, None)
                self._counters["full_ships"] += 1
                self._counters["full_bytes"] += arr.nbytes
        updates = []
        for n, items in st.backlog.items():
            if len(items) == 1:
                idx, vals = items[0]
            else:
                idx = np.concatenate([i for i, _ in items])
                vals = np.concatenate([v for _, v in items])
                # last occurrence wins: reverse, unique keeps first
                ridx = idx[::-1]
                u, first = np.unique(ridx, return_index=True)
                idx, vals = u, vals[::-1][first]
            updates.append((n, idx, vals))
            self._counters["delta_bytes"] += idx.nbytes + vals.nbytes
        st.backlog.clear()
        if updates:
            sync["updates"] = updates
        if new_rules:
            specs = [_worker.rule_spec(r) for r in new_rules]
            st.rules.update(r.id for r in new_rules)
            scatter[(w, "rules")] = specs
        if pages:
            scatter[(w, "pages")] = pages
        return init, sync

    def _run(self, order: list[str], changes: dict[str, Change], force: set) -> list[tuple[str, int, dict]]:
        g = self.graph
        owner = self._owner
        step: dict[str, int] = {}
        for n in order:
            w = owner.get(n)
            if w is None:
                raise ClusterError(f"page {n!r} has no worker")
            k = 0
            for r in g.rules_into(n):
                for s in r.srcs:
                    if s in step:
                        k = max(k, step[s] + (owner[s] != w))
            step[n] = k
        tasks: dict[tuple[int, str], list[str]] = {}
        for n in order:
            tasks.setdefault((step[n], owner[n]), []).append(n)
        workers = sorted({w for _, w in tasks})
        self._wave_no += 1
        wave_id = f"{self.id[:12]}-{self._wave_no}"
        # bring each busy worker's store up to date; big payloads are scattered straight to their worker
        scatter: dict = {}
        syncs = {w: self._sync_for(w, scatter) for w in workers}
        scattered = {}
        for (w, what), payload in scatter.items():
            [fut] = self.client.scatter([payload], workers=[w], hash=False)
            scattered[(w, what)] = fut
        futs: dict[tuple[int, str], Any] = {}
        prev: dict[str, Any] = {}
        given: dict[str, set] = {w: set() for w in workers}
        deliver: dict[str, set] = {w: set() for w in workers}   # producer tasks whose results reached w
        client = self.client
        for key in sorted(tasks, key=lambda kw: (kw[0], workers.index(kw[1]))):
            k, w = key
            st = self._workers[w]
            first = w not in prev
            init, sync = syncs[w] if first else (False, None)
            if first:
                sync = dict(sync)
                if (w, "pages") in scattered:
                    sync["pages"] = scattered[(w, "pages")]
                if (w, "rules") in scattered:
                    sync["rules_added"] = scattered[(w, "rules")]
            roots = {n: (c.idx, c.old) for n, c in changes.items() if n in self._held.get(w, ())} if first else None
            deps = []
            for okey, f in futs.items():
                if okey[1] != w and okey not in given[w] and set(tasks[okey]) & self._held.get(w, set()):
                    deps.append(f)
                    given[w].add(okey)
                    deliver[w].add(okey)
            fkey = f"mmsb-wave-{wave_id}-{k}-{workers.index(w)}"
            futs[key] = client.submit(_worker.run_step, self.id, st.token, wave_id, k, init if first else False,
                                      sync, roots, tasks[key], [n for n in tasks[key] if n in force], deps,
                                      prev.get(w), key=fkey, workers=[w], allow_other_workers=True, pure=False,
                                      retries=0)
            prev[w] = futs[key]
        self._counters["tasks"] += len(futs)
        self._counters["supersteps"] += len({k for k, _ in tasks})
        t0 = time.perf_counter()
        keys = list(futs)
        try:
            values = client.gather([futs[k] for k in keys])
        finally:
            self._counters["cluster_seconds"] += time.perf_counter() - t0
            for f in list(futs.values()) + list(scattered.values()):
                f.release()
        out = []
        for key, res in zip(keys, values):
            out.append((key[1], key[0], res))
            for st_name, v in res["stats"].items():
                if st_name == "seconds":
                    self._counters["worker_seconds"] += v
                else:
                    setattr(self.stats, st_name, getattr(self.stats, st_name) + v)
        self._deliver = {w: {kw for kw in deliver[w]} for w in workers}
        self._task_pages = {key: tasks[key] for key in tasks}
        return out

    def _apply(self, order: list[str], results: list, undo: UndoLog) -> dict[str, Change]:
        """Check and apply the workers' changes to the driver's pages; queue them for the other holders."""
        got: dict[str, tuple] = {}
        producer: dict[str, tuple] = {}
        for w, k, res in results:
            for name, triple in res["out"].items():
                got[name] = triple
                producer[name] = (k, w)
        for name, (idx, old, new) in got.items():   # a mismatch means a worker copy was out of sync
            self._counters["result_bytes"] += idx.nbytes + old.nbytes + new.nbytes
            cur = self.array(name)[idx]
            if changed_positions(cur, old.astype(cur.dtype, copy=False)).any():
                raise _worker.StaleState(f"worker copy of page {name!r} was out of sync; re-shipping")
        produced: dict[str, Change] = {}
        for name in order:
            if name not in got:
                continue
            idx, old, new = got[name]
            arr = self.array(name)
            undo.record(lambda n=name: self.array(n), idx, old)
            arr[idx] = new
            produced[name] = Change(idx, old)
        # other workers holding a produced page and not handed its task result get it lazily, as a backlog
        skip = {}
        for w, st in self._workers.items():
            have = self._deliver.get(w, set())
            skip[w] = {n for n, pk in producer.items() if pk in have or self._owner.get(n) == w}
        self._note_updates(produced, skip)
        return produced

    def _invalidate_all(self) -> None:
        for st in self._workers.values():
            st.reset()
        self._counters["invalidations"] += 1

    # -- buffer hooks -----------------------------------------------------------------------------------------
    def after_commit(self, epoch: int) -> None:
        self._epoch = epoch
        self.shards.after_commit(epoch)

    def stats_dict(self) -> dict:
        return self.cluster_stats()

    def cluster_stats(self) -> dict:
        out = dict(self._counters)
        out.update(workers=list(self._alive), placement=dict(self._owner), epoch=self._epoch,
                   dashboard=getattr(self.client, "dashboard_link", None), shards=self.shards.stats())
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.shards.close()
        try:
            if getattr(self.client, "status", "") == "running":
                self.client.run(_worker.drop_buffer, self.id)
        except Exception:
            pass
        if self._own_client:
            try:
                self.client.close()
            except Exception:
                pass


class ClusterHandle:
    """What ``Buffer._cluster`` holds: commit hook, stats, close; the engine itself is ``buf._engine``."""

    def __init__(self, engine: DistributedEngine):
        self.engine = engine

    @property
    def client(self) -> Any:
        return self.engine.client

    def after_commit(self, epoch: int) -> None:
        self.engine.after_commit(epoch)

    def stats(self) -> dict:
        return self.engine.cluster_stats()

    def place(self, page: Any, worker: Optional[str]) -> None:
        self.engine.place(page, worker)

    def placement(self) -> dict:
        return self.engine.placement()

    def create_sharded(self, op: Any, c: Any) -> Any:
        """Create the page of a ``page_created`` / ``matrix_created`` record with ``metadata["shards"]``: blocks
        on the workers, no storage on the driver (``Buffer._apply_schema`` dispatches here)."""
        return self.engine.shards.create(op, c)

    def close(self) -> None:
        self.engine.close()

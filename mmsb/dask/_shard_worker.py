"""Worker side of sharded pages: one :class:`ShardActor` per worker and buffer (a Dask actor) owns the blocks.

It holds, for the blocks the driver placed on its worker:

- array blocks (``blocks[(page, b)]``, numpy, the page dtype) and matrix row blocks (``mblocks[(page, b)]``: the
  rows ``[lo, hi)`` as a :class:`mmsb.csr.CSR` with global column indices, free slots under a selective ⊕ as on
  the driver);
- for each rule into a sharded page and each of its target blocks here, a :class:`RuleBlock`: the rule's rows in
  a local numbering (columns inside the block first, then *ghost* columns, the values of other blocks that the
  rows read), the ghost values, and for a closure the square transposed matrix the compiled closure kernel runs
  on (``mmsb._kernels.spmv.closure``, as :meth:`mmsb.propagate.Engine._run_closure` calls it);
- subscriptions: for each of its blocks, which rule blocks (here or on other workers) read which positions.

A wave runs in *supersteps* the driver starts (:meth:`ShardActor.step`). A step applies the user deltas the driver
routed here, applies the messages other workers sent (ghost updates), computes the blocks of the pages of the
current level that have work, and sends the entries that changed at cut edges -- and only those -- straight to
the workers whose blocks read them (:meth:`ShardActor.deliver` on their actors, worker to worker over the actors'
own sockets, :mod:`mmsb.dask._rpc`; the scheduler and the driver are not on that path). Messages between blocks of one worker are applied in the same step. The
driver only sees per-step counts (messages sent per worker and page, messages applied, pages with work left), so
what it receives follows the number of workers, not the number of changed entries.

Only this module (and what it imports from mmsb) must be importable on the workers.
"""
from __future__ import annotations

import os
import pickle
import threading
import time
from typing import Any, Optional

import numpy as np

from mmsb import _kernels
from mmsb.dask import _rpc
from mmsb import csr as _csr
from mmsb._sets import unique, unique_first
from mmsb.csr import CSR
from mmsb.devices import merge_into
from mmsb.errors import MMSBError
from mmsb.propagate import changed_positions
from mmsb.semiring import _kview

#: how long a step waits for the messages the driver says were sent to it (a peer that died never sends them)
WAIT_S = float(os.environ.get("MMSB_SHARD_WAIT_S", "120"))


class ShardStateError(MMSBError):
    """A worker does not hold what the driver expects (restarted, or a peer's messages never came)."""

    retryable = True


def bounds_for(n: int, k: int) -> np.ndarray:
    """The ``k + 1`` boundaries of ``k`` contiguous blocks of ``n`` positions (sizes differ by at most one)."""
    return (np.arange(k + 1, dtype=np.int64) * n) // k


class PageInfo:
    """What every actor knows of a sharded page: kind, shape, dtype, semiring, block boundaries and owners."""

    __slots__ = ("name", "kind", "shape", "dtype", "sr", "zero", "bounds", "owners", "nrows", "ncols")

    def __init__(self, d: dict):
        from mmsb.dask._worker import semiring_from_spec

        self.name = d["name"]
        self.kind = d["kind"]
        self.shape = tuple(d["shape"])
        self.dtype = np.dtype(d["dtype"])
        self.sr = semiring_from_spec(d["semiring"])
        self.zero = self.sr.zero_for(self.dtype)
        self.bounds = np.asarray(d["bounds"], dtype=np.int64)
        self.owners = list(d["owners"])
        self.nrows = self.shape[0] if self.kind == "matrix" else int(np.prod(self.shape))
        self.ncols = self.shape[1] if self.kind == "matrix" else 1

    def block_of(self, pos: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bounds, pos, "right") - 1


class Sub:
    """A subscription to one block: rule block ``(rid, d)`` on worker ``addr`` reads positions ``pos`` (local to
    the block, sorted; None: all of them, for an aligned closure source or derive input, ``kind == "src"``)."""

    __slots__ = ("addr", "rid", "d", "pos", "kind")

    def __init__(self, addr: str, rid: int, d: int, pos: Optional[np.ndarray], kind: str):
        self.addr, self.rid, self.d, self.pos, self.kind = addr, rid, d, pos, kind


class RuleSpec:
    __slots__ = ("id", "kind", "dst", "srcs", "sr", "matrix_page", "fn", "fn_name")

    def __init__(self, spec: dict):
        from mmsb.dask._worker import semiring_from_spec

        self.id = spec["id"]
        self.kind = spec["kind"]
        self.dst = spec["dst"]
        self.srcs = list(spec["srcs"])
        self.sr = semiring_from_spec(spec["semiring"]) if spec.get("semiring") is not None else None
        self.matrix_page = spec.get("matrix_page")
        self.fn = spec.get("fn")
        self.fn_name = spec.get("fn_name")


class RuleBlock:
    """Rule ``rule`` restricted to the target block ``d`` (rows ``[lo, hi)``), in a local numbering."""

    __slots__ = ("rule", "d", "lo", "hi", "nloc", "dtype", "zero", "codes", "cols", "gbase", "A", "T", "ext",
                 "gseq", "src_page")

    def __init__(self, rule: RuleSpec, d: int, lo: int, hi: int, dtype: np.dtype):
        self.rule, self.d, self.lo, self.hi = rule, d, lo, hi
        self.nloc = hi - lo
        self.dtype = dtype
        self.zero = rule.sr.zero_for(dtype) if rule.sr is not None else None
        self.codes = rule.sr.codes_for(dtype) if rule.sr is not None else None
        self.cols = np.empty(0, dtype=np.int64)        # ghost columns (global positions of src_page), sorted
        self.gbase = 0                                 # ext index of ghost k is gbase + k
        self.A: Optional[CSR] = None
        self.T: Optional[CSR] = None
        self.ext: Optional[np.ndarray] = None          # closure: [block values, ghost values]; link: ghost values
        self.gseq: Optional[np.ndarray] = None         # link: message sequence of each ghost's value
        self.src_page = rule.dst if rule.kind == "closure" else (rule.srcs[0] if rule.srcs else None)

    def build(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, block: Optional[np.ndarray]) \
            -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(Re)build from entries (local rows, global cols, rule-dtype values). Returns the new ghost columns
        (to subscribe) and, for a closure, the array that now holds the target block (a view into ``ext``)."""
        old_cols, old_ext, old_seq = self.cols, self.ext, self.gseq
        lo, hi, nloc = self.lo, self.hi, self.nloc
        if self.rule.kind == "closure":
            inside = (cols >= lo) & (cols < hi)
            ghosts = unique(cols[~inside]) if (~inside).any() else np.empty(0, dtype=np.int64)
            ext_idx = np.where(inside, cols - lo, nloc + np.searchsorted(ghosts, cols))
            n_ext = nloc + ghosts.size
            A = _csr.build_csr((nloc, n_ext), rows, ext_idx, vals)
            ind = np.concatenate([A.indptr, np.full(ghosts.size, A.indptr[-1], dtype=np.int64)])
            sq = CSR((n_ext, n_ext), ind, A.indices, A.data)
            ext = np.empty(n_ext, dtype=self.dtype)
            ext[:nloc] = block if block is not None else self.zero
            ext[nloc:] = self.zero
            self.gbase = nloc
            self.A, self.T = A, sq.T
        else:
            ghosts = unique(cols) if cols.size else np.empty(0, dtype=np.int64)
            ext_idx = np.searchsorted(ghosts, cols)
            self.A = _csr.build_csr((nloc, ghosts.size), rows, ext_idx, vals)
            self.T = None
            ext = np.full(ghosts.size, self.zero, dtype=self.dtype)
            self.gseq = np.full(ghosts.size, -1, dtype=np.int64)
            self.gbase = 0
        if old_ext is not None and old_cols.size and ghosts.size:      # keep the ghost values still read
            common, i_new, i_old = np.intersect1d(ghosts, old_cols, assume_unique=True, return_indices=True)
            ext[self.gbase + i_new] = old_ext[(self.nloc if self.rule.kind == "closure" else 0) + i_old]
            if self.gseq is not None and old_seq is not None and old_seq.size:
                self.gseq[i_new] = old_seq[i_old]
        new = np.setdiff1d(ghosts, old_cols, assume_unique=True) if old_cols.size else ghosts
        self.cols, self.ext = ghosts, ext
        return new, (ext[:nloc] if self.rule.kind == "closure" else None)


class Dirty:
    """Work waiting on one target block: rows to recompute (link), seeds to push from (closure), source changes
    (closure, derive), a full recompute."""

    __slots__ = ("full", "rows", "seeds", "src")

    def __init__(self) -> None:
        self.full = False
        self.rows: list = []
        self.seeds: list = []
        self.src: list = []


class ShardActor:
    """The blocks of one buffer's sharded pages on one worker (see the module doc). Created by the driver with
    ``client.submit(ShardActor, ..., actor=True, workers=[addr])``."""

    def __init__(self, buf_id: str, addr: str, nthreads: int = 1, token: bytes = b""):
        self.buf_id = buf_id
        self.addr = addr
        self.nthreads = int(nthreads)
        self.token = bytes(token)
        self.peers: dict[str, tuple] = {}              # worker address -> (host, port) of its actor's server
        self.conns: dict[str, Any] = {}                # worker address -> connection to its actor (one-way sends)
        self.pages: dict[str, PageInfo] = {}
        self.blocks: dict[tuple, np.ndarray] = {}
        self.mblocks: dict[tuple, CSR] = {}
        self.rules: dict[int, RuleSpec] = {}
        self.into: dict[str, list[int]] = {}
        self.rblocks: dict[tuple, RuleBlock] = {}
        self.subs: dict[tuple, list[Sub]] = {}
        self.dirty: dict[tuple, Dirty] = {}
        self.worse: set = set()
        self.lock = threading.RLock()                   # the state (steps, and reads from tasks on this worker)
        self.cond = threading.Condition(threading.Lock())   # the inbox (deliver runs on a peer's thread)
        self.inbox: list = []
        self.received = 0
        self.local: list = []
        self.deferred_subs: list = []
        self.out: dict[str, list] = {}
        self.seq = 0
        self.plan: dict[str, int] = {}
        self.order: list[str] = []
        self.step_no = 0
        self._sent: dict = {}
        self._consumed: dict = {}
        self._bytes = 0
        self._scratch: dict = {}
        self.counters = {"steps": 0, "messages_sent": 0, "bytes_sent": 0, "messages_applied": 0,
                         "compute_s": 0.0, "wait_s": 0.0}
        self.server = _rpc.Server(_rpc.bind_host(addr), self.token, self._handle, self._cast, self.shutdown,
                                  _registered_on_worker(self))
        self.endpoint = self.server.endpoint

    # -- the data plane (mmsb.dask._rpc) ------------------------------------------------------------------------
    _CALLS = frozenset({"ping", "set_peers", "create", "drop_pages", "read", "read_matrix", "block_stats", "stats",
                        "install", "apply_logged", "step"})

    def _handle(self, meth: str, args: tuple) -> Any:
        if meth not in self._CALLS:
            raise ShardStateError(f"shard actor on {self.addr}: no method {meth!r}")
        return getattr(self, meth)(*args)

    def _cast(self, meth: str, args: tuple) -> None:
        if meth == "deliver":
            self.deliver(*args)

    def shutdown(self) -> None:
        """The driver is gone (its connection closed) or Dask released this actor: stop serving, drop the
        blocks (the driver rebuilds them from its log on fresh actors)."""
        self.server.close()
        for c in self.conns.values():
            c.close()
        self.conns = {}
        with self.lock:
            for d in (self.blocks, self.mblocks, self.rblocks, self.subs, self.dirty, self._scratch):
                d.clear()

    # -- setup ------------------------------------------------------------------------------------------------
    def get_endpoint(self) -> tuple:
        """``(host, port)`` where this actor's server listens (asked once through Dask)."""
        return self.endpoint

    def set_peers(self, peers: dict) -> bool:
        """``{worker address: (host, port)}`` of every actor of this buffer."""
        for c in self.conns.values():
            c.close()
        self.peers, self.conns = {a: tuple(e) for a, e in peers.items()}, {}
        return True

    def ping(self) -> str:
        return self.addr

    def create(self, info: dict, parts: dict, fill: Any = None) -> int:
        """Create the blocks ``parts`` of a page: ``{b: None}`` (array page, filled with ``fill``) or
        ``{b: (local rows, cols, values)}`` (matrix page). Returns the bytes held."""
        with self.lock:
            pi = PageInfo(info)
            self.pages[pi.name] = pi
            held = 0
            for b, part in parts.items():
                b = int(b)
                lo, hi = int(pi.bounds[b]), int(pi.bounds[b + 1])
                self.subs.pop((pi.name, b), None)
                if pi.kind == "matrix":
                    rows, cols, vals = part
                    from mmsb.matrix import selective

                    free = pi.zero if selective(pi.sr, pi.dtype) else None
                    A = _csr.build_csr((hi - lo, pi.ncols), rows, cols, np.asarray(vals, dtype=pi.dtype), free=free)
                    self.mblocks[(pi.name, b)] = A
                    held += A.indptr.nbytes + A.indices.nbytes + A.data.nbytes
                else:
                    arr = np.empty(hi - lo, dtype=pi.dtype)
                    arr[...] = fill
                    self.blocks[(pi.name, b)] = arr
                    held += arr.nbytes
            return held

    def drop_pages(self, live: list) -> int:
        """Forget pages not in ``live`` (dropped on the driver)."""
        with self.lock:
            keep = set(live)
            gone = [n for n in self.pages if n not in keep]
            for n in gone:
                del self.pages[n]
            for d in (self.blocks, self.mblocks, self.subs, self.dirty):
                for key in [k for k in d if k[0] in gone]:
                    del d[key]
            return len(gone)

    # -- reads ------------------------------------------------------------------------------------------------
    def read(self, name: str, parts: dict) -> dict:
        """``{b: values}``: the whole block (``parts[b]`` None) or the values at local positions ``parts[b]``."""
        with self.lock:
            out = {}
            for b, idx in parts.items():
                arr = self._block(name, int(b))
                out[b] = arr.copy() if idx is None else arr[idx]
            return out

    def read_matrix(self, name: str, parts: dict) -> dict:
        """``{b: (rows, cols, values)}`` of whole row blocks (``parts[b]`` None), or ``{b: values}`` at
        ``parts[b] = (local rows, cols)``."""
        with self.lock:
            out = {}
            pi = self.pages[name]
            for b, want in parts.items():
                A = self.mblocks.get((name, int(b)))
                if A is None:
                    raise ShardStateError(f"worker {self.addr} holds no block {b} of matrix {name!r}")
                if want is None:
                    out[b] = _csr._entries(A)
                else:
                    out[b] = _csr.get_entries(A, want[0], want[1], pi.zero)
            return out

    def block_stats(self, name: str) -> dict:
        """``{b: (entries, entries whose column lies outside the block's rows)}`` of a matrix's row blocks here
        (the cut of a square matrix partitioned like its rows)."""
        with self.lock:
            pi = self.pages[name]
            out = {}
            for (n, b), A in self.mblocks.items():
                if n != name:
                    continue
                _, cols, _ = _csr._entries(A)
                lo, hi = int(pi.bounds[b]), int(pi.bounds[b + 1])
                out[b] = (int(cols.size), int(np.count_nonzero((cols < lo) | (cols >= hi))))
            return out

    def snapshot_block(self, name: str, b: int) -> np.ndarray:
        """A copy of one array block (for ``to_dask_array``: a task on this worker calls it directly)."""
        with self.lock:
            return self._block(name, int(b)).copy()

    def _block(self, name: str, b: int) -> np.ndarray:
        arr = self.blocks.get((name, b))
        if arr is None:
            raise ShardStateError(f"worker {self.addr} holds no block {b} of page {name!r}")
        return arr

    def stats(self) -> dict:
        with self.lock:
            nbytes = sum(a.nbytes for a in self.blocks.values())
            nbytes += sum(A.indptr.nbytes + A.indices.nbytes + A.data.nbytes for A in self.mblocks.values())
            rb = 0
            for r in self.rblocks.values():
                for M in (r.A, r.T):
                    if M is not None:
                        rb += M.indptr.nbytes + M.indices.nbytes + M.data.nbytes
                if r.ext is not None and r.rule.kind != "closure":
                    rb += r.ext.nbytes
            return dict(self.counters, block_bytes=int(nbytes), rule_bytes=int(rb), blocks=len(self.blocks),
                        matrix_blocks=len(self.mblocks), rule_blocks=len(self.rblocks))

    # -- rules ------------------------------------------------------------------------------------------------
    def install(self, step: int, specs: list, removed: list, plain: dict, plan: dict) -> dict:
        """Add rules (``specs``; ``plain[(rid, d)]`` = ``(indptr, indices, data)`` of a rule's own matrix rows for
        target block ``d`` here) and remove rules (``removed``); subscribe the new rule blocks to the blocks they
        read (a message to the owner, or directly here). Returns the step report."""
        with self.lock:
            self._begin(step, plan, None)
            for rid in removed:
                self._remove_rule(int(rid))
            new = []
            for spec in specs:
                rule = RuleSpec(spec)
                if rule.id in self.rules:
                    self._remove_rule(rule.id)
                self.rules[rule.id] = rule
                lst = self.into.setdefault(rule.dst, [])
                lst.append(rule.id)
                lst.sort()
                new.append(rule)
            for rule in new:
                dst = self.pages[rule.dst]
                for d, owner in enumerate(dst.owners):
                    if owner != self.addr:
                        continue
                    lo, hi = int(dst.bounds[d]), int(dst.bounds[d + 1])
                    if rule.kind == "derive":
                        for s in rule.srcs:
                            self._subscribe_local(s, d, rule.id, d)
                        self._mark(rule.dst, d).full = True
                        continue
                    rb = RuleBlock(rule, d, lo, hi, dst.dtype)
                    self.rblocks[(rule.id, d)] = rb
                    self._build_rule_block(rb, plain.get((rule.id, d)))
                    if rule.kind == "closure":
                        self._subscribe_local(rule.srcs[0], d, rule.id, d)
                    self._mark(rule.dst, d).full = True
            return self._report()

    def _remove_rule(self, rid: int) -> None:
        rule = self.rules.pop(rid, None)
        if rule is None:
            return
        lst = self.into.get(rule.dst, [])
        if rid in lst:
            lst.remove(rid)
        for key in [k for k in self._scratch if len(k) == 3 and k[1] == rid]:
            del self._scratch[key]
        for key in [k for k in self.rblocks if k[0] == rid]:
            rb = self.rblocks.pop(key)
            if rule.kind == "closure" and rb.ext is not None:           # the block keeps its values, on its own
                self.blocks[(rule.dst, key[1])] = rb.ext[:rb.nloc].copy()
        for lst in self.subs.values():
            lst[:] = [s for s in lst if s.rid != rid]

    def _rule_entries(self, rb: RuleBlock, plain: Any) -> tuple:
        """The entries of rule block ``rb``'s rows: (local rows, global cols, values in the rule's dtype)."""
        rule = rb.rule
        if rule.matrix_page is not None:
            A = self.mblocks.get((rule.matrix_page, rb.d))
            if A is None:
                raise ShardStateError(f"worker {self.addr} holds no block {rb.d} of matrix {rule.matrix_page!r}")
            rows, cols, vals = _csr._entries(A)
        elif plain is not None:
            indptr, cols, vals = plain
            rows = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))
        else:
            raise ShardStateError(f"rule {rule.id} into {rule.dst!r}: no matrix rows for block {rb.d}")
        return rows, np.asarray(cols, dtype=np.int64), np.asarray(vals).astype(rb.dtype, copy=False)

    def _build_rule_block(self, rb: RuleBlock, plain: Any = None) -> None:
        rows, cols, vals = self._rule_entries(rb, plain)
        rule = rb.rule
        block = self.blocks.get((rule.dst, rb.d)) if rule.kind == "closure" else None
        new_cols, view = rb.build(rows, cols, vals, block)
        if view is not None:
            self.blocks[(rule.dst, rb.d)] = view
        src = self.pages[rb.src_page]
        if not new_cols.size:
            return
        sb = src.block_of(new_cols)
        cuts = np.flatnonzero(np.diff(sb)) + 1
        for part in np.split(np.arange(new_cols.size), cuts):
            b = int(sb[part[0]])
            owner = src.owners[b]
            gpos = new_cols[part]
            if owner == self.addr:
                self._register_sub(rb.src_page, b, Sub(self.addr, rule.id, rb.d, gpos - int(src.bounds[b]),
                                                       "ghost"), reply=True)
            else:
                self._send(owner, ("sub", None, self.step_no, 0, rb.src_page, b, rule.id, rb.d, self.addr, gpos))

    def _subscribe_local(self, src: str, b: int, rid: int, d: int) -> None:
        self.subs.setdefault((src, b), []).append(Sub(self.addr, rid, d, None, "src"))

    def _register_sub(self, name: str, b: int, sub: Sub, reply: bool) -> None:
        lst = self.subs.setdefault((name, b), [])
        lst.append(sub)
        if reply:
            arr = self._block(name, b)
            pi = self.pages[name]
            self.seq += 1
            item = ("ghost", self.rules[sub.rid].dst, self.step_no, self.seq, sub.rid, sub.d,
                    sub.pos + int(pi.bounds[b]), arr[sub.pos].copy())
            if sub.addr == self.addr:
                self.local.append(item)
            else:
                self._send(sub.addr, item)

    # -- messages ---------------------------------------------------------------------------------------------
    def deliver(self, items: list) -> int:
        """Messages from another worker's actor (one-way, on the thread of that peer's connection)."""
        with self.cond:
            self.inbox.extend(items)
            self.received += len(items)
            self.cond.notify_all()
        return len(items)

    def _send(self, addr: str, item: tuple) -> None:
        self.out.setdefault(addr, []).append(item)

    def _peer(self, addr: str) -> Any:
        c = self.conns.get(addr)
        if c is None or c.broken:
            ep = self.peers.get(addr)
            if ep is None:
                raise ShardStateError(f"worker {self.addr} does not know the shard actor of {addr}")
            try:
                c = self.conns[addr] = _rpc.Conn(ep, self.token, "peer", WAIT_S, pickle.dumps)
            except OSError as exc:
                raise ShardStateError(f"worker {self.addr} cannot reach the shard actor of {addr}: {exc}") from exc
        return c

    def _flush(self) -> None:
        """Send this step's messages, one batch per worker, straight to its actor (one-way: the driver's counts
        make the receiver wait for them)."""
        for addr, items in self.out.items():
            if not items:
                continue
            nbytes = 0
            for it in items:
                nbytes += sum(x.nbytes for x in it if isinstance(x, np.ndarray))
                key = (addr, it[1])
                self._sent[key] = self._sent.get(key, 0) + 1
            self._bytes += nbytes
            self.counters["messages_sent"] += len(items)
            self.counters["bytes_sent"] += nbytes
            try:
                self._peer(addr).cast("deliver", (items,))
            except OSError as exc:
                raise ShardStateError(f"worker {self.addr} lost the shard actor of {addr}: {exc}") from exc
        self.out = {}

    def _remote_levels(self) -> set:
        """Levels (0 for subscription requests) of the messages queued for other workers in this step."""
        return {0 if it[1] is None else self.plan.get(it[1], 0) for items in self.out.values() for it in items}

    def _take_inbox(self, before: Optional[int] = None) -> list:
        with self.cond:
            if before is None:
                items, self.inbox = self.inbox, []
            else:
                items = [it for it in self.inbox if it[2] < before]
                self.inbox = [it for it in self.inbox if it[2] >= before]
        for it in items:
            self._consumed[it[1]] = self._consumed.get(it[1], 0) + 1
        return items

    def _drain(self, before: Optional[int] = None) -> None:
        """Apply every message received (remote ones sent before step ``before`` only, when given) and the local
        ones queued; subscription requests are answered at the end of the step."""
        items = self._take_inbox(before)
        if before is None:
            items += self.local
            self.local = []
        for it in items:
            self.counters["messages_applied"] += 1
            kind = it[0]
            if kind == "ghost":
                self._apply_ghost(it)
            elif kind == "src":
                self._apply_src(it)
            elif kind == "sub":
                self.deferred_subs.append(it)

    def _drain_local(self) -> None:
        """Apply the messages between blocks of this worker queued so far (they only set values and mark work)."""
        while self.local:
            items, self.local = self.local, []
            for it in items:
                self.counters["messages_applied"] += 1
                if it[0] == "ghost":
                    self._apply_ghost(it)
                elif it[0] == "src":
                    self._apply_src(it)

    def _apply_ghost(self, it: tuple) -> None:
        _, page, _, seq, rid, d, gpos, vals = it
        rb = self.rblocks.get((rid, d))
        if rb is None or not gpos.size:
            return
        k = np.searchsorted(rb.cols, gpos)
        k = np.minimum(k, max(rb.cols.size - 1, 0))
        ok = rb.cols[k] == gpos if rb.cols.size else np.zeros(gpos.size, dtype=bool)
        if not ok.all():
            k, vals = k[ok], vals[ok]
        vals = np.asarray(vals).astype(rb.dtype, copy=False)
        e = rb.gbase + k
        if rb.rule.kind == "closure":
            cur = rb.ext[e]
            merged = rb.rule.sr.add_arrays(cur, vals)
            imp = changed_positions(merged, cur)
            if imp.any():
                rb.ext[e[imp]] = merged[imp]
                self._mark(rb.rule.dst, d).seeds.append(rb.cols[k[imp]])      # global positions
        else:
            newer = rb.gseq[k] < seq
            if not newer.all():
                k, e, vals = k[newer], e[newer], vals[newer]
            rb.gseq[k] = seq
            moved = changed_positions(vals, rb.ext[e])
            if moved.any():
                rb.ext[e[moved]] = vals[moved]
                self._mark(rb.rule.dst, d).rows.append(("cols", rid, rb.cols[k[moved]]))

    def _apply_src(self, it: tuple) -> None:
        _, page, _, _, rid, d, pos, old, new = it
        rule = self.rules.get(rid)
        if rule is None:
            return
        st = self._mark(rule.dst, d)
        if rule.kind == "closure":
            rb = self.rblocks.get((rid, d))
            if rb is None:
                return
            o = old.astype(rb.dtype, copy=False)
            n = new.astype(rb.dtype, copy=False)
            better = ~changed_positions(rule.sr.add_arrays(o, n), n)
            if not better.all():
                self.worse.add(rule.dst)
            st.src.append((pos, n))
        else:
            st.full = True

    def _mark(self, page: str, d: int) -> Dirty:
        st = self.dirty.get((page, d))
        if st is None:
            st = self.dirty[(page, d)] = Dirty()
        return st

    def _answer_subs(self) -> None:
        subs, self.deferred_subs = self.deferred_subs, []
        for it in subs:
            _, _, _, _, name, b, rid, d, addr, gpos = it
            if rid not in self.rules or name not in self.pages:
                continue
            lo = int(self.pages[name].bounds[b])
            self._register_sub(name, int(b), Sub(addr, rid, d, np.asarray(gpos, dtype=np.int64) - lo, "ghost"),
                               reply=True)

    def _emit(self, name: str, b: int, pos: np.ndarray, old: np.ndarray, reset_rule: Optional[int] = None) -> None:
        """Block ``(name, b)`` changed at local positions ``pos`` (sorted; ``old`` their values before): tell the
        rule blocks that read them. After a closure's reset (``reset_rule``), its own readers get every value."""
        subs = self.subs.get((name, b))
        if not subs or (not pos.size and reset_rule is None):
            return
        arr = self.blocks[(name, b)]
        pi = self.pages[name]
        lo = int(pi.bounds[b])
        mark = None
        for sub in subs:
            rule = self.rules.get(sub.rid)
            if rule is None:
                continue
            if sub.kind == "src":
                if pos.size:
                    self.local.append(("src", rule.dst, self.step_no, 0, sub.rid, sub.d, pos, old, arr[pos].copy()))
                continue
            if reset_rule is not None and sub.rid == reset_rule:
                p = sub.pos
                v = arr[p]
                keep = v != rule.sr.zero_for(v.dtype)
                p, v = p[keep], v[keep]
            else:
                if mark is None:
                    mark = self._scratch_mask(arr.size)
                    mark[pos] = True
                p = sub.pos[mark[sub.pos]]
                v = arr[p]
            if not p.size:
                continue
            self.seq += 1
            item = ("ghost", rule.dst, self.step_no, self.seq, sub.rid, sub.d, p + lo, v.copy())
            if sub.addr == self.addr:
                self.local.append(item)
            else:
                self._send(sub.addr, item)
        if mark is not None:
            mark[pos] = False

    def _scratch_mask(self, n: int) -> np.ndarray:
        m = self._scratch.get(("mask", n))
        if m is None:
            m = self._scratch[("mask", n)] = np.zeros(n, dtype=bool)
        return m

    # -- deltas -----------------------------------------------------------------------------------------------
    def _apply_delta(self, name: str, b: int, idx: Optional[np.ndarray], vals: np.ndarray, accumulate: bool,
                     emit: bool) -> None:
        pi = self.pages[name]
        if pi.kind == "matrix":
            self._apply_matrix_delta(pi, b, idx, vals, accumulate, emit)
            return
        arr = self._block(name, b)
        if idx is None:
            idx = np.arange(arr.size, dtype=np.int64)
        old, changed = merge_into(arr, idx, np.asarray(vals, dtype=pi.dtype), pi.sr, accumulate)
        if emit and changed.any():
            if not changed.all():
                idx, old = idx[changed], old[changed]
            self._emit(name, b, idx, old)

    def _apply_matrix_delta(self, pi: PageInfo, b: int, keys: np.ndarray, vals: np.ndarray, accumulate: bool,
                            emit: bool) -> None:
        """``keys`` are flat positions ``local row * ncols + col`` of the row block."""
        A = self.mblocks.get((pi.name, b))
        if A is None:
            raise ShardStateError(f"worker {self.addr} holds no block {b} of matrix {pi.name!r}")
        rows, cols = np.divmod(keys, pi.ncols)
        old = _csr.get_entries(A, rows, cols, pi.zero)
        vals = np.asarray(vals, dtype=pi.dtype)
        new = pi.sr.add_arrays(old, vals) if accumulate else vals
        moved = changed_positions(new, old)
        if not moved.any():
            return
        rows, cols, old, new = rows[moved], cols[moved], old[moved], np.asarray(new, dtype=pi.dtype)[moved]
        _csr.set_entries(A, rows, cols, new, new != pi.zero)
        if not emit:
            return
        for rid in [r for r in self.rules if self.rules[r].matrix_page == pi.name]:
            rb = self.rblocks.get((rid, b))
            if rb is None:
                continue
            rule = rb.rule
            self._build_rule_block(rb)
            st = self._mark(rule.dst, b)
            if rule.kind == "link":
                st.rows.append(("rows", rid, unique(rows)))
                continue
            zero = rb.zero
            o = old.astype(rb.dtype)
            o[~(old != pi.zero)] = zero                  # an absent entry is the rule's ⊕-zero
            n = new.astype(rb.dtype)
            n[~(new != pi.zero)] = zero
            better = ~changed_positions(rule.sr.add_arrays(o, n), n)
            if not better.all():
                self.worse.add(rule.dst)
            st.seeds.append(cols[better].astype(np.int64))                      # global positions

    def apply_logged(self, items: list) -> bool:
        """Rebuild: apply logged user deltas ``[(name, b, local idx or None, values, accumulate)]`` in order,
        without propagation."""
        with self.lock:
            for name, b, idx, vals, acc in items:
                self._apply_delta(name, int(b), idx, vals, acc, emit=False)
            return True

    # -- compute ----------------------------------------------------------------------------------------------
    def _compute(self, page: str, d: int, st: Dirty, reset: bool) -> None:
        rids = self.into.get(page, [])
        if not rids:
            return
        kind = self.rules[rids[0]].kind
        if reset:
            st.full = True
        t0 = time.perf_counter()
        if kind == "closure":
            self._closure(page, d, self.rblocks[(rids[0], d)], st, reset)
        elif kind == "link":
            self._links(page, d, [self.rblocks[(r, d)] for r in rids], st)
        else:
            self._derive(page, d, self.rules[rids[0]])
        self.counters["compute_s"] += time.perf_counter() - t0

    def _kernel_closure(self, rb: RuleBlock, frontier: np.ndarray, old_out: Optional[np.ndarray]) -> np.ndarray:
        if not frontier.size:
            return np.empty(0, dtype=np.int64)
        T = rb.T
        y = rb.ext
        try:
            return _kernels.spmv.closure(T.indptr, T.indices, _kview(T.data), _kview(y), frontier, rb.codes[0],
                                         rb.codes[1], _kview(np.array([rb.zero], dtype=rb.dtype))[0],
                                         None if old_out is None else _kview(old_out), T.weight_range,
                                         self.nthreads)
        except ValueError as exc:
            if "converge" in str(exc):
                from mmsb.errors import SemiringError

                raise SemiringError(f"closure on page {rb.rule.dst!r} does not converge under "
                                    f"{rb.rule.sr.name} (e.g. a negative cycle); nothing was committed") from None
            raise

    @staticmethod
    def _ext_of(rb: RuleBlock, g: np.ndarray) -> np.ndarray:
        """Local indices (block positions, then ghosts) of global positions ``g`` of a closure block (positions
        that are neither, e.g. a column no row reads any more, are dropped)."""
        inside = (g >= rb.lo) & (g < rb.hi)
        out = g - rb.lo
        if not inside.all():
            k = np.minimum(np.searchsorted(rb.cols, g[~inside]), max(rb.cols.size - 1, 0))
            ok = rb.cols[k] == g[~inside] if rb.cols.size else np.zeros(k.size, dtype=bool)
            out = out.copy()
            out[~inside] = np.where(ok, rb.nloc + k, -1)
            out = out[out >= 0]
        return out.astype(np.int64, copy=False)

    def _closure(self, page: str, d: int, rb: RuleBlock, st: Dirty, reset: bool) -> None:
        y, nloc, sr = rb.ext, rb.nloc, rb.rule.sr
        if reset or st.full:
            src = self._block(rb.rule.srcs[0], d)
            before = y[:nloc].copy()
            y[:nloc] = src
            y[nloc:] = rb.zero
            frontier = np.flatnonzero(changed_positions(y[:nloc], np.full(nloc, rb.zero, dtype=y.dtype)))
            self._kernel_closure(rb, frontier.astype(np.int64), None)
            ch = np.flatnonzero(changed_positions(y[:nloc], before)).astype(np.int64)
            self._emit(page, d, ch, before[ch], reset_rule=rb.rule.id)
            return
        parts, olds, seeds = [], [], [self._ext_of(rb, g) for g in st.seeds]
        for pos, new in st.src:
            cur = y[pos]
            merged = sr.add_arrays(cur, new)
            moved = changed_positions(merged, cur)
            if moved.any():
                p = pos[moved]
                parts.append(p)
                olds.append(cur[moved])
                y[p] = merged[moved]
                seeds.append(p)
        if not seeds:
            return
        frontier = unique(np.concatenate(seeds)) if len(seeds) > 1 else unique(seeds[0])
        old_out = self._scratch.get(("old", rb.rule.id, rb.d))
        if old_out is None or old_out.size != y.size:
            old_out = self._scratch[("old", rb.rule.id, rb.d)] = np.empty_like(y)
        reached = self._kernel_closure(rb, frontier, old_out)
        reached = reached[reached < nloc]            # sorted, unique
        if parts:                                    # sources improved before the kernel: their older value
            src_pos, first = unique_first(np.concatenate(parts))
            old_out[src_pos] = np.concatenate(olds)[first]
            if reached.size * 32 > nloc:             # most of the block: a mask, not a sort of everything
                m = self._scratch_mask(nloc)
                m[reached] = True
                m[src_pos] = True
                idx = np.flatnonzero(m)
                m[idx] = False
            else:
                idx = unique(np.concatenate([src_pos, reached]))
        else:
            idx = reached
        old = old_out[idx]
        moved = changed_positions(y[idx], old)
        if moved.any():
            self._emit(page, d, idx[moved], old[moved])

    def _links(self, page: str, d: int, rbs: list, st: Dirty) -> None:
        y = self._block(page, d)
        if st.full:
            rows = None
        else:
            parts = []
            by_rid = {rb.rule.id: rb for rb in rbs}
            for what, rid, arr in st.rows:
                if what == "rows":
                    parts.append(arr)
                else:                                   # ghost columns (global) that changed
                    rb = by_rid.get(rid)
                    if rb is not None and rb.cols.size:
                        k = np.minimum(np.searchsorted(rb.cols, arr), rb.cols.size - 1)
                        k = k[rb.cols[k] == arr]
                        if k.size:
                            parts.append(rb.A.column_rows(k))
            if not parts:
                return
            rows = unique(np.concatenate(parts)) if len(parts) > 1 else unique(parts[0])
            if not rows.size:
                return
        sel = slice(None) if rows is None else rows
        before = y[sel].copy()
        acc = None
        for rb in rbs:
            part = self._pull(rb, rows)
            acc = part if acc is None else rb.rule.sr.add_arrays(acc, part)
        y[sel] = acc
        moved = changed_positions(y[sel], before)
        if moved.any():
            idx = np.flatnonzero(moved).astype(np.int64) if rows is None else rows[moved]
            self._emit(page, d, idx, before[moved])

    def _pull(self, rb: RuleBlock, rows: Optional[np.ndarray]) -> np.ndarray:
        """``(A ⊗ x)[rows]`` of one link block (every row when ``rows`` is None)."""
        A, x, sr = rb.A, rb.ext, rb.rule.sr
        if rb.codes is not None:
            tmp = self._scratch.get(("pull", rb.rule.id, rb.d))
            if tmp is None or tmp.size != rb.nloc:
                tmp = self._scratch[("pull", rb.rule.id, rb.d)] = np.empty(rb.nloc, dtype=rb.dtype)
            _kernels.spmv.spmv(A.indptr, A.indices, _kview(A.data), _kview(x), _kview(tmp), rb.codes[0],
                               rb.codes[1], _kview(np.array([rb.zero], dtype=rb.dtype))[0], rows, self.nthreads)
            return tmp.copy() if rows is None else tmp[rows]
        from mmsb.propagate import Engine

        every = np.arange(rb.nloc, dtype=np.int64) if rows is None else rows
        return Engine._pull_numpy(A, x, every, sr, rb.zero)

    def _derive(self, page: str, d: int, rule: RuleSpec) -> None:
        y = self._block(page, d)
        args = [self._block(s, d).copy() for s in rule.srcs]
        try:
            out = np.asarray(rule.fn(*args))
        except MMSBError:
            raise
        except Exception as exc:
            raise MMSBError(f"derive function {rule.fn_name!r} for page {page!r} failed on block {d}: "
                            f"{type(exc).__name__}: {exc}") from exc
        if out.size != y.size:
            raise MMSBError(f"derive function {rule.fn_name!r} for sharded page {page!r} must be element-wise: "
                            f"block {d} of {y.size} entries gave {out.size}")
        out = out.reshape(-1).astype(y.dtype, copy=False)
        idx = np.flatnonzero(changed_positions(out, y)).astype(np.int64)
        if idx.size:
            old = y[idx].copy()
            y[idx] = out[idx]
            self._emit(page, d, idx, old)

    def _run_level(self, level: int, forced: list, first_step: Optional[int]) -> None:
        pages = [p for p in self.order if self.plan.get(p) == level]
        if not pages:
            return
        resets = set()
        if first_step is not None and forced:
            for p in forced:
                if self.plan.get(p) != level:
                    continue
                info = self.pages[p]
                for d, owner in enumerate(info.owners):
                    if owner == self.addr:
                        resets.add((p, d))
                        self.dirty.pop((p, d), None)
                        rids = self.into.get(p, [])
                        if rids and self.rules[rids[0]].kind == "closure":
                            rb = self.rblocks[(rids[0], d)]
                            rb.ext[rb.nloc:] = rb.zero     # ghosts too: every block of the page restarts
                self.worse.discard(p)
        todo = [(p, d) for (p, d) in resets]
        for (p, d) in todo:
            self._compute(p, d, Dirty(), reset=True)
        rank = {p: i for i, p in enumerate(pages)}
        while True:
            self._drain()
            work = sorted((k for k in self.dirty if self.plan.get(k[0]) == level), key=lambda k: (rank[k[0]], k[1]))
            if not work:
                break
            for key in work:
                st = self.dirty.pop(key)
                self._compute(key[0], key[1], st, reset=False)

    def _begin(self, step: int, plan: dict, order: Optional[list]) -> None:
        self.step_no = int(step)
        self.plan = dict(plan)
        self.order = list(order) if order is not None else sorted(self.plan, key=self.plan.__getitem__)
        self._sent, self._consumed, self._bytes = {}, {}, 0

    def _report(self, done_through: Optional[int] = None) -> dict:
        self._answer_subs()
        self._drain_local()
        self._flush()
        dirty = sorted({p for (p, _) in self.dirty})
        return {"sent": self._sent, "consumed": self._consumed, "dirty": dirty, "worse": sorted(self.worse),
                "bytes": self._bytes, "done_through": done_through, "addr": self.addr}

    def step(self, step: int, plan: dict, order: list, level: Optional[int], expected: int, deltas: list,
             forced: list, solo: bool, levels: list, eager: bool = False) -> dict:
        """One superstep (see the module doc). ``deltas``: user deltas ``[(name, b, local idx or None, values,
        accumulate)]`` for blocks here (step 0 of a commit); ``level``: the level of the plan (``{page: level}``)
        to compute, or None; ``forced``: pages of that level to recompute from scratch (first step of the level
        only; their blocks reset before any message of this step is applied); ``expected``: how many messages
        other workers sent here so far (the step waits for them); ``solo``: this worker is the only one with work,
        so it may go on through the ``levels`` as long as it sends nothing to another worker; ``eager`` (step 0
        of a wave with several busy workers): compute the first level of the plan in this step already (its pages
        read only pages that no rule writes, final once this step's deltas are in; what other workers send later
        is applied by the level's next steps, as within any level)."""
        t0 = time.perf_counter()
        with self.cond:
            ok = self.cond.wait_for(lambda: self.received >= expected, timeout=WAIT_S)
        if not ok:
            raise ShardStateError(f"worker {self.addr} waited {WAIT_S:.0f} s for {expected - self.received} "
                                  "messages from other workers (one died?)")
        self.counters["wait_s"] += time.perf_counter() - t0
        with self.lock:
            self.counters["steps"] += 1
            self._begin(step, plan, order)
            self._drain(before=step if forced else None)
            for name, b, idx, vals, acc in deltas:
                self._apply_delta(name, int(b), idx, vals, acc, emit=True)
            done = None
            if level is not None:
                self._run_level(level, forced, step)
            elif eager:
                first = levels[0]
                if not self.worse & {p for p, v in self.plan.items() if v == first}:
                    self._run_level(first, [], None)
            elif solo:
                for lv in levels:
                    pages = {p for p, v in self.plan.items() if v == lv}
                    if self.worse & pages or any(r <= lv for r in self._remote_levels()):
                        break
                    self._run_level(lv, [], None)
                    # a value that got worse while the level ran (a raised source of a closure) needs the
                    # driver's forced recompute of the level: it is not done here
                    if self.worse & pages or any(r <= lv for r in self._remote_levels()):
                        break
                    done = lv
            else:
                self._drain()
            return self._report(done)


def _registered_on_worker(actor: ShardActor) -> Any:
    """A test the actor's server polls: false once Dask has released the actor (it was registered on the worker
    that created it, and is no longer)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except Exception:
        return lambda: True
    seen = [False]

    def alive() -> bool:
        actors = getattr(getattr(worker, "state", worker), "actors", None)
        if actors is None:
            return True
        here = any(a is actor for a in list(actors.values()))
        seen[0] = seen[0] or here
        return here or not seen[0]

    return alive


def snapshot_block(actor_key: str, name: str, b: int, dask_worker: Any = None) -> np.ndarray:
    """Task body of ``to_dask_array`` for a sharded page: a copy of block ``b``, read from the actor living on
    the worker that runs the task (the block never leaves its owner until the dask array is computed)."""
    from distributed import get_worker

    w = dask_worker or get_worker()
    actors = getattr(getattr(w, "state", w), "actors", None) or getattr(w, "actors", {})
    actor = actors.get(actor_key)
    if actor is None:
        raise ShardStateError(f"no mmsb shard actor {actor_key} on worker {w.address}")
    return actor.snapshot_block(name, b)

"""The data plane of the shard actors: framed pickle messages over plain TCP sockets (see docs/dask.md, "Why
actors, and a socket of their own").

Dask starts each :class:`~mmsb.dask._shard_worker.ShardActor` on its worker and tells the driver where the
actor listens; from then on the driver's calls (one request, one reply, in order, per connection) and the
messages between workers (one-way) go over these sockets, straight between the two processes: no event-loop
thread on either side, no scheduler, no Dask message framing. A call costs a few tens of microseconds instead of
the millisecond (or more under load) of a Dask actor call.

A frame is a header ``(kind, number of buffers, payload length)``, the buffers' lengths, the pickle payload
(protocol 5) and the out-of-band buffers (numpy arrays travel without a copy into the payload). Every connection
starts with a hello carrying the buffer's random token, compared in constant time before anything is unpickled:
only the driver that created the actors (and the actors it introduced to each other) can talk to them.
"""
from __future__ import annotations

import hmac
import pickle
import socket
import struct
import threading
import traceback
from collections.abc import Callable
from typing import Any

REQUEST, OK, ERROR, CAST, HELLO = 1, 2, 3, 4, 5
_HEAD = struct.Struct("<BIQ")
_SMALL = 1 << 16
#: the most bytes one frame may announce (a corrupt or hostile header is refused before allocating)
MAX_FRAME = 1 << 40
#: seconds a new connection has to send the token and its hello
HELLO_TIMEOUT_S = 10.0


class ProtocolError(ConnectionError):
    """A connection sent something that is not a frame of this protocol (or the wrong token)."""


_REMOTE = "_mmsb_remote"


def is_remote(exc: BaseException) -> bool:
    """Whether ``exc`` came back in an error reply: raised by the code the actor ran (an application error, even
    an ``OSError``: the connection is fine), not by the connection itself (a transport failure)."""
    return getattr(exc, _REMOTE, False) is True


def _remote(exc: Any, endpoint: tuple) -> BaseException:
    """The exception of an error reply, marked as such (see :func:`is_remote`)."""
    if not isinstance(exc, BaseException):
        raise ProtocolError(f"an error reply from {endpoint} that is not an exception: {type(exc).__name__}")
    try:
        setattr(exc, _REMOTE, True)
    except (AttributeError, TypeError):         # (an exception type without a __dict__: wrapped, then marked)
        from mmsb.errors import MMSBError

        exc = MMSBError(f"{type(exc).__name__}: {exc}")
        setattr(exc, _REMOTE, True)
    return exc


def _recv_exact(sock: socket.socket, mv: memoryview) -> None:
    while mv.nbytes:
        n = sock.recv_into(mv)
        if n == 0:
            raise ConnectionError("connection closed by the peer")
        mv = mv[n:]


def send_frame(sock: socket.socket, kind: int, obj: Any, dumps: Callable = pickle.dumps) -> int:
    """Send ``obj`` as one frame; returns the bytes sent."""
    bufs: list = []
    data = dumps(obj, protocol=5, buffer_callback=bufs.append)
    raws = [b.raw() for b in bufs]
    head = _HEAD.pack(kind, len(raws), len(data)) + struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws))
    total = len(head) + len(data) + sum(r.nbytes for r in raws)
    if total <= _SMALL:
        sock.sendall(b"".join([head, data, *raws]))
    else:
        sock.sendall(head + data if len(data) <= _SMALL else head)
        if len(data) > _SMALL:
            sock.sendall(data)
        for r in raws:
            sock.sendall(r)
    return total


def recv_frame(sock: socket.socket) -> tuple[int, Any]:
    """``(kind, object)`` of the next frame."""
    kind, payload, bufs = recv_raw(sock)
    return kind, pickle.loads(payload, buffers=bufs)


def recv_raw(sock: socket.socket) -> tuple[int, bytearray, list]:
    """``(kind, payload, out-of-band buffers)`` of the next frame, read whole and not unpickled yet."""
    head = bytearray(_HEAD.size)
    _recv_exact(sock, memoryview(head))
    kind, nbufs, size = _HEAD.unpack(head)
    if kind not in (REQUEST, OK, ERROR, CAST, HELLO) or nbufs > 1 << 20 or size > MAX_FRAME:
        raise ProtocolError(f"not an mmsb shard frame (kind {kind}, {nbufs} buffers, {size} bytes)")
    lens: tuple = ()
    if nbufs:
        raw = bytearray(8 * nbufs)
        _recv_exact(sock, memoryview(raw))
        lens = struct.unpack(f"<{nbufs}Q", raw)
        if sum(lens) > MAX_FRAME:
            raise ProtocolError("an mmsb shard frame announces too many bytes")
    payload = bytearray(size)
    _recv_exact(sock, memoryview(payload))
    bufs = []
    for n in lens:
        b = bytearray(n)
        _recv_exact(sock, memoryview(b))
        bufs.append(b)
    return kind, payload, bufs


def _nodelay(sock: socket.socket) -> None:
    """No Nagle delay, and TCP keepalive as Dask sets it on its own connections, so that a peer whose host
    vanished is noticed in about 30 s rather than at the call timeout."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 10)):
        if hasattr(socket, opt):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
            except OSError:
                pass


#: the Dask protocols whose addresses name a host the actor's TCP socket can listen on
HOST_PROTOCOLS = frozenset(("tcp", "tls", "ws", "wss", "ucx", "ucxx"))


def bind_host(address: str) -> str:
    """The interface a worker's actor listens on: the host of the worker's own Dask address (``tcp``, ``tls``,
    ``ws``, ``wss``, ``ucx``, ``ucxx``; an IPv6 host without its brackets), loopback for an in-process worker
    (``inproc``). ValueError for an address of another protocol, or one that names no host: the actor would
    listen where its peers cannot reach it."""
    proto, sep, rest = address.partition("://")
    if proto == "inproc" and sep:
        return "127.0.0.1"
    if proto not in HOST_PROTOCOLS or not sep:
        raise ValueError(f"mmsb shard actors: cannot tell the host of the worker address {address!r} (protocols "
                         f"{', '.join(sorted(HOST_PROTOCOLS))} or inproc)")
    where = rest.split("/", 1)[0]                   # host[:port] or [v6 host][:port]
    if where.startswith("["):
        host = where[1:where.find("]")] if "]" in where else ""
    else:
        host = where.rsplit(":", 1)[0]
    if not host:
        raise ValueError(f"mmsb shard actors: the worker address {address!r} names no host")
    return host


class Server:
    """Listens for the driver and the peer actors: runs ``handle(method, args)`` for each request (replying
    with its result or its exception) and ``cast(method, args)`` for one-way messages, one thread per
    connection. ``on_driver_lost`` runs when the driver's connection closes; ``alive()`` is polled and the
    server stops when it turns false (Dask released the actor)."""

    def __init__(self, host: str, token: bytes, handle: Callable, cast: Callable, on_driver_lost: Callable,
                 alive: Callable[[], bool], poll_s: float = 2.0):
        self.token = token
        self.handle, self.cast, self.on_driver_lost, self.alive = handle, cast, on_driver_lost, alive
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, 0), family=family, backlog=64)
        self.sock.settimeout(poll_s)
        self.endpoint = (host, self.sock.getsockname()[1])
        self.closed = False
        self._conns: set = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="mmsb-shard-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except TimeoutError:
                if not self.alive():
                    self.on_driver_lost()       # Dask released the actor: stop serving and drop the blocks
                    self.close()
                continue
            except OSError:
                break
            c.settimeout(HELLO_TIMEOUT_S)       # (a connection that never says hello does not hold a thread)
            _nodelay(c)
            with self._lock:
                if self.closed:
                    c.close()
                    break
                self._conns.add(c)
            threading.Thread(target=self._serve, args=(c,), name="mmsb-shard-conn", daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        role = None
        try:
            kind, hello = recv_frame(c) if self._hello_ok(c) else (None, None)
            if kind != HELLO:
                return
            role = hello
            c.settimeout(None)
            while not self.closed:
                kind, payload, bufs = recv_raw(c)
                if kind == CAST:                   # (a message that cannot be read drops the connection)
                    meth, args = pickle.loads(payload, buffers=bufs)
                    self.cast(meth, args)
                    continue
                try:
                    meth, args = pickle.loads(payload, buffers=bufs)
                except Exception as exc:            # e.g. a function from a module this worker cannot import
                    from mmsb.errors import MMSBError

                    send_frame(c, ERROR, _portable(MMSBError(
                        f"the shard worker could not read the request: {type(exc).__name__}: {exc}")))
                    continue
                try:
                    out = self.handle(meth, args)
                except BaseException as exc:      # the caller gets it, with its type
                    send_frame(c, ERROR, _portable(exc))
                else:
                    send_frame(c, OK, out)
        except Exception:                          # closed, reset, or not this protocol: drop the connection
            pass
        finally:
            with self._lock:
                self._conns.discard(c)
            c.close()
            if role == "driver" and not self.closed:
                self.on_driver_lost()

    def _hello_ok(self, c: socket.socket) -> bool:
        """The first bytes of a connection: the token's length and the token (checked before any unpickling)."""
        head = bytearray(4)
        _recv_exact(c, memoryview(head))
        n = struct.unpack("<I", head)[0]
        if n != len(self.token):
            return False
        got = bytearray(n)
        _recv_exact(c, memoryview(got))
        return hmac.compare_digest(bytes(got), self.token)

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles (with the worker's traceback as a note), else an MMSBError saying what it was."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-6))
    try:
        exc.add_note("on the worker:\n" + tb)
    except AttributeError:
        pass
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        from mmsb.errors import MMSBError

        return MMSBError(f"{type(exc).__name__}: {exc} (on the worker:\n{tb})")


class Conn:
    """A client connection to one actor's server: ``call`` (request, reply), ``send``/``recv`` (the two halves,
    to keep several actors busy at once) and ``cast`` (one-way)."""

    def __init__(self, endpoint: tuple, token: bytes, role: str, timeout: float | None, dumps: Callable):
        self.endpoint = tuple(endpoint)
        self.sock = socket.create_connection(self.endpoint, timeout=30)
        self.sock.settimeout(timeout)
        _nodelay(self.sock)
        self.dumps = dumps
        self.sock.sendall(struct.pack("<I", len(token)) + token)
        send_frame(self.sock, HELLO, role)
        self.waiting = 0
        self.broken = False

    def send(self, meth: str, args: tuple) -> int:
        try:
            n = send_frame(self.sock, REQUEST, (meth, args), self.dumps)
        except BaseException:
            self.broken = True
            raise
        self.waiting += 1
        return n

    def recv(self) -> Any:
        """The reply to the oldest request sent; a remote exception is raised here, marked (:func:`is_remote`) so
        that the caller tells it from a failure of the connection (which raises ``OSError`` unmarked)."""
        try:
            kind, obj = recv_frame(self.sock)
        except BaseException:
            self.broken = True
            raise
        self.waiting -= 1
        if kind == ERROR:
            raise _remote(obj, self.endpoint)
        if kind != OK:
            self.broken = True
            raise ProtocolError(f"unexpected frame kind {kind} from {self.endpoint}")
        return obj

    def call(self, meth: str, *args: Any) -> Any:
        self.send(meth, args)
        return self.recv()

    def cast(self, meth: str, args: tuple) -> int:
        try:
            return send_frame(self.sock, CAST, (meth, args), self.dumps)
        except BaseException:
            self.broken = True
            raise

    def close(self) -> None:
        self.broken = True
        try:
            self.sock.close()
        except OSError:
            pass

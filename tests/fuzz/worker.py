"""The process that reads fuzz cases, isolated so that a crash, a hang or a runaway allocation in
bridge (or in libhdf5 under it) is seen as such instead of taking the test run down.

The parent sends :class:`Case` objects over a pipe; the worker runs the format's entry point on
each and answers an :class:`Outcome`. Inside the worker:

- the address space is capped (``RLIMIT_AS``), so an allocation sized by a hostile file fails with
  ``MemoryError`` (a finding) instead of exhausting the machine;
- an audit hook records every file Python opens for writing (reading a model writes nothing);
- inotify watches the "outside" folder of canary files that mutated inputs point at (``../`` shard
  names, absolute paths, HDF5 external links, virtual datasets, external storage): any open there,
  by Python or by C code such as libhdf5, is a read outside the given files.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import struct
import sys
import traceback
from dataclasses import dataclass, field

# Memory cap for the worker. bridge and TVM need ~0.6 GB of address space after import; a case
# that tries to allocate the rest is a finding (a MemoryError, even one wrapped in a typed error).
ADDRESS_SPACE_LIMIT = 3 << 30
IN_OPEN = 0x20
IN_NONBLOCK = 0o4000


@dataclass
class Case:
    """One input: the files to hand to the entry point, and where they live."""

    format: str
    entry: str  # "module:function", called as fn(model, weights)
    model: str
    weights: str | None
    root: str  # the case's folder: everything the reader may touch
    outside: str  # canary folder the reader must never open


@dataclass
class Outcome:
    # "ok", "error" (a bridge.errors exception), "crash" (any other exception); the parent adds
    # "hang" (no answer in time) and "died" (the worker process ended).
    status: str
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    violations: list[str] = field(default_factory=list)


class _Inotify:
    """Watch one folder for opens (Linux inotify through libc; no third-party package)."""

    def __init__(self, folder: str):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self.libc.inotify_init1(IN_NONBLOCK)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, folder.encode(), IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), "inotify unavailable")

    def opened(self) -> list[str]:
        names = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                raw = data[offset + 16 : offset + 16 + length]
                names.append(raw.rstrip(b"\0").decode(errors="replace") or "<folder>")
                offset += 16 + length


_writes: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and len(args) >= 2:
        path, mode = args[0], args[1]
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        if isinstance(mode, str):
            writing = any(c in mode for c in "wax+")
        else:
            writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writing and isinstance(path, (str, bytes)):
            path = os.fsdecode(path)
            if "__pycache__" not in path:  # Python caching bytecode of a first import
                _writes.append(path)


def _call(entry: str):
    module, name = entry.split(":")
    __import__(module)
    return getattr(sys.modules[module], name)


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def run_case(case: Case, watch: _Inotify | None) -> Outcome:
    from bridge.errors import BridgeError

    _writes.clear()
    if watch is not None:
        watch.opened()  # drop stale events
    try:
        _call(case.entry)(case.model, case.weights)
        outcome = Outcome("ok")
    except BridgeError as exc:
        outcome = Outcome("error", type(exc).__name__, str(exc)[:2000])
        if any(isinstance(e, MemoryError) for e in _chain(exc)):
            outcome.violations.append("ran out of memory (a MemoryError behind the typed error)")
            outcome.traceback = "".join(traceback.format_exception(exc))[-6000:]
    except BaseException as exc:
        outcome = Outcome(
            "crash", type(exc).__name__, str(exc)[:2000], traceback.format_exc()[-6000:]
        )
    outcome.violations += [f"wrote {p}" for p in _writes]
    if watch is not None:
        outcome.violations += [f"opened outside file {n}" for n in watch.opened()]
    return outcome


def serve(conn, outside: str, log: str) -> None:
    """Worker main loop: receive a Case, answer an Outcome, until the pipe closes. Native
    messages (TVM warnings, a crash's stack) go to ``log``, not the test output."""
    with open(log, "ab") as handle:
        os.dup2(handle.fileno(), 2)
    # Import everything before capping memory.
    import bridge.convert.layers
    import bridge.convert.walk  # noqa: F401

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    sys.addaudithook(_audit)
    try:
        watch = _Inotify(outside)
    except OSError:
        watch = None
    conn.send("ready")
    while True:
        try:
            case = conn.recv()
        except EOFError:
            return
        os.chdir(case.root)
        conn.send(run_case(case, watch))

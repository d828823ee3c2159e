"""A case confined to the paths it was given (issue 20: "no case reads or writes outside the
paths it was given"), seen through Python's audit hooks (PEP 578).

``with confined(tmp_path, reads=[...]):`` records, from every thread, each file-system event the
code inside raises and, on leaving, fails (``AssertionError`` listing every offending event) when

* anything is written outside ``writes`` (the case's ``tmp_path``): a file opened to write,
  append, create or truncate; a folder made or removed; a rename (both ends); a removal; a link;
  a truncate, chmod, chown, utime or extended attribute; a temporary file or folder; a shutil
  copy, move, tree removal or archive;
* anything is read (a file opened, a folder listed or walked, a copy's source) outside
  ``writes``, ``reads`` (the read-only inputs a case was given, such as a module fixture's run
  folder) and :data:`ALLOWED_READS`, the places that hold code, not user data; or
* a process is started (a child could read or write anything, unseen).

A test module opts in with ``pytestmark = pytest.mark.confined("fixture", ...)``: the call of
each of its tests is confined to its ``tmp_path`` (no folder at all when it takes none), the
named fixtures' folders readable (:func:`given_folder`). ``confined(by_test=True)`` leaves a test
to confine its own parts (a hypothesis test, whose engine keeps its database in .hypothesis/).

The hook is installed once per process (an audit hook cannot be removed) and records only while
a case is active. Each path is resolved as the kernel would (``dir_fd`` and descriptors through
/proc/self/fd, then ``os.path.realpath``): a symlink in ``tmp_path`` pointing out is outside.

Audit hooks see Python code only; native libraries that open a path themselves raise no event.
While a case runs, the ones this project hands a path are wrapped to raise one (:func:`_native`):
safetensors (read, write) and pyarrow's parquet (read, write). The tokenizers library's
``Tokenizer.from_file`` (a Rust type, not wrappable) stays unseen: it reads the tokenizer.json of
a checkpoint whose other files are read through Python. ``os.stat`` and ``os.access`` raise no
event: looking at a path is not reading it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


# Reads outside a case's paths that are not user data, each with its reason. Nothing else: no
# case here reads /sys, /dev, /etc, the rest of /usr or the home folder (add a place only with
# its reason). Each test of the four confined files, run first in a process of its own (so every
# lazy import falls inside it), needs no more than these.
ALLOWED_READS: dict[str, str] = {
    _real(sys.prefix): "the virtual environment: packages imported lazily, and their data",
    _real(sys.base_prefix): "the interpreter and its standard library, imported lazily",
    _real(REPO / "sigma_core"): "the project's package: its modules, configs and data files",
    _real(REPO / "presets"): "the shipped example compositions (some cases name one)",
    _real(REPO / "assets"): "the example images the shipped compositions name",
    _real(REPO / "configs"): "the shipped training configs",
    _real(REPO / "tests"): "the test modules (linecache reads one to show a warning's line)",
    "/proc": "the kernel's view of this process and machine: read by libraries as a command "
    "first imports them (filelock the boot id, torch the mount table and CPU statistics)",
    "/usr/share/zoneinfo": "the system's time zone database: pandas reads it when pyarrow "
    "first imports it",
}
# Writes outside a case's paths that the libraries make as a command first imports them, the
# same for every command and input: the bytecode cache the import system writes beside code it
# imports for the first time since it changed (Python's, and only inside the places above), and
# torch's compile cache folder (made empty, with nothing written in it, when diffusers imports
# bitsandbytes, which wraps functions in torch.compile at import).
PYCACHE = "__pycache__"


def _torch_cache_folder() -> str:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return _real(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir())


def _allowed_write(event: Event) -> bool:
    if PYCACHE in Path(event.path).parts and _under(event.path, ALLOWED_READS):
        return True
    return event.name == "os.mkdir" and event.path == _torch_cache_folder()


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PROCESS_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
     "os.forkpty", "pty.spawn", "os.startfile"}
)  # fmt: skip
LISTINGS = frozenset({"os.listdir", "os.scandir"})


@dataclass(frozen=True)
class Event:
    name: str  # the audit event
    kind: str  # "read", "write" or "process"
    path: str  # resolved, absolute (a process: its arguments)

    def __str__(self) -> str:
        return f"{self.kind} {self.path} ({self.name})"


@dataclass
class Seen:
    """What one case did (every event it raised) and the paths it was given."""

    writes: tuple[str, ...]
    reads: tuple[str, ...]
    events: list[Event] = field(default_factory=list)

    def outside(self) -> list[Event]:
        return [e for e in self.events if not self.allowed(e)]

    def allowed(self, event: Event) -> bool:
        if event.kind == "process":
            return False
        if _under(event.path, self.writes):
            return True
        if event.kind == "write":
            return _allowed_write(event)
        if event.name in LISTINGS and event.path in _import_folders():
            return True  # the import system lists a sys.path entry; no file in it is read
        return _under(event.path, self.reads) or _under(event.path, ALLOWED_READS)


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _import_folders() -> set[str]:
    return {_real(p or ".") for p in sys.path if isinstance(p, str)}


# ----------------------------------------------------------------------------- the hook

_lock = threading.Lock()
_active: list[Seen] = []  # the case being recorded (at most one)
_local = threading.local()  # busy: inside the hook; paused: the test's own look (unwatched)
_installed = False


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"<fd {fd}>"


def _resolve(path: Any, dir_fd: Any = None) -> str | None:
    if isinstance(path, int):
        return _fd_path(path)
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        return None
    if isinstance(dir_fd, int) and not os.path.isabs(text):
        text = os.path.join(_fd_path(dir_fd), text)
    return os.path.realpath(text)


def _open_kind(mode: Any, flags: Any) -> str:
    if isinstance(mode, str):
        return "write" if set(mode) & set("wax+") else "read"
    return "write" if isinstance(flags, int) and flags & WRITE_FLAGS else "read"


# event: ((kind, index of a path argument, index of its dir_fd or None), ...)
PATH_EVENTS: dict[str, tuple[tuple[str, int, int | None], ...]] = {
    "os.listdir": (("read", 0, None),),
    "os.scandir": (("read", 0, None),),
    "os.walk": (("read", 0, None),),
    "os.fwalk": (("read", 0, 4),),
    "glob.glob/2": (("read", 0, 3),),  # its pattern (root_dir joined in _events)
    "pathlib.Path.glob": (("read", 0, None),),
    "pathlib.Path.rglob": (("read", 0, None),),
    "os.getxattr": (("read", 0, None),),
    "os.listxattr": (("read", 0, None),),
    "os.mkdir": (("write", 0, 2),),
    "os.rename": (("write", 0, 2), ("write", 1, 3)),  # os.replace too
    "os.remove": (("write", 0, 1),),  # os.unlink too
    "os.rmdir": (("write", 0, 1),),
    "shutil.rmtree": (("write", 0, 1),),
    "os.symlink": (("write", 1, 2),),
    "os.link": (("read", 0, 2), ("write", 1, 3)),
    "os.truncate": (("write", 0, None),),  # os.ftruncate too (a descriptor)
    "os.chmod": (("write", 0, 2),),
    "os.chown": (("write", 0, 3),),
    "shutil.chown": (("write", 0, None),),
    "os.utime": (("write", 0, 3),),
    "os.setxattr": (("write", 0, None),),
    "os.removexattr": (("write", 0, None),),
    "os.chflags": (("write", 0, None),),
    "os.lockf": (("write", 0, None),),
    "tempfile.mkstemp": (("write", 0, None),),
    "tempfile.mkdtemp": (("write", 0, None),),
    "shutil.copyfile": (("read", 0, None), ("write", 1, None)),
    "shutil.copytree": (("read", 0, None), ("write", 1, None)),
    "shutil.copymode": (("read", 0, None), ("write", 1, None)),
    "shutil.copystat": (("read", 0, None), ("write", 1, None)),
    "shutil.move": (("write", 0, None), ("write", 1, None)),
    "shutil.make_archive": (("write", 0, None), ("read", 2, None)),
    "shutil.unpack_archive": (("read", 0, None), ("write", 1, None)),
    "confine.native.read": (("read", 0, None),),  # the wrapped native openers
    "confine.native.write": (("write", 0, None),),
}


def _events(name: str, args: tuple[Any, ...]) -> Iterator[Event]:
    if name in PROCESS_EVENTS:
        yield Event(name, "process", repr(args[:2])[:300])
    elif name == "open":
        path, mode, flags = (*args, None, None, None)[:3]
        relative = isinstance(path, str | bytes) and not os.path.isabs(os.fsdecode(path))
        if relative and mode is None and _in_rmtree():
            # os.open(name, dir_fd=...) raises "open" without its dir_fd: here only shutil's
            # rmtree walk does that, and the rmtree event itself is checked
            return
        where = _resolve(path)
        if where is not None:
            yield Event(name, _open_kind(mode, flags), where)
    else:
        if name == "glob.glob/2" and isinstance(args[2], str | os.PathLike):
            args = (os.path.join(args[2], args[0]), *args[1:])  # a pattern under root_dir
        for kind, index, fd_index in PATH_EVENTS.get(name, ()):
            if index < len(args) and args[index] is not None:
                dir_fd = args[fd_index] if fd_index is not None and fd_index < len(args) else None
                where = _resolve(args[index], dir_fd)
                if where is not None:
                    yield Event(name, kind, where)


def _in_rmtree() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "shutil" and "rmtree" in frame.f_code.co_name:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _hook(name: str, args: tuple[Any, ...]) -> None:
    if not _active or (name != "open" and name not in PATH_EVENTS and name not in PROCESS_EVENTS):
        return
    if getattr(_local, "busy", False) or getattr(_local, "paused", False):
        return
    _local.busy = True
    try:
        for seen in _active[:1]:
            seen.events.extend(_events(name, args))
    finally:
        _local.busy = False


def install() -> None:
    """Add the audit hook to this process, once."""
    global _installed
    with _lock:
        if not _installed:
            sys.addaudithook(_hook)
            _installed = True


@contextlib.contextmanager
def unwatched() -> Iterator[None]:
    """The test's own look at a place outside its paths (this thread only), not the tool's."""
    _local.paused = True
    try:
        yield
    finally:
        _local.paused = False


# ----------------------------------------------------------------------------- native openers


def _audited(kind: str, original: Callable[..., Any], path_arg: int) -> Callable[..., Any]:
    @functools.wraps(original)
    def call(*args: Any, **kwargs: Any) -> Any:
        if path_arg < len(args) and isinstance(args[path_arg], str | bytes | os.PathLike):
            sys.audit(f"confine.native.{kind}", args[path_arg])
        return original(*args, **kwargs)

    return call


def _native() -> list[tuple[Callable[..., Any], str, int]]:
    """(a native callable that opens a path itself, "read" or "write", its path argument)."""
    import safetensors  # safetensors.torch takes both from here: load_file, save_file use them

    found: list[tuple[Callable[..., Any], str, int]] = [
        (safetensors.safe_open, "read", 0),
        (safetensors.serialize_file, "write", 1),
    ]
    with contextlib.suppress(ImportError):  # pyarrow comes with the train extra
        import pyarrow.parquet as pq

        found += [(pq.read_table, "read", 0), (pq.read_metadata, "read", 0)]
        found += [(pq.write_table, "write", 1)]
    return found


NATIVE_MODULES = ("sigma_core", "safetensors", "pyarrow.parquet")


@contextlib.contextmanager
def _wrapped_native() -> Iterator[None]:
    """Each binding of a native opener in this project's modules and in the libraries' own
    (which call them by name, and are where a module imported later takes them from) replaced
    by one that raises an audit event first; put back after."""
    wrappers = {id(f): (f, _audited(kind, f, arg)) for f, kind, arg in _native()}
    patched: list[tuple[dict[str, Any], str, Any]] = []
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(NATIVE_MODULES):
            continue
        namespace = vars(module)
        for attr, value in list(namespace.items()):
            if id(value) in wrappers and wrappers[id(value)][0] is value:
                patched.append((namespace, attr, value))
                namespace[attr] = wrappers[id(value)][1]
    try:
        yield
    finally:
        for namespace, attr, value in patched:
            namespace[attr] = value


# ----------------------------------------------------------------------------- the case

Paths = Iterable[str | os.PathLike[str]]


@contextlib.contextmanager
def confined(writes: Paths, reads: Paths = (), check: bool = True) -> Iterator[Seen]:
    """Record the code inside; on leaving, fail (when ``check``) if it read or wrote outside its
    paths: ``writes`` (read and written) and ``reads`` (read only)."""
    seen = Seen(tuple(map(_real, writes)), tuple(map(_real, reads)))
    install()
    with _lock:
        if _active:
            raise RuntimeError("a case is already confined")
        _active.append(seen)
    error: Exception | None = None
    try:
        with _wrapped_native():
            yield seen
    except Exception as e:  # checked all the same: a refusal is how a hostile case often ends
        error = e
    finally:
        with _lock:
            _active.clear()
    outside = sorted({str(e) for e in seen.outside()})
    if check and outside:
        raise AssertionError("outside the case's paths:\n  " + "\n  ".join(outside)) from error
    if error is not None:
        raise error


def given_folder(value: Any) -> Path:
    """The folder a fixture gives a case to read: a path, or an object's ``root``."""
    return Path(value if isinstance(value, str | os.PathLike) else value.root)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """The ``confined`` marker: the test's call confined to its tmp_path and its named inputs."""
    marker = item.get_closest_marker("confined")
    if marker is None or marker.kwargs.get("by_test"):
        return (yield)
    args = getattr(item, "funcargs", {})
    writes = [args["tmp_path"]] if "tmp_path" in args else []
    reads = [given_folder(args[name]) for name in marker.args if name in args]
    with confined(writes, reads):
        return (yield)

"""Files from users, and the files flashlb writes.

Reading: a path is opened only if it is a regular file of sane size (a FIFO would block, a
device such as /dev/zero never ends), read once into memory and parsed from there, so what was
checked is what is parsed. Every failure - missing, special, huge, damaged - is one
``ValueError`` that names the file. Nothing is ever unpickled (``weights_only=True``).

Writing: atomically (a reader never sees half a file), with the mode the umask gives (as
``open`` would), under a temporary name of our own pattern; a temporary left behind by a
writer that was killed is removed by the next write to the same file.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import stat
import time
from pathlib import Path

__all__ = ["read_bytes", "read_data", "atomic_write", "torch_bytes", "max_file_bytes", "FORMATS"]

FORMATS = (".json", ".pt", ".npy", ".safetensors")


def max_file_bytes() -> int:
    """The largest file read: a quarter of the physical memory (parsing needs as much again)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not a POSIX system
        total = 16 << 30
    return max(total // 4, 1 << 20)


def read_bytes(path, limit: int | None = None) -> bytes:
    """The bytes of ``path``, a regular file (symlinks followed) of at most ``limit`` bytes."""
    path = Path(path)
    limit = max_file_bytes() if limit is None else limit
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot open it ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                    else "not a regular file")
            raise ValueError(f"{path}: {kind}, not a regular file")
        if st.st_size > limit:
            raise ValueError(f"{path}: {st.st_size} bytes, more than the {limit} this machine can parse")
        chunks, left = [], st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:  # truncated while reading
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def _parse(data: bytes, suffix: str):
    if suffix == ".json":
        return json.loads(data)
    if suffix == ".pt":
        import torch

        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if suffix == ".npy":
        import numpy as np
        import torch

        arr = np.load(io.BytesIO(data), allow_pickle=False)
        return torch.from_numpy(np.array(arr, copy=True))  # writable, owned
    if suffix == ".safetensors":
        from safetensors.torch import load

        return load(data)
    raise AssertionError(suffix)  # pragma: no cover - callers pass a known suffix


def read_data(path, formats: tuple[str, ...] = FORMATS):
    """Parse ``path`` by its suffix: JSON data, or the tensors of a ``.pt``, ``.npy`` or
    ``.safetensors`` file. Any damage is one ``ValueError`` naming the file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in formats:
        raise ValueError(f"{path}: unknown format {suffix!r}; use {', '.join(formats)}")
    data = read_bytes(path)
    try:
        return _parse(data, suffix)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except MemoryError:
        raise ValueError(f"{path}: too large to parse in this machine's memory") from None
    except Exception as exc:  # refused pickles, truncated archives, bad headers, ...
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        if type(exc).__name__ == "UnpicklingError":
            raise ValueError(f"{path}: refused, it holds Python objects, not only tensors ({first})") from None
        raise ValueError(f"{path}: damaged or not a {suffix} file ({type(exc).__name__}: {first})") from None


# ---------------------------------------------------------------------- writing
_TMP = re.compile(r"^\.(?P<name>.+)\.flashlb-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_STALE_AFTER_S = 24 * 3600  # a temporary this old is stale even if its pid was reused


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _clean_stale(folder: Path, name: str) -> None:
    """Remove our temporaries for ``name`` whose writer is gone (killed mid-write)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        m = _TMP.match(entry.name)
        if m is None or m["name"] != name:
            continue
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > _STALE_AFTER_S
            if old or not _alive(int(m["pid"])):
                os.unlink(entry.path)
        except OSError:
            pass


def torch_bytes(obj) -> bytes:
    """``torch.save(obj)`` into memory: the bytes for :func:`atomic_write`."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_write(path, write) -> None:
    """Write ``path`` under a temporary name, then rename it onto ``path``: a reader never sees
    half a file.

    ``write``: the file's bytes (best: serialise in memory first, so that every failure to
    write - a full disk - is an ``OSError``), or a function that writes ``write(tmp_path)``.
    The file gets the mode the umask gives (0666 & ~umask), like any file ``open`` creates.
    A failure to write is a ``ValueError`` naming the path. A symlink is written through: its
    target is replaced (atomically, in the target's folder) and the link stays a link.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    folder = path.parent
    _clean_stale(folder, path.name)
    tmp = folder / f".{path.name}.flashlb-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0666 & ~umask, as the kernel applied it
    except OSError as exc:
        raise ValueError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    try:
        if callable(write):
            os.close(fd)
            fd = -1
            write(tmp)
            if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # a writer that recreated the file
                os.chmod(tmp, mode)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            view = memoryview(write).cast("B")
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise

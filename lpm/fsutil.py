"""Safe output files: one atomic-write helper and one output-path check.

:func:`atomic_write` puts bytes at a path so that readers see either the old file or the complete
new one, never a part::

    bytes --os.open(O_EXCL, 0o666 & ~umask)--> .<name prefix>.<random>.tmp   (same folder)
          --write, fsync--> os.replace / os.link onto the path --> fsync of the folder
          any exception (KeyboardInterrupt, SIGTERM turned into one by the CLI, ENOSPC, ...): the
          temporary is removed and the error names the caller's path, never the temporary

The temporary's name is short (at most 32 characters of the name, then a random suffix), so any name
the file system accepts for the output works. With ``overwrite=False`` an existing file is never
replaced, not even one created while the data were being computed (a hard link is the atomic
"create if absent"). Something that is not a regular file or a symbolic link (a directory, FIFO,
device or socket) is never replaced; a symbolic link is replaced itself, never written through.

:func:`check_output` is the cheap check a command makes *before* doing any work, with the policy of
``gzip``/``zstd``: an output that is the same file as an input (also through a symbolic or hard link)
is always refused; an existing output is refused unless ``force``; with ``force``, a symbolic link
is replaced (not followed), and directories, FIFOs, devices and sockets are still refused.

:func:`open_append` opens the files that grow row by row (a training log, an evaluation's per-image CSV):
only a regular file or a new one; a symbolic link at the path is refused, never written through.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Optional, TextIO

__all__ = ["OutputRefused", "atomic_save", "atomic_write", "atomic_write_text", "broken_link", "check_output", "file_kind", "one_line",
           "open_append", "printable", "remove_stale_temporaries"]

# Characters of the output's name kept in the temporary's name: ".{prefix}.{12 hex}.tmp" then has at
# most 1 + 32 * 4 + 1 + 12 + 4 = 146 bytes (4 bytes per character in UTF-8), well under NAME_MAX = 255.
_TMP_PREFIX_CHARS = 32
_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def one_line(exc: BaseException, limit: int = 300, *, with_type: bool = False) -> str:
    """A library's error as one line for our own messages: whitespace collapsed; past ``limit`` characters cut
    after the last whole sentence that fits (else the last whole word, then "…"), never inside a word.
    ``with_type`` puts the exception's class name first; an empty message gives the class name."""
    text = " ".join(str(exc).split())
    if with_type or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    end = head.rfind(". ")
    if end >= limit // 3:
        return head[: end + 1]
    return head[: head.rfind(" ")].rstrip(" ,;:") + " …" if " " in head else head[:limit] + "…"


def printable(text: str) -> str:
    """``text`` safe to print: control and format characters (escape sequences, bidirectional overrides,
    newlines) written as ``\\x1b``-style escapes, so that text from a file cannot move the cursor, retitle
    the terminal or forge output lines."""
    def one(c: str) -> str:
        if unicodedata.category(c)[0] != "C":
            return c
        if "\udc80" <= c <= "\udcff":  # a byte of a file name that is not UTF-8 (os.fsdecode's escape)
            return f"\\x{ord(c) - 0xDC00:02x}"
        return c.encode("unicode_escape").decode("ascii")

    return "".join(one(c) for c in text)


class OutputRefused(ValueError):
    """:func:`check_output` refused an output path; the message is one line and names the path."""


def file_kind(mode: int) -> str:
    """What a non-regular file is (``"directory"``, ``"FIFO"``, ``"character device"``, ...), from ``st_mode``."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "special file"


def broken_link(path: str | os.PathLike[str]) -> Optional[str]:
    """What is wrong with ``path`` if it is a symbolic link that leads nowhere: ``"a symbolic link to a missing
    file (<target>)"`` or ``"a symbolic link in a loop"``; ``None`` for anything else (for messages that would
    otherwise just say "not found")."""
    path = Path(path)
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except FileNotFoundError:
        return f"a symbolic link to a missing file ({path.readlink()})"
    except (RuntimeError, OSError) as e:  # a loop: RuntimeError before Python 3.13, ELOOP after
        if isinstance(e, RuntimeError) or e.errno == errno.ELOOP:
            return "a symbolic link in a loop"
    return None


def _replaceable(mode: int) -> bool:
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)


def _named(exc: OSError, path: str) -> OSError:
    """The same error (same subclass via errno) naming ``path`` instead of whatever file it named."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), path)


#: Trees of devices and process files: no output goes there (``/dev/stdout`` is a link into ``/proc``), except
#: the shared-memory file system ``/dev/shm``.
_SYSTEM_TREES = ("/dev", "/proc", "/sys") if os.name == "posix" else ()


def check_output(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Refuse (:class:`OutputRefused`) an output path that would lose data or cannot be written.

    In order: a directory (or a path ending in ``/``) is refused; a folder that does not exist is
    refused; an output that is the same file as one of ``inputs`` (``os.stat`` device and inode, so
    also through symbolic and hard links) is refused even with ``force``; an existing output is refused
    unless ``force``; with ``force`` a symbolic link (even a dangling one) may be replaced -- the link
    itself, never its target -- but a FIFO, device or socket is refused. Other errors of the file
    system (name too long, permission denied on the folder, ...) propagate as ``OSError`` naming
    ``path``. A check only: :func:`atomic_write` (with ``overwrite=force``) keeps the promise if the
    path changes while the output is being computed.
    """
    p = os.fspath(path)
    if not p or p.endswith(os.sep) or (os.altsep and p.endswith(os.altsep)):
        raise OutputRefused(f"{p or repr(p)}: not a file name (the output must name a file)")
    if p == "-":  # not a file: the convention for standard output, which lpm does not write to
        raise OutputRefused("-: lpm writes files, not standard output; name the output file (./- for a file "
                            "called -)")
    folder = os.path.realpath(os.path.dirname(os.path.abspath(p)))
    if (any(folder == top or folder.startswith(top + os.sep) for top in _SYSTEM_TREES)
            and not (folder == "/dev/shm" or folder.startswith("/dev/shm/"))) \
            or (os.path.islink(p) and os.readlink(p).startswith(tuple(t + os.sep for t in _SYSTEM_TREES))):
        # /dev/stdout and the like (a link to /proc/self/fd/1): --force replaced the link itself, as root
        raise OutputRefused(f"{p}: is a device or process file (under {' or '.join(_SYSTEM_TREES)}); lpm writes "
                            "regular files only, not standard output: name the output file")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _named(exc, p) from None
    if st is None:
        folder = os.path.dirname(p) or os.curdir
        if not os.path.isdir(folder):
            raise OutputRefused(f"{p}: the folder {folder} does not exist")
        _check_writable_folder(p)
        return
    if stat.S_ISDIR(st.st_mode):
        raise OutputRefused(f"{p}: is a directory (the output must name a file)")
    try:
        target = os.stat(p)
    except OSError:  # a dangling symbolic link
        target = None
    if target is not None:
        for src in inputs:
            try:
                s = os.stat(src)
            except OSError:
                continue  # reading the input reports it
            if (s.st_dev, s.st_ino) == (target.st_dev, target.st_ino):
                raise OutputRefused(
                    f"{p}: is the same file as the input {os.fspath(src)}; refusing to overwrite the input"
                )
    if target is not None and not stat.S_ISREG(target.st_mode) and not stat.S_ISDIR(target.st_mode):
        # a link to a device, FIFO or terminal (/dev/stdout): replacing the link would destroy it, writing
        # through it is not a file; refused with or without --force
        kind = file_kind(st.st_mode) if not stat.S_ISLNK(st.st_mode) else f"link to a {file_kind(target.st_mode)}"
        raise OutputRefused(f"{p}: is a {kind}, not a regular file; lpm writes regular files only (not replaced "
                            "even with --force)")
    if not force:
        raise OutputRefused(f"{p}: already exists; use --force to replace it")
    if not _replaceable(st.st_mode):
        raise OutputRefused(f"{p}: is a {file_kind(st.st_mode)}, not a regular file; not replaced even with --force")
    _check_writable_folder(p)


def _check_writable_folder(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"cannot create files in the folder {folder}", path)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring); permissions ``0o666 & ~umask``.

    ``overwrite=False`` refuses (``FileExistsError``) a path that exists when the file is put in
    place. A directory, FIFO, device or socket at ``path`` is never replaced (``IsADirectoryError`` /
    ``OSError``). Every ``OSError`` names ``path``; the temporary is removed on any exception.
    """

    def fill(fd: int, tmp: str) -> None:  # noqa: ARG001
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    _atomic(path, fill, overwrite)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> None:
    """:func:`atomic_write` of ``text`` encoded as UTF-8."""
    atomic_write(path, text.encode("utf-8"), overwrite=overwrite)


def open_append(path: str | os.PathLike[str], *, encoding: str = "utf-8") -> TextIO:
    """Open ``path`` to append text (created if absent; ``newline=""`` as the csv module wants).

    Refused (``OSError`` naming ``path``): a symbolic link (a log or table is never written through a link
    left in an output folder), a directory, FIFO, device or socket.
    """
    name = os.fspath(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    if os.path.islink(name):  # also where O_NOFOLLOW does not exist
        raise OSError(errno.ELOOP, f"{name}: is a symbolic link; lpm does not append through links (remove it)")
    try:
        fd = os.open(name, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{name}: is a symbolic link; lpm does not append through links (remove it)"
                          ) from None
        raise _named(exc, name) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{name}: is a {file_kind(mode)}, not a regular file")
    return os.fdopen(fd, "a", newline="", encoding=encoding)


def atomic_save(
    path: str | os.PathLike[str], save: Callable[[str], None], *, overwrite: bool = True
) -> None:
    """Like :func:`atomic_write` for libraries that write to a file name themselves: ``save(tmp)`` writes
    the temporary (e.g. ``lambda f: torch.save(obj, f)`` or safetensors' ``save_file(tensors, f)``)."""

    def fill(fd: int, tmp: str) -> None:  # noqa: ARG001
        save(tmp)
        # the library may have replaced the file rather than written through our fd (safetensors makes it
        # 0600): give it the usual permissions of a new file and make its data durable by name
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _fsync_path(tmp)

    _atomic(path, fill, overwrite)


def _atomic(path: str | os.PathLike[str], fill: Callable[[int, str], None], overwrite: bool) -> None:
    p = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(p))
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"output folder {folder} does not exist", p)
    tmp = None
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        while tmp is None:
            candidate = os.path.join(folder, f".{name[:_TMP_PREFIX_CHARS]}.{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(candidate, flags, 0o666)  # the umask applies, as for open()
            except FileExistsError:  # pragma: no cover - 48 random bits
                continue
            tmp = candidate
        try:
            fill(fd, tmp)
            os.fsync(fd)
        finally:
            os.close(fd)
        _put_in_place(tmp, p, overwrite)
        tmp = None
    except OSError as exc:
        raise _named(exc, p) from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    _fsync_path(folder)  # make the new name durable too; best effort


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[str]:
    """Remove the temporaries :func:`atomic_write` / :func:`atomic_save` left beside ``path`` when a process
    was killed while writing it (``.{name}.{12 hex}.tmp``, regular files only); their names. Call it only where
    nothing else can be writing ``path`` now (e.g. a training run holding its out_dir's lock)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    prefix = f".{name[:_TMP_PREFIX_CHARS]}."
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        middle = entry[len(prefix):-len(".tmp")]
        if not (entry.startswith(prefix) and entry.endswith(".tmp") and len(middle) == 12
                and all(c in "0123456789abcdef" for c in middle)):
            continue
        full = os.path.join(folder, entry)
        try:
            if stat.S_ISREG(os.lstat(full).st_mode):
                os.unlink(full)
                removed.append(entry)
        except OSError:
            pass
    return removed


def _fsync_path(path: str) -> None:
    """fsync a file or folder by name; best effort (not every file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _put_in_place(tmp: str, path: str, overwrite: bool) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not _replaceable(st.st_mode):
            raise OSError(errno.EEXIST, f"is a {file_kind(st.st_mode)}, not a regular file; not replaced", path)
        if not overwrite:
            raise FileExistsError(errno.EEXIST, "already exists; not replaced", path)
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic "create if absent": fails if the path appeared meanwhile
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "already exists; not replaced", path) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        os.replace(tmp, path)  # no hard links here (FAT, some network file systems): checked just above
    else:
        os.unlink(tmp)

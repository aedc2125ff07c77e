"""The one output-folder protocol of every command that writes a folder (register, demo, validate, landmarks, batch).

    with OutputFolder(args.output_dir, overwrite=args.overwrite, inputs=[args.fixed, ...]) as out:
        write everything into out.staging
    # a clean exit renames out.staging to the output folder; an exception (or a signal) removes it

Rules, in the order they apply:

* :meth:`OutputFolder.check` (no change on disk): the output must not be an existing file, must not be the
  working folder or one of its ancestors, must not contain any input nor lie inside an input folder (a landmark
  session), and must be absent or empty unless
  ``overwrite``; its name must fit the file system.
* entering: the missing parent folders are created (and removed again, if still empty, when the run fails); a lock
  ``.NAME.lock`` beside the output is taken with ``fcntl.flock`` for the whole run, so a second run on the same
  folder refuses at once; staging folders ``.NAME.partial-<pid>-...`` left by a killed run (their owner cannot
  hold the lock, and its pid is gone) are removed; a fresh staging folder is made.
* a clean exit renames the staging folder into place; an existing output (``overwrite``) is replaced only then.
* Any exit: the staging folder is removed, the lock released and its file deleted.

File-system errors while staging (permission denied, read-only file system, disk full, name too long) become a
:class:`~CrossModalRegLib.errors.CrossModalRegError` naming the folder, chosen by ``errno``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import socket
import tempfile

from .errors import CrossModalRegError

_FS_ERRORS = {
    errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "name too long for the file system",
}
_PARTIAL_RE = re.compile(r"\.partial-(\d+)-")
_SHORT_NAME = 100  # staging/lock names derived from longer output names are shortened (with a hash)


def fs_error_message(exc: OSError, where: str) -> str | None:
    """A user message for a file-system error by its errno, or None when it is not one of those."""
    reason = _FS_ERRORS.get(getattr(exc, "errno", None))
    return f"cannot write '{where}': {reason}" if reason else None


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _short(name: str) -> str:
    if len(name) <= _SHORT_NAME:
        return name
    return name[:60] + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputFolder:
    """An output folder written atomically under a lock (see the module docstring)."""

    def __init__(self, path: str, *, overwrite: bool = False, inputs=(), option: str = "--output-dir"):
        self.final = os.path.abspath(path)
        self.overwrite = overwrite
        self.inputs = [p for p in inputs if p]
        self.option = option
        self.parent = os.path.dirname(self.final)
        self.short = _short(os.path.basename(self.final))
        self.lock_path = os.path.join(self.parent, f".{self.short}.lock")
        self.staging = None
        self._lock_fd = None
        self._created = []

    # ------------------------------------------------------------------------------------------ checks
    def check(self) -> None:
        """Refuse an output that cannot or must not be written; changes nothing on disk."""
        final, opt = self.final, self.option
        real = os.path.realpath(final)
        if os.path.lexists(final) and not os.path.isdir(final):
            raise CrossModalRegError(f"{opt} '{final}' is an existing file, not a folder: choose a folder name")
        if _inside(os.path.realpath(os.getcwd()), real):
            raise CrossModalRegError(f"{opt} '{final}' is the working folder or one of its parents: it would be "
                                     "replaced; choose a new folder, e.g. a subfolder")
        for p in self.inputs:
            if _inside(os.path.realpath(os.path.abspath(p)), real):
                raise CrossModalRegError(f"{opt} '{final}' contains the input '{p}': the output folder is replaced "
                                         "as a whole, so choose an output folder that holds none of the inputs")
            if os.path.isdir(p) and _inside(real, os.path.realpath(p)):
                raise CrossModalRegError(f"{opt} '{final}' lies inside the input folder '{p}': it would replace "
                                         "part of it; choose an output folder outside it")
        name = os.path.basename(final)
        limit = self._name_max()
        if len(name.encode()) > limit:
            raise CrossModalRegError(f"{opt} name '{name[:40]}...' is {len(name.encode())} bytes long; the file "
                                     f"system allows {limit}: choose a shorter name")
        if os.path.isdir(final) and os.listdir(final) and not self.overwrite:
            raise CrossModalRegError(f"{opt} '{final}' is not empty: choose another folder or pass --overwrite")

    def _name_max(self) -> int:
        probe = self.parent
        while probe and not os.path.isdir(probe):
            probe = os.path.dirname(probe)
        try:
            return int(os.pathconf(probe or "/", "PC_NAME_MAX"))
        except (OSError, ValueError):
            return 255

    # ------------------------------------------------------------------------------------------ the run
    def __enter__(self):
        self.check()
        try:
            self._make_parents()
            self._acquire()
            self._remove_stale()
            self.staging = tempfile.mkdtemp(prefix=f".{self.short}.partial-{os.getpid()}-", dir=self.parent)
            os.chmod(self.staging, 0o755)  # mkdtemp makes it private; the results are ordinary files
        except OSError as exc:
            self._cleanup()
            msg = fs_error_message(exc, self.parent)
            if msg is None:
                raise
            raise CrossModalRegError(f"{self.option}: {msg}: choose another folder") from None
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._commit()
            except OSError as err:
                translated = self._translated(err)
                self._cleanup()
                raise translated or err from None
            self._release()
            self._created = []  # a finished output keeps the parents made for it
            return False
        translated = self._translated(exc) if isinstance(exc, OSError) else None
        self._cleanup()
        if translated is not None:
            raise translated from None
        return False

    def _translated(self, exc: OSError):
        """A CrossModalRegError for a file-system error of this output (a full disk, or an error on a path of the
        staging folder, the lock or the output), or None: not ours (an input's, say), raised as it is."""
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        ours = False
        if exc.filename is not None:
            path = os.path.abspath(os.fsdecode(exc.filename))
            ours = path == self.lock_path or _inside(path, self.final) or bool(
                self.staging and _inside(path, self.staging))
        msg = fs_error_message(exc, self.final) if (full or ours) else None
        return CrossModalRegError(f"{self.option}: {msg}; nothing was written") if msg else None

    def _make_parents(self):
        missing = []
        p = self.parent
        while not os.path.isdir(p):
            missing.append(p)
            p = os.path.dirname(p)
        for p in reversed(missing):
            os.mkdir(p)
            self._created.append(p)

    def _acquire(self):
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                os.close(fd)
                raise CrossModalRegError(
                    f"{self.option} '{self.final}' is being written by another run ({holder or 'unknown process'}): "
                    "wait for it to finish or choose another folder") from None
            try:  # the file may have been deleted by the previous holder between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
                self._lock_fd = fd
                return
            os.close(fd)

    def _remove_stale(self):
        """Staging folders of this output left by killed runs: with the lock held, their owner is gone."""
        prefix = f".{self.short}.partial-"
        for name in os.listdir(self.parent):
            m = _PARTIAL_RE.search(name)
            if name.startswith(prefix) and m and not _pid_alive(int(m.group(1))):
                shutil.rmtree(os.path.join(self.parent, name), ignore_errors=True)
            elif name.startswith(f".{self.short}.old-") and m is None:
                shutil.rmtree(os.path.join(self.parent, name), ignore_errors=True)

    def _commit(self):
        replace_folder(self.staging, self.final)
        self.staging = None

    def _release(self):
        if self._lock_fd is not None:
            try:
                os.unlink(self.lock_path)  # while still holding it: see _acquire
            except FileNotFoundError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def _cleanup(self):
        """After a failure: remove the staging folder, release the lock, remove the parents we made if empty."""
        if self.staging:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        self._release()
        for p in reversed(self._created):
            try:
                os.rmdir(p)
            except OSError:
                break
        self._created = []


def replace_folder(staging: str, final: str) -> None:
    """Rename ``staging`` to ``final``; an existing ``final`` is set aside first and removed only after."""
    final = os.path.abspath(final)
    old = None
    if os.path.isdir(final):
        if not os.listdir(final):
            os.rmdir(final)
        else:
            old = tempfile.mkdtemp(prefix=f".{_short(os.path.basename(final))}.old-", dir=os.path.dirname(final))
            os.rmdir(old)
            os.replace(final, old)
    try:
        os.replace(staging, final)
    except BaseException:
        if old:
            os.replace(old, final)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def check_reused_folder(path: str, *, inputs=(), replaced: str = "", option: str = "--output-dir") -> str:
    """The checks for a folder filled incrementally and reused to resume (batch), which is never replaced as a
    whole: not an existing file, and no input inside its sub-folder ``replaced`` (whose entries are replaced).
    Returns the absolute path."""
    final = os.path.abspath(path)
    if os.path.lexists(final) and not os.path.isdir(final):
        raise CrossModalRegError(f"{option} '{final}' is an existing file, not a folder: choose a folder name")
    sub = os.path.realpath(os.path.join(final, replaced))
    for p in inputs:
        if p and _inside(os.path.realpath(os.path.abspath(p)), sub):
            raise CrossModalRegError(f"input '{p}' lies inside '{sub}', whose folders this run replaces: move it "
                                     f"out or choose another {option}")
    return final

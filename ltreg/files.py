"""Every file ltreg writes, hashes or trusts goes through here: atomic no-follow writes, hashes,
manifests, bounded reads and the run-folder lock.

Why one module: a run folder is shared with the user (and with whatever else can write there), so
a write must never follow a link planted at a name ltreg uses, a folder must never be trusted on its
own word, and two trainings must never share one folder. The rules, as git's lock files,
``filelock``, safetensors and ``huggingface_hub``'s upload rules have them:

- **Writes** go to a temporary file with a unique name made by exclusive create in the target folder
  (``tempfile.mkstemp`` / ``mkdtemp``: ``O_CREAT | O_EXCL``, so a planted link or file is never opened),
  are flushed and fsynced, get the mode the umask gives (``0o666 & ~umask``), are renamed over the
  final name (``os.replace`` replaces a link at that name, it does not write through it) and the folder
  is fsynced. With ``root`` given, the target folder must lie inside ``root`` with no link on the way.
- **Temporary names** all start with :data:`TMP_PREFIX`; :func:`clean_leftovers` removes them (a
  killed run's) at the next start, under the run-folder lock.
- **Manifests** (``manifest.json``) record who wrote a folder (``"ltreg"``: the version), what it is
  (``kind``: ``run``, ``model`` or ``checkpoint``) and the SHA-256 of each file. A folder is trusted
  only with a complete, matching manifest: a missing manifest or a missing entry is an error naming
  the file, never a reason to skip the check.
- **The run-folder lock** (:class:`RunLock`) is ``filelock``'s ``FileLock`` on ``.ltreg.lock``: an
  ``flock`` the kernel drops when its process dies, so a killed run never leaves a stale lock, and a
  second training into the same folder stops with :class:`~ltreg.errors.RunFolderError` naming the
  holder (its pid, read from the lock file).
- **Reads** of user files are bounded (:func:`read_bounded`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ltreg.errors import CheckpointError, RunFolderError
from ltreg.layout import MANIFEST
from ltreg.version import __version__

LOCK_FILE = ".ltreg.lock"
#: Every temporary file or folder ltreg makes starts with this (so leftovers are found by name).
TMP_PREFIX = ".ltreg-tmp-"
#: A manifest larger than this is refused before it is parsed (a real one is a few kB).
MAX_MANIFEST_BYTES = 1 << 20
KINDS = ("run", "model", "checkpoint")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def file_mode() -> int:
    """The mode a new file gets under the current umask (what ``open(name, "w")`` gives)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def follow_umask(folder: Path) -> None:
    """Give the regular files of ``folder`` (a checkpoint another library wrote) the mode the umask gives."""
    mode = file_mode()
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink():
            os.chmod(entry, mode)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: the directory entry is data of the folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform or file system without directory fds: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_inside(folder: Path, root: Path) -> None:
    """Refuse ``folder`` unless it is ``root`` or a folder below it reached without any symbolic link.

    ``root`` itself is the user's choice (``--output-dir`` may be a link); what ltreg creates or meets
    below it must be real folders, or a write would land outside the run folder.
    """
    root_real = Path(os.path.realpath(root))
    try:
        rel = Path(os.path.abspath(folder)).relative_to(os.path.abspath(root))
    except ValueError:
        raise RunFolderError(f"{folder} is outside the run folder {root}: ltreg writes only inside it. Pass an "
                             f"--output-dir that holds it") from None
    here = Path(os.path.abspath(root))
    for part in rel.parts:
        here = here / part
        if here.is_symlink():
            raise RunFolderError(f"{here} is a symbolic link (to {os.path.realpath(here)}): ltreg writes only inside "
                                 f"the run folder {root} and never through a link. Remove the link, or pass another "
                                 f"--output-dir")
    if not Path(os.path.realpath(folder)).is_relative_to(root_real):
        raise RunFolderError(f"{folder} resolves to {os.path.realpath(folder)}, outside the run folder {root}; "
                             f"remove the link on its way, or pass another --output-dir")


def _finish(tmp: str, path: Path) -> None:
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes | str, *, root: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a part,
    and no link or file planted at any name is followed (see the module docstring)."""
    path = Path(path)
    if root is not None:
        check_inside(path.parent, root)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=f"-{path.name}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        _finish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_with(path: Path, writer: Callable[[str], None], *, root: Path | None = None) -> None:
    """Like :func:`write_atomic` for a library that writes a file by name (safetensors, matplotlib):
    ``writer(tmp_name)`` writes inside a fresh private folder (``mkdtemp``: mode 0700, unique), then
    the file is fsynced, renamed into place, and the folder removed."""
    path = Path(path)
    if root is not None:
        check_inside(path.parent, root)
    tmp_dir = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        tmp = os.path.join(tmp_dir, path.name)
        writer(tmp)
        fd = os.open(tmp, os.O_RDONLY | _NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _finish(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def make_dir(path: Path, *, root: Path | None = None) -> None:
    """``mkdir -p`` that refuses a link on the way (with ``root``: below ``root``)."""
    path = Path(path)
    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
        check_inside(path.parent if path != Path(root) else path, root)
    path.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise RunFolderError(f"{path} is not a real folder (a link or a file): remove it, or pass another --output-dir")


def make_dir_exclusive(path: Path) -> None:
    """Create the folder ``path`` fresh: whatever is at that name (a link, a file, a stale folder) is
    removed as the entry it is, then ``mkdir`` creates it (failing if something reappears)."""
    remove(path)
    os.mkdir(path)


def remove(path: Path) -> None:
    """Remove ``path`` as the entry it is: a link or file is unlinked (never followed), a folder removed
    with its contents (``shutil.rmtree`` does not follow links inside)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif os.path.lexists(path):  # a socket, fifo, ...
        path.unlink()


def clean_leftovers(*folders: Path) -> list[str]:
    """Remove the temporary files and folders a killed run left in ``folders`` (names starting with
    :data:`TMP_PREFIX`); the caller holds the run-folder lock. Returns what was removed."""
    gone = []
    for folder in folders:
        if not folder.is_dir() or folder.is_symlink():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(TMP_PREFIX):
                remove(entry)
                gone.append(str(entry))
    return gone


def probe_writable(folder: Path) -> None:
    """Raise ``OSError`` unless a file can be created, written and removed in ``folder`` (unique name)."""
    with tempfile.TemporaryFile(prefix=TMP_PREFIX, dir=folder) as fh:
        fh.write(b"0" * 1024)
        fh.flush()


def open_regular(path: Path, follow: bool = False) -> int:
    """A read-only descriptor of the regular file ``path``; a link (unless ``follow``), folder or device
    is refused with :class:`CheckpointError`."""
    try:
        fd = os.open(path, os.O_RDONLY | (0 if follow else _NOFOLLOW))
    except OSError as exc:
        if exc.errno == 40 or (not follow and os.path.islink(path)):  # ELOOP: O_NOFOLLOW met a link
            raise CheckpointError(f"{path} is a symbolic link (to {os.path.realpath(path)}): ltreg reads and publishes "
                                  f"only the regular files it wrote. Replace the link with the file it should be") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path} is not a regular file: ltreg reads only regular files there; remove it")
    return fd


def sha256(path: Path, follow: bool = True) -> str:
    """Hex SHA-256 of a regular file, read in 1 MiB blocks (``follow=False``: a link is refused)."""
    h = hashlib.sha256()
    with os.fdopen(open_regular(path, follow), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_bounded(path: Path, limit: int, what: str, fix: str) -> bytes:
    """The bytes of ``path`` when it holds at most ``limit`` bytes; else an error naming the size, the
    limit and ``fix`` (a size limit is not a corrupt file)."""
    size = os.stat(path).st_size
    if size > limit:
        raise CheckpointError(f"{what} {path} is {size} bytes, more than the {limit} bytes such a file can hold "
                              f"(the file is not corrupt, it is too large to be one ltreg reads); {fix}")
    with open(path, "rb") as fh:
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise CheckpointError(f"{what} {path} grew past {limit} bytes while it was read; {fix}")
    return raw


def plain_name(name: str) -> bool:
    """A file name without separators or a leading dot: what a manifest may list."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".") and "\0" not in name


@dataclass
class Manifest:
    """``manifest.json``: who wrote a folder, what it is, and the SHA-256 of each of its files."""

    kind: str
    sha256: dict[str, str] = field(default_factory=dict)
    version: str = __version__

    def to_json(self) -> str:
        return json.dumps({"ltreg": self.version, "kind": self.kind, "sha256": self.sha256}, indent=1)

    @classmethod
    def read(cls, folder: Path, label: str) -> Manifest:
        """The manifest of ``folder``; missing, oversized or malformed is a :class:`CheckpointError` naming it."""
        path = folder / MANIFEST
        if not path.is_file():
            raise CheckpointError(f"{label} has no {MANIFEST} ({path}), so ltreg cannot tell whether its files are the "
                                  f"ones it wrote: it is not a folder ltreg finished writing. Save, train or download "
                                  f"it again with ltreg")
        raw = read_bounded(path, MAX_MANIFEST_BYTES, f"the {MANIFEST} of {label}", "save the folder again")
        try:
            data = json.loads(raw)
            digest = data["sha256"]
            items = {str(k): str(v) for k, v in digest.items()}
            kind = str(data.get("kind", "model"))
            version = str(data.get("ltreg", ""))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{MANIFEST} of {label} ({path}) is corrupt (not ltreg's JSON with a sha256 mapping); "
                                  f"the folder cannot be verified: save, train or download it again") from exc
        for name in items:
            if not plain_name(name):
                raise CheckpointError(f"{MANIFEST} of {label} names {name[:80]!r}, which is not a plain file name: "
                                      f"refused (a manifest lists files of its own folder only)")
        return cls(kind=kind, sha256=items, version=version)

    def verify(self, folder: Path, label: str, need: Iterable[str] | None = None, follow: bool = True) -> None:
        """Check files against their SHA-256. ``need``: the files the caller will use (each must be listed
        and match; listed files absent here are fine); None: the whole folder (every listed file present
        and matching, no regular file unlisted)."""
        fix = ("Start over with --overwrite (or resume from an earlier checkpoint after deleting this one)"
               if self.kind == "checkpoint" else "Save, train or download the model again")
        names = list(need) if need is not None else sorted(self.sha256)
        if need is None:
            extra = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST and not p.name.startswith("."))
            unlisted = [n for n in extra if n not in self.sha256]
            if unlisted:
                raise CheckpointError(f"{label} holds {', '.join(unlisted[:4])}, which its {MANIFEST} does not list: "
                                      f"a file ltreg did not write is never loaded. {fix}")
        for name in names:
            if name not in self.sha256:
                raise CheckpointError(f"the {MANIFEST} of {label} has no entry for {name}, so {name} cannot be verified "
                                      f"and is not loaded. {fix}")
            file = folder / name
            if not os.path.lexists(file):
                raise CheckpointError(f"{label} lacks {name}, which its {MANIFEST} lists. {fix}")
            if sha256(file, follow) != self.sha256[name]:
                raise CheckpointError(f"{label}: {name} does not match its SHA-256 in {MANIFEST} (corrupted on disk or "
                                      f"edited). {fix}")


def write_manifest(folder: Path, kind: str, files: Iterable[str] | None = None, *, root: Path | None = None) -> Manifest:
    """Hash ``files`` (default: every regular, non-hidden file of ``folder``) into ``folder/manifest.json``."""
    if files is None:
        files = sorted(p.name for p in folder.iterdir()
                       if p.name != MANIFEST and not p.name.startswith(".") and p.is_file() and not p.is_symlink())
    manifest = Manifest(kind=kind, sha256={name: sha256(folder / name, follow=False) for name in files})
    write_atomic(folder / MANIFEST, manifest.to_json(), root=root)
    return manifest


def owned_by_ltreg(folder: Path) -> bool:
    """Whether ``folder`` holds a manifest ltreg wrote (its word on the folder's kind; files are checked
    separately when they are used)."""
    path = folder / MANIFEST
    if path.is_symlink() or not path.is_file():
        return False
    try:
        data = json.loads(read_bounded(path, MAX_MANIFEST_BYTES, MANIFEST, "remove it"))
    except (ValueError, CheckpointError, OSError, RecursionError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("sha256"), dict) and ("ltreg" in data or "kind" in data
                                                                                or len(data) == 1)


class RunLock:
    """Held by the one process training into a run folder (the main process); see the module docstring."""

    def __init__(self, run_dir: Path) -> None:
        import filelock

        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        # a singleton per path: in one process (a notebook building runs again) the lock is re-entrant;
        # another process is refused
        self._lock = filelock.FileLock(str(self.path), timeout=0, is_singleton=True)

    def acquire(self) -> RunLock:
        import filelock

        make_dir(self.run_dir)
        if self.path.is_symlink():  # filelock 4 refuses it too; older versions would open the link's target
            raise RunFolderError(f"{self.path} is a symbolic link (to {os.path.realpath(self.path)}): ltreg never "
                                 f"writes through a link. Remove it, or pass another --output-dir")
        try:
            self._lock.acquire()
        except filelock.Timeout:
            holder = self._holder()
            raise RunFolderError(
                f"another ltreg process{holder} is training into {self.run_dir} right now (it holds {self.path}). "
                f"Wait for it to finish, stop it, or pass another --output-dir; a killed process releases the lock "
                f"by itself"
            ) from None
        except OSError as exc:
            raise RunFolderError(f"cannot lock the run folder {self.run_dir} ({self.path}: {exc.strerror or exc}); if "
                                 f"{LOCK_FILE} is a link or not a file, remove it, or pass another --output-dir") from exc
        with contextlib.suppress(OSError):  # who holds it, for the next one's message; the lock is the flock
            fd = os.open(self.path, os.O_WRONLY | _NOFOLLOW)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
        return self

    def _holder(self) -> str:
        try:
            fd = os.open(self.path, os.O_RDONLY | _NOFOLLOW)
            with os.fdopen(fd, "rb") as fh:
                pid = fh.read(32).decode().strip()
        except (OSError, UnicodeDecodeError):
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["MANIFEST", "LOCK_FILE", "TMP_PREFIX", "Manifest", "RunLock", "write_atomic", "write_with", "write_manifest",
           "sha256", "check_inside", "make_dir", "make_dir_exclusive", "remove", "clean_leftovers", "probe_writable",
           "open_regular", "read_bounded", "owned_by_ltreg", "plain_name", "file_mode", "follow_umask", "fsync_dir"]

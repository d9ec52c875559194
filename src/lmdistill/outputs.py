"""An output a command owns: checked before any work, locked while written, claimed with its job's config.

Every command that writes results follows the same rules (see docs/bad_input.md):

* The path is checked before any work: a folder output is not an existing file, a file output is not a
  folder, no parent is a file (`out.txt/sub`), and the folder it goes in is not on a read-only file
  system (nor one the user may not write).
* Ownership is recorded in a marker file, the job's resolved config as YAML: `lmdistill_config.yaml` for
  `train`, `recipe_config.yaml` for `recipe`, `<output>.config.yaml` for `generate` (capture keeps its
  `manifest.json`, export its `lmdistill_export.json`). A folder holding a *different* job's output
  (another config, another command's marker, or this command's files without a marker) is refused with
  what differs and what to do, unless the user asks to overwrite. The same job again is welcome: that is
  how generate and capture resume, and how a training run is resumed.
* Overwrite replaces only what the same command wrote. Another command's folder, a file inside one (a
  train run, a capture store, an export, a recipe folder) and a file without this command's record (for
  generate, any file without its `<output>.config.yaml`) are refused whatever the flag, and the refusal
  does not suggest it.
* While a command writes, an OS lock (`fcntl.flock` on a lock file beside the marker) keeps a second
  command out. The kernel drops the lock when the process exits or crashes, so a lock file left behind
  never blocks anyone. Under torchrun only the primary process (rank 0) claims; the others only check.
  The lock file is opened without following a symbolic link; a link there is refused.
* A write the file system refuses while the output is claimed (no space left, read-only, permission
  denied) ends the command with one line naming the path and the cause (`writing`), not a traceback.
* Callers claim only after their inputs are read and checked, so a run that fails on bad input has
  written nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmdistill.errors import UserError

LOCK_FILE = ".lmdistill.lock"
#: The marker file that says which command wrote a folder.
MARKERS = {
    "export": "lmdistill_export.json",
    "capture": "manifest.json",
    "recipe": "recipe_config.yaml",
    "train": "lmdistill_config.yaml",
}


def check_path(path: str | os.PathLike, key: str, *, folder: bool = True) -> Path:
    """Refuse a path that cannot be written: a file where a folder is wanted (or the reverse), or a path
    under a file. `key` names the setting in the message (e.g. train.output_dir)."""
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise UserError(f"{key}: {p} is a file, not a folder; give a folder path")
    if not folder and p.is_dir():
        raise UserError(f"{key}: {p} is a folder; give a file path")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{key}: {p} is inside {parent}, which is a file, not a folder")
            break
    where = p if folder and p.is_dir() else nearest_folder(p.absolute().parent)
    cause = unwritable(where)
    if cause is not None:
        raise UserError(f"{key}: {p} cannot be written: {where} {cause}")
    return p


def nearest_folder(path: Path) -> Path:
    """`path` if it is a folder, else the nearest folder above it (where the output would be created)."""
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path("/")


def unwritable(folder: Path) -> str | None:
    """Why nothing can be created in `folder` ("is on a read-only file system; ...", "is not writable
    (permission denied); ..."), or None. Asked of the file system, not of the mode bits: root writes past them, not past a
    read-only mount."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "is on a read-only file system; give a path on a writable one"
    except OSError:
        return None
    effective = os.access in os.supports_effective_ids
    if not os.access(folder, os.W_OK | os.X_OK, effective_ids=effective):
        return "is not writable (permission denied); give a path you can write to"
    return None


#: errno values that say the file system refused a write, whatever the program does about it.
_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)
#: How torch.save and safetensors word a failed write (they raise RuntimeError / SafetensorError, not
#: OSError): the file system is then asked why.
_WRITER_FAILURE = re.compile(
    r"os error \d+|unexpected pos|PytorchStreamWriter|inline_container|iostream error|file write failed"
)
_MIN_FREE = 1 << 20


def write_failure(exc: BaseException, where: Path) -> str | None:
    """The cause in words ("No space left on device", "Read-only file system", ...) when `exc`, raised
    while writing under `where`, is the file system refusing the write; None for any other error."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        found = re.search(r"os error (\d+)", str(exc))  # safetensors: "I/O error: ... (os error 28)"
        code = int(found.group(1)) if found else None
    if code in _SPACE or code in _REFUSED:
        return os.strerror(code)
    if code is None and _WRITER_FAILURE.search(str(exc)):
        folder = nearest_folder(Path(where))
        try:
            info = os.statvfs(folder)
        except OSError:
            return None
        if info.f_flag & os.ST_RDONLY:
            return os.strerror(errno.EROFS)
        if info.f_bavail * info.f_frsize < _MIN_FREE:
            return os.strerror(errno.ENOSPC)
    return None


def write_failure_message(what: str, key: str, exc: BaseException, where: Path, cause: str) -> str:
    """`what: writing PATH failed: CAUSE; what to do` (PATH: the file the error names, else `where`)."""
    target = getattr(exc, "filename", None) or where
    return f"{what}: writing {target} failed: {cause}; {failure_hint(key, cause)}"


def failure_hint(key: str, cause: str) -> str:
    """What to do about a refused write: free space, or write elsewhere."""
    if cause in (os.strerror(c) for c in _SPACE):
        return f"free some space or choose another {key}"
    return f"choose a writable {key}"


@contextlib.contextmanager
def writing(what: str, key: str, where: Path) -> Iterator[None]:
    """Turn the file system refusing a write under `where` in the block (no space, read-only, permission
    denied) into one UserError naming the path and the cause; anything else passes through."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        cause = write_failure(exc, where)
        if cause is None:
            raise
        raise UserError(write_failure_message(what, key, exc, where, cause)) from None


def owner_of(folder: Path) -> str | None:
    """The command whose marker is in `folder` (export first: an export also holds a copy of the
    training config), or None."""
    for command, marker in MARKERS.items():
        if (folder / marker).is_file():
            return command
    return None


def differences(old: Any, new: Any, ignore: Iterable[str] = (), prefix: str = "") -> list[str]:
    """`["student.num_layers: 10 -> 2", ...]` for the dotted keys whose values differ (keys in `ignore` aside).

    Only keys both sides have are compared: a setting added (or dropped) by a newer lmdistill must not
    make a run recorded by an older one look like another run, or resuming it would be refused.
    """
    ignore = set(ignore)
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in [k for k in old if k in new]:
            name = f"{prefix}{key}"
            if name in ignore:
                continue
            out += differences(old.get(key), new.get(key), ignore, f"{name}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]
    return []


@dataclass
class Output:
    """What one command writes and how it is guarded.

    `path` is the folder (or, for generate, the file) the command writes; `marker` records the job (its
    config as YAML; None: the command keeps no record, it only refuses other commands' folders); `lock` is
    the lock file; `products` are the paths the command writes, removed when the user overwrites another
    job's output; `key` and `overwrite_hint` word the messages."""

    command: str
    path: Path
    key: str
    marker: Path | None
    lock: Path
    products: list[Path] = field(default_factory=list)
    overwrite_hint: str = ""
    resume_hint: str = ""
    is_folder: bool = True

    @classmethod
    def folder(
        cls,
        command: str,
        path: str | os.PathLike,
        key: str,
        *,
        products: Iterable[str] = (),
        overwrite_hint: str = "",
        resume_hint: str = "",
        marker: bool = True,
    ) -> Output:
        """A folder output; `products` are file or glob names inside it."""
        folder = check_path(path, key)
        found = [p for pattern in products for p in sorted(folder.glob(pattern))] if folder.is_dir() else []
        return cls(
            command,
            folder,
            key,
            folder / MARKERS[command] if marker else None,
            folder / LOCK_FILE,
            found,
            overwrite_hint,
            resume_hint,
        )

    @classmethod
    def file(
        cls,
        command: str,
        path: str | os.PathLike,
        key: str,
        *,
        sidecars: Iterable[str] = (),
        overwrite_hint="",
    ) -> Output:
        """A file output with sidecar files `<path><suffix>` (marker `<path>.config.yaml`)."""
        p = check_path(path, key, folder=False)
        # Only a finished output makes the job one to protect: a job that failed before writing it
        # (e.g. nothing kept, only the rejected rows written) may be rerun with other settings.
        products = [p, *(Path(f"{p}{s}") for s in sidecars)] if p.exists() else []
        return cls(
            command,
            p,
            key,
            Path(f"{p}.config.yaml"),
            p.parent / f".{p.name}.lock",
            [q for q in products if q.exists()],
            overwrite_hint,
            is_folder=False,
        )

    # -- checks --------------------------------------------------------------------------------------

    def foreign(self) -> str | None:
        """The other command whose output the folder holds (never overwritten), or None."""
        other = owner_of(self.path) if self.is_folder and self.path.is_dir() else None
        return other if other != self.command else None

    def protected(self) -> str | None:
        """Why `path` is not this command's to replace, whatever the overwrite flag says, or None.

        A folder: it holds another command's output (its marker). A file: it lies inside another
        command's folder (a train run, a capture store, an export, a recipe: any folder above it holding
        a marker), or it exists and this command's record of it (`<file>.config.yaml`) does not: then
        another command, or the user, wrote it.
        """
        if self.is_folder:
            other = self.foreign()
            return None if other is None else f"it holds the output of `lmdistill {other}` ({MARKERS[other]})"
        parent = Path(os.path.realpath(self.path.parent))
        for folder in (parent, *parent.parents):
            other = owner_of(folder) if folder.is_dir() else None
            if other is not None and other != self.command:
                return (
                    f"it is inside the output of `lmdistill {other}` ({folder / MARKERS[other]}): "
                    f"{self.command} never writes into another command's folder, whatever overwrite says"
                )
        if self.path.exists() and self.marker is not None and not self.marker.is_file():
            return (
                f"it was not written by `lmdistill {self.command}` (no {self.marker.name} beside it): "
                f"{self.command} never replaces it, whatever overwrite says"
            )
        return None

    def conflict(self, job: dict | None, ignore: Iterable[str] = ()) -> str | None:
        """Why `path` holds another job's output (None when it is free or holds this same job)."""
        never = self.protected()
        if never is not None:
            return never
        if self.marker is not None and self.marker.is_file():
            try:
                old = yaml.safe_load(self.marker.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
                return f"its {self.marker.name} cannot be read ({type(exc).__name__})"
            diff = differences(old, job, ignore)
            # A job that left nothing but its record (it failed before any output) is nothing to protect:
            # the user fixing a typo in a model name must not be told the folder is someone else's.
            if diff and self.products:
                more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
                return f"it holds a different job's output ({'; '.join(diff[:4])}{more})"
            return None
        if self.products:
            names = ", ".join(p.name for p in self.products[:3])
            where = f"{self.marker.name}" if self.marker is not None else "a record of this job"
            return f"it holds {names} but no {where}: not written by this job"
        return None

    def check(self, job: dict | None, *, overwrite: bool = False, ignore: Iterable[str] = ()) -> None:
        """Refuse (UserError) a path holding another job's output, unless `overwrite` (read-only)."""
        reason = self.conflict(job, ignore)
        never = self.protected() is not None
        if reason is None or (overwrite and not never):
            return
        if never:  # no overwrite hint: the flag does not apply
            raise UserError(f"{self.key} {self.path}: {reason}; choose another {self.key}")
        hints = [h for h in (self.resume_hint, "choose another " + self.key, self.overwrite_hint) if h]
        raise UserError(f"{self.key} {self.path}: {reason}; {', or '.join(hints)}")

    @contextlib.contextmanager
    def claim(
        self,
        job: dict | None,
        *,
        overwrite: bool = False,
        ignore: Iterable[str] = (),
        primary: bool = True,
    ) -> Iterator[Output]:
        """Lock the output, check it again under the lock, remove the old job's products when
        overwriting one, and record `job` in the marker; the lock is held until the block ends.

        `primary` False (torchrun ranks > 0): check only; rank 0 holds the lock and writes the marker.
        """
        self.check(job, overwrite=overwrite, ignore=ignore)
        if not primary:
            yield self
            return
        what = f"{self.key} {self.path}"
        with hold_lock(self.lock, what, self.command), writing(what, self.key, self.path):
            self.check(job, overwrite=overwrite, ignore=ignore)  # another process may have written since
            if overwrite and self.conflict(job, ignore) is not None:
                for product in self.products:
                    remove(product)
            if self.marker is not None and job is not None:
                from lmdistill.io import atomic_write_text

                atomic_write_text(self.marker, yaml.safe_dump(job, sort_keys=False))
            yield self


@contextlib.contextmanager
def hold_lock(lock: Path, what: str, command: str) -> Iterator[None]:
    """An exclusive `flock` on `lock` (created with its folder) for the block; UserError if another
    process holds it. The lock file keeps the holder's pid, for the message.

    The lock is opened without following a symbolic link (O_NOFOLLOW): a link there would have the pid
    written through it into whatever file it points to. A link, or anything but a plain file with one
    name, is refused."""
    try:
        with writing(what, "output", lock.parent):
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise UserError(
            f"{what}: its lock file {lock} is a symbolic link (to {os.readlink(lock)}), which lmdistill never "
            "writes through; remove the link"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        kind = (
            "a plain file with other names (hard links)" if stat.S_ISREG(info.st_mode) else "not a plain file"
        )
        raise UserError(f"{what}: its lock file {lock} is {kind}, which lmdistill never writes to; remove it")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            raise UserError(
                f"{what} is in use by another lmdistill process (pid {holder}); wait for it to finish, "
                "or choose another output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove(path: Path) -> None:
    """Delete a file or folder this command wrote (never called on anything else)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def is_primary() -> bool:
    """True in a single process, or in the rank-0 process under torchrun/accelerate (RANK unset or 0)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def check_output_folder(path: str | os.PathLike, command: str, key: str) -> Path:
    """The preflight of a command that keeps no record of its job (eval): the folder path is usable and
    holds no other command's output. Read-only; returns the path."""
    output = Output.folder(command, path, key, marker=False)
    output.check(None)
    return output.path

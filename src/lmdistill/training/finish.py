"""The end of a run: the student saved whole or not at all, and the held-out report."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lmdistill.config import RunConfig
from lmdistill.data import pad_id
from lmdistill.io import make_temp_dir, public_tree
from lmdistill.training.parts.models import Models

CONFIG_FILE = "lmdistill_config.yaml"


def save_student(
    model,
    tokenizer,
    out_dir: str | os.PathLike,
    config: RunConfig | None = None,
    state_dict: dict | None = None,
) -> Path:
    """save_pretrained into a temporary sibling, then rename: a half-written folder never looks finished.

    With `config`, the run's resolved config goes inside the folder too, so it always describes that model.
    state_dict: the full weights when `model` is sharded (`lmdistill.training.fsdp.gather_student`).
    """
    out = Path(out_dir)
    tmp = make_temp_dir(out)  # the umask's mode, not mkdtemp's private 0700
    if hasattr(model, "merge_and_unload"):  # LoRA: ship one ordinary model folder
        model = model.merge_and_unload()
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if config is not None:
            from lmdistill.config import save_config

            save_config(config, tmp / CONFIG_FILE)
        public_tree(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def heldout_report(cfg: RunConfig, models: Models, features, path: Path, log=print):
    """What process 0 reports on held-out features (`data.eval`) once training ends: top-1 agreement, KL
    and perplexity against the teacher when it is whole in this process; a line saying why not
    otherwise. Returns a `launcher.Report` (called with a function giving the whole trained student)."""

    def report(student) -> None:
        if not features:
            return
        if models.xtok is not None:
            log(
                "held-out token agreement compares one vocabulary: skipped for a teacher with another "
                "tokenizer; `lmdistill eval --text` reports bits per byte and byte-aligned agreement"
            )
        elif cfg.train.fsdp_teacher:
            log(
                "held-out agreement with the teacher needs it whole in one process: skipped (train.fsdp_teacher)"
            )
        elif models.teacher is not None:
            report_agreement(student(), models, features, path, log)
        elif models.source is not None:
            log(
                f"held-out agreement with the teacher needs the teacher in this process: skipped ({models.source.name})"
            )

    return report


def report_agreement(student, models: Models, features, path: Path, log=print) -> dict:
    """Held-out top-1 agreement, KL to the teacher and perplexity; printed and written to `path`."""
    from lmdistill.eval.scoring import score_tokens
    from lmdistill.io import atomic_write_json

    result = score_tokens(
        student, features, vocab=models.vocab, pad_token_id=pad_id(models.tokenizer), teacher=models.teacher
    ).as_dict()
    atomic_write_json(path, result)
    log(
        f"held-out ({result['tokens']} target tokens): top-1 agreement with teacher {result['top1']:.1%}, "
        f"KL(teacher || student) {result['kl']:.3f} nats/token, perplexity {result['perplexity']:.2f}"
    )
    return result

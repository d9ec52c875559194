"""`lmdistill eval --teachers RUN.yaml`: each model against each teacher on that teacher's own domain.

RUN.yaml is a training config with `teachers:` and `routing:` (mode route). Its held-out rows
(`data.eval`) are routed exactly as training routes them (`lmdistill.teachers.routing`) and tokenized
like training's held-out rows (completion-only labels at data.max_length, the first teacher's
tokenizer, which every teacher shares). Then, per model and per teacher i with rows, `score_tokens`
over teacher i's rows only, against teacher i: perplexity, top-1 agreement, KL(teacher i ‖ model) and
acceptance, per token at T = 1. So teacher i's figures are those of an eval with teacher i alone on
its rows. Each teacher is loaded by its `name` in this process (a store or server entry's `name` must
then be the model), once, and kept while the models are scored; a teacher no row routes to is not
loaded. Every check (config, routes, tokenizers) runs before any model loads.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import torch

from lmdistill.errors import UserError


@dataclass
class RoutedHeldout:
    """The routed held-out rows: `features[i]` the tokenized rows of `entries[i]` (a list of dicts with
    input_ids and labels), with the config path and data.eval they came from. `loaded` holds the
    teacher models once scored against (index -> model)."""

    path: str
    data: str
    entries: list
    features: list[list[dict]]
    tokenizer: object
    loaded: dict[int, torch.nn.Module] = field(default_factory=dict)

    def close(self) -> None:
        self.loaded.clear()
        gc.collect()


def prepare_routed(path: str) -> RoutedHeldout:
    """Read RUN.yaml, route and tokenize its held-out rows; UserError (naming --teachers) before any
    model loads for a config that cannot be evaluated this way."""
    from lmdistill.config import load_config
    from lmdistill.data import load_records, tokenize_records
    from lmdistill.models import load_tokenizer
    from lmdistill.models.vocab import check_same_tokenizer
    from lmdistill.teachers.routing import route_rows, routed

    try:
        cfg = load_config(path)
    except UserError as exc:
        raise UserError(f"--teachers {path}: {exc}") from exc
    if not cfg.teachers:
        raise UserError(f"--teachers {path}: the config lists no teachers: (give teachers: and routing:)")
    if cfg.routing.mode != "route":
        raise UserError(
            f"--teachers {path}: routing.mode={cfg.routing.mode} mixes teachers per token, so no teacher has a "
            "domain of its own: eval each teacher on its rows with routing.mode=route"
        )
    if not cfg.data.eval:
        raise UserError(
            f"--teachers {path}: data.eval is empty: eval scores the held-out rows, routed like training"
        )
    crossing = [
        (i, e) for i, e in enumerate(cfg.teachers) if e.cross_tokenizer or cfg.distill.cross_tokenizer
    ]
    if crossing:
        i, e = crossing[0]
        raise UserError(
            f"--teachers {path}: teachers[{i}] ({e.id}) is a cross-tokenizer teacher: eval --teachers compares "
            "per-token distributions over one vocabulary; score it with --text (bits per byte, span agreement)"
        )
    records = load_records(cfg.data.eval)
    ids = [e.id for e in cfg.teachers]
    routes = route_rows(records, ids, cfg.routing, cfg.data.eval)
    tokenizer = load_tokenizer(cfg.teachers[0].name)
    for i, e in enumerate(cfg.teachers[1:], start=1):
        if i in routes:
            check_same_tokenizer(f"teachers[{i}] ({e.id}, {e.name})", e.name, tokenizer)
    features, _ = tokenize_records(
        routed(records, routes), tokenizer, cfg.data.max_length, source=cfg.data.eval
    )
    per = [[f for f in features if f["teacher_index"] == i] for i in range(len(ids))]
    return RoutedHeldout(str(path), cfg.data.eval, list(cfg.teachers), per, tokenizer)


def routed_scores(
    held: RoutedHeldout, model: torch.nn.Module, tok, *, batch_size: int, device: str, dtype: str, log
) -> dict | None:
    """{teacher id: {"name", "rows", "tokens", "perplexity", "top1", "kl", "acceptance"}} for `model`
    (None when its tokenizer is not the teachers'); a teacher without rows: {"name", "rows": 0}."""
    from lmdistill.data import pad_id
    from lmdistill.eval.scoring import score_tokens
    from lmdistill.models import check_vocab, load_model

    if tok.get_vocab() != held.tokenizer.get_vocab():
        return None
    out = {}
    for i, (entry, feats) in enumerate(zip(held.entries, held.features, strict=True)):
        if not feats:
            out[entry.id] = {"name": entry.name, "rows": 0}
            continue
        if i not in held.loaded:
            log(f"eval: teacher {entry.id}: loading {entry.name}")
            held.loaded[i] = load_model(entry.name, dtype=dtype, device=device).eval()
        teacher = held.loaded[i]
        vocab = check_vocab(held.tokenizer, tok, teacher, model, teacher_name=entry.name)
        log(f"eval: against teacher {entry.id} on its {len(feats)} held-out rows")
        scores = score_tokens(
            model, feats, vocab=vocab, pad_token_id=pad_id(tok), teacher=teacher, batch_size=batch_size
        )
        out[entry.id] = {"name": entry.name, "rows": len(feats), **scores.as_dict()}
    return out


def render_routed(results: dict) -> list[str]:
    """Markdown: one table per teacher, a row per model (its figures on that teacher's rows)."""
    routed = results.get("teachers_routed")
    if not routed:
        return []
    lines = [
        "",
        "## Against each teacher on its own domain",
        "",
        f"Held-out rows of {routed['data']} routed by {routed['config']} as training routes them; each model "
        "scored on a teacher's rows against that teacher (per token, T = 1).",
    ]
    for tid, name in routed["teachers"]:
        lines += ["", f"### {tid} ({name})", ""]
        lines += ["| model | rows | tokens | perplexity | top-1 | KL(teacher ‖ model) | acceptance |"]
        lines += ["|---|---:|---:|---:|---:|---:|---:|"]
        for m in results["models"]:
            s = (m.get("teachers") or {}).get(tid)
            if s is None:
                lines.append(f"| {m['label']} | tokenizer differs: not compared | | | | | |")
            elif not s["rows"]:
                lines.append(f"| {m['label']} | 0 | | | | | |")
            else:
                cells = [f"{s[k]:.4f}" for k in ("perplexity", "top1", "kl", "acceptance")]
                lines.append(f"| {m['label']} | {s['rows']} | {s['tokens']} | " + " | ".join(cells) + " |")
    return lines

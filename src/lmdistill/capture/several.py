"""`lmdistill capture` with several `teachers:`: one store per teacher, each holding only its routed rows.

The rows are routed exactly as training routes them (`lmdistill.teachers.routing`, the same `routing:`
keys) and tokenized once with the first teacher's tokenizer (every teacher must tokenize alike). Teacher
i's rows, in data order, go to its own store `capture.output_dir/ID`, an ordinary store (see
`lmdistill.capture.store`) whose manifest also records

    teacher_id: ID          the teacher it was captured for;
    rows: [n_0, n_1, ...]   the indices of its rows among the whole data's tokenized examples;
    routed_examples: N      how many examples the whole data had.

Training reads the stores together by row: an example n routed to teacher i is row rows.index(n) of
i's store (`lmdistill.capture.reader.RoutedRows`); a store captured for another teacher, or rows routed
otherwise than at capture time, are refused before any model loads. A teacher no row routes to gets no
store. Every check (routes, tokenizers, output folders) runs before the first teacher loads.
"""

from __future__ import annotations

from pathlib import Path

from lmdistill.capture.config import CaptureConfig
from lmdistill.capture.run import CaptureSummary, capture_features, one_teacher
from lmdistill.data import IGNORE_INDEX, load_records, tokenize_records
from lmdistill.outputs import check_output_folder
from lmdistill.teachers.routing import route_rows, routed


def capture_several(cfg: CaptureConfig, log=print) -> list[CaptureSummary]:
    """One store per routed-to teacher under cfg.capture.output_dir (see module docstring)."""
    from lmdistill.models import load_tokenizer
    from lmdistill.models.vocab import check_same_tokenizer

    entries = cfg.teachers
    records = load_records(cfg.data.train)[: cfg.data.max_examples]  # [:None] keeps all
    routes = route_rows(records, [e.id for e in entries], cfg.routing, cfg.data.train)
    tokenizer = load_tokenizer(entries[0].name)
    for i, e in enumerate(entries[1:], start=1):
        if i in routes:
            check_same_tokenizer(f"teachers[{i}] ({e.id}, {e.name})", e.name, tokenizer)
    features, _ = tokenize_records(
        routed(records, routes), tokenizer, cfg.data.max_length, source=cfg.data.train
    )
    parts = []
    for i, e in enumerate(entries):
        rows = [n for n, f in enumerate(features) if f["teacher_index"] == i]
        if not rows:
            log(f"teacher {e.id}: no rows routed to it, no store")
            continue
        one = one_teacher(cfg, e, output_dir=str(Path(cfg.capture.output_dir) / e.id))
        check_output_folder(one.capture.output_dir, "capture", "capture.output_dir")
        if one.teacher.server:
            from lmdistill.teachers.whitebox import check_server_settings

            check_server_settings(one.teacher, one.capture.temperature, f"teachers[{i}].temperature")
        parts.append((i, one, rows))
    summaries = []
    for i, one, rows in parts:
        mine = [features[n] for n in rows]
        stats = {
            "examples": len(mine),
            "kept": len(mine),
            "target_tokens": sum(sum(y != IGNORE_INDEX for y in f["labels"]) for f in mine),
        }
        extra = {"teacher_id": entries[i].id, "rows": rows, "routed_examples": len(features)}
        log(f"teacher {entries[i].id}: {len(rows)} of {len(features)} rows")
        summaries.append(capture_features(one, tokenizer, mine, stats, extra=extra, log=log))
    return summaries

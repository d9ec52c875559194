"""`lmdistill check-teacher CONFIG.yaml`: does `teacher.server` score like the same model in this process?

Run it before a long job. A server teacher can differ from the model a user means without any error: a
quantised or bfloat16 deployment, another revision behind the same name, a proxy that applies a
temperature, vLLM returning logits (`--logprobs-mode raw_logits`) instead of log-probs. The training
loss would then optimise against other targets for days (ms-swift 9671; TRL PR 5731).

The check scores the first `rows` training examples of the config (tokenized exactly as `lmdistill
train` does: data.train, data.max_length, the student's tokenizer) through `teacher.server` at
k = teacher.server_k, and through `teacher.name` loaded in this process (float32 by default), and reports:

- vocabulary: the probe's check (16 token ids out, the server's token texts back);
- log-prob mode: the probe's check that the values are log-probs, not logits (`ServerTeacher`), and the
  temperature that best explains the server's values given the local logits (1 for a raw server);
- KL(server || local) per scored token over the k + 1 buckets training uses (the server's k ids and
  the rest), in nats: mean and max;
- top-k overlap: the share of the server's k ids that are among the local top k, mean and min; top-1
  agreement; the largest |log-prob difference| on the server's ids and on each sequence's own token.

Verdict PASS when the probe passes, mean KL <= `max_mean_kl`, every token's KL <= `max_token_kl`, the
mean top-k overlap >= `min_overlap` (`Limits`) and the best-fitting temperature (on a 0.05 grid) is 1;
exit status 0 for PASS, 1 for FAIL, 2 for a mistake in the config or command line. Measured on
SmolLM2-135M, 8 chats, 325 tokens, k 20: vLLM's CPU build against transformers, both float32, mean KL
2.7e-9 and max 2.3e-8 nats/token; the same server against the model loaded here in bfloat16 (what a
bfloat16 deployment gives) mean 1.0e-3, max 1.1e-2, overlap 0.983; the model's own log-probs at
temperature 0.95 mean 4.0e-3 (temperature fit 0.95), at 0.9 mean 1.6e-2. The defaults (2e-3, 5e-2, 0.9)
pass a bfloat16 server and fail a temperature off by 5%; `--max-mean-kl 1e-6` asks for float32 parity. With `server_only` the local model is not
loaded and the verdict covers the probe's checks alone (said so in the report).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmdistill.errors import UserError

#: Temperatures tried when explaining the server's values by the local logits (`best_temperature`).
TEMPERATURES = tuple(round(0.25 + 0.05 * i, 2) for i in range(56))  # 0.25 .. 3.0


@dataclass(frozen=True)
class Limits:
    """PASS thresholds. KL in nats per scored token over the k + 1 buckets; overlap in [0, 1]."""

    max_mean_kl: float = 2e-3
    max_token_kl: float = 5e-2
    min_overlap: float = 0.9

    def check(self) -> Limits:
        for key in ("max_mean_kl", "max_token_kl"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"--{key.replace('_', '-')} must be a finite number >= 0, got {value}")
        if not 0 <= self.min_overlap <= 1:
            raise UserError(f"--min-overlap must be in [0, 1], got {self.min_overlap}")
        return self


def compare(server, local_logits: torch.Tensor, tokens: torch.Tensor, *, chunk: int = 128) -> dict:
    """Per-token agreement of a server's sparse scores with the local model's logits at the same positions.

    server: `TeacherScores` from `ServerTeacher.score` (sparse, k ids, float32 log-probs, tail; and each
    position's own-token log-prob); local_logits: [N, V] float32 logits of the local model (temperature 1);
    tokens: [N] each position's next token. Returns plain numbers (see the module docstring).
    """
    s = server.sparse
    n, k = s.ids.shape
    kls, overlaps, top1, lp_diff, own_diff = [], [], [], [], []
    fits = torch.zeros(len(TEMPERATURES), dtype=torch.float64)
    for c in range(0, n, chunk):
        z = local_logits[c : c + chunk].double()
        logq = torch.log_softmax(z, -1)
        ids = s.ids[c : c + chunk].long()
        a = s.logprobs[c : c + chunk].double()
        tail = s.tail[c : c + chunk].double()
        p = torch.cat([a, tail[:, None]], 1)  # the server's k + 1 buckets, as training reads them
        q_top = logq.gather(1, ids)
        q_rest = logq.scatter(1, ids, float("-inf")).logsumexp(-1)
        q = torch.cat([q_top, q_rest[:, None]], 1)
        kls.append((p.exp() * (p - q)).sum(-1).clamp(min=0))
        local_top = logq.topk(k, -1).indices
        overlaps.append((ids[:, :, None] == local_top[:, None, :]).any(-1).double().mean(-1))
        top1.append((ids[:, 0] == local_top[:, 0]).double())
        lp_diff.append((a - q_top).abs().amax(-1))
        if server.target_logprobs is not None:
            own = server.target_logprobs[c : c + chunk].double()
            mine = logq.gather(1, tokens[c : c + chunk, None].long())[:, 0]
            known = ~torch.isnan(own)
            own_diff.append((own - mine).abs()[known])
        for j, t in enumerate(TEMPERATURES):
            fits[j] += (torch.log_softmax(z / t, -1).gather(1, ids) - a).abs().sum()
    kl, overlap = torch.cat(kls), torch.cat(overlaps)
    own_all = torch.cat(own_diff) if own_diff else torch.zeros(0)
    best = TEMPERATURES[int(fits.argmin())]
    return {
        "tokens": n,
        "k": k,
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "overlap_mean": float(overlap.mean()),
        "overlap_min": float(overlap.min()),
        "top1_agreement": float(torch.cat(top1).mean()),
        "logprob_diff_max": float(torch.cat(lp_diff).max()),
        "own_logprob_diff_max": float(own_all.max()) if own_all.numel() else None,
        "best_temperature": best,
        "mean_abs_diff_at_best_temperature": float(fits.min() / (n * k)),
        "mean_abs_diff_at_temperature_1": float(fits[TEMPERATURES.index(1.0)] / (n * k)),
    }


def verdict(found: dict, limits: Limits) -> list[str]:
    """The failed checks of a `compare` result, as lines (empty: PASS)."""
    failed = []
    if not found["kl_mean"] <= limits.max_mean_kl:
        failed.append(f"mean KL {found['kl_mean']:.3g} nats/token is above {limits.max_mean_kl:g}")
    if not found["kl_max"] <= limits.max_token_kl:
        failed.append(f"a token's KL {found['kl_max']:.3g} nats is above {limits.max_token_kl:g}")
    if not found["overlap_mean"] >= limits.min_overlap:
        failed.append(
            f"mean top-{found['k']} overlap {found['overlap_mean']:.3f} is below {limits.min_overlap:g}"
        )
    if found["best_temperature"] != 1.0:
        failed.append(
            f"the server's values fit the local model best at temperature {found['best_temperature']:g}, not 1: "
            "they are temperature-scaled (processed) log-probs, or another model"
        )
    return failed


def _probe_failure(message: str) -> tuple[str, str]:
    """Which check a probe's UserError is: (vocabulary | log-prob mode | log-probs per position | server)."""
    if "vocabulary" in message:
        return "vocabulary", message
    if "returns logits" in message:
        return "log-prob mode", message
    if "--max-logprobs" in message:
        return "log-probs per position", message
    return "server", message


def _batches(cfg, tokenizer, rows: int):
    """The first `rows` training examples, tokenized as `lmdistill train` does, in batches of 4."""
    from lmdistill.data import DistillCollator, pad_id, tokenize_records
    from lmdistill.training.parts.data import read_rows

    records = read_rows(cfg.data.train, rows)
    features, _ = tokenize_records(records, tokenizer, cfg.data.max_length, source=cfg.data.train)
    collate = DistillCollator(pad_id(tokenizer))
    return [collate(features[i : i + 4]) for i in range(0, len(features), 4)]


def check_teacher(
    cfg,
    *,
    rows: int = 8,
    limits: Limits = Limits(),
    dtype: str = "float32",
    server_only: bool = False,
    log=print,
) -> dict:
    """Run the check on a training config (`RunConfig`, teacher.server set); returns the report, whose
    "verdict" is PASS or FAIL. UserError for a config the check cannot run on."""
    from lmdistill.models import load_teacher, load_tokenizer
    from lmdistill.models.vocab import real_vocab_size
    from lmdistill.teachers.whitebox import (
        InProcessTeacher,
        ServerTeacher,
        TeacherQuery,
        check_server_settings,
    )
    from lmdistill.training.parts.models import student_base

    limits.check()
    t = cfg.teacher
    if not t.server:
        raise UserError("check-teacher compares teacher.server with teacher.name: set teacher.server")
    if rows < 1:
        raise UserError(f"--rows must be at least 1, got {rows}")
    if not cfg.data.train:
        raise UserError("data.train is empty: the check scores its first rows")
    check_server_settings(t, 1.0, "temperature")
    if not server_only and not t.name:
        raise UserError("teacher.name is empty: nothing to compare the server with (or pass --server-only)")
    tokenizer = load_tokenizer(student_base(cfg))
    vocab = real_vocab_size(tokenizer)
    batches = _batches(cfg, tokenizer, rows)
    report = {
        "server": t.server,
        "model": t.name,
        "k": t.server_k,
        "against": "nothing (--server-only: the verdict covers the probe's checks only)"
        if server_only
        else f"{t.name} in this process ({dtype})",
        "limits": asdict(limits),
        "checks": {},
    }
    checks = report["checks"]
    try:
        source = ServerTeacher.connect(t, tokenizer, k=t.server_k, vocab=vocab)
    except UserError as e:
        which, message = _probe_failure(str(e))
        checks[which] = {"pass": False, "detail": message}
        report["verdict"] = "FAIL"
        return _print(report, log)
    report["server"] = source.name
    checks["vocabulary"] = {
        "pass": True,
        "detail": f"the probe's token texts are the local tokenizer's ({vocab} tokens)",
    }
    checks["log-prob mode"] = {
        "pass": True,
        "detail": f"{source.logprob_mode} (every value <= 0, top-k mass <= 1, top-1 >= -log V), field {source.mode}",
    }
    if server_only:
        report["verdict"] = "PASS"
        return _print(report, log)
    try:
        model = load_teacher(t.name, dtype=dtype)
    except (OSError, ValueError, UserError) as e:  # a hub id offline, a folder without weights: one line
        raise UserError(
            f"teacher.name {t.name} could not be loaded here to compare with ({str(e).splitlines()[0][:200]}); "
            "pass --server-only to run the server's checks alone"
        ) from None
    local = InProcessTeacher(model, name=t.name)
    server_scores, logits, tokens = [], [], []
    for batch in batches:
        query = TeacherQuery.from_batch(batch)
        server_scores.append(source.score(query))
        dense = local.score(query)
        logits.append(dense.head.logits(dense.hidden, vocab).float())
        tokens.append(batch["input_ids"][:, 1:][query.positions[:, :-1]])
    from lmdistill.chunked import SparseTeacher
    from lmdistill.teachers.whitebox import TeacherScores

    merged = TeacherScores(
        sparse=SparseTeacher(
            *(torch.cat([getattr(s.sparse, f) for s in server_scores]) for f in ("ids", "logprobs", "tail"))
        ),
        target_logprobs=torch.cat([s.target_logprobs for s in server_scores]),
    )
    found = compare(merged, torch.cat(logits), torch.cat(tokens))
    failed = verdict(found, limits)
    report["rows"] = sum(len(b["input_ids"]) for b in batches)
    report["scores"] = found
    checks["agreement"] = {"pass": not failed, "detail": "; ".join(failed) or "within the limits"}
    report["verdict"] = "PASS" if all(c["pass"] for c in checks.values()) else "FAIL"
    return _print(report, log)


def _print(report: dict, log) -> dict:
    log(f"check-teacher: {report['server']} (k {report['k']}) against {report['against']}")
    for name, c in report["checks"].items():
        log(f"  {name:<22} {'PASS' if c['pass'] else 'FAIL'}  {c['detail']}")
    s = report.get("scores")
    if s:
        lim = report["limits"]
        log(f"  scored tokens          {s['tokens']} in {report['rows']} rows")
        log(
            f"  KL(server || local)    mean {s['kl_mean']:.3g}, max {s['kl_max']:.3g} nats/token over the "
            f"{s['k']} + 1 buckets (limits {lim['max_mean_kl']:g}, {lim['max_token_kl']:g})"
        )
        log(
            f"  top-{s['k']} overlap{'':<{11 - len(str(s['k']))}}mean {s['overlap_mean']:.4f}, min "
            f"{s['overlap_min']:.4f} (limit mean {lim['min_overlap']:g}); top-1 agreement {s['top1_agreement']:.4f}"
        )
        own = "n/a" if s["own_logprob_diff_max"] is None else f"{s['own_logprob_diff_max']:.3g}"
        log(
            f"  max |log-prob diff|    {s['logprob_diff_max']:.3g} on the server's top {s['k']}, {own} on each own token"
        )
        log(
            f"  temperature fit        best {s['best_temperature']:g} (mean |diff| {s['mean_abs_diff_at_best_temperature']:.3g};"
            f" at 1: {s['mean_abs_diff_at_temperature_1']:.3g})"
        )
    log(f"verdict: {report['verdict']}")
    return report


def write_report(report: dict, path: str | Path) -> None:
    from lmdistill.io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(report, indent=2) + "\n")

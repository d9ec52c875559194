"""Writing an evaluation: report.md (every model side by side), results.json and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from lmdistill.eval.several import render_routed
from lmdistill.io import atomic_write, atomic_write_json, atomic_write_text

METHOD = """\
- **Task quality**: greedy generation (chat template, one user message per row). Accuracy: the
  answer extracted from the output ("Answer: X", "#### X", the last number for numeric answers; the
  whole output when nothing else is found) equals the gold answer after normalisation. ROUGE-L: F1
  against the row's `reference`.
- **Perplexity**: exp(mean cross-entropy) over every token of the text file, cut into chunks of
  `max_length` tokens with each model's own tokenizer (so models with different tokenizers are scored
  on different token counts).
- **Bits per byte** (comparable across tokenizers): the text is cut once into pieces that every
  model's tokenizer encodes within `max_length` tokens; each piece is scored after a context token
  (the BOS the tokenizer adds itself, else its BOS, else EOS); bits per byte = total -log2 p of the
  pieces' tokens / their UTF-8 bytes.
- **Span agreement, byte-aligned** (comparable across tokenizers): both models tokenize each piece,
  tokens are grouped into spans that end on the same byte; at each span's start, top-1 = both models'
  most likely next tokens spell compatible bytes (one a prefix of the other); TVD = total variation
  between the next-token distributions restricted to the tokens both vocabularies share, each
  renormalised.
- **Agreement with the teacher**: top-1 = fraction of text tokens where both models' most likely
  next token agree; KL = mean KL(teacher ‖ model) per token in nats (same tokenizer only).
  Generation agreement: exact match (whitespace-insensitive) and mean ROUGE-L between the model's and
  the teacher's greedy outputs on the task prompts.
- **Cost**: parameters with tied weights counted once; size on disk = weight files in the model
  folder; peak memory = growth of peak resident memory (and peak GPU allocation on CUDA) while
  loading the model and running one forward over the fixed batch, in a fresh spawned process after
  an unmeasured warm-up load; prefill tokens/s = one forward over the fixed batch (the first
  `batch_size` text chunks, else the task prompts), median of 3 after a warm-up forward;
  generation tokens/s = generated tokens / time of batched greedy generation over the task prompts
  (after a warm-up); latency = seconds per request, one request at a time over the task prompts.
- **Fixed-length latency**: greedy generation of exactly `fixed_length` tokens (end of sequence
  ignored) and of 1 token, one request at a time over the first task prompts; time to first token =
  median time for 1 token; per-token latency = median of (time for n - time for 1) / (n - 1). Unlike
  latency per request, it does not depend on how long each model chooses to answer.
- **As a draft for the teacher** (speculative decoding): acceptance = mean of 1 - TVD(teacher,
  model) per token at T = 1, the probability speculative sampling accepts a drafted token
  (teacher-forced on the text; and on the model's own greedy answers to the task prompts, the
  states a draft meets when it drafts); under greedy verification a token is accepted when both
  argmaxes agree (top-1). Tokens per target call at draft length γ = (1 - α^(γ+1)) / (1 - α).
  With `--speculative`, real greedy assisted generation (transformers, `assistant_model`) against
  the teacher alone on the same prompts, alternating which runs first, one prompt at a time:
  speedup = teacher-alone seconds / assisted seconds; the assisted text must equal the teacher's,
  and any difference is listed as a failure in the notes.
- **Compression** = teacher parameters / model parameters; **speedup** = model generation tokens/s /
  teacher generation tokens/s.
"""


def _num(value, fmt: str = "{:.3f}") -> str:
    return "—" if value is None else fmt.format(value)


def _count(value) -> str:
    if value is None:
        return "—"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= div:
            return f"{value / div:.2f}{unit}"
    return str(value)


def _bytes(value) -> str:
    if value is None:
        return "—"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= div:
            return f"{value / div:.1f} {unit}"
    return f"{value} B"


def _ms(value) -> str:
    return "—" if value is None else f"{value * 1000:.1f}"


def _draft(m: dict, part: str, key: str):
    return ((m.get("draft") or {}).get(part) or {}).get(key)


def _identical(m: dict) -> str:
    a = (m.get("draft") or {}).get("assisted")
    return "—" if a is None else f"{a['identical']}/{a['prompts']}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def metric_rows(results: dict) -> list[tuple[str, list[str]]]:
    """(metric name, one formatted cell per model) for the side-by-side table."""
    models = results["models"]
    rows: list[tuple[str, list[str]]] = []

    def add(name: str, get, fmt=_num) -> None:
        rows.append((name, [fmt(get(m)) for m in models]))

    for task in results["tasks"]:
        t = task["name"]

        def task_metric(m, key, t=t):
            return (m["quality"].get(t) or {}).get(key)

        if task["kind"] == "accuracy":
            add(f"{t}: accuracy (n={task['examples']})", lambda m, metric=task_metric: metric(m, "accuracy"))
            if any(task_metric(m, "rouge_l") is not None for m in models):
                add(f"{t}: ROUGE-L", lambda m, metric=task_metric: metric(m, "rouge_l"))
        else:
            add(f"{t}: ROUGE-L (n={task['examples']})", lambda m, metric=task_metric: metric(m, "rouge_l"))
    if results.get("text"):
        add("bits per byte (text) †", lambda m: (m.get("bits_per_byte") or {}).get("bits_per_byte"))
        add("perplexity (text)", lambda m: m["perplexity"], lambda v: _num(v, "{:.2f}"))
        add("text tokens", lambda m: m["text_tokens"], _count)
    if results.get("teacher"):
        if results.get("text"):
            add("span top-1 agreement, byte-aligned †", lambda m: (m.get("span_agreement") or {}).get("top1"))
            add(
                "span TVD on shared tokens, byte-aligned †",
                lambda m: (m.get("span_agreement") or {}).get("shared_tvd"),
            )
            add("top-1 agreement with teacher", lambda m: (m["agreement"] or {}).get("top1"))
            add("KL(teacher ‖ model), nats/token", lambda m: (m["agreement"] or {}).get("kl"))
            add("draft acceptance 1 − TVD (text)", lambda m: (m["agreement"] or {}).get("acceptance"))
            add(
                "tokens per target call, γ = 4 (from acceptance)",
                lambda m: ((m["agreement"] or {}).get("tokens_per_target_call") or {}).get(4),
                lambda v: _num(v, "{:.2f}"),
            )
        if results["tasks"]:
            add(
                "generation exact match with teacher",
                lambda m: (m["generation_agreement"] or {}).get("exact_match"),
            )
            add("generation ROUGE-L with teacher", lambda m: (m["generation_agreement"] or {}).get("rouge_l"))
            add(
                "teacher log-prob of own answers, nats/token",
                lambda m: (m.get("own_answers") or {}).get("logprob_per_token"),
            )
    add("parameters", lambda m: m["cost"]["parameters"], _count)
    add("size on disk", lambda m: m["cost"].get("disk_bytes"), _bytes)
    add("peak memory (load + forward)", lambda m: m["cost"].get("peak_memory_bytes"), _bytes)
    if any("peak_gpu_memory_bytes" in m["cost"] for m in models):
        add("peak GPU memory", lambda m: m["cost"].get("peak_gpu_memory_bytes"), _bytes)
    add("prefill tokens/s", lambda m: m["cost"].get("prefill_tokens_per_s"), lambda v: _num(v, "{:.0f}"))
    if results["tasks"]:
        add(
            "generation tokens/s",
            lambda m: m["cost"].get("generation_tokens_per_s"),
            lambda v: _num(v, "{:.1f}"),
        )
        add("latency p50 (s/request)", lambda m: m["cost"].get("latency_p50_s"))
        add("latency p95 (s/request)", lambda m: m["cost"].get("latency_p95_s"))
        n = results["arguments"].get("fixed_length")
        add("time to first token (s)", lambda m: m["cost"].get("ttft_s"))
        add(f"per-token latency at {n} tokens (ms)", lambda m: m["cost"].get("per_token_latency_s"), _ms)
    if any(m.get("draft") for m in models):
        g = results["arguments"].get("draft_tokens")
        add("draft acceptance on own greedy answers", lambda m: _draft(m, "own_greedy", "acceptance"))
        add("greedy acceptance on own answers (top-1)", lambda m: _draft(m, "own_greedy", "top1"))
        add(
            f"assisted generation speedup (γ = {g}, greedy)",
            lambda m: _draft(m, "assisted", "speedup"),
            lambda v: _num(v, "{:.2f}×"),
        )
        add("assisted text identical to teacher's", lambda m: _identical(m), str)
    if results.get("teacher"):
        add("compression (teacher params / params)", lambda m: m["compression"], lambda v: _num(v, "{:.2f}×"))
        add("speedup (gen tokens/s vs teacher)", lambda m: m["speedup"], lambda v: _num(v, "{:.2f}×"))
    return rows


def render_markdown(results: dict, plots: list[str]) -> str:
    models = results["models"]
    lines = ["# lmdistill eval report", ""]
    lines += [f"- Date: {results['date']}", f"- Command: `{results['command']}`"]
    if results.get("teacher"):
        lines.append(f"- Teacher: `{results['teacher']}`")
    for t in results["tasks"]:
        lines.append(
            f"- Task `{t['name']}`: {t['path']} ({t['examples']} row{'' if t['examples'] == 1 else 's'}, {t['kind']})"
        )
    if results.get("text"):
        lines.append(
            f"- Held-out text: {results['text']['path']} (chunks of {results['text']['max_length']} tokens)"
        )
    lines += ["", "## Models", "", "| column | role | model | path |", "|---|---|---|---|"]
    for m in models:
        lines.append(f"| {_cell(m['label'])} | {m['role']} | `{_cell(m['name'])}` | {_cell(m['path'])} |")
    lines += ["", "## Results", ""]
    lines.append("| metric | " + " | ".join(_cell(m["label"]) for m in models) + " |")
    lines.append("|---|" + "---:|" * len(models))
    for name, cells in metric_rows(results):
        lines.append(f"| {_cell(name)} | " + " | ".join(cells) + " |")
    if results.get("text"):
        lines += [
            "",
            "† comparable across tokenizers (every model is scored on the same bytes). Perplexity, text "
            "tokens, top-1 agreement, KL and acceptance are per token: compare them only between models "
            "that share a tokenizer.",
        ]
    lines += render_routed(results)  # several teachers: a table per teacher
    lines += ["", "## Notes", ""]
    notes = [("report", n) for n in results.get("notes", [])]
    notes += [(m["label"], n) for m in models for n in m["notes"]]
    lines += [f"- **{_cell(label)}**: {note}" for label, note in notes] or [
        "- none: every metric was measured"
    ]
    lines += ["", "## Plots", ""]
    lines += [f"![{Path(p).stem}]({p})" for p in plots] or ["(none)"]
    mach = results["machine"]
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in mach.items()]
    lines += ["", "## Arguments", "", "```json", json.dumps(results["arguments"], indent=2), "```"]
    lines += ["", "## How each number is measured", "", METHOD]
    return "\n".join(lines)


# ---- plots ---------------------------------------------------------------------------------------


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_quality_vs_size(results: dict, path: Path) -> bool:
    """Each task's score (or perplexity when there is no task) against parameters, every model."""
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = [
        (t["name"], lambda m, t=t["name"]: (m["quality"].get(t) or {}).get("score")) for t in results["tasks"]
    ]
    ylabel = "task score (accuracy or ROUGE-L)"
    if not series:
        series = [("perplexity", lambda m: m["perplexity"])]
        ylabel = "perplexity on the text (lower is better)"
    plotted = False
    for name, get in series:
        pts = [(m["cost"]["parameters"], get(m), m["label"]) for m in models if get(m) is not None]
        if not pts:
            continue
        plotted = True
        pts.sort()
        marker = "osD^v<>p*h"[len(ax.lines) % 10]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle="-", alpha=0.8, label=name)
        for x, y, label in pts:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if not plotted:
        plt.close(fig)
        return False
    ax.set_xscale("log")
    if results["tasks"]:
        ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("parameters")
    ax.set_ylabel(ylabel)
    ax.set_title("quality against size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_task_bars(results: dict, path: Path) -> bool:
    """Grouped bars: one group per task, one bar per model."""
    import matplotlib.pyplot as plt

    tasks, models = results["tasks"], results["models"]
    if not tasks:
        return False
    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * len(tasks) * max(1, len(models)) / 2), 4.2))
    width = 0.8 / len(models)
    for j, m in enumerate(models):
        xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(tasks))]
        ys = [(m["quality"].get(t["name"]) or {}).get("score") or 0.0 for t in tasks]
        ax.bar(xs, ys, width, label=m["label"])
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(
        [f"{t['name']}\n({'accuracy' if t['kind'] == 'accuracy' else 'ROUGE-L'})" for t in tasks]
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("per-task quality")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_training_curves(results: dict, path: Path) -> bool:
    """loss / ce / kd against step for every model whose run folder has trainer logs."""
    import matplotlib.pyplot as plt

    with_logs = [m for m in results["models"] if m.get("training_curves")]
    keys = [k for k in ("loss", "ce", "kd") if any(k in m["training_curves"] for m in with_logs)]
    if not keys:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for m in with_logs:
            pts = m["training_curves"].get(key)
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker="." if len(pts) < 30 else None,
                    label=m["label"],
                )
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
    return True


def write_plots(results: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    written = []
    for name, plot in (
        ("quality_vs_size.png", plot_quality_vs_size),
        ("task_scores.png", plot_task_bars),
        ("training_curves.png", plot_training_curves),
    ):
        if plot(results, out_dir / name):
            written.append(name)
    return written


def write_report(results: dict, out_dir: Path) -> None:
    """Write plots, report.md and results.json into `out_dir` (results["plots"] lists the PNGs)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plots: list[str] = []
        results.setdefault("notes", []).append("plots skipped: matplotlib is not installed")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        plots = write_plots(results, out_dir)
    results["plots"] = plots
    atomic_write_text(out_dir / "report.md", render_markdown(results, plots))
    atomic_write_json(out_dir / "results.json", results)

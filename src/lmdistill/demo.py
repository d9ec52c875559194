"""`lmdistill demo`: what logits KD is for, on the embedded teacher, end to end on a laptop CPU.

SmolLM2-135M-Instruct (30 layers) is the teacher; a student with a third of its layers, initialised
from it, is trained twice at equal steps on the SAME tokens: human-written chat answers from
chatterbot-corpus. Once with CE alone (plain fine-tuning: it learns the human answers), once with
logits KD (CE on the same tokens plus forward KL to the teacher's distribution at every position: the
teacher's knowledge is the only difference). The held-out prompts are answered by the teacher
(greedy, through the response cache); both students are scored on those answers every few steps:
top-1 agreement with the teacher and KL to it, the figures KD exists to move. Perplexity is reported
on the teacher's held-out answers and on the held-out human answers.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lmdistill.data import chatterbot_conversations, pad_id, split_train_heldout, tokenize_records
from lmdistill.eval.quality import (
    CurveCallback,
    HeldoutScorer,
    Method,
    PrecomputedTeacher,
    indexed,
    train_student,
)
from lmdistill.io import atomic_write, atomic_write_json, atomic_write_jsonl, atomic_write_text
from lmdistill.models import (
    cache_dir,
    check_vocab,
    describe_sizes,
    load_teacher,
    load_tokenizer,
    shrink_model,
)
from lmdistill.teachers.cache import CachedTeacher, ResponseCache
from lmdistill.teachers.local import LocalTeacher
from lmdistill.teachers.types import Request, Sampling
from lmdistill.training.run import save_student

TEACHER = "smollm2-135m"
KD_NAME = "KD (CE + forward KL)"
CE_NAME = "CE only (no KD)"


@dataclass
class DemoConfig:
    """The demo's knobs; defaults finish in under 10 minutes on 2 CPU cores."""

    output_dir: str = "runs/demo"
    steps: int | None = None  # optimizer steps per training run (default 32; --fast: 4)
    fast: bool = False  # smoke test: few prompts, few steps
    heldout_prompts: int = 40
    max_new_tokens: int = 40
    student_layers: int = 10
    batch_size: int = 8
    learning_rate: float = 6e-4
    kd_ratio: float = 0.9  # 0.5 ties CE alone on top-1 over 3 seeds; 0.9 wins (docs/quality.md)
    temperature: float = 1.0
    eval_every: int | None = None  # held-out scoring every N steps for the curves (default steps // 4)
    seed: int = 0

    def resolved(self) -> DemoConfig:
        c = copy.copy(self)
        if c.fast:
            c.heldout_prompts, c.max_new_tokens = 8, 16
        if c.steps is None:
            c.steps = 4 if c.fast else 32
        if c.eval_every is None:
            c.eval_every = max(1, c.steps // 4)
        return c

    @property
    def train_examples(self) -> int:
        """One pass: every training example is seen once (steps x batch)."""
        return (self.steps or 0) * self.batch_size


def teacher_responses(
    teacher, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 32, name: str = TEACHER
):
    """Greedy teacher answers through the response cache (a rerun generates only what is missing).
    `name`: the teacher's identity in the cache (another model must have another name).

    Returns a list of dicts {prompt, response, finished} in the order of `prompts`; `finished` is False
    where the answer was cut at max_new_tokens.
    """
    local = LocalTeacher(teacher, tokenizer, name=name, batch_size=batch_size)
    sampling = Sampling(max_new_tokens=max_new_tokens)
    requests = [Request.chat([{"role": "user", "content": p}], sampling) for p in prompts]
    answers = [None] * len(requests)
    with ResponseCache(cache_dir() / "demo" / "responses.sqlite") as cache:
        cached = CachedTeacher(local, cache)
        with tqdm(total=len(requests), desc="teacher answers", unit="prompt") as bar:
            for i, response in cached.generate_iter(requests):
                answers[i] = response
                bar.update(1)
    return [
        {"prompt": p, "response": a.text, "finished": a.finish_reason == "stop"}
        for p, a in zip(prompts, answers, strict=True)
    ]


def _as_messages(rows, answer_key: str = "response"):
    return [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r[answer_key]},
            ]
        }
        for r in rows
    ]


@dataclass
class ChatData:
    """The demo's and the quality benchmark's data, as message rows: human training answers, and for
    the held-out prompts the teacher's greedy answers and the human ones."""

    train_rows: list[dict]
    teacher_rows: list[dict]
    human_rows: list[dict]
    held_prompts: list[str]  # the prompts of teacher_rows, in order
    teacher_answers: list[str]  # aligned with held_prompts
    train_prompts: int
    cut: int  # teacher answers cut at max_new_tokens

    def features(self, tokenizer, max_length: int = 256) -> tuple[list[dict], list[dict], list[dict]]:
        """(train, held-out teacher answers, held-out human answers), tokenized."""
        return (
            tokenize_records(self.train_rows, tokenizer, max_length, source="train (human answers)")[0],
            tokenize_records(self.teacher_rows, tokenizer, max_length, source="held-out teacher answers")[0],
            tokenize_records(self.human_rows, tokenizer, max_length, source="held-out human answers")[0],
        )


def chatterbot_data(
    teacher,
    tokenizer,
    *,
    train_examples: int,
    heldout_prompts: int,
    max_new_tokens: int,
    seed: int = 0,
    name: str = TEACHER,
    human_per_prompt: int | None = None,
) -> ChatData:
    """chatterbot-corpus split by prompt (a fixed split, so the response cache fits every seed):
    `train_examples` human answers of training prompts (shuffled with `seed`, the same tokens for every
    student), and for the first `heldout_prompts` held-out prompts the teacher's greedy answers (empty
    ones dropped) and their human answers (at most `human_per_prompt` each; None: all)."""
    convs = chatterbot_conversations()
    prompts = list(dict.fromkeys(cv["prompt"] for cv in convs))
    train_p, held_p = split_train_heldout(prompts, heldout_fraction=0.2, seed=0)
    held_p = held_p[:heldout_prompts]
    train_set, held_set = set(train_p), set(held_p)
    pool = [cv for cv in convs if cv["prompt"] in train_set]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    train = [pool[i] for i in order][:train_examples]
    answers = teacher_responses(teacher, tokenizer, held_p, max_new_tokens=max_new_tokens, name=name)
    kept = [a for a in answers if a["response"]]
    human, seen = [], {}
    for cv in convs:
        if cv["prompt"] in held_set and (
            human_per_prompt is None or seen.get(cv["prompt"], 0) < human_per_prompt
        ):
            human.append(cv)
            seen[cv["prompt"]] = seen.get(cv["prompt"], 0) + 1
    return ChatData(
        train_rows=_as_messages(train),
        teacher_rows=_as_messages(kept),
        human_rows=_as_messages(human),
        held_prompts=[a["prompt"] for a in kept],
        teacher_answers=[a["response"] for a in kept],
        train_prompts=len({cv["prompt"] for cv in train}),
        cut=sum(not a["finished"] for a in kept),
    )


def _table(rows: list[tuple[str, dict]]) -> str:
    lines = [
        "| model | top-1 agreement with teacher | KL(teacher ‖ model) nats/token | perplexity, teacher text "
        "| perplexity, human text |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {m['top1']:.1%} | {m['kl']:.3f} | {m['perplexity']:.2f} | {m['human_perplexity']:.2f} |"
        )
    return "\n".join(lines)


def plot_curves(curves: dict[str, list[dict]], path: Path, title: str) -> bool:
    """Held-out top-1 agreement and KL against optimizer steps, one line per student; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for (name, points), style in zip(curves.items(), ("o-", "s--", "^-.", "d:"), strict=False):
        steps = [p["step"] for p in points]
        a1.plot(steps, [100 * p["top1"] for p in points], style, label=name, markersize=4)
        a2.plot(steps, [p["kl"] for p in points], style, label=name, markersize=4)
    a1.set(
        xlabel="optimizer step",
        ylabel="top-1 agreement with teacher (%)",
        title="agreement (higher is better)",
    )
    a2.set(xlabel="optimizer step", ylabel="KL(teacher ‖ student), nats/token", title="KL (lower is better)")
    a2.set_yscale("log")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return True


def run_demo(config: DemoConfig | None = None, log=print) -> dict:
    """Run the demo; returns the results dict also written to output_dir/results.json."""
    c = (config or DemoConfig()).resolved()
    out = Path(c.output_dir)
    started = time.time()
    torch.manual_seed(c.seed)

    log(f"[1/5] teacher: {TEACHER} (SmolLM2-135M-Instruct)")
    tokenizer = load_tokenizer(TEACHER)
    teacher = load_teacher(TEACHER)

    log(
        "[2/5] data: chatterbot-corpus; students learn its human answers, held-out prompts answered by the teacher"
    )
    data = chatterbot_data(
        teacher,
        tokenizer,
        train_examples=c.train_examples,
        heldout_prompts=c.heldout_prompts,
        max_new_tokens=c.max_new_tokens,
        seed=c.seed,
    )
    atomic_write_jsonl(out / "data" / "train.jsonl", data.train_rows)
    atomic_write_jsonl(out / "data" / "heldout_teacher.jsonl", data.teacher_rows)
    atomic_write_jsonl(out / "data" / "heldout_human.jsonl", data.human_rows)
    train_f, held_f, human_f = data.features(tokenizer)
    log(
        f"      train: {len(train_f)} human answers to {data.train_prompts} prompts; held-out: {len(held_f)} "
        f"teacher answers ({data.cut} cut at {c.max_new_tokens} tokens) and {len(human_f)} human answers "
        f"to {len(data.held_prompts)} other prompts"
    )

    log(f"[3/5] student: {c.student_layers} of the teacher's 30 layers, copied")
    student0 = shrink_model(teacher, num_layers=c.student_layers)
    vocab = check_vocab(tokenizer, tokenizer, teacher, student0)
    log(describe_sizes(teacher, student0))
    pad = pad_id(tokenizer)
    log("      the teacher reads the training and held-out text once (its states are reused by every run)")
    train_f = indexed(train_f)
    precomputed = PrecomputedTeacher(teacher, train_f, pad)
    scorer = HeldoutScorer(teacher, held_f, vocab, pad)
    human_scorer = HeldoutScorer(teacher, human_f, vocab, pad)

    def evaluate(model) -> dict:
        own = model is teacher  # the teacher's states are kept: no forward for its own row
        s = scorer.teacher_scores() if own else scorer.score(model)
        h = human_scorer.teacher_scores() if own else human_scorer.score(model)
        return {
            "top1": s.top1,
            "kl": s.kl,
            "perplexity": s.perplexity,
            "tokens": s.tokens,
            "human_perplexity": h.perplexity,
            "human_top1": h.top1,
            "human_kl": h.kl,
            "human_tokens": h.tokens,
        }

    results: dict = {"models": {}, "config": {**c.__dict__, "train_examples": c.train_examples}}
    results["models"]["teacher"] = evaluate(teacher)
    results["models"]["student before training"] = evaluate(student0)

    methods = [
        Method(KD_NAME, loss="forward_kl", kd_ratio=c.kd_ratio, temperature=c.temperature),
        Method(CE_NAME, kd_ratio=0.0),
    ]
    curves: dict[str, list[dict]] = {}
    for i, method in enumerate(methods):
        log(
            f"[{4 + i}/5] train {method.name}: {c.steps} steps, batch {c.batch_size}, held-out score every {c.eval_every}"
        )
        curve = CurveCallback(scorer, c.eval_every)
        student, seconds = train_student(
            method, student0, teacher, tokenizer, vocab, train_f,
            steps=c.steps, batch_size=c.batch_size, lr=c.learning_rate, seed=c.seed,
            output_dir=str(out / ("kd" if method.kd_ratio else "ce")),
            precomputed=precomputed, curve=curve,
        )  # fmt: skip
        curves[method.name] = curve.points
        results["models"][f"student, {method.name}"] = {
            **evaluate(student),
            "train_seconds": round(seconds, 1),
        }
        if method.kd_ratio:
            save_student(student, tokenizer, out / "student")
    results["curves"] = curves

    results["gaps"] = _gaps(results["models"])
    results["seconds"] = round(time.time() - started, 1)
    _write_report(c, results, out, examples=(len(train_f), len(held_f), len(human_f)), log=log)
    return results


def _gaps(models: dict) -> str:
    """KD against CE alone, in one sentence."""
    kd, ce = models[f"student, {KD_NAME}"], models[f"student, {CE_NAME}"]
    return (
        f"KD against CE alone on the held-out teacher answers: top-1 agreement {100 * (kd['top1'] - ce['top1']):+.1f} "
        f"points, KL {kd['kl'] - ce['kl']:+.3f} nats/token, perplexity {kd['perplexity']:.2f} vs "
        f"{ce['perplexity']:.2f}; on the human answers, perplexity {kd['human_perplexity']:.2f} vs "
        f"{ce['human_perplexity']:.2f}."
    )


def _write_report(c: DemoConfig, results: dict, out: Path, *, examples: tuple[int, int, int], log) -> None:
    """report.md (table, gaps, curves), results.json and curves.png in `out`; the table printed.
    examples: the training, held-out teacher and held-out human answer counts."""
    n_train, n_held, n_human = examples
    table = _table(list(results["models"].items()))
    title = f"{c.student_layers}-layer student, {c.steps} steps x {c.batch_size} human answers; held-out teacher answers"
    plotted = plot_curves(results["curves"], out / "curves.png", title)
    picture = (
        "![held-out agreement and KL against steps](curves.png)\n\n"
        if plotted
        else "(no plot: matplotlib is not installed)\n\n"
    )
    teacher = results["models"]["teacher"]
    report = (
        f"# lmdistill demo\n\nTeacher SmolLM2-135M-Instruct (30 layers) -> student with {c.student_layers} "
        f"layers copied from it. Both students learn the same {n_train} human-written chatterbot answers "
        f"({c.steps} steps of batch {c.batch_size}, lr {c.learning_rate}, seed {c.seed}): CE alone, or "
        f"{1 - c.kd_ratio:g} x CE + {c.kd_ratio:g} x forward KL to the teacher (T = {c.temperature:g}). "
        f"Held-out: the teacher's greedy answers to {n_held} other prompts "
        f"({teacher['tokens']} target tokens: top-1, KL, perplexity) and the "
        f"{n_human} human answers to the same prompts "
        f"({teacher['human_tokens']} tokens: perplexity, human text).\n\n"
        f"{table}\n\n{results['gaps']}\n\n{picture}"
        f"Total time {results['seconds']} s. Student folder (KD): {out / 'student'}\n"
    )
    atomic_write_text(out / "report.md", report)
    atomic_write_json(out / "results.json", results)
    log("\n" + table + "\n\n" + results["gaps"])
    log(
        f"\nstudent (KD) saved to {out / 'student'}; report {out / 'report.md'}"
        + (f", curves {out / 'curves.png'}" if plotted else "")
        + f"; {results['seconds']} s in all"
    )

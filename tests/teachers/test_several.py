"""Several teachers as one source: routing sends each row's tokens to its own teacher only; mixing and
per-token selection equal a float64 reference on a tiny vocabulary; store and server teachers take part
in the list (a real loopback `lmdistill serve`); on-policy samples go to their prompt's teacher."""

from __future__ import annotations

import json

import pytest
import torch

from lmdistill.chunked import Head, LossSpec, chunked_loss
from lmdistill.data import DistillCollator, tokenize_records
from lmdistill.losses import divergence
from lmdistill.models.forward import final_hidden
from lmdistill.teachers.routing import route_rows, routed
from lmdistill.teachers.whitebox import InProcessTeacher, Member, SeveralTeachers, TeacherQuery, teacher_loss
from tests.teachers.test_server_teacher import _capture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = [{"prompt": f"Question {i}?", "completion": f" The answer is {i * 7}."} for i in range(6)]


class _Recording(InProcessTeacher):
    """An in-process teacher that records the token ids of every row it is asked about."""

    def __init__(self, model, name):
        super().__init__(model, name)
        self.seen: list[list[int]] = []

    def score(self, query):
        for ids, mask in zip(query.input_ids, query.attention_mask, strict=True):
            self.seen.append(ids[mask.bool()].tolist())
        return super().score(query)


def _batch(tok, routes):
    features = tokenize_records(routed(ROWS, routes), tok, 32)[0]
    return DistillCollator(0)(features), features


def _student_inputs(student, batch):
    mask = batch["labels"][:, 1:] != -100
    hidden = final_hidden(student, batch["input_ids"], batch["attention_mask"])[:, :-1][mask]
    return hidden, Head.of(student), batch["labels"][:, 1:][mask]


def test_routing_sends_each_rows_tokens_to_its_teacher_only(tiny_llama, tiny_tokenizer):
    v = len(tiny_tokenizer)
    a, b = tiny_llama(v, seed=1).eval(), tiny_llama(v, hidden=48, seed=3).eval()
    b.lm_head.weight.data.mul_(30)  # far from a's (random tiny models are both near uniform)
    student = tiny_llama(v, num_layers=1, seed=2)
    routes = [0, 1, 1, 0, 1, 0]
    batch, features = _batch(tiny_tokenizer, routes)
    assert batch["teacher_index"].tolist() == routes
    ta, tb = _Recording(a, "a"), _Recording(b, "b")
    source = SeveralTeachers([Member("a", ta, 1.0), Member("b", tb, 2.0)], "route", temperature=1.0, vocab=v)
    spec = LossSpec(loss="forward_kl", ce_weight=0.5, kd_weight=0.5, vocab=v, chunk_size=4)
    hidden, head, labels = _student_inputs(student, batch)
    got = teacher_loss(hidden, head, labels, spec, source.score(TeacherQuery.from_batch(batch)))
    # Each teacher saw exactly its own rows, nothing else.
    ids = [f["input_ids"] for f in features]
    assert ta.seen == [ids[i] for i in (0, 3, 5)] and tb.seen == [ids[i] for i in (1, 2, 4)]
    # The reference: every row alone against its own teacher (b's KD term at its own T = 2, times T^2).
    total = ce = kd = 0.0
    for f, r in zip(features, routes, strict=True):
        one = DistillCollator(0)([f])
        h, _, y = _student_inputs(student, one)
        teacher = (a, b)[r]
        t_spec = spec if r == 0 else LossSpec("forward_kl", 0.5, 0.5 * 4, 2.0, vocab=v, chunk_size=4)
        t_hidden = InProcessTeacher(teacher).score(TeacherQuery.from_batch(one)).hidden
        sums = chunked_loss(h, head, y, t_spec, t_hidden, Head.of(teacher, trainable=False))
        total, ce, kd = total + sums.total.item(), ce + sums.ce.item(), kd + sums.kd.item()
    assert got.tokens == labels.shape[0]
    assert got.total.item() == pytest.approx(total, rel=1e-5)
    assert got.ce.item() == pytest.approx(ce, rel=1e-5) and got.kd.item() == pytest.approx(kd, rel=1e-5)
    # The other routing gives another loss: the teachers differ, so the test can see a misrouted row.
    batch2, _ = _batch(tiny_tokenizer, [0] * len(routes))  # b's rows sent to a
    other = teacher_loss(hidden, head, labels, spec, source.score(TeacherQuery.from_batch(batch2)))
    assert abs(other.kd.item() - got.kd.item()) > 0.05 * got.kd.item()
    # Gradients reach the student through every part.
    got.total.backward()
    assert all(p.grad is not None for p in student.lm_head.parameters())


def _reference_mixture(teachers, temps, log_w, batch, v):
    """float64 log of the mixture, every logit at once: [N, v]."""
    mask = batch["labels"][:, 1:] != -100
    with torch.no_grad():
        logps = [
            torch.log_softmax(t(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits[:, :-1, :v][mask].double() / tt, -1)
            for t, tt in zip(teachers, temps, strict=True)
        ]  # fmt: skip
    stacked = torch.stack(logps)  # [m, N, v]
    return torch.logsumexp(stacked + log_w.T[:, :, None], dim=0), stacked


@pytest.mark.parametrize("loss", ["forward_kl", "jsd", "reverse_kl"])
@pytest.mark.parametrize("mode", ["mix", "select"])
def test_mixture_and_selection_equal_a_float64_reference(tiny_llama, tiny_tokenizer, mode, loss):
    v = len(tiny_tokenizer)
    teachers = [
        tiny_llama(v, seed=1).eval(),
        tiny_llama(v, hidden=48, seed=3).eval(),
        tiny_llama(v, seed=5).eval(),
    ]
    student = tiny_llama(v, num_layers=1, seed=2)
    temps, weights, t_loss = [2.0, 1.0, 0.5], [0.5, 0.2, 0.3], 1.5
    members = [Member(str(i), InProcessTeacher(t), tt, w) for i, (t, tt, w) in enumerate(zip(teachers, temps, weights, strict=True))]  # fmt: skip
    source = SeveralTeachers(members, mode, temperature=t_loss, vocab=v, chunk_size=5)
    batch, _ = _batch(tiny_tokenizer, [0] * len(ROWS))
    batch.pop("teacher_index")  # mixing reads no routes
    hidden, head, labels = _student_inputs(student, batch)
    spec = LossSpec(loss, ce_weight=0.0, kd_weight=1.0, temperature=t_loss, vocab=v, chunk_size=3)
    got = teacher_loss(hidden, head, labels, spec, source.score(TeacherQuery.from_batch(batch)))
    n = labels.shape[0]
    if mode == "mix":
        log_w = torch.tensor(weights, dtype=torch.float64).log().expand(n, 3)
    else:  # per token, the teacher with the highest p_i(y_t)
        _, stacked = _reference_mixture(teachers, temps, torch.zeros(n, 3, dtype=torch.float64), batch, v)
        best = stacked.gather(2, labels[None, :, None].expand(3, n, 1)).squeeze(2).argmax(0)
        log_w = torch.full((n, 3), float("-inf"), dtype=torch.float64)
        log_w[torch.arange(n), best] = 0.0
        assert len(set(best.tolist())) > 1  # the test sees tokens of more than one teacher
    log_mix, _ = _reference_mixture(teachers, temps, log_w, batch, v)
    with torch.no_grad():
        s_logits = head.logits(hidden, v).double()
    want = divergence(loss, s_logits, log_mix * t_loss, temperature=t_loss, reduction="sum")
    assert got.kd.item() == pytest.approx(want.item(), rel=2e-5)


def test_route_rows_by_field_rule_and_default():
    from lmdistill.config import RoutingConfig
    from lmdistill.errors import UserError

    rows = [{"teacher": "code"}, {"task": "arithmetic"}, {"task": "chat"}, {}]
    r = RoutingConfig(by="task", rules={"arithmetic": "maths"}, default="chat")
    assert route_rows(rows, ["maths", "code", "chat"], r, "d.jsonl") == [1, 0, 2, 2]
    with pytest.raises(UserError, match=r"d.jsonl:4: no teacher for this row"):
        route_rows(rows, ["maths", "code", "chat"], RoutingConfig(by="task", rules={"arithmetic": "maths", "chat": "chat"}), "d.jsonl")  # fmt: skip
    with pytest.raises(UserError, match=r"d.jsonl:1: teacher 'code' is not a listed teacher"):
        route_rows(rows, ["maths", "chat"], r, "d.jsonl")


# -- runs: one teacher bit for bit; store and server teachers in the list; on-policy routing ------------------


def _write(tmp_path, rows, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tmp_path, teachers, student, rows, **sections):
    from lmdistill import yamlconfig
    from lmdistill.config import RunConfig

    raw = {
        "student": {"name": str(student)},
        "data": {"train": str(_write(tmp_path, rows)), "max_length": 40},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "save_steps": 2,
            "extra": {"use_cpu": True, "disable_tqdm": True},
        },
        **sections,
    }
    if isinstance(teachers, dict):
        raw["teacher"] = teachers
    else:
        raw["teachers"] = teachers
    return yamlconfig.build(RunConfig, raw, "test").validate()


def _losses(tmp_path) -> list[float]:
    state = tmp_path / "out" / "checkpoint-2" / "trainer_state.json"
    return [h["loss"] for h in json.loads(state.read_text())["log_history"] if "loss" in h]


def test_a_list_of_one_teacher_is_todays_run_bit_for_bit(tiny_model_dirs, tmp_path):
    from safetensors.torch import load_file

    from lmdistill.training.run import run

    teacher, student = tiny_model_dirs
    rows = [dict(r) for r in ROWS]
    out = {}
    for label, spelling in (("one", {"name": str(teacher)}), ("list", [{"id": "t", "name": str(teacher)}])):
        where = tmp_path / label
        where.mkdir()
        run(_config(where, spelling, student, rows, distill={"kd_ratio": 0.5}), log=lambda *_: None)
        out[label] = (_losses(where), load_file(where / "out" / "student" / "model.safetensors"))
    assert out["one"][0] == out["list"][0]
    assert all(torch.equal(out["one"][1][k], out["list"][1][k]) for k in out["one"][1])


def test_store_server_and_in_process_teachers_in_one_list(served, tiny_model_dirs, tiny_llama, tmp_path):
    """One list of three: a store captured from the teacher, the teacher behind `lmdistill serve`, and
    another model in process; each row routed by its task. The routed loss equals each row alone against
    its own source, and a run trains from the three."""
    from lmdistill.capture import TeacherStore
    from lmdistill.models import load_tokenizer
    from lmdistill.training.parts.data import tokenize_run_data
    from lmdistill.training.parts.teacher import TeacherPart
    from lmdistill.training.run import run

    url, _ = served
    teacher_dir, student_dir = tiny_model_dirs
    tok = load_tokenizer(teacher_dir)
    other = tmp_path / "other"
    tiny_llama(len(tok), seed=7).save_pretrained(other)
    tok.save_pretrained(other)
    tasks = ["chat", "maths", "code"]
    rows = [{**r, "task": tasks[i % 3]} for i, r in enumerate(ROWS * 2)]
    data = _write(tmp_path, rows)
    store = tmp_path / "store"
    _capture(teacher_dir, data, store)  # over the whole data, as `lmdistill capture` writes it
    teachers = [
        {"id": "chat", "name": str(other)},
        {"id": "maths", "name": str(teacher_dir), "store": str(store)},
        {"id": "code", "name": str(teacher_dir), "server": url, "server_k": 8},
    ]
    routing = {"by": "task", "rules": {"chat": "chat", "maths": "maths", "code": "code"}}
    cfg = _config(tmp_path, teachers, student_dir, rows, routing=routing)
    from lmdistill.config import resolve_teachers

    cfg = resolve_teachers(cfg)
    part = TeacherPart.choose(cfg)
    train, _ = part.route(cfg, rows, None, log=lambda *_: None)
    run_data = tokenize_run_data(cfg, train, None, tok)
    source = part.source(cfg, tok, run_data)
    from lmdistill.training.parts.models import build_models

    models = build_models(cfg, log=lambda *_: None, source=source, tokenizer=tok)
    batch = DistillCollator(0)(run_data.train[:6])
    hidden, head, labels = _student_inputs(models.student, batch)
    spec = LossSpec(vocab=models.vocab, chunk_size=4)
    got = teacher_loss(hidden, head, labels, spec, source.score(TeacherQuery.from_batch(batch)))
    want = 0.0
    for f in run_data.train[:6]:
        one = DistillCollator(0)([f])
        h, _, y = _student_inputs(models.student, one)
        alone = source.members[f["teacher_index"]].source.score(TeacherQuery.from_batch(one))
        want += chunked_loss(h, head, y, spec, **alone.loss_inputs()).total.item()
    assert got.total.item() == pytest.approx(want, rel=1e-5)
    kinds = {
        type(p.scores.sparse if p.scores.sparse is not None else p.scores.hidden)
        for p in got_parts(source, batch)
    }
    assert len(kinds) == 2  # dense and sparse parts side by side
    run(cfg, log=lambda *_: None)
    assert (tmp_path / "out" / "student" / "model.safetensors").is_file()
    assert TeacherStore.open(store).manifest["examples"] == len(rows)


def got_parts(source, batch):
    return source.score(TeacherQuery.from_batch(batch)).parts


def test_on_policy_samples_are_scored_by_their_prompts_teacher(
    tiny_model_dirs, tiny_llama, tmp_path, monkeypatch
):
    import lmdistill.teachers.whitebox.local as local
    from lmdistill.models import load_tokenizer
    from lmdistill.training.run import run

    teacher_dir, student_dir = tiny_model_dirs
    tok = load_tokenizer(teacher_dir)
    other = tmp_path / "other"
    tiny_llama(len(tok), seed=7).save_pretrained(other)
    tok.save_pretrained(other)
    rows = [{"messages": [{"role": "user", "content": f"Prompt {i}, {'sum' if i % 2 else 'chat'}"}], "teacher": "ab"[i % 2]} for i in range(8)]  # fmt: skip
    seen: dict[str, list[str]] = {"a": [], "b": []}
    scored = local.InProcessTeacher.score

    def recording(self, query):
        for ids, mask in zip(query.input_ids, query.attention_mask, strict=True):
            seen[self.name].append(tok.decode(ids[mask.bool()]))
        return scored(self, query)

    monkeypatch.setattr(local.InProcessTeacher, "score", recording)
    teachers = [{"id": "a", "name": str(teacher_dir)}, {"id": "b", "name": str(other)}]
    cfg = _config(
        tmp_path,
        teachers,
        student_dir,
        rows,
        on_policy={"lmbda": 1.0, "max_new_tokens": 6},
        distill={"kd_ratio": 0.5},
    )
    run(cfg, log=lambda *_: None)
    assert seen["a"] and seen["b"]  # both teachers scored samples, each only its own prompts' samples
    assert all("chat" in s and "sum" not in s for s in seen["a"])
    assert all("sum" in s and "chat" not in s for s in seen["b"])


# -- bad input: one line each, before any model loads ------------------------------------------------------


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: every bad input below is refused before one."""
    import transformers

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _yaml(tmp_path, tiny_model_dirs, rows, teachers, routing=None):
    import yaml

    student = tiny_model_dirs[1]
    raw = {
        "teachers": teachers,
        "student": {"name": str(student)},
        "data": {"train": str(_write(tmp_path, rows)), "max_length": 40},
        "train": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "extra": {"use_cpu": True}},
    }
    if routing:
        raw["routing"] = routing
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _two(tiny_model_dirs, **b):
    return [{"id": "a", "name": str(tiny_model_dirs[0])}, {"id": "b", "name": str(tiny_model_dirs[0]), **b}]


def test_unknown_teacher_in_a_row(tiny_model_dirs, tmp_path, capsys, no_model_loads):
    from tests.conftest import cli_fails

    rows = [{**ROWS[0], "teacher": "a"}, {**ROWS[1], "teacher": "maths"}]
    path = _yaml(tmp_path, tiny_model_dirs, rows, _two(tiny_model_dirs))
    cli_fails(
        ["train", path], capsys, "train.jsonl:2: teacher 'maths' is not a listed teacher (teachers: a, b)"
    )
    assert not (tmp_path / "out").exists()


def test_a_row_without_a_teacher_and_no_default(tiny_model_dirs, tmp_path, capsys, no_model_loads):
    from tests.conftest import cli_fails

    rows = [{**ROWS[0], "teacher": "a"}, {**ROWS[1], "task": "chat"}]
    path = _yaml(
        tmp_path, tiny_model_dirs, rows, _two(tiny_model_dirs), {"by": "task", "rules": {"sums": "a"}}
    )
    cli_fails(["train", path], capsys, "train.jsonl:2: no teacher for this row", "routing.default is null")


def test_weights_must_sum_to_a_positive_number(tiny_model_dirs, tmp_path, capsys, no_model_loads):
    from tests.conftest import cli_fails

    teachers = [{**t, "weight": 0.0} for t in _two(tiny_model_dirs)]
    path = _yaml(tmp_path, tiny_model_dirs, ROWS, teachers, {"mode": "mix"})
    cli_fails(["train", path], capsys, "teachers: the weights sum to 0.0")
    teachers[0]["weight"] = -1.0
    path = _yaml(tmp_path, tiny_model_dirs, ROWS, teachers, {"mode": "mix"})
    cli_fails(["train", path], capsys, "teachers[0].weight must be a finite number >= 0")


def test_a_route_to_a_teacher_not_listed(tiny_model_dirs, tmp_path, capsys, no_model_loads):
    from tests.conftest import cli_fails

    path = _yaml(tmp_path, tiny_model_dirs, ROWS, _two(tiny_model_dirs), {"default": "code"})
    cli_fails(["train", path], capsys, "routing.default: 'code' is not a listed teacher (teachers: a, b)")
    path = _yaml(
        tmp_path, tiny_model_dirs, ROWS, _two(tiny_model_dirs), {"by": "task", "rules": {"sums": "maths"}}
    )
    cli_fails(
        ["train", path], capsys, "routing.rules: task 'sums' routes to 'maths', which is not a listed teacher"
    )


def test_mixed_vocabularies_without_cross_tokenizer(tiny_model_dirs, tmp_path, capsys, no_model_loads):
    from tests.conftest import build_tiny_tokenizer, cli_fails

    other = tmp_path / "other"
    build_tiny_tokenizer(other, vocab_size=300)  # another vocabulary: its tokenizer alone is read
    (other / "config.json").write_text("{}")
    rows = [{**r, "teacher": "ab"[i % 2]} for i, r in enumerate(ROWS)]
    teachers = [{"id": "a", "name": str(tiny_model_dirs[0])}, {"id": "b", "name": str(other)}]
    path = _yaml(tmp_path, tiny_model_dirs, rows, teachers)
    cli_fails(
        ["train", path],
        capsys,
        "teachers[1] (b,",
        "tokenizes differently from the student",
        "several teachers need one tokenizer unless one is declared: set teachers[1].cross_tokenizer",
    )
    # Declared, a teacher of another tokenizer trains routed by row (tests/training/test_xtok_routed_step.py),
    # never mixed: its distributions are over another vocabulary.
    path.write_text(path.read_text() + "distill:\n  cross_tokenizer: uld\nrouting:\n  mode: mix\n")
    cli_fails(["train", path], capsys, "routing.mode=mix with a cross-tokenizer teacher")


def test_mix_needs_every_teacher_in_process(tiny_model_dirs, tmp_path, capsys, no_model_loads):
    from tests.conftest import cli_fails

    path = _yaml(
        tmp_path,
        tiny_model_dirs,
        ROWS,
        _two(tiny_model_dirs, server="http://127.0.0.1:9/v1"),
        {"mode": "mix"},
    )
    cli_fails(
        ["train", path], capsys, "routing.mode=mix needs every teacher in this process", "'b' is a server"
    )

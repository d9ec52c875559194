"""FSDP2 (`train.fsdp: true`) with 2 CPU processes (gloo) against 1 unsharded process at the same global
batch: the same loss trajectory, the same final weights, a resume from a sharded checkpoint that ends
where the uninterrupted run ends, and an ordinary Hugging Face student folder. The student ties its
head to its input embeddings (as SmolLM2 does), so the chunked loss's head gradient and the
embedding's meet in one sharded parameter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.training.test_multiprocess import _losses, _train


@pytest.fixture
def fsdp_setup(tmp_path, tiny_llama, tiny_tokenizer):
    """A teacher (3 layers, wider) and a tied student (2 layers) sharing the tiny tokenizer, and data."""
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    tiny_llama(len(tiny_tokenizer), num_layers=3, hidden=48, seed=5).save_pretrained(teacher)
    tiny_llama(len(tiny_tokenizer), num_layers=2, tie=True, seed=2).save_pretrained(student)
    for d in (teacher, student):
        tiny_tokenizer.save_pretrained(d)
    rows = [{"text": f"Hello world number {i} the cat sat on the mat " * (1 + i % 3)} for i in range(32)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return teacher, student, data


def _config(tmp_path, setup, name: str, procs: int, *, fsdp: bool, steps: int = 3, **train) -> dict:
    teacher, student, data = setup
    return {
        "teacher": {"name": str(teacher)},
        "student": {"name": str(student)},
        "data": {"train": str(data), "max_length": 32},
        "hints": {"hidden_weight": 1.0, "layers": "last"},  # a learned projection outside the sharded student
        "train": {
            "output_dir": str(tmp_path / name),
            "max_steps": steps,
            "per_device_train_batch_size": 8 // procs,  # the same global batch
            "gradient_accumulation_steps": 1,
            "learning_rate": 1e-2,
            "lr_scheduler_type": "linear",  # the scheduler's state must survive a resume too
            "logging_steps": 1,
            "save_steps": 1000,
            "fsdp": fsdp,
            "extra": {"use_cpu": True, "disable_tqdm": True, "dataloader_drop_last": True},
            **train,
        },
    }


#: Weight tolerance after 3 AdamW steps at lr 1e-2 (each moves a weight by up to about 1e-2): AdamW divides
#: each gradient by its own running RMS, so for a weight whose gradient is near zero the float rounding
#: that differs between 1 and 2 processes (summation order) becomes an update difference of ~1e-6.
ADAM_ATOL = 1e-5


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_fsdp2_matches_one_process_and_resumes(tmp_path, fsdp_setup):
    """1 process x 8 examples against FSDP2 (student and teacher sharded) on 2 processes x 2 examples x
    2 accumulation steps."""
    one = _train(tmp_path, "one", 1, _config(tmp_path, fsdp_setup, "one", 1, fsdp=False))
    assert one.returncode == 0, one.stderr[-3000:]
    # 2 processes x 2 examples x 2 accumulated micro-batches: FSDP2's reduction waits for the last one.
    cfg = _config(tmp_path, fsdp_setup, "two", 2, fsdp=True, save_steps=2)
    # The teacher is sharded too (train.fsdp_teacher): its head is read through the same gathering.
    cfg["train"].update(per_device_train_batch_size=2, gradient_accumulation_steps=2, fsdp_teacher=True)
    two = _train(tmp_path, "two", 2, cfg)
    assert two.returncode == 0, two.stderr[-3000:]
    for role in ("student", "teacher"):
        assert two.stdout.count(f"{role} sharded with FSDP2 across 2 processes") == 2, two.stdout[-2000:]
    runs = {1: _losses(one.stdout), 2: _losses(two.stdout)}
    assert len(runs[1]) == len(runs[2]) == 3
    for (loss1, norm1), (loss2, norm2) in zip(runs[1], runs[2], strict=True):
        assert abs(loss1 - loss2) <= 2e-3 * abs(loss1)  # printed to 4 significant digits
        assert abs(norm1 - norm2) <= 2e-3 * abs(norm1)

    # The final student is an ordinary Hugging Face folder with the same weights as the 1-process run.
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "two" / "student"
    w1, w2 = _weights(tmp_path / "one" / "student"), _weights(folder)
    assert w1.keys() == w2.keys() and "lm_head.weight" not in w2  # tied: stored once
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=ADAM_ATOL)
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert "distributed_config" not in json.loads((folder / "config.json").read_text())
    p1 = load_file(str(tmp_path / "one" / "hint_projections.safetensors"))
    p2 = load_file(str(tmp_path / "two" / "hint_projections.safetensors"))
    for key in p1:
        torch.testing.assert_close(p2[key], p1[key], rtol=1e-4, atol=ADAM_ATOL)

    # Resume from the sharded checkpoint at step 2: step 3 and the final weights match the full run.
    ckpt = tmp_path / "two" / "checkpoint-2"
    assert (ckpt / "optimizer_fsdp").is_dir() and (ckpt / "model.safetensors").is_file()
    shutil.rmtree(tmp_path / "two" / "student")
    cfg["train"]["resume_from_checkpoint"] = str(ckpt)  # not `latest`: Trainer saved checkpoint-3 at the end
    again = _train(tmp_path, "again", 2, cfg)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = _losses(again.stdout)
    assert len(resumed) == 1
    assert abs(resumed[0][0] - runs[2][2][0]) <= 2e-3 * abs(runs[2][2][0])
    w3 = _weights(folder)
    for key in w2:
        torch.testing.assert_close(w3[key], w2[key], rtol=1e-4, atol=ADAM_ATOL)


def test_fsdp2_checkpoint_resumes_in_another_process_count(tmp_path, fsdp_setup, capsys):
    """A checkpoint of FSDP2 on 2 processes resumes unsharded in 1 (the optimizer's DCP folder read whole),
    and one that 1 process wrote (optimizer.pt) resumes under FSDP2 on 2, each process keeping its shards:
    at the same global batch every resumed step and the final weights match the uninterrupted run."""
    from tests.conftest import cli_fails

    cfg = _config(tmp_path, fsdp_setup, "run", 2, fsdp=True, steps=4, save_steps=2)
    two = _train(tmp_path, "two", 2, cfg)
    assert two.returncode == 0, two.stderr[-3000:]
    full, final = _losses(two.stdout), _weights(tmp_path / "run" / "student")
    assert len(full) == 4

    # 2 -> 1 from checkpoint-2, saving every step: checkpoint-3 is then one that 1 process wrote.
    one = _config(tmp_path, fsdp_setup, "run", 1, fsdp=False, steps=4, save_steps=1)
    one["train"]["resume_from_checkpoint"] = str(tmp_path / "run" / "checkpoint-2")
    # Half the global batch (1 process x 4) would resume at another data position: refused before any work.
    (tmp_path / "half.yaml").write_text(yaml.safe_dump(one))
    argv = ["train", str(tmp_path / "half.yaml"), "train.per_device_train_batch_size=4"]
    err = cli_fails(argv, capsys, "written by 2 process(es) x 4 examples x 1 accumulated = 8")
    assert "this run has 1 x 4 x 1 = 4" in err
    resumed = _train(tmp_path, "one", 1, one)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoint-3"
    assert (ckpt / "optimizer.pt").is_file() and not (ckpt / "optimizer_fsdp").exists()
    assert sorted(p.name for p in ckpt.glob("rng_state*")) == ["rng_state.pth"]
    # The moments and the learning rate came back too (a fresh AdamW step moves weights by ~1e-2).
    for key, value in _weights(tmp_path / "run" / "student").items():
        torch.testing.assert_close(value, final[key], rtol=1e-4, atol=ADAM_ATOL)

    # 1 -> 2 from that checkpoint-3, sharded again.
    cfg["train"]["resume_from_checkpoint"] = str(ckpt)
    again = _train(tmp_path, "again", 2, cfg)
    assert again.returncode == 0, again.stderr[-3000:]
    for run, steps in ((resumed, full[2:]), (again, full[3:])):
        losses = _losses(run.stdout)
        assert len(losses) == len(steps), run.stdout[-2000:]
        for (loss, norm), (loss0, norm0) in zip(losses, steps, strict=True):
            assert abs(loss - loss0) <= 2e-3 * abs(loss0) and abs(norm - norm0) <= 2e-3 * abs(norm0)
    for key, value in _weights(tmp_path / "run" / "student").items():
        torch.testing.assert_close(value, final[key], rtol=1e-4, atol=ADAM_ATOL)


def test_fsdp2_lora_matches_one_process_and_resumes(tmp_path, fsdp_setup):
    """LoRA adapters on a sharded student: the same losses and merged student as 1 process, and a
    resume from the step-2 checkpoint (adapters gathered into adapter_model.safetensors)."""
    runs, folders = {}, {}
    for procs in (1, 2):
        cfg = _config(tmp_path, fsdp_setup, f"lora{procs}", procs, fsdp=procs == 2, save_steps=2)
        cfg["student"].update(lora_r=4, lora_alpha=8)
        cfg["hints"] = {}
        cfg["train"]["learning_rate"] = 5e-2  # adapters start at B = 0: a visible change in 3 steps
        done = _train(tmp_path, f"lora{procs}", procs, cfg)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[procs], folders[procs] = _losses(done.stdout), tmp_path / f"lora{procs}"
    assert len(runs[1]) == len(runs[2]) == 3
    for (loss1, norm1), (loss2, norm2) in zip(runs[1], runs[2], strict=True):
        assert abs(loss1 - loss2) <= 2e-3 * abs(loss1)
        assert abs(norm1 - norm2) <= 2e-3 * abs(norm1)
    w0 = _weights(fsdp_setup[1])
    w1, w2 = _weights(folders[1] / "student"), _weights(folders[2] / "student")
    assert w1.keys() == w2.keys() == w0.keys()  # merged: an ordinary folder, no adapter names
    moved = [k for k in w1 if not torch.equal(w1[k], w0[k])]
    assert moved  # the adapters changed the merged weights
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=ADAM_ATOL)
    ckpt = folders[2] / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "optimizer_fsdp").is_dir()
    cfg["train"]["resume_from_checkpoint"] = str(ckpt)
    again = _train(tmp_path, "lora_again", 2, cfg)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = _losses(again.stdout)
    assert len(resumed) == 1 and abs(resumed[0][0] - runs[2][2][0]) <= 2e-3 * abs(runs[2][2][0])
    w3 = _weights(folders[2] / "student")
    for key in w2:
        torch.testing.assert_close(w3[key], w2[key], rtol=1e-4, atol=ADAM_ATOL)


GRADS_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from torch.distributed.tensor import DTensor
    from transformers import LlamaConfig, LlamaForCausalLM
    from lmdistill.chunked import Head, LossSpec, chunked_loss
    from lmdistill.models.forward import final_hidden
    from lmdistill.models.sharding import shard_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()


    def check(tie, reshard):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
        model, whole = LlamaForCausalLM(config), LlamaForCausalLM(config)
        whole.load_state_dict(model.state_dict())
        shard_model(model)
        if reshard:  # the root frees its gathered weights after forward: the loss must gather the head itself
            model.set_reshard_after_forward(True, recurse=False)
        ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(1))
        teacher = torch.randn(4 * 11, 64, generator=torch.Generator().manual_seed(2))
        spec = LossSpec(loss="jsd", ce_weight=0.5, kd_weight=0.5, chunk_size=5, vocab=64)

        def loss(m, rows):
            h = final_hidden(m, ids[rows], torch.ones_like(ids[rows]))[:, :-1].reshape(-1, 32)
            if m is model:
                assert isinstance(m.lm_head.weight, DTensor) == reshard, type(m.lm_head.weight)
            t = teacher.view(4, 11, 64)[rows].reshape(-1, 64)
            head = Head(torch.eye(64))  # the teacher's "hidden states" are its logits
            return chunked_loss(h, Head.of(m), ids[rows, 1:].reshape(-1), spec, t, head).total / (4 * 11)

        for _ in range(2):  # twice: the second forward starts from the state the first backward left
            model.zero_grad()
            whole.zero_grad()
            (loss(model, slice(2 * rank, 2 * rank + 2)) * world).backward()  # FSDP2 averages over processes
            loss(whole, slice(0, 4)).backward()
            for (name, p), (_, q) in zip(model.named_parameters(), whole.named_parameters()):
                torch.testing.assert_close(p.grad.full_tensor(), q.grad, rtol=1e-5, atol=1e-7, msg=name)
        print(f"grads match: tied={tie} resharded={reshard}", flush=True)


    for tie in (True, False):
        for reshard in (False, True):
            check(tie, reshard)
    dist.destroy_process_group()
    """
)


def _two_processes(script, args: list[str], *, timeout: int, what: str, env: dict | None = None) -> str:
    """Run `script` under torchrun with 2 processes (1 thread each); its stdout, or an AssertionError
    with the end of stderr (killed, with the whole process group, after `timeout` seconds)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", str(script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"the 2-process {what} hung (killed after {timeout} s)") from None
    assert proc.returncode == 0, err[-3000:]
    return out


def test_head_gradients_reach_the_shards(tmp_path):
    """The chunked loss's head gradient (tied or not) is reduce-scattered into the FSDP2 shards: every
    parameter's gradient equals one process's on the whole batch, also when the root unit reshards
    after forward and the head must be gathered by the loss (`unsharded_head_weight`)."""
    script = tmp_path / "grads.py"
    script.write_text(GRADS_SCRIPT)
    out = _two_processes(script, [], timeout=120, what="gradient check")
    assert out.count("grads match:") == 2 * 4, out  # 2 processes x (tied, untied) x (kept, resharded root)


@pytest.mark.parametrize(
    ("train", "env", "match"),
    [
        ({"fsdp": True}, {}, "launch with `torchrun"),
        ({"fsdp_teacher": True}, {}, "shards the teacher across processes"),
        ({"extra": {"fsdp": "full_shard"}}, {}, "use train.fsdp: true"),
        ({"extra": {"deepspeed": {"zero_optimization": {"stage": 3}}}}, {}, "ZeRO stage 3 is not supported"),
        ({"fsdp": True, "extra": {"deepspeed": {"zero_optimization": {"stage": 2}}}}, {}, "contradict"),
    ],
)
def test_sharding_settings_refused_before_any_work(tmp_path, capsys, monkeypatch, train, env, match):
    from tests.conftest import cli_fails

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "hello"}\n')
    cfg = {
        "teacher": {"name": str(tmp_path / "no_teacher")},
        "student": {"name": str(tmp_path / "no_student")},
        "data": {"train": str(data)},
        "train": {"output_dir": str(tmp_path / "out"), **train},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli_fails(["train", path], capsys, match)
    assert not (tmp_path / "out").exists()


def test_a_nonfinite_batch_is_skipped_by_all_shards(tmp_path, tiny_model_dirs, tiny_tokenizer):
    """The poisoned-teacher run of test_multiprocess under FSDP2: every process skips the step together
    and the weights match 1 process; the final held-out report is the same."""
    from transformers import AutoModelForCausalLM

    teacher_dir, student = tiny_model_dirs
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    with torch.no_grad():
        teacher.get_input_embeddings().weight[tiny_tokenizer.convert_tokens_to_ids("q")] = float("nan")
    poisoned = tmp_path / "poisoned_teacher"
    teacher.save_pretrained(poisoned)
    tiny_tokenizer.save_pretrained(poisoned)
    rows = [{"text": f"Hello world number {i} the cat sat on the mat"} for i in range(16)]
    rows[5] = {"text": "a quiet question"}
    data, held_out = tmp_path / "data.jsonl", tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held_out.write_text("".join(json.dumps({"text": f"the mat number {i}"}) + "\n" for i in range(4)))
    for procs in (1, 2):
        cfg = {
            "teacher": {"name": str(poisoned)},
            "student": {"name": str(student)},
            "data": {"train": str(data), "eval": str(held_out), "max_length": 24},
            "train": {
                "output_dir": str(tmp_path / f"nan{procs}"),
                "max_steps": 2,  # one epoch: the poisoned example is in exactly one step
                "per_device_train_batch_size": 8 // procs,
                "learning_rate": 1e-2,
                "logging_steps": 1,
                "save_steps": 1000,
                "fsdp": procs == 2,
                "extra": {
                    "use_cpu": True,
                    "disable_tqdm": True,
                    "optim": "sgd",
                    "dataloader_drop_last": True,
                },
            },
        }
        done = _train(tmp_path, f"nan{procs}", procs, cfg)
        assert done.returncode == 0, done.stderr[-3000:]
        logs = [line for line in done.stdout.splitlines() if "{'loss'" in line]
        assert len(logs) == 2 and "'nonfinite_skipped': 1" in logs[-1], done.stdout[-2000:]
    one, two = _weights(tmp_path / "nan1" / "student"), _weights(tmp_path / "nan2" / "student")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)
    # The held-out report of the sharded run scores the saved student, whole, in process 0.
    eval1, eval2 = (json.loads((tmp_path / f"nan{p}" / "eval.json").read_text()) for p in (1, 2))
    assert eval2["tokens"] == eval1["tokens"] > 0
    assert eval2["kl"] == pytest.approx(eval1["kl"], rel=1e-4)


LOAD_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch, torch.distributed as dist
    from pathlib import Path
    from lmdistill.config import load_config
    from lmdistill.training import fsdp
    from lmdistill.training.run import build_models, training_arguments

    torch.set_num_threads(1)
    root = Path(sys.argv[1])
    ids = torch.load(root / "ids.pt")
    for case in ("named", "shrunk", "alone"):
        cfg = load_config(root / f"{case}.yaml")
        args = training_arguments(cfg.train)
        rank = args.process_index  # args.device initialises gloo for torchrun
        _ = args.device
        weights = [Path(cfg.teacher.name) / "model.safetensors"]
        weights += [Path(cfg.student.name) / "model.safetensors"] if cfg.student.name else []
        if rank == 0:
            models = build_models(cfg, log=lambda line: None)
            for w in weights:  # gone while process 1 builds its models: it cannot have read them
                w.rename(w.with_suffix(".hidden"))
        dist.barrier()
        if rank != 0:
            models = build_models(cfg, log=lambda line: None)
            built = [m for m in (models.student, models.teacher) if m is not None]
            on_meta = {p.device.type for m in built for p in m.parameters()}
            print(f"rank {rank} {case}: built on {sorted(on_meta)}", flush=True)
        dist.barrier()
        if rank == 0:
            for w in weights:
                w.with_suffix(".hidden").rename(w)
        student = fsdp.prepare_student(models.student, args)
        teacher = fsdp.prepare_teacher(models.teacher, args) if models.teacher is not None else student
        tied = student.lm_head.weight is student.model.embed_tokens.weight  # one parameter, as on disk
        print(f"rank {rank} {case}: tied={tied}", flush=True)
        with torch.no_grad():
            out = {role: m(input_ids=ids).logits for role, m in (("student", student), ("teacher", teacher))}
        for role, m in (("student", student), ("teacher", teacher)):
            out[role + "_buffers"] = {n: b.clone() for n, b in m.named_buffers()}
        torch.save(out, root / f"{case}_{rank}.pt")
        print(f"rank {rank} {case}: logits written", flush=True)
    dist.destroy_process_group()
    """
)


def test_only_process_0_reads_weights_and_shards_match_one_process(tmp_path, fsdp_setup):
    """Under train.fsdp + train.fsdp_teacher only process 0 reads the checkpoints: process 1 builds the
    student and teacher while their model.safetensors files are renamed away (a read would fail), on the
    meta device, and receives its shards from process 0. The sharded models' logits (so the rotary
    embedding's buffers, restored after `to_empty`) equal the whole models' in one process, for a student
    loaded by name (its tied head still one parameter), for one shrunk from the teacher (process 1
    shrinks the meta teacher), and for a CE-only run whose teacher is read (by process 0) only to shrink it."""
    from transformers import AutoModelForCausalLM

    from lmdistill.models import shrink_model

    teacher_dir, student_dir, _ = fsdp_setup
    ids = torch.randint(0, 60, (2, 12), generator=torch.Generator().manual_seed(3))
    torch.save(ids, tmp_path / "ids.pt")
    for case, student in (("named", str(student_dir)), ("shrunk", ""), ("alone", "")):
        cfg = _config(tmp_path, fsdp_setup, case, 2, fsdp=True, fsdp_teacher=case != "alone")
        cfg["student"] = {"name": student} if student else {"name": "", "num_layers": 2}
        cfg["hints"] = {}
        if case == "alone":  # CE only: the teacher is read (by process 0) only to shrink it, then dropped
            cfg["distill"] = {"kd_ratio": 0.0}
        (tmp_path / f"{case}.yaml").write_text(yaml.safe_dump(cfg))
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    out = _two_processes(
        script, [str(tmp_path)], timeout=180, what="loading check", env={"HF_HUB_OFFLINE": "1"}
    )
    for case, tied in (("named", True), ("shrunk", False), ("alone", False)):
        assert f"rank 1 {case}: built on ['meta']" in out, out
        # The named student ties its head (as SmolLM2); the teacher, so its shrunk copies, does not.
        assert f"rank 0 {case}: tied={tied}" in out and f"rank 1 {case}: tied={tied}" in out, out

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    shrunk = shrink_model(teacher, num_layers=2).eval()
    wholes = {  # "alone" has no teacher model: the script's "teacher" is its student
        "named": (AutoModelForCausalLM.from_pretrained(student_dir).eval(), teacher),
        "shrunk": (shrunk, teacher),
        "alone": (shrunk, shrunk),
    }
    for case, (student, other) in wholes.items():
        with torch.no_grad():
            expected = {"student": student(input_ids=ids).logits, "teacher": other(input_ids=ids).logits}
        for rank in (0, 1):
            got = torch.load(tmp_path / f"{case}_{rank}.pt")
            for role, model in (("student", student), ("teacher", other)):
                torch.testing.assert_close(got[role], expected[role], rtol=1e-5, atol=1e-5)
                buffers = dict(model.named_buffers())
                assert got[role + "_buffers"].keys() == buffers.keys()
                for name, value in got[role + "_buffers"].items():  # inv_freq: exactly process 0's
                    torch.testing.assert_close(value, buffers[name], rtol=0, atol=0)

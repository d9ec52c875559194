"""The `lmdistill` command: thin subcommands over the library. User mistakes print one line, exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from lmdistill import __version__
from lmdistill.errors import UserError


def _train(args: argparse.Namespace) -> None:
    from lmdistill.config import load_config
    from lmdistill.training.run import run

    run(load_config(args.config, args.overrides))


def _capture(args: argparse.Namespace) -> None:
    from lmdistill.capture import capture, load_capture_config

    capture(load_capture_config(args.config, args.overrides))


def _demo(args: argparse.Namespace) -> None:
    from lmdistill.demo import DemoConfig, run_demo

    run_demo(DemoConfig(output_dir=args.output_dir, steps=args.steps, fast=args.fast))


def _generate(args: argparse.Namespace) -> None:
    from lmdistill.generate import load_generate_config, run_generate

    run_generate(load_generate_config(args.config, args.overrides))


def _recipe(args: argparse.Namespace) -> None:
    from lmdistill.recipes import load_recipe_config, run_recipe

    run_recipe(load_recipe_config(args.config, args.overrides))


def _serve(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:  # before the server package loads: one line, not an OverflowError
        raise UserError(f"--port must be between 0 and 65535 (0: any free port), got {args.port}")
    from lmdistill.serve import serve

    serve(
        args.model,
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        device=args.device,
        max_batch=args.max_batch,
        name=args.name,
        max_logprobs=args.max_logprobs,
    )


def _eval(args: argparse.Namespace) -> None:
    from lmdistill.eval import run_eval

    run_eval(
        args.models,
        teacher=args.teacher,
        teachers=args.teachers,
        tasks=args.task,
        text=args.text,
        output_dir=args.output_dir,
        max_examples=args.max_examples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        max_length=args.max_length,
        dtype=args.dtype,
        device=args.device,
        measure_memory=not args.no_memory,
        speculative=args.speculative,
        draft_tokens=args.draft_tokens,
        fixed_length=args.fixed_length,
    )


def _export(args: argparse.Namespace) -> None:
    from lmdistill.export import export_model

    export_model(
        args.src,
        args.out,
        dtype=args.dtype,
        quantize=args.quantize,
        untie_embeddings=args.untie_embeddings,
        force=args.force,
    )


def _config(args: argparse.Namespace) -> None:
    import yaml

    from lmdistill import yamlconfig
    from lmdistill.config import RunConfig, load_config
    from lmdistill.generate.config import GenerateConfig, load_generate_config
    from lmdistill.recipes.config import RecipeConfig, load_recipe_config

    root, loader = (RunConfig, load_config)
    if args.generate:
        root, loader = (GenerateConfig, load_generate_config)
    elif args.recipe:
        root, loader = (RecipeConfig, load_recipe_config)
    if args.config is None and not args.overrides:
        print(yamlconfig.describe(root))
        return
    print(yaml.safe_dump(dataclasses.asdict(loader(args.config, args.overrides)), sort_keys=False), end="")


def _check_teacher(args: argparse.Namespace) -> None:
    from lmdistill.config import load_config
    from lmdistill.teachers.whitebox.check import Limits, check_teacher, write_report

    limits = Limits(args.max_mean_kl, args.max_token_kl, args.min_overlap)
    report = check_teacher(
        load_config(args.config, args.overrides),
        rows=args.rows,
        limits=limits,
        dtype=args.dtype,
        server_only=args.server_only,
    )
    if args.json:
        write_report(report, args.json)
    if report["verdict"] != "PASS":
        raise SystemExit(1)


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage mistake is one line and a pointer to --help (exit 2), not the
    usage block: the same shape as every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _config_command(sub, name: str, help: str, config_help: str, override_example: str, func) -> None:
    """A command that takes a YAML config and `section.key=value` overrides (train, capture, ...)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("config", help=config_help)
    p.add_argument("overrides", nargs="*", default=[], help=f"section.key=value, e.g. {override_example}")
    p.set_defaults(func=func)


def _add_config_commands(sub) -> None:
    _config_command(
        sub,
        "train",
        "logits KD (CE + divergence) from a YAML config",
        "YAML file (see configs/ and `lmdistill config`)",
        "distill.kd_ratio=0.3",
        _train,
    )
    _config_command(
        sub,
        "capture",
        "store the teacher's top-k log-probs once, to train from (no teacher)",
        "YAML file with teacher, data and capture sections (configs/capture/)",
        "capture.k=128",
        _capture,
    )
    _config_command(
        sub,
        "generate",
        "black-box teacher data: responses, cot, self_instruct, icl",
        "YAML file (see configs/generate/ and `lmdistill config --generate`)",
        "mode=cot cot.samples=8",
        _generate,
    )
    _config_command(
        sub,
        "recipe",
        "black-box distillation end to end: icl, cot or instruct (teacher data, training, evaluation)",
        "YAML file (see configs/recipes/ and `lmdistill config --recipe`)",
        "tasks.train_per_task=16",
        _recipe,
    )


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="distil the embedded SmolLM2-135M-Instruct into a 10-layer student")
    p.add_argument("--output-dir", default="runs/demo", help="where the student and the report go")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the demo's)")
    p.add_argument("--fast", action="store_true", help="a much smaller run, for a smoke test")
    p.set_defaults(func=_demo)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server for a model (teacher or student)")
    p.add_argument("model", nargs="?", default="smollm2-135m", help="HF id, folder or short name")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--max-batch", type=int, default=8, help="requests batched into one generate call")
    p.add_argument("--name", default=None, help="model id served at /v1/models (default: MODEL)")
    p.add_argument(
        "--max-logprobs",
        type=int,
        default=20,
        help="most top log-probs per token a request may ask for (logprobs, prompt_logprobs; default 20)",
    )
    p.set_defaults(func=_serve)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate several models on the same tasks and text; one report")
    p.add_argument("models", nargs="+", metavar="MODEL", help="folders, short names or hub ids")
    p.add_argument("--teacher", default=None, help="reference model: agreement, compression, speedup")
    p.add_argument(
        "--teachers",
        default=None,
        metavar="RUN.yaml",
        help="a training config with teachers: and routing: (route): each model scored against each teacher "
        "on that teacher's held-out rows (data.eval routed like training), a table per teacher",
    )
    p.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="TASK",
        help="a JSONL file of question+answer or prompt+reference rows, or a built-in task "
        "(arithmetic:1..5, sentiment, format_one_word, format_json); repeatable",
    )
    p.add_argument("--text", default=None, metavar="FILE.txt", help="held-out plain text for perplexity")
    p.add_argument("--output-dir", default="runs/eval", help="where report.md, results.json, PNGs go")
    p.add_argument("--max-examples", type=int, default=None, help="rows per task file")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512, help="tokens per text chunk")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess")
    p.add_argument(
        "--speculative",
        action="store_true",
        help="measure each model as a speculative-decoding draft of --teacher: acceptance on its own "
        "answers, and real greedy assisted generation against the teacher alone",
    )
    p.add_argument(
        "--draft-tokens", type=int, default=4, help="tokens drafted per target call (--speculative)"
    )
    p.add_argument(
        "--fixed-length", type=int, default=32, help="tokens generated for the fixed-length latency"
    )
    p.set_defaults(func=_eval)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="a clean HF folder from a student, a train output or a LoRA adapter")
    p.add_argument("src", help="model folder, `lmdistill train` output folder, or peft LoRA adapter folder")
    p.add_argument("out", help="folder to write (written atomically)")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default=None,
        help="cast the weights (default: keep the stored dtype)",
    )
    p.add_argument(
        "--quantize",
        choices=["int8-dynamic"],
        default=None,
        help="int8 dynamic quantisation of Linear layers, applied on load (CPU)",
    )
    p.add_argument(
        "--untie-embeddings",
        action="store_true",
        help="the LM head as its own tensor (tie_word_embeddings: false): the folder to start the student's "
        "vLLM on for on_policy.sampler=vllm with reload syncs",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace OUT when it holds an earlier export (lmdistill_export.json); never any other folder",
    )
    p.set_defaults(func=_export)


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print every config key with default and help, or a resolved config")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--generate", action="store_true", help="the `lmdistill generate` config instead of `train`"
    )
    which.add_argument(
        "--recipe", action="store_true", help="the `lmdistill recipe` config instead of `train`"
    )
    p.add_argument("config", nargs="?", default=None, help="YAML file to resolve (optional)")
    p.add_argument("overrides", nargs="*", default=[], help="section.key=value")
    p.set_defaults(func=_config)


def _add_check_teacher(sub) -> None:
    p = sub.add_parser(
        "check-teacher",
        help="before a long job: does teacher.server score like teacher.name in this process? PASS/FAIL",
    )
    p.add_argument("config", help="the training YAML (teacher.server, teacher.name, data.train)")
    p.add_argument("overrides", nargs="*", default=[], help="section.key=value, e.g. teacher.server_k=20")
    p.add_argument("--rows", type=int, default=8, help="training examples scored (the first N; default 8)")
    p.add_argument("--max-mean-kl", type=float, default=2e-3, help="PASS limit: mean KL, nats/token")
    p.add_argument("--max-token-kl", type=float, default=5e-2, help="PASS limit: any token's KL, nats")
    p.add_argument("--min-overlap", type=float, default=0.9, help="PASS limit: mean top-k overlap")
    p.add_argument("--dtype", default="float32", help="dtype of the model loaded here (default float32)")
    p.add_argument("--server-only", action="store_true", help="load no model here: the probe's checks only")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=_check_teacher)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lmdistill",
        description="Distil a large language model (teacher) into a small one (student), and measure it.",
    )
    parser.add_argument("--version", action="version", version=f"lmdistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_config_commands(sub)
    _add_demo(sub)
    _add_serve(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_config(sub)
    _add_check_teacher(sub)
    return parser


def _end_progress_bars() -> None:
    """Close the progress bars an error left open (transformers' training bar), so the error starts on a
    line of its own instead of after the bar's last update."""
    tqdm_module = sys.modules.get("tqdm")  # no bar can be open when tqdm was never imported
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        _end_progress_bars()
        print(f"lmdistill {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _end_progress_bars()
        print(f"lmdistill {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

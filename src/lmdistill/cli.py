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
    )


def _export(args: argparse.Namespace) -> None:
    from lmdistill.export import export_model

    export_model(args.src, args.out, dtype=args.dtype, quantize=args.quantize, force=args.force)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmdistill",
        description="Distil a large language model (teacher) into a small one (student), and measure it.",
    )
    parser.add_argument("--version", action="version", version=f"lmdistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="logits KD (CE + divergence) from a YAML config")
    p.add_argument("config", help="YAML file (see configs/ and `lmdistill config`)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. distill.kd_ratio=0.3")
    p.set_defaults(func=_train)

    p = sub.add_parser("capture", help="store the teacher's top-k log-probs once, to train from (no teacher)")
    p.add_argument("config", help="YAML file with teacher, data and capture sections (configs/capture/)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. capture.k=128")
    p.set_defaults(func=_capture)

    p = sub.add_parser("demo", help="distil the embedded SmolLM2-135M-Instruct into a 10-layer student")
    p.add_argument("--output-dir", default="runs/demo", help="where the student and the report go")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the demo's)")
    p.add_argument("--fast", action="store_true", help="a much smaller run, for a smoke test")
    p.set_defaults(func=_demo)

    p = sub.add_parser("generate", help="black-box teacher data: responses, cot, self_instruct, icl")
    p.add_argument("config", help="YAML file (see configs/generate_*.yaml and `lmdistill config --generate`)")
    p.add_argument("overrides", nargs="*", help="key=value or section.key=value, e.g. mode=cot cot.samples=8")
    p.set_defaults(func=_generate)

    p = sub.add_parser(
        "recipe",
        help="black-box distillation end to end: icl, cot or instruct (teacher data, training, evaluation)",
    )
    p.add_argument("config", help="YAML file (see configs/recipes/ and `lmdistill config --recipe`)")
    p.add_argument(
        "overrides", nargs="*", help="key=value or section.key=value, e.g. tasks.train_per_task=16"
    )
    p.set_defaults(func=_recipe)

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

    p = sub.add_parser("eval", help="evaluate several models on the same tasks and text; one report")
    p.add_argument("models", nargs="+", metavar="MODEL", help="folders, short names or hub ids")
    p.add_argument("--teacher", default=None, help="reference model: agreement, compression, speedup")
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
    p.set_defaults(func=_eval)

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
    p.add_argument("--force", action="store_true", help="replace OUT if it exists and is not empty")
    p.set_defaults(func=_export)

    p = sub.add_parser("config", help="print every config key with default and help, or a resolved config")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--generate", action="store_true", help="the `lmdistill generate` config instead of `train`"
    )
    which.add_argument(
        "--recipe", action="store_true", help="the `lmdistill recipe` config instead of `train`"
    )
    p.add_argument("config", nargs="?", default=None, help="YAML file to resolve (optional)")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.set_defaults(func=_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"lmdistill {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmdistill {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

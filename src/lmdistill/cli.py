"""The `lmdistill` command: thin subcommands over the library. User mistakes print one line, exit 2."""

from __future__ import annotations

import argparse
import sys

from lmdistill import __version__
from lmdistill.errors import UserError


def _train(args: argparse.Namespace) -> None:
    from lmdistill.config import load_config
    from lmdistill.training.run import run

    run(load_config(args.config, args.overrides))


def _demo(args: argparse.Namespace) -> None:
    from lmdistill.demo import DemoConfig, run_demo

    run_demo(DemoConfig(output_dir=args.output_dir, steps=args.steps, fast=args.fast))


def _config(args: argparse.Namespace) -> None:
    import yaml

    from lmdistill.config import config_to_dict, describe_fields, load_config

    if args.config is None and not args.overrides:
        print(describe_fields())
        return
    print(yaml.safe_dump(config_to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")


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

    p = sub.add_parser("demo", help="distil the embedded SmolLM2-135M-Instruct into a 10-layer student")
    p.add_argument("--output-dir", default="runs/demo", help="where the student and the report go")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the demo's)")
    p.add_argument("--fast", action="store_true", help="a much smaller run, for a smoke test")
    p.set_defaults(func=_demo)

    p = sub.add_parser("config", help="print every config key with default and help, or a resolved config")
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

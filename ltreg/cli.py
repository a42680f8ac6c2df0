"""Command line: ``ltreg list | info | train | eval | push``.

``ltreg train`` with no flags is the demo: the default method on the embedded digits-LT data.
Training flags are generated from :class:`ltreg.config.TrainConfig`, so the CLI, YAML files and
Python keyword arguments accept the same names.

Every failure ends with one paragraph on stderr (``ltreg: error: ...``: what, which file or flag, how
to fix it) and a non-zero status: 2 for bad input (:class:`ltreg.errors.UsageError`), 1 for runtime
failures. No traceback is printed unless ``--debug`` is given (see :mod:`ltreg.clierrors`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any

from ltreg.clierrors import latest_checkpoint, report
from ltreg.errors import ConfigError

_SKIP = {"hparams", "method", "dataset_kwargs"}


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    from ltreg.config import SETTING_HELP, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    p.add_argument("--method", "-m", default=None, help="registered method name (see `ltreg list`)")
    p.add_argument("--config", dest="yaml", default=None, help="YAML run file (keys of TrainConfig, hparams: {...})")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="override a method hyper-parameter (repeatable)")
    p.add_argument("--data-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="extra data set builder argument, e.g. split_dir=/data/splits (repeatable)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SKIP:
            continue
        flag = "--" + f.name.replace("_", "-")
        text = SETTING_HELP.get(f.name, "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = f"{text} (ltreg default: {default!r})" if default not in (None, False, []) else text
        if hints[f.name] is bool:
            p.add_argument(flag, action="store_true", default=None, help=text)
        elif f.name == "milestones":
            p.add_argument(flag, type=lambda s: [int(x) for x in s.split(",") if x], default=None, help=text)
        elif f.name == "opt_betas":
            p.add_argument(flag, type=lambda s: [float(x) for x in s.split(",") if x], default=None, help=text)
        else:
            p.add_argument(flag, default=None, help=shown.replace("%", "%%"))


def _pairs(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{flag} expects NAME=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_list(args: argparse.Namespace) -> int:
    from ltreg.method import list_methods

    rows = list_methods()
    width = max([len(r["name"]) for r in rows] + [6])
    print(f"{'method':<{width}}  {'stages':>6}  {'distribution':<24} summary")
    for r in rows:
        dist = f"{r['dist']} {r['version']}".strip()
        if r["error"]:
            print(f"{r['name']:<{width}}  {'-':>6}  {dist:<24} FAILED TO LOAD: {r['error']}")
        else:
            print(f"{r['name']:<{width}}  {r['stages']:>6}  {dist:<24} {r['summary']}")
    if args.parts:
        from ltreg.registry import GROUPS, registry

        for group in GROUPS[1:]:
            names = ", ".join(f"{e.name} ({e.dist})" for e in registry(group).entries())
            print(f"\n{group}: {names}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ltreg.method import get_method

    print(get_method(args.name).describe())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ltreg.trainer import train

    overrides: dict[str, Any] = {k: v for k, v in vars(args).items()
                                 if k not in ("command", "func", "yaml", "hp", "method", "data_arg", "debug")
                                 and v is not None}
    hps = _pairs(args.hp, "--hp")
    if hps:
        overrides["hparams"] = hps
    from ltreg.data.build import parse_data_args

    data_args = parse_data_args(args.data_arg)
    if data_args:
        overrides["dataset_kwargs"] = data_args
    result = train(args.method, yaml_path=args.yaml, **overrides)
    if result.config.push_to_hub:
        from ltreg.hub import push_run

        push_run(result.run_dir, result.config.push_to_hub)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ltreg.data.build import parse_data_args
    from ltreg.evaluate import evaluate_pretrained, format_table

    metrics = evaluate_pretrained(args.model, dataset=args.dataset, data_root=args.data_root,
                                  data_kwargs=parse_data_args(args.data_arg), split=args.split)

    print(format_table(metrics, title=f"{args.model} (top-1 %)"))
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "per_class"}, indent=1))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from ltreg.hub import push_run

    url = push_run(args.run_dir, args.repo, private=args.private, revision=args.revision)
    print(f"pushed {args.run_dir} to {url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the full traceback of a failure (for bug reports)")
    parser = argparse.ArgumentParser(prog="ltreg", description="Long-tailed recognition methods, one trainer.",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("list", help="installed methods and where they come from", parents=[common])
    p.add_argument("--parts", action="store_true", help="also list losses, samplers, prototypes, ...")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("info", help="a method's parts, hyper-parameters and recipes", parents=[common])
    p.add_argument("name")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("train", help="train a method (no flags: the digits-LT demo)", parents=[common])
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a saved model folder or Hub repo on a data set", parents=[common])
    p.add_argument("model", help="run folder, model folder or Hub repo id")
    p.add_argument("--dataset", default=None, help="default: the data set it was trained on")
    p.add_argument("--data-root", default=None, help="default: the folder it was trained on")
    p.add_argument("--data-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="change a recorded data set builder argument (repeatable)")
    p.add_argument("--split", default="test", help="test (default) or val")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("push", help="push a run folder to the Hugging Face Hub", parents=[common])
    p.add_argument("run_dir")
    p.add_argument("--repo", required=True, help="org/name")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None)
    p.set_defaults(func=cmd_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a failure prints one paragraph (a traceback too with ``--debug``) and returns 1 or 2."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - every failure ends in one paragraph and an exit status
        resuming = bool(getattr(args, "resume", None))
        checkpoint = latest_checkpoint(getattr(args, "output_dir", None)) if resuming else None
        return report(exc, debug=getattr(args, "debug", False), resuming=resuming, checkpoint=checkpoint)
    except KeyboardInterrupt:
        print("ltreg: interrupted (the last checkpoint, if any, is intact; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""Command line: ``ltreg list | info | train | eval | predict | push``.

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
import os
import sys
import typing
import warnings
from typing import Any

from ltreg.clierrors import latest_checkpoint, report
from ltreg.errors import ConfigError

_SKIP = {"hparams", "method", "dataset_kwargs", "tuner_args"}


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    from ltreg.config import SETTING_HELP, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    p.add_argument("--method", "-m", default=None, help="registered method name (see `ltreg list`)")
    p.add_argument("--config", dest="yaml", default=None, help="YAML run file (keys of TrainConfig, hparams: {...})")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="override a method hyper-parameter (repeatable)")
    p.add_argument("--data-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="extra data set builder argument, e.g. split_dir=/data/splits (repeatable)")
    p.add_argument("--tuner-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="an argument of the tuner, e.g. r=8 for --tuner lora (repeatable; see `ltreg list --parts`)")
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
            p.add_argument(flag, type=_number_list(int, "epochs, e.g. 30,60"), default=None,
                           help=text)
        elif f.name == "opt_betas":
            p.add_argument(flag, type=_number_list(float, "numbers, e.g. 0.9,0.999"), default=None,
                           help=text)
        else:
            p.add_argument(flag, default=None, help=shown.replace("%", "%%"))


def _number_list(kind: type, want: str) -> Any:
    """An argparse type for a comma-separated list; its name is what argparse prints on a bad value."""

    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated {want}") from None

    parse.__name__ = f"comma-separated {kind.__name__} list"
    return parse


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
                                 if k not in ("command", "func", "yaml", "hp", "method", "data_arg", "tuner_arg", "debug")
                                 and v is not None}
    hps = _pairs(args.hp, "--hp")
    if hps:
        overrides["hparams"] = hps
    from ltreg.data.build import parse_data_args

    data_args = parse_data_args(args.data_arg)
    if data_args:
        overrides["dataset_kwargs"] = data_args
    from ltreg.config import parse_tuner_args

    tuner_args = parse_tuner_args(args.tuner_arg)
    if tuner_args:
        overrides["tuner_args"] = tuner_args
    result = train(args.method, yaml_path=args.yaml, **overrides)
    if result.config.push_to_hub:
        from ltreg.hub import push_run

        push_run(result.run_dir, result.config.push_to_hub)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ltreg.data.build import parse_data_args
    from ltreg.evaluate import DataMismatchWarning, evaluate_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataMismatchWarning)
        result = evaluate_model(args.model, dataset=args.dataset, data_root=args.data_root,
                                data_kwargs=parse_data_args(args.data_arg), split=args.split, revision=args.revision,
                                batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                                tta=args.tta)
    for w in caught:  # loud: on stderr, whatever --json does with stdout
        print(f"ltreg: warning: {w.message}", file=sys.stderr)
    human = sys.stderr if args.json else sys.stdout  # --json: stdout holds the JSON alone
    views = result.metrics["eval_views"]
    print(f"test-time views: {views['name']} ({views['description']})", file=human)
    print(result.format(per_class=args.per_class), file=human)
    if args.output_dir:
        for path in write_eval_files(result, args.output_dir):
            print(f"wrote {path}", file=human)
    if args.json:
        from ltreg.reports import dumps

        print(dumps(result.to_json()))
    return 0


def write_eval_files(result: Any, output_dir: str) -> list[str]:
    """``report.json``, ``per_class.csv``, ``confusion.csv`` and ``confusion.png`` (with matplotlib) in ``output_dir``."""
    from pathlib import Path

    from ltreg.files import write_atomic
    from ltreg.reports import confusion_csv, dumps, per_class_csv, plot_confusion

    folder = Path(output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--output-dir {folder}: cannot create it ({exc.strerror or exc}); pass a writable folder") from exc
    files = {"report.json": dumps(result.to_json()), "per_class.csv": per_class_csv(result.report),
             "confusion.csv": confusion_csv(result.report)}
    for name, text in files.items():
        write_atomic(folder / name, text)
    written = [str(folder / name) for name in files]
    title = f"{Path(result.model).name or result.model}: confusion on {result.data.dataset} ({result.data.split})"
    if plot_confusion(result.report, folder / "confusion.png", title=title):
        written.append(str(folder / "confusion.png"))
    else:
        written.append("(confusion.png not drawn: matplotlib is not installed; pip install 'ltreg[plot]')")
    return written


def cmd_predict(args: argparse.Namespace) -> int:
    from ltreg.inference import predict, predictions_json, write_predictions

    preds = predict(args.model, args.images, top_k=args.top_k, batch_size=args.batch_size,
                    num_workers=args.num_workers, device=args.device, revision=args.revision, tta=args.tta)
    if preds[0].views != "center":
        print(f"ltreg: note: logits averaged over the test-time view set {preds[0].views}", file=sys.stderr)
    if args.top_k > len(preds[0].top):
        print(f"ltreg: note: the model has {len(preds[0].top)} classes; --top-k {args.top_k} lists them all",
              file=sys.stderr)
    if args.output:
        path = write_predictions(preds, args.output, model=args.model)
        print(f"wrote {len(preds)} predictions to {path}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(predictions_json(preds, model=args.model))
    elif not args.output:
        for p in preds:
            print(f"{p.path}: " + ", ".join(f"{c.label} {100 * c.probability:.1f} %" for c in p.top))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from ltreg.hub import push_run

    url = push_run(args.run_dir, args.repo, private=args.private, revision=args.revision, adapter_only=args.adapter_only,
                   say=print)
    print(f"pushed {args.run_dir} to {url}")
    return 0


def _add_inference_flags(p: argparse.ArgumentParser, batch: int) -> None:
    p.add_argument("--batch-size", type=int, default=batch, help=f"images per forward pass (default {batch})")
    p.add_argument("--num-workers", type=int, default=None,
                   help="loader processes decoding images (default: none on the CPU, all CPUs but one on CUDA)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit of the model")


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
    p = sub.add_parser("eval", help="evaluate a saved model on its test split or on any labelled folder or table",
                       description="Score a run folder, model folder or Hub repo: on the data set it was trained on "
                       "(its test split, rebuilt), or with --data-root on a new labelled folder of class sub-folders "
                       "or a datasets table (classes matched by name). Exit status: 0 scored, 2 bad input (flags, "
                       "folder, no class in common), 1 a model that cannot be loaded.", parents=[common])
    p.add_argument("model", help="run folder, model folder or Hub repo id")
    p.add_argument("--dataset", default=None,
                   help="read --data-root with this data set builder (default: the recorded one, or none for a new folder)")
    p.add_argument("--data-root", default=None,
                   help="a new labelled folder (class sub-folders; flat or train/val/test) or datasets table to score, "
                        "every image of it; default: the recorded data set's test split")
    p.add_argument("--data-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a data set builder argument; for a new folder or table: layout, image_column, label_column")
    p.add_argument("--split", default="test", choices=["test", "val", "train"],
                   help="the split to score (default test; train only for a new folder or table)")
    p.add_argument("--tta", default=None, metavar="NAME",
                   help="test-time view set, logits averaged (center, fivecrop, tencrop, ...: `ltreg list --parts`); "
                        "default: the one the model card records")
    p.add_argument("--per-class", action="store_true", help="also print one row per class, sorted by training count")
    p.add_argument("--output-dir", default=None,
                   help="write report.json, per_class.csv, confusion.csv and confusion.png there")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout (the table goes to stderr)")
    _add_inference_flags(p, batch=256)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("predict", help="classify images with a saved model: top-k classes and probabilities",
                       description="Classify image files (or every image in the folders named) with a run folder, "
                       "model folder or Hub repo, with the model's own test transform. Exit status: 0 done, 2 bad "
                       "input, 1 a model that cannot be loaded.", parents=[common])
    p.add_argument("model", help="run folder, model folder or Hub repo id")
    p.add_argument("images", nargs="+", help="image files or folders of images (searched recursively)")
    p.add_argument("--top-k", type=int, default=5, help="classes listed per image (default 5)")
    p.add_argument("--output", default=None, help="write the predictions to a .csv or .json file")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON on stdout")
    p.add_argument("--tta", default=None, metavar="NAME",
                   help="test-time view set, logits averaged (center, fivecrop, tencrop, ...: `ltreg list --parts`); "
                        "default: the one the model card records")
    _add_inference_flags(p, batch=64)
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("push", help="push a run folder to the Hugging Face Hub", parents=[common])
    p.add_argument("run_dir")
    p.add_argument("--repo", required=True, help="org/name")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None)
    p.add_argument("--adapter-only", action="store_true",
                   help="push the adapter alone (LoRA / DoRA / IA3 runs on a Hub or timm base): a few MB plus the "
                        "base model's id; without it the merged model is pushed")
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
    except BrokenPipeError:  # `ltreg predict ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - every failure ends in one paragraph and an exit status
        resuming = bool(getattr(args, "resume", None))
        checkpoint = latest_checkpoint(getattr(args, "output_dir", None)) if resuming else None
        return report(exc, debug=getattr(args, "debug", False), resuming=resuming, checkpoint=checkpoint)
    except KeyboardInterrupt:
        print("ltreg: interrupted (the last checkpoint, if any, is intact; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""The plugin tutorial (docs/plugin-tutorial.md) is the source of truth; this checks it still works as written.

* File blocks (first line ``# <path>``, e.g. ``# ltreg_template/loss.py``) equal the files of
  ``examples/plugin-template/`` byte for byte, and every code file there is on the page (the one
  documented exception is the template's ``README.md``, prose the page does not show).
  ``python tests/test_tutorial.py --write`` copies the page's blocks into the template.
* The blocks, written to a temporary folder put first on ``sys.path``, import as a package whose entry
  points (read from the page's ``pyproject.toml`` block with tomllib) point at objects that exist; the
  page's method, registered in-process under a fresh name (the installed template holds its own
  name), trains two steps; the page's own loss tests pass against the page's code.
* Blocks headed ``# signatures from ltreg/<module>.py`` match ``inspect.signature`` of the real objects
  (parameters, kinds, annotations, defaults, return annotation; dataclass / NamedTuple fields; class
  constants such as the ``Extra`` names).
* Every ``ltreg ...`` command line on the page parses with the real CLI parser, and its ``--method``,
  ``--recipe`` and ``--hp`` values exist in the page's package.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import math
import operator
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "plugin-tutorial.md"
TEMPLATE = ROOT / "examples" / "plugin-template"
PKG = "ltreg_template"
#: Files of the template that the page does not show (prose only).
NOT_ON_PAGE = {"README.md"}
#: The page's own tests that compare against the *installed* distribution (run by tests/test_template.py).
NEEDS_INSTALLED = {"test_the_registry_finds_the_method_and_its_loss"}

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_FILE = re.compile(r"# ((?:[\w.-]+/)*[\w.-]+\.(?:py|toml))\n")
_SIGNATURES = re.compile(r"# signatures from (ltreg/[\w/]+\.py)\b")
EMPTY = "<empty>"


# -- reading the page -----------------------------------------------------------------------------
def page_blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced block on the page, in order."""
    return [(m.group(1).strip(), m.group(2)) for m in _FENCE.finditer(PAGE.read_text(encoding="utf-8"))]


def file_blocks() -> dict[str, str]:
    """Package-relative path -> the block's full text (header line included), for file blocks."""
    out: dict[str, str] = {}
    for _, text in page_blocks():
        m = _FILE.match(text)
        if m and not _SIGNATURES.match(text):
            assert m.group(1) not in out, f"{m.group(1)} is shown twice on the page"
            out[m.group(1)] = text
    return out


def signature_stubs() -> list[tuple[str, ast.stmt]]:
    """``(module, node)`` for every top-level def / class of the signature blocks."""
    out = []
    for _, text in page_blocks():
        m = _SIGNATURES.match(text)
        if m:
            module = m.group(1).removesuffix(".py").replace("/", ".")
            out += [(module, n) for n in ast.parse(text).body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    return out


def template_files() -> dict[str, str]:
    """The template's tracked source files (build and cache outputs left out), path -> text."""
    skip = ("egg-info", "__pycache__", ".pytest_cache", "build", "dist")
    return {
        p.relative_to(TEMPLATE).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(TEMPLATE.rglob("*"))
        if p.is_file() and not any(part.endswith(skip) for part in p.relative_to(TEMPLATE).parts)
        and p.suffix != ".pyc"
    }


def write_blocks(root: Path) -> None:
    for rel, text in file_blocks().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


# -- page <-> template ----------------------------------------------------------------------------
def test_page_shows_the_template_files_exactly():
    blocks, files = file_blocks(), template_files()
    assert set(blocks) == {"pyproject.toml", "ltreg_template/__init__.py", "ltreg_template/loss.py",
                           "tests/test_template_plugin.py"}
    assert set(files) == set(blocks) | NOT_ON_PAGE, "a template file is missing from the page, or vice versa"
    for rel, text in blocks.items():
        assert files[rel] == text, (
            f"docs/plugin-tutorial.md block '# {rel}' differs from examples/plugin-template/{rel}; the page is "
            f"the source of truth: run `python tests/test_tutorial.py --write` (then reinstall if pyproject changed)"
        )


# -- the page's code, imported from a temporary folder --------------------------------------------
@pytest.fixture(scope="module")
def page_root(tmp_path_factory):
    """The page's blocks as a package folder, first on sys.path, with ``ltreg_template`` imported from it."""
    root = tmp_path_factory.mktemp("tutorial-page")
    write_blocks(root)
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == PKG or k.startswith(PKG + ".")}
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        pkg = importlib.import_module(PKG)
        assert Path(pkg.__file__).resolve().is_relative_to(root.resolve()), pkg.__file__
        yield root
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k == PKG or k.startswith(PKG + ".")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _toml(text: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(text)


def test_page_entry_points_point_at_objects_that_exist(page_root):
    from ltreg.method import MethodSpec
    from ltreg.registry import GROUPS, registry

    project = _toml(file_blocks()["pyproject.toml"])["project"]
    eps = project["entry-points"]
    assert set(eps) <= {f"ltreg.{g}" for g in GROUPS}, sorted(eps)
    assert len(eps["ltreg.methods"]) == 1
    provided: dict[tuple[str, str], object] = {}
    for group, entries in eps.items():
        for name, value in entries.items():
            mod, _, attr = value.partition(":")
            module = importlib.import_module(mod)
            assert Path(module.__file__).resolve().is_relative_to(page_root.resolve())
            provided[group.removeprefix("ltreg."), name] = operator.attrgetter(attr)(module)
    (name, spec), = [(n, o) for (g, n), o in provided.items() if g == "methods"]
    assert isinstance(spec, MethodSpec) and spec.name == name
    from ltreg.method import _GROUP_OF_ROLE

    for role, ref in spec.parts().items():
        if ref is None:
            continue
        group = _GROUP_OF_ROLE[role]
        if (group, ref.name) in provided:  # the page's own part: its constructor takes the spec's kwargs
            inspect.signature(provided[group, ref.name]).bind(**ref.resolve_kwargs(spec.hparams))
        else:  # a core part, reused by name
            assert ref.name in registry(group), f"{role} {ref.name!r} is neither on the page nor installed"
    assert any(g == "losses" for g, _ in provided), "the page's loss has no entry point"


def test_page_method_trains_two_steps(page_root, tmp_path):
    import ltreg
    from ltreg.method import PartRef
    from ltreg.registry import registry

    pkg = sys.modules[PKG]
    name = "tutorial-page-supcon-la"  # the installed template owns template-supcon-la; in-process names must differ
    spec = dataclasses.replace(pkg.METHOD, name=name, loss=PartRef(name, **dict(pkg.METHOD.loss.kwargs)))
    ltreg.register_loss(name, pkg.SupConLALoss)
    ltreg.register_method(spec)
    try:
        assert registry("losses").get(name) is pkg.SupConLALoss
        result = ltreg.train(name, epochs=1, max_steps_per_epoch=2, batch_size=32, eval_batch_size=512,
                             output_dir=str(tmp_path))
    finally:
        registry("methods").unregister(name)
        registry("losses").unregister(name)
    row = result.history[-1]
    assert row["steps"] == 2 and all(math.isfinite(row[k]) for k in ("loss", "la_ce", "supcon"))
    assert (tmp_path / "model.safetensors").is_file()


def _calls(fn):
    """Argument dicts for ``fn`` from its ``pytest.mark.parametrize`` marks (one empty dict without)."""
    calls = [{}]
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "parametrize":
            names = [n.strip() for n in mark.args[0].split(",")] if isinstance(mark.args[0], str) else mark.args[0]
            values = [v if len(names) > 1 else (v,) for v in mark.args[1]]
            calls = [{**c, **dict(zip(names, v))} for c in calls for v in values]
    return calls


def test_page_loss_tests_pass_on_the_page_code(page_root):
    spec = importlib.util.spec_from_file_location("tutorial_page_own_tests", page_root / "tests" / "test_template_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert Path(module.supcon_la.__code__.co_filename).resolve().is_relative_to(page_root.resolve())
    tests = {n: f for n, f in vars(module).items() if n.startswith("test_") and callable(f)}
    assert NEEDS_INSTALLED <= set(tests) and len(tests) > len(NEEDS_INSTALLED)
    ran = 0
    for test_name, fn in tests.items():
        if test_name in NEEDS_INSTALLED:
            continue
        for kwargs in _calls(fn):
            fn(**kwargs)
            ran += 1
    assert ran >= 3


# -- signatures shown on the page -----------------------------------------------------------------
def _norm(src: str) -> str:
    return ast.unparse(ast.parse(src, mode="eval"))


def _page_ann(node: ast.expr | None) -> str:
    return EMPTY if node is None else _norm(ast.unparse(node))


def _page_default(node: ast.expr | None) -> str:
    if node is None:
        return EMPTY
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "field":
        kw = {k.arg: k.value for k in node.keywords}
        if "default_factory" in kw:
            return "<factory>"
        return _page_default(kw.get("default"))
    if isinstance(node, ast.Name):
        return node.id  # a function default (e.g. StepState.gather = _identity) compares by name
    return _norm(ast.unparse(node))


def _real_ann(ann) -> str:
    if ann is inspect.Parameter.empty:
        return EMPTY
    if not isinstance(ann, str):
        ann = getattr(ann, "__forward_arg__", None) or inspect.formatannotation(ann)
    return _norm(ann)


def _real_default(value) -> str:
    if value is inspect.Parameter.empty or value is dataclasses.MISSING:
        return EMPTY
    if repr(value) == "<factory>":
        return "<factory>"
    if inspect.isfunction(value):
        return value.__name__
    return _norm(repr(value))


def _page_function(node: ast.FunctionDef) -> tuple[list[tuple], str]:
    a = node.args
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    params = [("POSITIONAL_ONLY" if i < len(a.posonlyargs) else "POSITIONAL_OR_KEYWORD", p.arg,
               _page_ann(p.annotation), _page_default(d)) for i, (p, d) in enumerate(zip(pos, defaults))]
    if a.vararg:
        params.append(("VAR_POSITIONAL", a.vararg.arg, _page_ann(a.vararg.annotation), EMPTY))
    params += [("KEYWORD_ONLY", p.arg, _page_ann(p.annotation), _page_default(d))
               for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        params.append(("VAR_KEYWORD", a.kwarg.arg, _page_ann(a.kwarg.annotation), EMPTY))
    return params, _page_ann(node.returns)


def _real_function(obj) -> tuple[list[tuple], str]:
    sig = inspect.signature(obj)
    params = [(p.kind.name, p.name, _real_ann(p.annotation), _real_default(p.default))
              for p in sig.parameters.values()]
    return params, _real_ann(sig.return_annotation)


def _check_class(cls: type, node: ast.ClassDef) -> None:
    fields = [(s.target.id, _page_ann(s.annotation), _page_default(s.value))
              for s in node.body if isinstance(s, ast.AnnAssign)]
    methods = [s for s in node.body if isinstance(s, ast.FunctionDef)]
    consts = {t.id: ast.literal_eval(s.value) for s in node.body if isinstance(s, ast.Assign) for t in s.targets}
    if fields:
        if any(m.name == "__init__" for m in methods):  # own __init__: compare the declared fields
            real = [(f.name, _real_ann(f.type),
                     "<factory>" if f.default_factory is not dataclasses.MISSING else _real_default(f.default))
                    for f in dataclasses.fields(cls)]
        else:  # generated __init__ (dataclass / NamedTuple): its signature is the fields
            real = [(p.name, _real_ann(p.annotation), _real_default(p.default))
                    for p in inspect.signature(cls).parameters.values()]
        assert fields == real, f"{cls.__qualname__} fields on the page differ from the source"
    for m in methods:
        real = inspect.getattr_static(cls, m.name)
        is_prop = any(isinstance(d, ast.Name) and d.id == "property" for d in m.decorator_list)
        assert isinstance(real, property) == is_prop, f"{cls.__qualname__}.{m.name}: property or not"
        real = real.fget if is_prop else real
        assert _page_function(m) == _real_function(real), f"{cls.__qualname__}.{m.name}"
    if consts:
        shown = {k: getattr(cls, k, None) for k in consts}
        assert shown == consts, f"{cls.__qualname__} constants differ from the source"
        real_consts = {k for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)}
        assert set(consts) == real_consts, f"{cls.__qualname__}: the page must list every name"


@pytest.mark.parametrize("module,node", signature_stubs(), ids=lambda x: x if isinstance(x, str) else x.name)
def test_page_signatures_match_the_source(module, node):
    obj = getattr(importlib.import_module(module), node.name)
    if isinstance(node, ast.ClassDef):
        _check_class(obj, node)
    else:
        assert _page_function(node) == _real_function(obj)


def test_page_shows_the_signatures_a_plugin_author_needs():
    shown = {(module, node.name) for module, node in signature_stubs()}
    needed = {
        ("ltreg.step", n) for n in ("Batch", "Outputs", "LossOutput", "StepState", "Extra", "flatten_views")
    } | {
        ("ltreg.losses.contrastive", n) for n in ("supcon", "state_contrast", "global_mean", "ContrastSet")
    } | {
        ("ltreg.losses.core", "ContrastiveResult"), ("ltreg.losses.core", "contrastive_loss"),
        ("ltreg.losses.classification", "logit_adjusted_ce"), ("ltreg.trainer", "train"),
    } | {
        ("ltreg.method", n) for n in ("hp", "PartRef", "HParams", "Recipe", "ModelSpec", "MethodSpec",
                                      "register_method")
    }
    assert needed <= shown, sorted(needed - shown)


# -- command lines shown on the page --------------------------------------------------------------
def _command_lines() -> list[list[str]]:
    out = []
    for lang, text in page_blocks():
        if lang != "bash":
            continue
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["ltreg"]:
                out.append(words[1:])
            elif "-m" in words and words[words.index("-m") + 1:][:1] == ["ltreg"]:
                out.append(words[words.index("-m") + 2:])
    return out


def test_page_command_lines_parse(page_root):
    from ltreg.cli import build_parser

    pkg = sys.modules[PKG]
    lines = _command_lines()
    assert any(words[:1] == ["train"] and "--quick" in words for words in lines)
    assert any(words[:1] == ["list"] for words in lines)
    parser = build_parser()
    for words in lines:
        args = parser.parse_args(words)
        if words[0] == "train":
            assert args.method == pkg.METHOD.name
            if args.recipe:
                pkg.METHOD.recipe(args.recipe)
            pkg.METHOD.hparams.replace(**dict(pair.split("=", 1) for pair in args.hp))
        elif words[0] == "info":
            assert args.name == pkg.METHOD.name


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_tutorial.py --write   (copy the page's file blocks into examples/plugin-template/)")
    write_blocks(TEMPLATE)
    print(f"wrote {', '.join(sorted(file_blocks()))} into {TEMPLATE.relative_to(ROOT)}")

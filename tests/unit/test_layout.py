"""Package dependency rules, checked by walking every import statement (module level and inside functions).

Dependencies point one way: commands -> lit -> eval / models -> encoders / objectives -> audio / data;
`data_recipes` uses only the shard contract, the registry and audio decoding from `clap_lightning`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("clap_lightning", "data_recipes")
LIGHTNING = ("lightning", "pytorch_lightning")
# Below `lit`: plain PyTorch, usable for inference without a Trainer.
LIGHTNING_FREE = ("models", "encoders", "objectives", "audio", "data", "eval", "convert")
DATA_RECIPES_MAY_USE = ("clap_lightning.data.schema", "clap_lightning.registry", "clap_lightning.audio")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, importer: str) -> set[str]:
    """Every module `source` imports anywhere; `from pkg import sub` counts as `pkg.sub` when sub is a module."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                package = importer.split(".")[: -node.level]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if is_module(candidate) else base)
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = module_name(path)
            graph[name] = imported_modules(path.read_text(), name)
    return graph


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(graph: dict[str, set[str]], importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{src} imports {dst}" for src, targets in graph.items() if within(src, *importers)
                  for dst in targets if within(dst, *forbidden))


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_walker_sees_function_level_and_submodule_imports():
    source = ("from clap_lightning.data import schema\n"
              "def f():\n    import lightning as L\n    from clap_lightning.lit.run import build_trainer\n")
    assert imported_modules(source, "x") == {"clap_lightning.data.schema", "lightning", "clap_lightning.lit.run"}
    assert imported_modules("from . import schema\n", "clap_lightning.data.stream") == {"clap_lightning.data.schema"}


def test_the_graph_covers_both_packages(graph):
    assert "clap_lightning.eval.suite" in graph and "data_recipes.writer" in graph
    assert "clap_lightning.data.schema" in graph["data_recipes.writer"]  # a known edge is seen


def test_eval_never_imports_lit_or_commands(graph):
    assert violations(graph, ("clap_lightning.eval",), ("clap_lightning.lit", "clap_lightning.commands")) == []


def test_model_code_never_imports_lit_or_lightning(graph):
    lower = tuple(f"clap_lightning.{p}" for p in LIGHTNING_FREE)
    assert violations(graph, lower, ("clap_lightning.lit", "clap_lightning.commands", *LIGHTNING)) == []


def test_only_the_cli_imports_commands(graph):
    front = ("clap_lightning.commands", "clap_lightning.cli")
    assert sorted(f"{src} imports {dst}" for src, targets in graph.items() if not within(src, *front)
                  for dst in targets if within(dst, *front)) == []


def test_clap_lightning_never_imports_data_recipes(graph):
    assert violations(graph, ("clap_lightning",), ("data_recipes",)) == []


def test_data_recipes_uses_only_schema_registry_and_audio(graph):
    used = {dst for src, targets in graph.items() if within(src, "data_recipes")
            for dst in targets if within(dst, "clap_lightning")}
    assert used and all(within(dst, *DATA_RECIPES_MAY_USE) for dst in used), sorted(used)


def test_the_cli_parser_builds_without_torch_or_lightning():
    """`clap-lightning --help` and a mistyped option answer at once: verbs import heavy packages only to run."""
    probe = ("import sys; from clap_lightning.cli import build_parser; build_parser(); "
             "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"

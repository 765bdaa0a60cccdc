"""The import structure of the library: one direction, no cycles, no hidden objective knowledge in the engine.

Layers, lowest first (a module may import its own layer and those below it):
  0 leaf helpers   config/, families, distributed, flops, files, evaluation/ (suite, mteb adapter)
  1 data           data/
  2 model          model/, encode
  3 objectives     objectives/
  4 engine         engine/
  5 entry points   api, cli, export, generation, mining*, convert_gguf, st_modules, tiny, evaluation/mteb_run
Function-level imports are kept for optional or heavy dependencies only (the ALLOWED lists below) and for
the CLI, which imports each command's implementation when that command runs.

`python tests/test_layering.py [PACKAGE_DIR]` prints the counts (cycles, upward imports, deferred imports).
"""
from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [  # (module prefix, layer): the longest matching prefix wins
    ("embedtrain.config", 0), ("embedtrain.families", 0), ("embedtrain.distributed", 0), ("embedtrain.flops", 0),
    ("embedtrain.files", 0), ("embedtrain.evaluation", 0),
    ("embedtrain.data", 1),
    ("embedtrain.model", 2), ("embedtrain.encode", 2),
    ("embedtrain.objectives", 3),
    ("embedtrain.engine", 4),
    ("embedtrain", 5), ("embedtrain.evaluation.mteb_run", 5),
]
# Dependencies imported inside functions on purpose: optional extras, heavy imports only some paths need,
# a module that only exists in some torch releases, and deepspeed in a helper inference code also imports.
ALLOWED_DEFERRED = {"mteb", "sentence_transformers", "sklearn", "flash_attn", "gguf", "datasets", "matplotlib",
                    "peft", "deepspeed", "torch.nn.attention.varlen", "wandb", "torch.utils.tensorboard"}
# Our modules that import heavy optional dependencies at their top (mteb, datasets, pyarrow), and the modules
# allowed to import ours lazily: the CLI (each command imports what it runs) and the package root
# (`import embedtrain` stays free of torch).
HEAVY_INTERNAL = {"embedtrain.evaluation.suite_tasks", "embedtrain.data.arrow"}
LAZY_IMPORTERS = {"embedtrain.cli", "embedtrain"}
OBJECTIVE_NAMES = re.compile(r"infonce|reconstruction|compression|anchor|llm2vec", re.IGNORECASE)


def modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(mods: dict[str, Path]) -> list[tuple[str, str, bool, int]]:
    """(importer, imported module, inside a function?, line) for every import statement's every name."""
    found = []

    def resolve(name: str) -> str:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    def visit(module: str, node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((module, a.name, inner, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                for a in child.names:
                    full = f"{child.module}.{a.name}"
                    found.append((module, full if full in mods else child.module, inner, child.lineno))
            visit(module, child, inner)

    for module, path in mods.items():
        visit(module, ast.parse(path.read_text()), False)
    return [(m, resolve(t) if t.split(".")[0] == "embedtrain" else t, d, n) for m, t, d, n in found]


def layer(module: str) -> int:
    return max((p for p in LAYERS if module == p[0] or module.startswith(p[0] + ".")), key=lambda p: len(p[0]))[1]


def cycles(edges: list[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index, low, stack, on, out = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            connect(v)
    return out


def structure(package: Path = ROOT / "embedtrain") -> dict:
    mods = modules(package)
    found = imports(mods)
    ours = [(m, t, d, n) for m, t, d, n in found if t.split(".")[0] == "embedtrain" and t != m]
    statements = {(m, n, d, t.split(".")[0] == "embedtrain") for m, t, d, n in found}
    upward = sorted({(m, t, n) for m, t, d, n in ours if layer(t) > layer(m)})
    deferred_ours = sorted({(m, t, n) for m, t, d, n in ours if d and m not in LAZY_IMPORTERS
                            and t not in HEAVY_INTERNAL})
    deferred_other = sorted({(m, t, n) for m, t, d, n in found if d and t.split(".")[0] != "embedtrain"
                             and not any(t == a or t.startswith(a + ".") for a in ALLOWED_DEFERRED)})
    return {"modules": len(mods), "cycles": cycles([(m, t) for m, t, _, _ in ours]), "upward": upward,
            "deferred_statements": sum(1 for _, _, d, _ in statements if d),
            "deferred_statements_ours": sum(1 for m, _, d, own in statements if d and own),
            "deferred_ours_not_allowed": deferred_ours, "deferred_other_not_allowed": deferred_other}


def test_no_import_cycles():
    assert structure()["cycles"] == []


def test_imports_flow_one_way():
    assert structure()["upward"] == [], "an import points to a higher layer (see the module docstring)"


def test_function_level_imports_only_for_optional_or_heavy_dependencies():
    s = structure()
    assert s["deferred_ours_not_allowed"] == [] and s["deferred_other_not_allowed"] == []


def test_the_engine_names_no_objective():
    """Everything objective-specific reaches the engine through the Objective interface."""
    hits = [f"{p.name}:{n}: {line.strip()}" for p in sorted((ROOT / "embedtrain" / "engine").glob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if OBJECTIVE_NAMES.search(line)]
    assert hits == []


def test_the_checks_catch_what_they_look_for(tmp_path):
    """A planted cycle, an upward import, a lazy import of our own module and an objective name are found."""
    pkg = tmp_path / "embedtrain"
    for sub in ("data", "model", "engine"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from embedtrain.model.b import x\n")  # upward
    (pkg / "model" / "b.py").write_text("from embedtrain.data.a import y\nx = 1\n")  # and a cycle
    (pkg / "engine" / "c.py").write_text("def f():\n    from embedtrain.data import a\n    import json\n")
    s = structure(pkg)
    assert s["cycles"] == [["embedtrain.data.a", "embedtrain.model.b"]]
    assert [(m, t) for m, t, _ in s["upward"]] == [("embedtrain.data.a", "embedtrain.model.b")]
    assert [m for m, _, _ in s["deferred_ours_not_allowed"]] == ["embedtrain.engine.c"]
    assert [t for _, t, _ in s["deferred_other_not_allowed"]] == ["json"]
    assert OBJECTIVE_NAMES.search('if hasattr(model, "compression"):')


if __name__ == "__main__":
    s = structure(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "embedtrain")
    print(f"modules {s['modules']}; cycles {len(s['cycles'])} {s['cycles']}")
    print(f"upward imports {len(s['upward'])}")
    for m, t, n in s["upward"]:
        print(f"  {m}:{n} -> {t}")
    print(f"function-level import statements {s['deferred_statements']} ({s['deferred_statements_ours']} of our "
          f"own modules); not allowed: {len(s['deferred_ours_not_allowed'])} ours, "
          f"{len(s['deferred_other_not_allowed'])} others")
    for m, t, n in s["deferred_ours_not_allowed"] + s["deferred_other_not_allowed"]:
        print(f"  {m}:{n} -> {t}")

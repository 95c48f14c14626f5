"""The package's import structure: data flows down, an import never points up, no cycles.

Every `import minisapo.x` / `from minisapo.x import ...` in every module is read with `ast`, including the
imports inside functions (a lazy import is still a dependency). LAYERS below is the order the README's code
map states; a module may import only modules of its own layer or a lower one, and the import graph has no
cycle.
"""

import ast
import re
from pathlib import Path

import minisapo

ROOT = Path(minisapo.__file__).parent

# bottom to top; a module may import only from its own layer or the layers above it in this list
LAYERS = [
    ["files", "progress"],  # atomic writes, JSON, names; progress lines: no torch
    ["distributed"],  # torchrun: ranks, slices, all-reduce (torch and files only; no-ops in one process)
    ["data"],  # synthetic world, Amazon / RecBole readers, splits
    ["tokenizer"],  # the vocabulary and the one spelling of a SID token
    ["sid"],  # item vectors, RQ-KMeans, SID table, trie, descriptors
    ["reasoning", "traces"],  # prompts, teacher blocks, step segmentation; external traces
    ["model"],
    ["grammar"],
    ["generate"],
    ["runs", "lock", "metrics_log", "plugins", "baselines"],  # run directories, checkpoints, safety rules; the run
    #   lock; metrics.jsonl; user functions; rankings without the generator (counting, the oracle, the item-ID
    #   transformer)
    ["trainer", "evaluate"],  # what SFT and RL share; metrics and reports
    ["sft", "rl_metrics"],
    ["rl"],
    ["plots", "report"],  # figures (the token-credit picture scores rollouts with rl), report.md
    ["config"],  # composes every stage's config dataclass (each checks its own fields), presets, the parser
    ["pipeline", "compare", "bench", "gpu_check"],
    ["cli", "__main__"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def top_module(path: Path) -> str:
    """minisapo/data/amazon.py -> 'data'; minisapo/rl.py -> 'rl'."""
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports_of(path: Path) -> set[str]:
    """The minisapo top-level modules `path` imports (anywhere in the file, relative imports included)."""
    out = set()
    tree = ast.parse(path.read_text())
    package = path.relative_to(ROOT).parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "minisapo" and len(parts) > 1:
                    out.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = list(package[: len(package) - node.level + 1]) + (node.module.split(".") if node.module else [])
                if base:
                    out.add(base[0])
                else:
                    out.update(a.name for a in node.names)
            elif node.module and node.module.split(".")[0] == "minisapo":
                parts = node.module.split(".")
                out.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
    return out


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        mod = top_module(path)
        if mod == "__init__":
            continue
        g.setdefault(mod, set()).update(m for m in imports_of(path) if m != mod)
    return g


def test_every_module_has_a_layer():
    missing = sorted(set(graph()) - set(LAYER))
    assert not missing, f"modules without a layer in tests/test_structure.py (and README's code map): {missing}"


def test_imports_only_point_down():
    bad = [f"{mod} (layer {LAYER[mod]}) imports {dep} (layer {LAYER[dep]})"
           for mod, deps in graph().items() for dep in deps if dep in LAYER and LAYER[dep] > LAYER[mod]]
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in g.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [m, d]))
            if not state.get(d):
                visit(d, path + [m])
        state[m] = 2

    for m in g:
        if not state.get(m):
            visit(m, [])


def readme_layers(text: str) -> list[list[str]]:
    """The README code map's rows, bottom to top: the module names of each row's file cell."""
    table = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    rows = [re.match(r"\|\s*\d+\s*\|([^|]*)\|", line) for line in table.splitlines()]
    return [sorted(re.findall(r"`(\w+)(?:\.py|/)`", m[1])) for m in rows if m]


def test_the_readme_code_map_states_these_layers_in_this_order():
    assert readme_layers((ROOT.parent / "README.md").read_text()) == [sorted(names) for names in LAYERS]


def test_readme_layers_reads_a_code_map():
    text = "## Code map\n| layer | file | what |\n|---|---|---|\n| 1 | `a.py`, `b/` | x |\n| 2 | `c.py` | y |\n## Next\n| 3 | `d.py` | z |"
    assert readme_layers(text) == [["a", "b"], ["c"]]

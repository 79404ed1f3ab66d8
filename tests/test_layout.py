"""The package's shape: no import cycles, the library never imports the CLI, and mvdit's own
modules are imported at the top of a file (a deferred import hides a dependency)."""

import ast
from pathlib import Path

from mvdit.config import default_config_path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in (SRC / "mvdit").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(path: Path, pkg: str) -> list[tuple[str, bool]]:
    """(imported mvdit module, at module level?) for every import in a file, nested ones too."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        out += [(n, id(node) in top) for n in names if n.startswith("mvdit")]
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    local = []
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for name, at_top in _imports(f, pkg):
            r = resolve(name)
            if r and r != m and r != "mvdit" and not m.startswith(r + "."):
                graph[m].add(r)
                if not at_top:
                    local.append(f"{m} imports {r} inside a function")
    return graph, local


def test_no_import_cycles():
    graph, _ = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(path[path.index(n) :] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_library_never_imports_the_cli():
    graph, _ = _graph()
    assert [m for m, deps in graph.items() if "mvdit.cli" in deps] == []


def test_own_modules_are_imported_at_the_top():
    _, local = _graph()
    assert local == []


def test_paper_steps_have_files_of_their_own():
    # a reader finds the method by file names
    for rel in (
        "models/vae.py",  # 1. the compressed causal video VAE
        "stages/train_vae.py",
        "stages/teacher.py",  # the DiT teacher
        "models/interface.py",  # 2. the DiT interface pruning is written against
        "compress/importance.py",  # KD-guided unit scores
        "compress/search.py",  # the tri-level search under a budget
        "bench/dit.py",
        "bench/vae_decode.py",
    ):
        assert (SRC / "mvdit" / rel).is_file(), rel


def test_the_default_config_is_one_file():
    repo_copy = SRC.parent / "configs" / "tiny.toml"
    assert repo_copy.resolve() == default_config_path().resolve()


def test_stages_are_written_against_the_interface():
    """No stage or compression module asks which DiT it holds (models/interface.PrunableDiT)."""
    asking = [
        f"{f.relative_to(SRC)}:{n}"
        for f in (SRC / "mvdit").rglob("*.py")
        if "models" not in f.relative_to(SRC / "mvdit").parts
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if "isinstance(" in line and "VideoDiT)" in line
    ]
    assert asking == []

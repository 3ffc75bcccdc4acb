"""One list of each stage's code feeds both drivers: dvc.yaml's code deps and the Prefect cache keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO
from stepvideo import stages, tracking

ROOT = REPO


def _dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(_dvc_stages()))
def test_dvc_code_deps_are_the_stage_table(stage):
    deps = [d for d in _dvc_stages()[stage]["deps"] if d.startswith("stepvideo/")]
    assert sorted(deps) == stages.code_paths(stage), (
        f"dvc.yaml stage {stage!r}: its stepvideo/ deps must be exactly {stages.code_paths(stage)}")


def test_every_path_exists_and_the_stage_modules_are_listed():
    for stage in stages.STAGE_CODE:
        for p in stages.code_paths(stage):
            assert (ROOT / p).exists(), p
    # the modules where the stages and their config builders live (the drifted entries of issue 22)
    assert "stepvideo/stages/dit.py" in stages.code_paths("sft")
    assert "stepvideo/stages/common.py" in stages.code_paths("t2i_pretrain")
    assert "stepvideo/stages/vae.py" in stages.code_paths("train_vae")


def test_the_flow_hashes_only_the_table():
    src = (ROOT / "flows" / "cascade.py").read_text()
    assert "tracking.code_version(" not in src  # no list of modules of its own
    dit = ("t2i_pretrain", "t2v_lowres", "t2v_highres", "sft")  # one key function: stages.code_version(name)
    assert "stages.code_version(name)" in src
    for stage in set(stages.STAGE_CODE) - set(dit) - {"promote"}:  # promote is never cached
        assert f'stages.code_version("{stage}")' in src, stage


def test_a_dit_cache_key_moves_with_the_stage_module(monkeypatch, tmp_path):
    from flows import cascade
    from stepvideo.config import preset

    seen = []
    real = tracking.code_version

    def record(*modules):
        seen.append(modules)
        return real(*modules)

    monkeypatch.setattr(tracking, "code_version", record)
    key = cascade._dit_key(None, {"params": preset("demo"), "stage": "sft", "root": str(tmp_path)})
    assert key and seen and "stepvideo.stages.dit" in seen[-1] and "stepvideo.stages.common" in seen[-1]
    monkeypatch.setitem(stages.STAGE_CODE, "sft", stages.STAGE_CODE["sft"] + ("stepvideo.fileio",))
    assert cascade._dit_key(None, {"params": preset("demo"), "stage": "sft", "root": str(tmp_path)}) != key


def test_each_stage_lists_the_module_that_defines_it():
    for name in stages.STAGES:
        module = stages.STAGES[name].__module__
        if name in stages.STAGE_CODE:  # `version` (dvc add) is never cached
            assert module in stages.STAGE_CODE[name], (name, module)
    assert list(stages.STAGES)[:3] == ["data", "version", "validate"] and list(stages.STAGES)[-1] == "promote"


def _imports(path: Path) -> set[str]:
    """Every stepvideo module a file imports, at the top or inside a function."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("stepvideo")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stepvideo"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _assert_acyclic(graph: dict[str, set[str]]) -> None:
    """Depth-first over {module: imported modules}: a module met again while still open is a cycle."""
    seen: dict[str, int] = {}

    def visit(n: str, path: tuple[str, ...]) -> None:
        seen[n] = 1
        for m in sorted(graph[n]):
            assert seen.get(m) != 1, f"import cycle: {' -> '.join(path + (n, m))}"
            if m not in seen:
                visit(m, path + (n,))
        seen[n] = 2

    for n in sorted(graph):
        if n not in seen:
            visit(n, ())


def test_the_stage_modules_import_one_way_and_the_package_imports_none_of_them():
    package = ROOT / "stepvideo" / "stages"
    names = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    graph = {n: {m.rsplit(".", 1)[-1] for m in _imports(package / f"{n}.py")
                 if m.startswith("stepvideo.stages.") and m.rsplit(".", 1)[-1] in names} for n in names}
    _assert_acyclic(graph)
    assert not {m for m in _imports(package / "__init__.py") if m.startswith("stepvideo.stages.")}


def test_no_import_cycle_in_the_package():
    """Module-level import graph of stepvideo/ (imports inside functions included): no cycle."""
    package = ROOT / "stepvideo"
    mods = {}
    for p in package.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p

    def owner(m: str) -> str:
        while m and m not in mods:
            m = m.rsplit(".", 1)[0] if "." in m else ""
        return m

    graph = {}
    for name, path in mods.items():
        deps = {m if m in mods else owner(m) for m in _imports(path)}
        graph[name] = {d for d in deps if d and d != name and not name.startswith(d + ".")}  # parents load first
    _assert_acyclic(graph)
    flows_users = [n for n, p in mods.items() if any(m.startswith("flows") for m in _imports_any(p))]
    assert not flows_users, f"the package imports flows/: {flows_users}"


def _imports_any(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_leaf_modules_import_nothing_else_of_the_package():
    """errors, fileio and data.vocabulary may be imported from every layer, models included, only
    because they import nothing of the package but each other."""
    leaves = {"stepvideo.errors": "errors.py", "stepvideo.fileio": "fileio.py",
              "stepvideo.data.vocabulary": "data/vocabulary.py"}
    for name, rel in leaves.items():
        others = {m for m in _imports(ROOT / "stepvideo" / rel) if not any(m.startswith(leaf) for leaf in leaves)}
        assert not others, f"{name} imports {sorted(others)}"


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def test_each_listed_model_module_brings_the_model_modules_it_imports():
    """A model module in a stage's list brings every model module it imports, directly or not:
    else a change there (a new kernel, say) would leave both drivers' caches serving stale results.
    (The table lists what a stage's result depends on, not every import of its code.)"""
    gaps = {}
    for stage, listed in stages.STAGE_CODE.items():
        def covered(m: str) -> bool:
            return any(m == n or m.startswith(n + ".") for n in listed)

        seen: set[str] = set()
        todo = [m for m in listed if m.startswith("stepvideo.models")]
        while todo:
            name = todo.pop()
            path = _module_file(name)
            if name in seen or path is None:
                continue
            seen.add(name)
            if path.name == "__init__.py" and name in listed:  # a listed package covers its files: walk them
                todo += [f"{name}.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__"]
            todo += [m for m in _imports(path) if m.startswith("stepvideo.models") and _module_file(m) is not None]
        missing = sorted(m for m in seen if m.startswith("stepvideo.models.") and not covered(m))
        if missing:
            gaps[stage] = missing
    assert not gaps, f"STAGE_CODE leaves out model modules these stages run: {gaps}"

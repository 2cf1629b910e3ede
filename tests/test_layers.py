"""The pipeline's floors, read from the code's imports: a stage imports only the stages below it.

    onexn_tf (library + shared plumbing) -> training -> export (+ export/tvm) -> android_bench (+ the demo)

Every ``import`` statement counts, including those inside functions (lazy imports are still
dependencies).
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FLOORS = ["onexn_tf", "training", "export", "android_bench"]
ALLOWED = {  # package -> the project packages it may import
    "onexn_tf": set(),
    "training": {"onexn_tf"},
    "export": {"onexn_tf"},  # export reads a training job through onexn_tf.jobs, not training's code
    "android_bench": {"onexn_tf", "training", "export"},
}
SHARED_PLUMBING = {"cli", "jobs", "rpc", "errors", "files", "provenance", "native_logs"}
PLUMBING_NAMES = {"UsageError", "doc_parser", "host_port", "Rpc", "rebuild_pruned_model", "read_config", "has_backup",
                  "load_pretrained", "InvalidArgument"}


def imports(package: str) -> dict[str, set[str]]:
    """module path -> the dotted names it imports."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import"
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package", FLOORS)
def test_no_stage_imports_a_later_one(package):
    wrong = {module: sorted(n for n in names if n.split(".")[0] in set(FLOORS) - ALLOWED[package] - {package})
             for module, names in imports(package).items()}
    assert not {m: n for m, n in wrong.items() if n}, wrong


def test_shared_plumbing_lives_on_the_ground_floor():
    """The command-line plumbing, the job-directory contract and the RPC address are onexn_tf modules,
    and no stage defines its own copy of them."""
    for name in SHARED_PLUMBING:
        assert (ROOT / "onexn_tf" / f"{name}.py").is_file(), name
    for package in FLOORS[1:]:
        for path in sorted((ROOT / package).rglob("*.py")):
            defined = {node.name for node in ast.parse(path.read_text()).body
                       if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
            assert not defined & PLUMBING_NAMES, (str(path), sorted(defined & PLUMBING_NAMES))


def test_the_demo_sits_on_top():
    """The whole-pipeline orchestration is in the last stage's folder; training and export never run it."""
    assert (ROOT / "android_bench" / "demo.py").is_file() and not (ROOT / "training" / "demo.py").exists()
    setup = (ROOT / "setup.cfg").read_text()
    assert "onexn-demo = android_bench.demo:run" in setup

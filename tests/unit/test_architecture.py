"""Import direction and import-time behaviour of the `pipeline` library.

`pipeline/` is a plain library: its stages import downwards only, it never imports Prefect or the `flows` package
(flows wrap pipeline, not the reverse), and importing any of its modules does nothing but define things (no
Settings(), no environment reads at module level). The import statements are import-linter's to check (pyproject.toml's
[tool.importlinter]); what it cannot see, imports by name and what a module pulls in when it is really imported, is
checked here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PIPELINE_DIR = PROJECT_ROOT / "pipeline"
MODULE_FILES = sorted(PIPELINE_DIR.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PIPELINE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in MODULE_FILES)
FORBIDDEN_ROOTS = {"prefect", "flows"}


def test_the_module_list_is_not_empty():
    assert len(MODULE_FILES) >= 10
    assert {"pipeline.models.features", "pipeline.models.windows", "pipeline.models.lstm", "pipeline.daily"} <= set(
        MODULES
    )


# -- static check --------------------------------------------------------------------------------


def test_the_import_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: pipeline's stages import downwards only, and pipeline never
    imports prefect or flows (in functions and TYPE_CHECKING blocks too), so `make test` enforces what `make lint`
    does."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), "import-linter is missing: install the dev extras (make install)"
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def dynamic_imports(source: str, filename: str = "<string>") -> list[str]:
    """Every `importlib.import_module("prefect...")` or `__import__("flows...")` with a literal name: import-linter
    builds its graph from import statements, so a name passed as a string escapes it."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in {"import_module", "__import__"} and node.args and isinstance(node.args[0], ast.Constant):
            module = str(node.args[0].value)
            if module.split(".")[0] in FORBIDDEN_ROOTS:
                found.append(f"{filename}:{node.lineno}: {module}")
    return found


def test_the_dynamic_import_checker_catches_literal_names():
    source = "\n".join(
        [
            "import importlib",
            "def f():",
            "    importlib.import_module('prefect')",
            "    __import__('flows.daily')",
            "    import_module('prefect.logging')",
            "    importlib.import_module('prefectlike')",  # a different package, allowed
            "    importlib.import_module('pipeline.models.features')",
        ]
    )
    found = sorted(hit.split(": ", 1)[1] for hit in dynamic_imports(source))
    assert found == sorted(["prefect", "flows.daily", "prefect.logging"])


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.relative_to(PIPELINE_DIR).as_posix())
def test_no_pipeline_module_imports_prefect_or_flows_by_name(path):
    assert dynamic_imports(path.read_text(), path.name) == []


# -- runtime check -------------------------------------------------------------------------------

# One fresh interpreter imports every module in turn and names the first after which Prefect or flows is loaded: as
# strict as an interpreter per module (a module that pulls Prefect in is caught whichever imports it first), at the
# cost of one TensorFlow import instead of sixty.
PROBE = """
import importlib, json, sys
for module in json.loads(sys.argv[1]):
    importlib.import_module(module)
    bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows'))
    if bad:
        sys.exit('importing ' + module + ' imported ' + ', '.join(bad[:5]))
"""


def probe(modules: list[str], prelude: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", prelude + PROBE, json.dumps(modules)],
        cwd=PIPELINE_DIR.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_runtime_probe_detects_prefect_and_names_the_module():
    result = probe(["pipeline.models.features", "pipeline.common.symbols"], prelude="import prefect\n")
    assert result.returncode != 0
    assert "importing pipeline.models.features imported prefect" in result.stderr


def test_importing_pipeline_modules_does_not_load_prefect():
    result = probe(MODULES)
    assert result.returncode == 0, result.stderr[-2000:]


# -- import-time side effects --------------------------------------------------------------------

ENV_READS = {"getenv", "putenv", "environ", "load_dotenv"}


def import_time_nodes(tree: ast.Module):
    """Nodes that run when the module is imported: everything except function bodies.

    Class bodies, decorators and default argument values do run at import time, so they are included.
    """
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stack.extend(node.decorator_list)
            stack.extend(node.args.defaults)
            stack.extend(d for d in node.args.kw_defaults if d is not None)
            continue
        if isinstance(node, ast.Lambda):
            stack.extend(node.args.defaults)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_time_side_effects(source: str, filename: str = "<string>") -> list[str]:
    found = []
    for node in import_time_nodes(ast.parse(source, filename)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "Settings":
                found.append(f"{filename}:{node.lineno}: Settings() at import time")
            if name in ENV_READS:
                found.append(f"{filename}:{node.lineno}: {name}() at import time")
        elif isinstance(node, ast.Attribute) and node.attr in ENV_READS:
            found.append(f"{filename}:{node.lineno}: {node.attr} read at import time")
        elif isinstance(node, ast.Name) and node.id in ENV_READS and isinstance(node.ctx, ast.Load):
            found.append(f"{filename}:{node.lineno}: {node.id} read at import time")
    return found


def test_the_side_effect_checker_tells_import_time_from_call_time():
    flagged = "\n".join(
        [
            "import os",
            "from os import environ",
            "SETTINGS = Settings()",
            "HOME = os.environ.get('HOME')",
            "DEBUG = os.getenv('DEBUG')",
            "def f(home=os.environ['HOME']):",
            "    pass",
            "class C:",
            "    settings = config.Settings()",
            "PATH = environ['PATH']",
        ]
    )
    flagged_lines = {int(hit.split(":")[1]) for hit in import_time_side_effects(flagged)}
    assert flagged_lines == {3, 4, 5, 6, 9, 10}
    allowed = "\n".join(
        [
            "import os",
            "def settings():",
            "    return Settings()",
            "def home(env=None):",
            "    env = os.environ if env is None else env",
            "    return env.get('HOME')",
            "class C:",
            "    def method(self):",
            "        return os.getenv('X')",
            "    training: TrainingConfig = TrainingConfig()",
        ]
    )
    assert import_time_side_effects(allowed) == []


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.relative_to(PIPELINE_DIR).as_posix())
def test_no_pipeline_module_reads_settings_or_environment_at_import_time(path):
    assert import_time_side_effects(path.read_text(), path.name) == []

"""The shared job domain's seams: the modules of `vidserve/` import neither `api` nor `worker` (both import them),
nor the tooling in `vidserve/tools/`, which starts processes and may import everything. Read from the source's
syntax tree, imports inside functions included, so a late import cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

import vidserve

DOMAIN = Path(vidserve.__file__).parent
FORBIDDEN = ("api", "worker", "vidserve.tools")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path.name}: relative import; the domain spells its imports out")
    return names


def forbidden(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in FORBIDDEN)


def test_the_domain_modules_import_neither_api_nor_worker_nor_the_tools() -> None:
    modules = sorted(DOMAIN.glob("*.py"))
    assert {"jobs.py", "queue.py", "heartbeats.py", "settings.py"} <= {m.name for m in modules}
    offending = {module.name: sorted(filter(forbidden, imported_modules(module))) for module in modules}
    assert {name: found for name, found in offending.items() if found} == {}


def test_the_process_tooling_lives_in_the_tools_subpackage() -> None:
    assert not {"cli.py", "cli_client.py", "client.py", "devserver.py", "s3server.py", "processes.py"} & {
        m.name for m in DOMAIN.glob("*.py")
    }
    assert {"cli.py", "devserver.py", "s3server.py"} <= {m.name for m in (DOMAIN / "tools").glob("*.py")}

"""The floors hold (docs/architecture.md, "Floors"): the domain (billing, energy, zones, audit,
tenancy) is plain Python that reaches its repositories through the `typing.Protocol` ports it
defines (`*/ports.py`), never an adapter: no database, HTTP or Redis client, no `store/`,
`gateway/`, `api/`, `cli/` or `runtime`; and the adapters never import what sits above them."""

from __future__ import annotations

import ast
from pathlib import Path

import tokenport

ROOT = Path(tokenport.__file__).parent
DOMAIN = ("billing", "energy", "zones", "audit", "tenancy", "fleets")
ADAPTERS = (
    "tokenport.store",
    "tokenport.gateway",
    "tokenport.api",
    "tokenport.cli",
    "tokenport.runtime",
    "tokenport.engines",
    "tokenport.testing",
)
CLIENTS = (
    "sqlalchemy",
    "alembic",
    "psycopg",
    "redis",
    "urllib",
    "http",
    "aiohttp",
    "httpx",
    "starlette",
    "uvicorn",
)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _forbidden(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ADAPTERS + CLIENTS)


def test_no_domain_module_imports_an_adapter():
    offences = [
        f"{path.relative_to(ROOT.parent)}:{line} imports {module}"
        for package in DOMAIN
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in _imports(path)
        if _forbidden(module)
    ]
    assert offences == []


def test_no_adapter_imports_the_gateway_or_a_protocol():
    """`store/` and `engines/` sit below the gateway: what both need (the usage record's schema)
    lives on the ground floor."""
    above = ("tokenport.gateway", "tokenport.api", "tokenport.cli", "tokenport.runtime")
    offences = [
        f"{path.relative_to(ROOT.parent)}:{line} imports {module}"
        for package in ("store", "engines")
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in _imports(path)
        if any(module == a or module.startswith(a + ".") for a in above)
    ]
    assert offences == []


def test_the_check_sees_an_offence(tmp_path):
    """The rule can fail: a domain-shaped file importing the store (and SQLAlchemy, lazily) is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from tokenport.store.usage import UsageStore\n\ndef f():\n    import sqlalchemy\n")
    assert [m for _, m in _imports(bad) if _forbidden(m)] == ["tokenport.store.usage", "sqlalchemy"]


def test_handlers_see_their_services_not_the_runtime():
    """Only the composition root (`api/app.py`) knows `Runtime`; handlers are typed by the narrow
    view of their surface (`api/services.py`) and never fetch the runtime themselves."""
    offences = [
        f"{path.relative_to(ROOT.parent)}:{line} imports {module}"
        for path in sorted((ROOT / "api").rglob("*.py"))
        if path != ROOT / "api" / "app.py"
        for line, module in _imports(path)
        if module == "tokenport.runtime"
    ]
    offences += [
        f"{path.relative_to(ROOT.parent)} reads app.state.runtime"
        for path in sorted((ROOT / "api").rglob("*.py"))
        if "state.runtime" in path.read_text()
    ]
    assert offences == []


def test_no_import_circle_between_packages():
    """The packages form layers: no package imports (top level or lazily) one that imports it
    back, directly or through others."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if rel[0] == "testing":
            continue
        here = rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")
        for _, module in _imports(path):
            parts = module.split(".")
            if parts[0] == "tokenport" and len(parts) > 1 and parts[1] != here:
                graph.setdefault(here, set()).add(parts[1])
    circles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node == start:
                circles.append(start)
                break
            if node not in seen:
                seen.add(node)
                todo += graph.get(node, ())
    assert circles == [], circles

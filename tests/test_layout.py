"""The README's tables of the worker stay true against the tree, and the import layers hold."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _layer_rows() -> dict[str, str]:
    """layer name -> package path, from the README's layer table."""
    table = README.split("| layer | package | what it holds |", 1)[1].split("\n\n", 1)[0]
    return dict(re.findall(r"^\| (\w+) \| `(worker/\w+/)` \| .+ \|$", table, flags=re.M))


def test_every_worker_package_is_in_the_layer_table_and_no_row_names_a_missing_one() -> None:
    packages = {f"worker/{p.parent.name}/" for p in (REPO / "worker").glob("*/__init__.py")}
    listed = set(_layer_rows().values())
    assert listed == packages, f"README lists {sorted(listed - packages)}, misses {sorted(packages - listed)}"


def test_the_layer_table_is_the_import_linter_contract_in_order() -> None:
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"layers = \[(.*?)\]", text, flags=re.S)
    assert block, "no layers contract in pyproject.toml"
    # One level per entry, top first; "a | b" puts independent siblings on one level.
    entries = re.findall(r'"([^"]+)"', block.group(1))
    level_of = {name: i for i, entry in enumerate(entries) for name in entry.split(" | ")}
    readme = [path.strip("/").replace("/", ".") for path in _layer_rows().values()]
    assert sorted(readme) == sorted(level_of), "README's layers and the contract's differ"
    levels = [level_of[name] for name in readme]
    assert levels == sorted(levels), f"README lists the layers out of the contract's order: {readme}"


def test_every_module_path_the_readme_names_exists() -> None:
    named = set(re.findall(r"`(worker/[\w/]+(?:\.py|/))`", README))
    assert named, "the README names no worker module"
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"README names modules that do not exist: {missing}"


def test_import_layers_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency: pip install -e '.[dev]'"
    run = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout

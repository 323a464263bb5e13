"""The house rules that keep one import root (README, "Map of the house")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("handlers", "frontend", "scripts", "deploy", "tests")
SOURCES = sorted(
    path
    for folder in FOLDERS
    for path in (REPO / folder).rglob("*.py")
    if "__pycache__" not in path.parts
)
IMPORT_PATH = "sys." + "path"  # spelled apart so that this file passes its own check


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_edits_the_import_path(path):
    text = path.read_text()
    assert IMPORT_PATH not in text
    assert "noqa: E4" + "02" not in text


def test_tests_import_helpers_not_each_other():
    for path in (REPO / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = node.module
            elif isinstance(node, ast.Import):
                module = node.names[0].name
            else:
                continue
            assert not re.match(r"(tests\.)?(conftest|test_\w+)$", module), (path.name, module)


def test_the_engine_is_one_package_beside_one_handler():
    handlers = REPO / "handlers"
    assert sorted(p.name for p in handlers.glob("*.py")) == ["enhancer_handler.py"]
    tree = ast.parse((handlers / "enhancer_handler.py").read_text())
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    assert len(classes) == 1, "TorchServe wants exactly one class in the handler file"
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert {m.split(".")[0] for m in imported} <= {"__future__", "enhancer", "http", "ts"}

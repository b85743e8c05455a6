"""Imports flow one way: the planning modules do not import TensorFlow or Keras at module level."""

import ast

import pytest

from conftest import REPO

TF_FREE = ["targets", "checks", "runtimes", "convert", "select", "structure", "lower/__init__", "lower/base", "lower/gather_matmul",
           "lower/builtin_sparse", "plan/records", "plan/rules", "plan/allocate", "plan/__init__", "views", "cost", "masks", "prunable", "data", "_atomic", "formats", "packfile",
           "_quiet", "profile", "timing", "_text", "permute", "sensitivity"]
KERAS_MODULES = {"pruning", "modelwalk", "kerasgraph", "examples", "cli", "layers", "export", "tune", "bench", "run"}


@pytest.mark.parametrize("module", TF_FREE)
def test_module_level_imports_are_tensorflow_free(module):
    tree = ast.parse((REPO / "blockprune" / f"{module}.py").read_text())
    for node in tree.body:  # module level only; lazy imports inside functions are fine
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom):
            local = [node.module] if node.module else [a.name for a in node.names]
            # A relative import of a Keras-dependent module of blockprune counts as importing Keras.
            names = ["keras" for m in local if m.split(".")[0] in KERAS_MODULES]
        for name in names:
            assert not name.split(".")[0] in ("tensorflow", "keras"), f"{module}.py imports {name}"


def test_design_references_resolve():
    """Code and target files cite docs/DESIGN.md sections that exist (and nothing outside the repo)."""
    import re

    design = (REPO / "docs" / "DESIGN.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", design, re.M))
    cited = []
    for path in [*(REPO / "blockprune").rglob("*.py"), *(REPO / "targets").glob("*.toml")]:
        text = path.read_text()
        assert "../shared" not in text, path
        if "DESIGN.md" in text:
            cited.append(path)
        for number in re.findall(r"docs/DESIGN\.md,? section (\d+)", text):
            assert number in sections, f"{path.name} cites docs/DESIGN.md section {number}, which does not exist"
        assert text.count("DESIGN.md") == text.count("docs/DESIGN.md"), f"{path.name} cites a DESIGN.md not in docs/"
    assert cited

"""Static checks of the code that a user's safety rests on."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_nothing_unsafe_in_the_code():
    """Checkpoints load with weights_only=True, YAML with the safe loader, no user string reaches a shell."""
    code = {p: p.read_text() for d in ("snn", "study", "trainables", "search_spaces") for p in (ROOT / d).rglob("*.py")}
    loads = 0
    for path, text in code.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                loads += 1
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert kw.get("weights_only") == "True", (path, node.lineno)
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "yaml.load":  # only with a safe loader
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert kw.get("Loader") == "_SAFE_LOADER", (path, node.lineno)
                assert '_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)' in text, path
        assert "shell=True" not in text and "os.system(" not in text, path
    assert loads >= 1  # the checkpoint loader is there and was checked
    assert 'default="127.0.0.1"' in code[ROOT / "study" / "cli.py"]  # snn-study ui
    assert 'dashboard_host="127.0.0.1"' in code[ROOT / "study" / "startup.py"]  # Ray dashboard

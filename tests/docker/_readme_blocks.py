"""The fenced ``bash`` blocks of docker/README.md, which the stack test runs as written.

A block is run by tests/docker/test_compose_stack.py when the line before its opening fence
is an HTML comment ``<!-- test: run -->``, or ``<!-- test: run; check: NAME -->`` to have the
test assert NAME's promises right after the block. Every other ``bash`` block is only
syntax-checked (tests/docker/test_compose.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "docker" / "README.md"
_FENCE = re.compile(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARK = re.compile(r"<!--\s*test:\s*run\s*(?:;\s*check:\s*([\w-]+)\s*)?-->\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    text: str
    run: bool  # run by the stack test
    check: str | None  # what the stack test asserts after it


def blocks(path: Path = README) -> list[Block]:
    text = path.read_text()
    found = []
    for m in _FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = _MARK.search(before)
        found.append(Block(text.count("\n", 0, m.start()) + 1, m.group(1), mark is not None,
                           mark.group(1) if mark else None))
    return found


def script(blocks_: list[Block], hook: str) -> str:
    """One bash script of the run blocks, in order: ``hook NAME "$STACK"`` after a checked block."""
    parts = ["set -euo pipefail",
             # a background job left by a failing block (the wheelhouse server) ends with the script
             "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for b in blocks_:
        if not b.run:
            continue
        parts.append(f"echo '### docker/README.md, block at line {b.line}'")
        parts.append(b.text.rstrip("\n"))
        if b.check:
            parts.append(f'{hook} {b.check} "$STACK"')
    return "\n".join(parts) + "\n"

"""Every ```python block of README.md runs as written, so the README cannot drift from the code.

How blocks are run:

- Each block runs in a fresh Python subprocess (this interpreter, ``src/`` on ``PYTHONPATH``,
  one torch thread), with a temporary folder as its working directory and a timeout.
- A block runs on its own unless the line right before its fence (blank lines
  allowed in between) is the HTML comment ``<!-- continues -->``: it then runs
  after the block before it (and that block's own predecessors), as one script.
  The comment is invisible on GitHub but plain in the raw README.
- A block that must not run (none today) would be fenced as ```text or ```sh instead.

Test ids are the heading each block sits under. ``MIN_BLOCKS`` holds the count,
so a block cannot silently vanish from the README.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONTINUES = "<!-- continues -->"
MIN_BLOCKS = 8
TIMEOUT_S = 120

_FENCE = re.compile(r"^```\s*(\S*)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


@dataclass
class Block:
    """One python block of the README: where it is, its code, and the code it runs after."""

    heading: str
    line: int
    code: str
    prelude: str  # the blocks it continues, joined; "" for a block that runs on its own


def extract_blocks(text: str) -> list[Block]:
    """The ```python blocks of a markdown text, each with its heading and its continuation prelude."""
    blocks: list[Block] = []
    heading, last_nonblank = "(top)", ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            lang, start = fence.group(1).lower(), i
            i += 1
            body: list[str] = []
            while i < len(lines) and not _FENCE.match(lines[i]):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise ValueError(f"README line {start + 1}: code fence never closed")
            if lang == "python":
                prelude = ""
                if last_nonblank.strip() == CONTINUES:
                    if not blocks:
                        raise ValueError(f"README line {start + 1}: {CONTINUES} before the first python block")
                    prev = blocks[-1]
                    prelude = prev.prelude + prev.code
                blocks.append(Block(heading, start + 1, "\n".join(body) + "\n", prelude))
            last_nonblank = line
        else:
            h = _HEADING.match(line)
            if h:
                heading = h.group(2)
            if line.strip():
                last_nonblank = line
        i += 1
    return blocks


def _ids(blocks: list[Block]) -> list[str]:
    """Headings as test ids; a heading holding several blocks numbers them."""
    seen: dict[str, int] = {}
    ids = []
    for b in blocks:
        n = seen[b.heading] = seen.get(b.heading, 0) + 1
        ids.append(b.heading if n == 1 else f"{b.heading} #{n}")
    return ids


BLOCKS = extract_blocks(README.read_text(encoding="utf-8"))


def test_readme_keeps_its_python_blocks():
    assert len(BLOCKS) >= MIN_BLOCKS, f"README has {len(BLOCKS)} python blocks, expected >= {MIN_BLOCKS}"
    assert len(set(_ids(BLOCKS))) == len(BLOCKS)


def test_extractor_reads_headings_fences_and_the_continuation_marker():
    text = "\n".join([
        "# A", "```python", "x = 1", "```", "",
        "## B", "text", CONTINUES, "", "```python", "y = x + 1", "```",
        "```sh", "echo no", "```",
        "```python", "z = 3", "```",
    ])
    a, b, c = extract_blocks(text)
    assert (a.heading, a.code, a.prelude) == ("A", "x = 1\n", "")
    assert (b.heading, b.code, b.prelude) == ("B", "y = x + 1\n", "x = 1\n")
    assert (c.heading, c.prelude) == ("B", "")  # a sh block in between: the marker is not carried over
    with pytest.raises(ValueError, match="before the first python block"):
        extract_blocks(f"{CONTINUES}\n```python\nx = 1\n```\n")


@pytest.mark.parametrize("block", BLOCKS, ids=_ids(BLOCKS))
def test_readme_block_runs(block: Block, tmp_path: Path):
    script = tmp_path / "block.py"
    script.write_text(block.prelude + block.code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    # one thread, as the suite: on a shared 2-core machine two torch threads per block run 3-4x slower
    env["OMP_NUM_THREADS"] = "1"
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"README block at line {block.line} ({block.heading}) ran past {TIMEOUT_S} s")
    assert proc.returncode == 0, (
        f"README block at line {block.line} ({block.heading}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    assert "Traceback" not in proc.stderr


def test_subpackages_the_readme_names_are_reachable_after_import_lowbit():
    # fresh process: the subpackages must load on first attribute access, not at `import lowbit`
    code = (
        "import sys, lowbit\n"
        "print(any(m in sys.modules for m in ('lowbit.snn', 'lowbit.streaming', 'lowbit.targets')))\n"
        "print(lowbit.streaming.quantize_checkpoint.__module__, lowbit.snn.SNN.__name__,\n"
        "      lowbit.distributed.train_distributed.__name__, lowbit.algorithms.kmeans_share.__name__)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "lowbit.streaming", "SNN", "train_distributed", "kmeans_share"]


def test_passing_the_loader_function_as_calib_names_the_argument():
    # the README once wrote calib=loader (the function); that must fail at once, naming calib
    import lowbit
    from lowbit.data import loader
    from lowbit.models import build_model

    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    for verb, cfg in ((lowbit.quantize, "w4,a8"), (lowbit.prepare_qat, "w4:lsq,a8")):
        with pytest.raises(TypeError, match=r"^calib must be batches: .*got function$"):
            verb(model, cfg, calib=loader)

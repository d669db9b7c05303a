"""Shared by the benchmarks: progress lines on stderr, and a result section written into docs/benchmarks.md
(replacing its old copy)."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "asimddp")  # int8 dot products: x86 VNNI, ARM SDOT/UDOT
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the script it names; rerun the script to refresh it.\n"


def log(msg: str) -> None:
    """A progress line on stderr, at once."""
    print(msg, file=sys.stderr, flush=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or "?"
    return f"{cpu}, {cores} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section `name` in docs/benchmarks.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    main = sys.modules["__main__"].__spec__  # set when run as `python -m bench.NAME`
    command = " ".join(["python", *(["-m", main.name] if main else [sys.argv[0]]), *sys.argv[1:]])
    section = (
        f"<!-- bench:{name} -->\n## {name}\n\n"
        f"- machine: {machine()}\n- date: {stamp}\n- command: `{command}`\n\n{body.strip()}\n"
        f"<!-- /bench:{name} -->\n"
    )
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _m: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def vector_extensions() -> tuple[bool, str]:
    """(the CPU has int8 dot-product instructions, the vector extensions /proc/cpuinfo lists) for int8 goals."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False, "unknown CPU"
    have = [f for f in ("avx2", "avx512f", *DOT_PRODUCT_FLAGS, "amx_int8") if f in flags]
    dot = bool(set(DOT_PRODUCT_FLAGS) & flags)
    listed = ", ".join(have) or "none of avx2, avx512f, avx512_vnni, avx_vnni, asimddp"
    return dot, listed + ("" if dot else " (no VNNI or dot-product)")

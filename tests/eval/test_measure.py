"""The measurement plumbing shared by `lmdistill eval` and the benchmarks: peak memory, workers, tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lmdistill.eval.measure import PeakMemory, Worker, table

CLEAR_REFS = Path("/proc/self/clear_refs")


@pytest.mark.skipif(not CLEAR_REFS.exists(), reason="no resettable peak RSS (Linux /proc/self/clear_refs)")
def test_peak_memory_sees_a_freed_allocation():
    memory = PeakMemory("cpu")
    memory.start()
    assert memory.method == "VmHWM"  # Linux: the kernel's resettable high-water mark
    block = bytearray(64 * 2**20)  # calloc'd: no page is resident until written
    pages = len(block) // 4096
    block[::4096] = b"\x01" * pages  # one byte per 4 KiB page: exactly 64 MiB made resident
    del block  # freed (munmap) before the reading: only a peak can still see it
    assert memory.peak_mb() == pytest.approx(64, abs=1.0)  # 64 MiB of pages, not the process's whole RSS
    memory.start()  # a new start forgets the block: nothing allocated since, so no growth
    assert memory.peak_mb() == pytest.approx(0, abs=0.5)


def test_worker_answers_one_json_line_per_command():
    code = (
        "import sys; from lmdistill.eval.measure import reply\n"
        "print('noise from a library')\n"
        "reply({'built': True}, '@ ')\n"
        "for line in sys.stdin:\n"
        "    reply({'echo': line.strip(), 'n': len(line.strip())}, '@ ')\n"
    )
    w = Worker("echo", [sys.executable, "-c", code], mark="@ ")
    assert w.read() == {"built": True}
    assert w.send("hello") == {"echo": "hello", "n": 5}
    w.proc.stdin.close()
    with pytest.raises(RuntimeError, match="worker echo exited with code 0"):
        w.read()


def test_table_widths_and_formats():
    text = table(
        [("name", "<"), ("ms", ".1f"), ("ratio", ".2f")], [("a", 1.25, 3.0), ("longer", 123.45, 0.5)]
    )
    assert text.splitlines() == [
        "name       ms  ratio",
        "a         1.2   3.00",
        "longer  123.5   0.50",
    ]

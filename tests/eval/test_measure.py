"""The measurement plumbing shared by `lmdistill eval` and the benchmarks: peak memory, workers, tables."""

from __future__ import annotations

import sys

import pytest

from lmdistill.eval.measure import PeakMemory, Worker, table


def test_peak_memory_sees_a_freed_allocation():
    memory = PeakMemory("cpu")
    memory.start()
    block = bytearray(64 * 2**20)  # touched (zero-filled), then freed before the reading
    block[::4096] = b"\x01" * len(block[::4096])
    del block
    peak = memory.peak_mb()
    assert 60 <= peak < 200, peak
    if memory.method == "VmHWM":  # resettable: a new start forgets the block
        memory.start()
        assert memory.peak_mb() < 30


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

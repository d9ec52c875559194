"""benchmarks/figures.py: every results file has a command; provenance makes a changed source show as
stale; every figure on the README and docs pages cites a results file that exists (or says it is not a
measurement)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("figures", ROOT / "benchmarks" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["figures"] = module
    spec.loader.exec_module(module)
    return module


def test_every_results_file_has_a_command_and_every_command_a_script(figures):
    on_disk = {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    registered = {f.name for f in figures.FIGURES}
    assert on_disk - registered == set(), "results files no command makes: register them in FIGURES"
    pending = {f.name for f in figures.FIGURES if f.pending}
    assert registered - on_disk - pending == set(), "registered results files that do not exist"
    assert pending & on_disk == set(), "a figure marked pending has its results file: drop `pending`"
    for f in figures.FIGURES:
        if f.script is not None:
            assert f.script.is_file(), f.script
        else:
            assert f.argv[0] == "lmdistill" and (ROOT / f.entry).is_file(), f.name


def test_sources_follow_imports_into_the_package(figures):
    chunked = [str(p) for p in figures.sources(figures.BY_NAME["chunked_loss"])]
    assert "benchmarks/bench_chunked_loss.py" in chunked
    assert "src/lmdistill/chunked.py" in chunked  # imported by the script
    assert "src/lmdistill/losses.py" in chunked  # imported by chunked.py: found transitively
    assert not any("serve/" in p for p in chunked)  # nothing the script does not reach


def test_a_changed_source_makes_its_results_stale(figures, tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(figures, "RESULTS", results)
    script = tmp_path / "bench_toy.py"
    script.write_text("from lmdistill.losses import forward_kl\n")
    setting = tmp_path / "setting.yaml"
    setting.write_text("steps: 1\n")
    toy = figures.Figure("toy", ["bench_toy.py"], 0.1, extra_sources=[str(setting)])
    monkeypatch.setattr(figures.Figure, "script", property(lambda self: script))
    assert figures.staleness(toy)[0] == "missing"
    toy.path.write_text(json.dumps({"rows": [1, 2]}))
    assert figures.staleness(toy) == ("unrecorded", ["written before results recorded their provenance"])
    figures.stamp(toy, load_average_before=0.5)
    data = json.loads(toy.path.read_text())
    assert data["rows"] == [1, 2] and data["provenance"]["load_average_before"] == 0.5
    assert len(data["provenance"]["commit"]) == 40
    assert "src/lmdistill/losses.py" in data["provenance"]["sources"]
    assert figures.staleness(toy) == ("fresh", [])
    setting.write_text("steps: 2\n")
    state, why = figures.staleness(toy)
    assert state == "stale" and why == [f"changed since: {setting}"]


def test_every_figure_on_the_pages_cites_a_results_file(figures):
    problems = figures.untraced_sections()
    assert problems == [], "\n".join(problems)


def test_the_page_check_finds_an_untraced_figure(figures, tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "ROOT", tmp_path)
    monkeypatch.setattr(figures, "PAGES", ["*.md"])
    monkeypatch.setattr(figures, "RESULTS", tmp_path / "benchmarks" / "results")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "real.json").write_text("{}")
    (tmp_path / "page.md").write_text(
        "# Page\n\n## Fast\n\nIt is 2.5x faster (`benchmarks/results/real.json`).\n\n"
        "## Slow\n\nIt is 3.1x slower.\n\n## Limit\n\n<!-- figures: not measured: a limit -->\nUp to 8 MiB.\n\n"
        "## Gone\n\n40% (`benchmarks/results/gone.json`).\n"
    )
    problems = figures.untraced_sections()
    assert len(problems) == 2, problems
    assert "§ ## Slow: 1 figure(s) (3.1x) and no results file" in problems[0]
    assert "cites results/gone.json, which does not exist" in problems[1]

"""bench/results.py: the one format benchmark results are written in and the report reads."""

from __future__ import annotations

import json
import re

import pytest

from bench import results

ROWS = [{"model": "resnet18", "batch": 1, "images_per_s": 380.0, "p50_ms": 2.6, "p99_ms": 3.1}]


def test_write_adds_the_machine_and_time_and_leaves_no_temporary_file(tmp_path):
    path = results.write("serve", {"rows": ROWS, "seconds": 2}, tmp_path)
    assert path == tmp_path / "bench" / "serve.json"
    doc = json.loads(path.read_text())
    assert doc["schema"] == results.SCHEMA and doc["bench"] == "serve"
    assert doc["rows"] == ROWS and doc["seconds"] == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", doc["created"])
    assert doc["cpu"] and doc["cpus"] >= 1 and doc["isa"] == sorted(doc["isa"])
    assert [p.name for p in path.parent.iterdir()] == ["serve.json"]


def test_a_second_run_replaces_the_first(tmp_path):
    results.write("train", {"rows": [{"arch": "lenet", "speedup": 1.0}]}, tmp_path)
    results.write("train", {"rows": [{"arch": "lenet", "speedup": 2.0}]}, tmp_path)
    docs, problems = results.read_all(tmp_path)
    assert [d["rows"][0]["speedup"] for d in docs] == [2.0] and problems == []


@pytest.mark.parametrize("name, result, message", [
    ("serve", {"rows": ROWS, "cpu": "mine"}, r"must not set \['cpu'\]"),
    ("serve", {"rows": {"a": 1}}, "must be a list of dicts"),
    ("serve", {}, "must be a list of dicts"),
    ("../serve", {"rows": ROWS}, "benchmark name"),
    ("serve", {"rows": [{"images_per_s": float("nan")}]}, "Out of range float"),
])
def test_write_refuses_what_the_report_could_not_read(tmp_path, name, result, message):
    with pytest.raises(ValueError, match=message):
        results.write(name, result, tmp_path)
    assert not list((tmp_path / "bench").glob("*")) if (tmp_path / "bench").exists() else True


def test_read_all_names_the_files_it_skips(tmp_path):
    results.write("serve", {"rows": ROWS}, tmp_path)
    (tmp_path / "bench" / "old.json").write_text('{"rows": []}')
    (tmp_path / "bench" / "broken.json").write_text("{")
    docs, problems = results.read_all(tmp_path)
    assert [d["bench"] for d in docs] == ["serve"]
    assert len(problems) == 2 and any("old.json: not a bench/results.py" in p for p in problems)


def test_cpu_info_keeps_the_isa_flags_only(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n"
                       "flags\t\t: fpu sse2 smep avx512f amx_bf16 avx512_bf16 ht\n")
    assert results.cpu_info(cpuinfo) == ("Some CPU", ["amx_bf16", "avx512_bf16", "avx512f", "sse2"])

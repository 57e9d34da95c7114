import json
import subprocess

from bench.report import REPO_ROOT, commit, table, write_result


def test_write_result_records_figures_device_versions_and_commit(tmp_path):
    path = write_result("demo", {"seconds": 1.5}, tmp_path)
    document = json.loads(path.read_text())
    assert path.parent == tmp_path and path.name.startswith("demo-")
    assert document["benchmark"] == "demo" and document["figures"] == {"seconds": 1.5}
    assert {"python", "torch"} <= set(document["versions"])
    assert document["device"]["cpu_count"] >= 1
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert document["commit"] == commit() and document["commit"].startswith(head.stdout.strip())


def test_table_aligns_columns_and_rounds_numbers():
    text = table(["stage", "seconds"], [("sampling", 12.3456), ("mux", None), ("decode", 1234.5)])
    lines = text.splitlines()
    assert lines[0].split() == ["stage", "seconds"]
    assert lines[2].split() == ["sampling", "12.3"]
    assert lines[3].split() == ["mux", "-"]
    assert lines[4].split() == ["decode", "1234"]
    assert len({line.index(line.split()[1]) for line in [lines[0], lines[2], lines[3]]}) == 1


def test_table_without_rows_is_its_header():
    assert table(["size", "s/pass"], []).splitlines() == ["size  s/pass", "----  ------"]


def test_the_source_digest_names_the_code_on_disk(tmp_path, monkeypatch):
    import bench.report as report

    for folder in ("pipeline", "serve", "bench"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(report, "REPO_ROOT", tmp_path)
    before = report.source_digest()
    assert before == report.source_digest()  # the same files, the same digest
    (tmp_path / "serve" / "a.py").write_text("x = 2\n")
    assert report.source_digest() != before
    (tmp_path / "serve" / "a.py").write_text("x = 1\n")
    (tmp_path / "serve" / "b.py").write_text("")  # a new file counts, even an empty one
    assert report.source_digest() != before
    assert json.loads(write_result("demo", {}, tmp_path / "out").read_text())["source_digest"]

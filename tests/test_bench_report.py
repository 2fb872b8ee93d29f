"""``mmsb bench`` reporting: machine load, quick runs not judged, missing dependencies named; the GPU report writer."""
import json
import os
import subprocess
import sys
import types

from mmsb.bench import _common as C
from mmsb.bench import _missing_dependencies, main


def test_have_names_a_missing_dependency_of_an_installed_baseline(monkeypatch):
    fake = types.ModuleType("graphblas")

    def broken(name):
        raise ModuleNotFoundError("No module named 'donfig'", name="donfig")

    fake.__getattr__ = broken          # graphblas imports donfig on first use of its configuration
    monkeypatch.setitem(sys.modules, "graphblas", fake)
    why = C.have("graphblas")
    assert why is not None and "donfig" in why and "graphblas is installed" in why
    assert C.have("numpy") is None
    assert "not installed" in C.have("no_such_module_xyz")


def test_missing_baselines_keep_their_rows_and_are_listed():
    rows = [C.missing("spmv", "spmv min_plus", 1.0, "GraphBLAS mxv", "graphblas is installed but its dependency "
                      "donfig is missing (pip install donfig)"),
            C.missing("closure", "closure", 1.0, "GraphBLAS", "graphblas is installed but its dependency donfig is "
                      "missing (pip install donfig)"),
            C.Row("merge", "scatter", 1.0, "numpy", 2.0)]
    assert _missing_dependencies(rows) == ["graphblas is installed but its dependency donfig is missing "
                                           "(pip install donfig)"]


def test_machine_load_sees_a_busy_competing_process():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        load = C.machine_load(sample=1.0, busy_fraction=0.1)
    finally:
        spin.kill()
        spin.wait()
    assert load["cpus"] == os.cpu_count()
    assert any(b["pid"] == spin.pid for b in load["busy"]), load
    assert load["loaded"] is True
    line = C.fmt_load(load)
    assert f"pid {spin.pid}" in line and "LOADED" in line


def test_quick_run_judges_nothing_and_reports_the_load(capsys):
    assert main(quick=True, only="merge", as_json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["quick"] is True and doc["judged"] is False
    assert doc["rows"] and all(r["met"] is None for r in doc["rows"])
    assert set(doc["load"]) == {"before", "after"} and doc["load"]["before"]["cpus"] == os.cpu_count()
    assert main(quick=True, only="merge") == 0
    text = capsys.readouterr().out
    assert "not judged (--quick)" in text and "targets met" not in text
    assert text.count("machine load: load average") == 2


FAKE_GPU = {
    "device": "NVIDIA H200", "cupy": "14.2.0", "command": "python -m mmsb.gpu.bench --out $OUT",
    "merge": {"float64": {"n": 268435456, "copy_GBps": 4233.0, "merge_GBps": 3918.0, "merge_vs_copy": 0.9256,
                          "merge_s": 0.001713, "cupy_where_s": 0.004055, "memcpy_s": 0.001, "copy_kernel_s": 0.001}},
    "scatter": {"float64_plus": {"updates": 16777216, "page": 16777216, "unsorted_s": 0.000843,
                                 "unsorted_Gupd_s": 19.9, "sorted_s": 0.000211, "sorted_Gupd_s": 79.5,
                                 "cupyx_scatter_add_s": 0.000863},
                "int32_min": {"updates": 16777216, "page": 16777216, "unsorted_s": 0.000627,
                              "unsorted_Gupd_s": 26.8, "sorted_s": 0.000174, "sorted_Gupd_s": 96.3}},
    "spmv": {"rows": 4194304, "nnz": 67108864, "default_group": 8, "cusparse_plus_times_s": 0.0041,
             "plus_times": {"default_s": 0.0032, "best_s": 0.0031, "vs_cusparse_default": 1.28,
                            "vs_cusparse_best": 1.32},
             "min_plus": {"default_s": 0.0033, "best_s": 0.0032, "vs_cusparse_default": 1.24,
                          "vs_cusparse_best": 1.28}},
    "graph": {"error": "RuntimeError: capture failed"},
    "nccl": {"skipped": "1 device(s)"},
}


def test_gpu_report_writes_json_and_markdown(tmp_path):
    from mmsb.gpu.bench import render_markdown, write_report

    paths = write_report(FAKE_GPU, str(tmp_path / "out"))
    assert [os.path.basename(p) for p in paths] == ["gpu.json", "gpu.md"]
    assert json.loads(open(paths[0]).read()) == FAKE_GPU
    md = open(paths[1]).read()
    assert md == render_markdown(FAKE_GPU)
    assert md.startswith("# GPU benchmarks (NVIDIA H200)")
    assert "| float64 | 268435456 | 4233 | 3918 | **93 %** | 1.713 | 4.055 |" in md
    assert "| float64_plus | 16777216 | **19.9** | 79.5 | 0.843 | 0.863 |" in md
    assert "| int32_min | 16777216 | **26.8** | 96.3 | 0.627 | – |" in md
    assert "| plus_times | 3.200 | **1.28x** | 3.100 | 1.32x |" in md
    assert "failed: RuntimeError: capture failed" in md and "skipped: 1 device(s)" in md
    for header in ("## Dense masked merge", "## Sparse scatter", "## CSR SpMV", "## CUDA-graph", "## NCCL"):
        assert header in md


def test_gpu_report_of_an_empty_run(tmp_path):
    from mmsb.gpu.bench import render_markdown

    md = render_markdown({})
    assert md.count("not run") == 5

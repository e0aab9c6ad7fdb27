"""`lstm-bench trial` and `lstm-bench check` as a user runs them: records, tables, one-line errors."""
import json
import pickle

import pytest
import torch

from harness.cli import main

REQUIRED = ("trial_id seq patch_size hidden_size num_layers impl batch_size dtype bidirectional mode device status "
            "img_per_s img_per_s_iqr latency_ms_p50 latency_ms_p90 latency_ms_p99 peak_mem_mb gflop_per_s noisy "
            "dataset backend started_at duration_s hostname node_ip cpu_model threads gpu_name gpu_driver "
            "cuda_version cudnn_version torch_version torchvision_version ray_version git_commit").split()

FAST = ["--hidden-size", "16", "--num-layers", "1", "--batch-size", "32", "--time-budget-s", "1"]


def run_json(capsys, *args):
    rc = main(["trial", *args, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return rc, [json.loads(line) for line in out]


def test_trial_json_record_has_every_field(capsys):
    rc, recs = run_json(capsys, "--seq", "row", "--impl", "cudnn", "--mode", "train", *FAST)
    assert rc == 0 and len(recs) == 1
    r = recs[0]
    missing = [k for k in REQUIRED if k not in r]
    assert not missing, missing
    assert r["status"] == "ok" and r["dataset"] == "synthetic" and r["mode"] == "train"
    assert r["img_per_s"] > 0 and len(r["step_ms"]) == r["timed_steps"]
    assert r["timed_steps"] >= 50 or (r["noisy"] and "insufficient samples" in r["noise_reasons"])
    # p90 needs 20 timed steps and p99 100: below that they are null, not the maximum of a few samples
    assert r["latency_ms_p90"] is None if r["timed_steps"] < 20 else r["latency_ms_p50"] <= r["latency_ms_p90"]
    assert (r["latency_ms_p99"] is None) == (r["timed_steps"] < 100)
    assert r["latency_ms_p99"] is None or r["latency_ms_p90"] <= r["latency_ms_p99"]
    assert r["timed_start"] < r["timed_end"] and r["model_img_per_s"] > 0 and r["data_ms_per_step"] > 0
    assert r["tf32_cudnn"] is False and r["tf32_matmul"] is False  # float32 is strict, and says so
    assert r["ceiling_gflop_per_s"] > 0 and r["ceiling_frac"] == pytest.approx(r["gflop_per_s"] /
                                                                               r["ceiling_gflop_per_s"])
    assert len(r["hw_fingerprint"]) == 12 and r["code_version"]
    from harness.schema import check_record
    assert check_record(r) == []  # every field the trial wrote is declared in the schema, with its type
    assert r["gflop_per_s"] == pytest.approx(r["lstm_gflop_per_batch"] * r["img_per_s"] / 32)
    assert isinstance(r["noisy"], bool) and r["backend"] in ("onednn-rnn", "aten-lstm-cpu")
    assert "test_acc" not in r  # synthetic data never reports an accuracy


@pytest.mark.parametrize("impl,backend", [("naive", "python-loop:aten-ops"), ("lstmcell", "python-loop:lstm-cell")])
def test_infer_trial_records_loop_backends(capsys, impl, backend):
    rc, (r,) = run_json(capsys, "--seq", "patch", "--patch-size", "8", "--impl", impl, "--mode", "infer", *FAST)
    assert rc == 0 and r["backend"] == backend and r["patch_size"] == 8


def test_trial_table_is_readable(capsys):
    assert main(["trial", "--seq", "column", "--impl", "naive", *FAST]) == 0
    out = capsys.readouterr().out
    assert out.startswith("column/h16x1/naive/b32/float32") and "img_per_s" in out


def test_trial_on_a_written_cifar_copy_records_the_copy(capsys, tiny_cifar):
    rc, (r,) = run_json(capsys, "--data", "cifar10", "--data-root", str(tiny_cifar), "--allow-unofficial-data", *FAST)
    assert rc == 0 and r["dataset"].startswith("unofficial:")


def one_line_error(capsys, argv, expected):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err


@pytest.mark.parametrize("argv,expected", [
    (["--seq", "spiral"], "unknown seq 'spiral'"),
    (["--impl", "turbo"], "unknown impl 'turbo'"),
    (["--hidden-size", "0"], "hidden_size must be a positive integer"),
    (["--hidden-size", "-8"], "hidden_size must be a positive integer"),
    (["--seq", "patch", "--patch-size", "5"], "does not divide 32"),
    (["--hidden-size", "big"], "invalid int value: 'big'"),
    (["--mode", "fly"], "unknown mode 'fly'"),
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
])
def test_bad_flags_one_line(capsys, argv, expected):
    one_line_error(capsys, ["trial", *argv], expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_one_line(capsys):
    one_line_error(capsys, ["trial", "--device", "cuda"], "CUDA is not available")


def test_missing_dataset_one_line(capsys, tmp_path):
    one_line_error(capsys, ["trial", "--data", "cifar10", "--data-root", str(tmp_path)], str(tmp_path))


def test_corrupt_dataset_one_line(capsys, tiny_cifar, tmp_path):
    import shutil
    bad = tmp_path / "cifar-10-batches-py"
    shutil.copytree(tiny_cifar / "cifar-10-batches-py", bad)
    data = (bad / "data_batch_3").read_bytes()
    (bad / "data_batch_3").write_bytes(data[: len(data) // 2])
    one_line_error(capsys, ["trial", "--data", "cifar10", "--data-root", str(tmp_path), "--allow-unofficial-data"],
                   "data_batch_3")


def test_hostile_pickle_one_line_and_not_run(capsys, tiny_cifar, tmp_path):
    import os
    import shutil
    bad = tmp_path / "cifar-10-batches-py"
    shutil.copytree(tiny_cifar / "cifar-10-batches-py", bad)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (bad / "test_batch").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    one_line_error(capsys, ["trial", "--data", "cifar10", "--data-root", str(tmp_path), "--allow-unofficial-data"],
                   "refusing pickle global")
    assert not marker.exists()


def test_unofficial_copy_refused_without_permission(capsys, tiny_cifar):
    one_line_error(capsys, ["trial", "--data", "cifar10", "--data-root", str(tiny_cifar)], "--allow-unofficial-data")


@pytest.mark.slow
def test_check_command_reports_every_seq_and_impl(capsys):
    rc = main(["check", "--hidden-size", "8", "--json"])
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert rc == 0, (out.err[-1500:], [r for r in rows if not r["ok"]])
    seqs = ("row", "column", "pixel", "patch2", "patch4", "patch8", "cnn")
    compiled = {(s, "compiled") for s in seqs if s.startswith(("row", "column", "patch"))}  # not pixel nor cnn
    assert {(r["seq"], r["impl"]) for r in rows} == {(s, i) for s in seqs for i in ("naive", "lstmcell")} | compiled
    assert all(r["max_rel_error"] < 1e-5 and r["ok"] for r in rows)


# ---------------------------------------------------------------------------------------------------------
# Which data a trial uses when --data is not given (the rule is in `lstm-bench trial --help`, under --data)

TINY = ["--hidden-size", "16", "--num-layers", "1", "--batch-size", "32"]


def handed_spec(monkeypatch, capsys, *args):
    """The TrialSpec `lstm-bench trial ARGS` hands run_trial (stubbed: it stops there, nothing runs)."""
    import harness.trial
    from harness.errors import HarnessError
    seen = []

    def run_trial(spec, **kwargs):
        seen.append((spec, kwargs))
        raise HarnessError("stub: not run")

    monkeypatch.setattr(harness.trial, "run_trial", run_trial)
    rc = main(["trial", *args, "--json"])
    err = capsys.readouterr().err
    assert rc == 2 and "stub: not run" in err, err
    (spec, kwargs), = seen
    return spec, kwargs


@pytest.mark.parametrize("args,data", [
    ([], "synthetic"),
    (["--mode", "accuracy"], "cifar10"),                      # synthetic data has no accuracy
    (["--data-root", "somewhere"], "cifar10"),                # a folder means its dataset
    (["--mode", "infer", "--data", "synthetic"], "synthetic"),
    (["--mode", "train", "--data", "cifar10"], "cifar10"),
])
def test_data_default_follows_mode_and_data_root(monkeypatch, capsys, args, data):
    spec, kwargs = handed_spec(monkeypatch, capsys, *TINY, *args)
    assert spec.data == data
    assert kwargs["data_root"] == (args[1] if args[:1] == ["--data-root"] else None)


def test_accuracy_without_data_flag_trains_on_cifar10(capsys, tiny_cifar, monkeypatch):
    monkeypatch.setenv("CIFAR10_ROOT", str(tiny_cifar))  # found the way a user's copy is found
    rc, (r,) = run_json(capsys, "--mode", "accuracy", "--allow-unofficial-data", "--epochs", "1", *TINY)
    assert rc == 0 and r["status"] == "ok", r.get("error")
    assert r["data"] == "cifar10" and r["dataset"].startswith("unofficial:") and 0 <= r["test_acc"] <= 1


def test_data_root_without_data_flag_uses_that_copy(capsys, tiny_cifar):
    rc, (r,) = run_json(capsys, "--data-root", str(tiny_cifar), "--allow-unofficial-data", *FAST)
    assert rc == 0 and r["data"] == "cifar10" and r["dataset"].startswith("unofficial:")


def test_synthetic_data_with_a_data_root_is_one_line(capsys, tmp_path):
    one_line_error(capsys, ["trial", "--data", "synthetic", "--data-root", str(tmp_path), *FAST],
                   f"--data synthetic reads no dataset, but --data-root {tmp_path} was given")


def test_accuracy_on_synthetic_data_is_still_one_line(capsys):
    one_line_error(capsys, ["trial", "--mode", "accuracy", "--data", "synthetic", *FAST],
                   "mode accuracy needs data cifar10")


def test_time_budget_unset_means_the_modes_default(monkeypatch, capsys):
    from harness.spec import DEFAULT_TIMING_BUDGET_S
    spec, _ = handed_spec(monkeypatch, capsys, *TINY)
    assert spec.time_budget_s is None and spec.budget_s == DEFAULT_TIMING_BUDGET_S
    spec, _ = handed_spec(monkeypatch, capsys, *TINY, "--mode", "accuracy", "--data-root", "x")
    assert spec.time_budget_s is None and spec.budget_s == float("inf")
    spec, _ = handed_spec(monkeypatch, capsys, *TINY, "--mode", "accuracy", "--time-budget-s", "5", "--data-root", "x")
    assert spec.time_budget_s == 5 and spec.budget_s == 5
    assert spec.flat()["time_budget_s"] == 5


def test_every_trial_flag_is_a_spec_field_with_its_default():
    """The flags are generated from Variant, TrainConfig and TrialSpec: same names, same defaults."""
    import dataclasses
    from harness.cli import SUITE_ONLY, build_parser
    from harness.spec import TrainConfig, TrialSpec, Variant
    args = build_parser().parse_args(["trial"])
    for cls in (Variant, TrainConfig, TrialSpec):
        for f in dataclasses.fields(cls):
            assert f.metadata["help"] and f.metadata["unit"], f.name
            if f.name in SUITE_ONLY or f.name == "data":  # data: decided from --mode and --data-root
                continue
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            assert getattr(args, f.name) == (list(default) if isinstance(default, tuple) else default), f.name
    assert args.data is None


def test_tf32_on_cpu_is_one_line_exit_2(capsys):
    rc = main(["trial", "--dtype", "tf32", "--device", "cpu", "--json"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "tf32 needs a CUDA device" in err, err

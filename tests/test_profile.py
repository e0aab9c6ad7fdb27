"""Profile mode (harness/profile.py): real training steps under torch.profiler, the trace shipped back as bytes,
per-kernel/operator rows, and a trace that torch-tb-profiler's own loader parses."""

import gzip
import json
import math
import tempfile

import pandas as pd
import pytest
import torch

from harness.profile import CATEGORIES, NOISE_REASON, classify, run_profile
from harness.schema import KERNEL_COLUMNS, TrialResult
from harness.spec import TrialSpec
from harness.store import ArtifactError, RunStore, consolidate_kernels, kernels_frame, write_artifacts
from harness.trial import load_data, run_trial
from harness.variants import Variant

STEPS = 3  # active steps of the schedule (wait=1, warmup=2, active=3)
ROW_STEPS = 32  # seq=row: 32 time steps


def small_spec(impl: str, device: str = "cpu", **kw) -> TrialSpec:
    return TrialSpec(Variant(seq="row", hidden_size=32, num_layers=1, impl=impl, batch_size=16), mode="profile",
                     device=device, **kw)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on the 2 shared cores here a second OpenMP thread that has to wait for a core makes
    each tiny matmul milliseconds slower (the profile's structure does not depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cpu_profiles(one_thread):
    out = {}
    for impl in ("cudnn", "naive"):
        spec = small_spec(impl)
        out[impl] = (spec, TrialResult(*run_profile(spec, load_data(spec, torch.device("cpu")), torch.device("cpu"))))
    return out


def rows_by_name(result):
    return {r["name"]: r for r in result.kernels}


def check_record(result, activities):
    rec, rows = result.record, result.kernels
    assert rows, "no rows"
    for r in rows:
        assert set(KERNEL_COLUMNS) <= set(r)
        assert r["category"] in CATEGORIES, r
        assert r["calls"] >= 1 and r["launches_per_step"] == pytest.approx(r["calls"] / STEPS)
        assert 0.0 <= r["share_of_step"] <= 1.0
    assert math.fsum(r["share_of_step"] for r in rows) == pytest.approx(1.0, abs=1e-9)
    shares = [r["share_of_step"] for r in rows]
    assert shares == sorted(shares, reverse=True)  # most self time first
    assert rec["top_kernel"] == rows[0]["name"]
    assert rec["launches_per_step"] == pytest.approx(sum(r["launches_per_step"] for r in rows))
    assert rec["gemm_share"] == pytest.approx(sum(r["share_of_step"] for r in rows if r["category"] == "gemm"))
    assert rec["profiled_steps"] == STEPS and rec["profile_activities"] == activities
    assert rec["img_per_s"] > 0 and rec["peak_mem_mb"] is not None and rec["peak_mem_mb"] >= 0
    assert rec["noisy"] is True and rec["noise_reasons"] == NOISE_REASON
    assert rec["op_time_ms_per_step"] > 0
    # profiler annotations (ProfilerStep#N, Optimizer.step#...; on GPU also their device-side spans) are not rows:
    # they would count the time of the operators/kernels inside them a second time
    assert not any(r["name"].startswith(("ProfilerStep", "Optimizer.")) for r in rows)
    # self times are disjoint intervals (one thread / one stream at a time): they fit in the steps' wall time
    wall_ms_per_step = 1000.0 * 16 / rec["img_per_s"]
    assert rec["op_time_ms_per_step"] <= 1.05 * wall_ms_per_step, (rec["op_time_ms_per_step"], wall_ms_per_step)
    # the trace comes back as bytes under the handler's own name, gzipped chrome-trace JSON
    arts = result.artifacts
    assert list(arts) == rec["profile_trace_files"] and len(arts) == 1
    (name, blob), = arts.items()
    assert name.endswith(".pt.trace.json.gz") and isinstance(blob, bytes)
    assert rec["profile_trace_bytes"] == len(blob)
    trace = json.loads(gzip.decompress(blob))
    assert trace["traceEvents"]
    steps = sorted({e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")})
    assert steps == ["ProfilerStep#3", "ProfilerStep#4", "ProfilerStep#5"]  # steps 0-2 wait / warm up
    return rows


def test_cpu_profile_naive_launches_far_more_ops_than_cudnn(cpu_profiles):
    _, cud_res = cpu_profiles["cudnn"]
    _, nai_res = cpu_profiles["naive"]
    cud, nai = cud_res.record, nai_res.record
    cud_rows, nai_rows = check_record(cud_res, "cpu"), check_record(nai_res, "cpu")
    for r in cud_rows + nai_rows:  # CPU profile: rows are ATen operators, timed on the CPU only
        assert r["name"].startswith("aten::") and r["self_device_time_us"] is None and r["self_cpu_time_us"] >= 0
    # the loop runs 32 steps of small ops forward and backward; nn.LSTM one fused op each way
    assert nai["launches_per_step"] > 5 * cud["launches_per_step"], (nai["launches_per_step"], cud["launches_per_step"])
    assert nai["top_level_ops_per_step"] > 8 * cud["top_level_ops_per_step"]
    assert nai["aten_ops_per_step"] == nai["launches_per_step"]
    nr, cr = rows_by_name(nai_res), rows_by_name(cud_res)
    # one addmm per time step for the four stacked gates, plus the classifier head
    assert nr["aten::addmm"]["launches_per_step"] == ROW_STEPS + 1
    assert nr["aten::addmm"]["category"] == "gemm" and nr["aten::sigmoid"]["category"] == "elementwise"
    assert nr["aten::sigmoid"]["launches_per_step"] == 3 * ROW_STEPS  # i, f, o gates
    assert nai["gemm_share"] > 0
    assert not any(r["category"] == "cudnn-rnn" for r in nai_rows)
    # nn.LSTM on CPU: one fused RNN op per step forward, one backward
    fused = [r for r in cud_rows if r["category"] == "cudnn-rnn" and r["name"] != "aten::cudnn_is_acceptable"]
    assert fused and all(r["launches_per_step"] == 1 for r in fused)
    assert "aten::addmm" in cr and cr["aten::addmm"]["launches_per_step"] == 1  # only the head
    assert cud["backend"] in ("onednn-rnn", "aten-lstm-cpu") and nai["backend"] == "python-loop:aten-ops"


def load_with_torch_tb_profiler(spec, rec, tmp_path):
    """Write the artifacts as the driver does and load them the way the TensorBoard plugin does
    (torch_tb_profiler/plugin.py: `RunLoader(name, run_dir, io.Cache(temp dir)).load()`); the profile of the
    one worker and span."""
    from torch_tb_profiler import consts
    from torch_tb_profiler import io as tbio
    from torch_tb_profiler.profiler import RunLoader

    dest = write_artifacts(tmp_path / "run", spec.trial_id, rec.artifacts)
    assert dest == tmp_path / "run" / "profiles" / spec.trial_id
    (name,) = [p.name for p in dest.iterdir()]
    match = consts.WORKER_PATTERN.match(name)  # the plugin only reads files its pattern matches
    assert match, name
    with tbio.Cache(tempfile.mkdtemp(dir=tmp_path)) as cache:
        run = RunLoader(spec.trial_id, str(dest), cache).load()
    assert run.workers == [match.group(1)]
    assert run.get_spans() == ["1"]  # the handler's timestamp became span 1
    profile = run.get_profile(match.group(1), "1")
    assert profile is not None, "torch-tb-profiler failed to parse the trace"
    return profile


def test_trace_loads_in_torch_tb_profiler(cpu_profiles, tmp_path):
    """The written trace is what TensorBoard's PyTorch profiler plugin reads: its RunLoader finds the worker and
    span from the file name, parses the events and builds the overview and operator views."""
    spec, rec = cpu_profiles["naive"]
    profile = load_with_torch_tb_profiler(spec, rec, tmp_path)
    assert {v.display_name for v in profile.views} >= {"Overview", "Operator", "Trace"}
    assert [row[0] for row in profile.overview["steps"]["rows"]] == ["3", "4", "5"]
    ops = {r["name"]: r for r in profile.operation_table_by_name["data"]}
    assert ops["aten::addmm"]["calls"] == STEPS * (ROW_STEPS + 1)
    assert ops["aten::sigmoid"]["calls"] == rows_by_name(rec)["aten::sigmoid"]["calls"]


def test_profile_through_run_trial(one_thread):
    res = run_trial(small_spec("cudnn", threads=1))
    rec = res.record
    assert rec["status"] == "ok", rec.get("error_detail")
    assert rec["mode"] == "profile" and rec["dataset"] == "synthetic" and rec["noisy"] is True
    assert isinstance(res.artifacts, dict) and res.artifacts and isinstance(res.kernels, list) and res.kernels
    json.dumps(rec)  # the record is plain JSON values: traces and rows travel beside it


def test_write_artifacts_refuses_escaping_names(tmp_path):
    run = tmp_path / "run"
    for bad in ("../x", "a/b", "..", ".", "", "a\\b", "x/../../y", "/abs"):
        with pytest.raises(ArtifactError):
            write_artifacts(run, "t1", {"ok.pt.trace.json.gz": b"1", bad: b"2"})
    for bad_id in ("../t", "a/b", ".."):
        with pytest.raises(ArtifactError):
            write_artifacts(run, bad_id, {"ok.pt.trace.json.gz": b"1"})
    with pytest.raises(ArtifactError):
        write_artifacts(run, "t1", {"f.json": "text, not bytes"})
    assert not run.exists()  # refused before anything was written
    dest = write_artifacts(run, "t1", {"w_1.2.pt.trace.json.gz": b"abc", "w_2.3.pt.trace.json.gz": b""})
    assert sorted(p.name for p in dest.iterdir()) == ["w_1.2.pt.trace.json.gz", "w_2.3.pt.trace.json.gz"]
    assert (dest / "w_1.2.pt.trace.json.gz").read_bytes() == b"abc"


def test_kernels_frame_round_trips_through_parquet(tmp_path):
    rows = [{"name": "aten::addmm", "category": "gemm", "calls": 99, "self_device_time_us": None,
             "self_cpu_time_us": 1200.5, "share_of_step": 0.7, "launches_per_step": 33.0},
            {"name": "aten::mul", "category": "elementwise", "calls": 861, "self_device_time_us": None,
             "self_cpu_time_us": 500.0, "share_of_step": 0.3, "launches_per_step": 287.0}]
    gpu = [{"name": "void elemWiseRNNcell<float>", "category": "cudnn-rnn", "calls": 96, "self_device_time_us": 80.0,
            "self_cpu_time_us": 0.0, "share_of_step": 1.0, "launches_per_step": 32.0}]
    df = kernels_frame([("aaa", rows), ("bbb", gpu), ("ccc", [])])
    assert list(df.columns) == ["trial_id", *KERNEL_COLUMNS] and len(df) == 3
    assert df.groupby("trial_id")["share_of_step"].sum().to_dict() == {"aaa": pytest.approx(1.0), "bbb": 1.0}
    path = tmp_path / "kernels.parquet"
    df.to_parquet(path, index=False)
    back = pd.read_parquet(path)
    assert back["calls"].tolist() == [99, 861, 96] and back["self_device_time_us"].isna().tolist() == [True, True, False]
    empty = kernels_frame([])
    assert list(empty.columns) == ["trial_id", *KERNEL_COLUMNS] and empty.empty


@pytest.mark.parametrize("name,category", [
    ("aten::addmm", "gemm"), ("aten::mm", "gemm"), ("aten::mkldnn_rnn_layer_backward", "cudnn-rnn"),
    ("aten::_cudnn_rnn", "cudnn-rnn"), ("aten::_thnn_fused_lstm_cell", "elementwise"),
    ("aten::lstm_cell", "elementwise"), ("aten::sigmoid_backward", "elementwise"), ("aten::expand", "other"),
    ("aten::_log_softmax", "reduction"), ("aten::nll_loss_forward", "reduction"), ("aten::sum", "reduction"),
    ("aten::copy_", "memcpy"), ("aten::cat", "memcpy"), ("aten::to", "memcpy"), ("aten::t", "other"),
    ("aten::native_batch_norm", "reduction"), ("aten::cudnn_convolution", "other"),
    ("void elemWiseRNNcell<float, float, float, (cudnnRNNMode_t)2, (cudnnRNNBiasMode_t)2>(int, int)", "cudnn-rnn"),
    ("LSTM_elementWise_fp", "cudnn-rnn"), ("RNN_blockPersist_fp_LSTM<float, float, float, 128, true>", "cudnn-rnn"),
    ("ampere_sgemm_32x32_sliced1x4_tn", "gemm"), ("nvjet_tst_64x8_64x16_4x1_v_bz_TNT", "gemm"),
    ("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32_cublas", "gemm"),
    ("void splitKreduce_kernel<32, 16, int, float, float, float, float, true, false, false>", "gemm"),
    ("Memcpy HtoD (Pageable -> Device)", "memcpy"), ("Memset (Device)", "memcpy"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)>",
     "memcpy"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*, 1ul> >",
     "elementwise"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::sum_functor<float> > >",
     "reduction"),
    ("void (anonymous namespace)::softmax_warp_forward<float, float, float, 4, true, false>", "reduction"),
    ("void at::native::(anonymous namespace)::lstm_cell_forward<float, float, int, 1>", "elementwise"),
    ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 512, true, 1, true>", "reduction"),
])
def test_classify(name, category):
    assert classify(name) == category


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_profile_records_kernels(tmp_path):
    dev = torch.device("cuda")
    recs, specs = {}, {}
    for impl in ("cudnn", "naive"):
        specs[impl] = spec = small_spec(impl, "cuda")
        recs[impl] = TrialResult(*run_profile(spec, load_data(spec, dev), dev))
    for impl, res in recs.items():
        rows, rec = check_record(res, "cpu+cuda"), res.record
        assert not any(r["name"].startswith("aten::") for r in rows)  # device activities, not operators
        assert all(r["self_device_time_us"] is not None and r["self_device_time_us"] >= 0 for r in rows)
        assert sum(r["self_device_time_us"] for r in rows) > 0
        assert rec["aten_ops_per_step"] > 0 and rec["top_level_ops_per_step"] > 0
    cud, nai = recs["cudnn"].record, recs["naive"].record
    assert cud["backend"] == "cudnn" and nai["backend"] == "python-loop:aten-ops"
    assert any(r["category"] == "cudnn-rnn" for r in recs["cudnn"].kernels)
    assert not any(r["category"] == "cudnn-rnn" for r in recs["naive"].kernels)
    assert nai["launches_per_step"] > 5 * cud["launches_per_step"], (nai["launches_per_step"], cud["launches_per_step"])
    assert nai["gemm_share"] > 0
    # at least one GEMM kernel per time step (the stacked gates), forward alone
    assert sum(r["launches_per_step"] for r in recs["naive"].kernels if r["category"] == "gemm") >= ROW_STEPS
    profile = load_with_torch_tb_profiler(specs["cudnn"], recs["cudnn"], tmp_path)
    assert profile.has_kernel and "Kernel" in {v.display_name for v in profile.views}


def test_store_profile_and_consolidate_kernels(cpu_profiles, tmp_path):
    """What the driver's store does with a profile result: trace + per-trial rows on disk, a plain record that
    points at them, and one kernels.parquet for the run."""
    run = tmp_path / "run"
    assert consolidate_kernels(run) is None  # nothing profiled yet
    store = RunStore(run).open()
    stored = {}
    for impl, (spec, res) in cpu_profiles.items():
        plain = store.add(TrialResult(dict(res.record, trial_id=spec.trial_id), res.artifacts, res.kernels))
        assert plain["profile_dir"] == f"profiles/{spec.trial_id}"
        json.dumps(plain)
        files = sorted(p.name for p in (run / plain["profile_dir"]).iterdir())
        assert files == sorted([*res.record["profile_trace_files"], "kernels.parquet"])
        stored[spec.trial_id] = res
    # storing a trial again (a rerun) replaces its trace rather than adding a second span
    spec, res = cpu_profiles["cudnn"]
    store.add(TrialResult(dict(res.record, trial_id=spec.trial_id), {"host_1.999.pt.trace.json.gz": b"x"},
                          res.kernels))
    assert sorted(p.name for p in (run / "profiles" / spec.trial_id).iterdir()) == \
        ["host_1.999.pt.trace.json.gz", "kernels.parquet"]
    assert store.add(TrialResult({"trial_id": "t", "status": "failed"})) == {"trial_id": "t", "status": "failed"}
    store.close()
    df = pd.read_parquet(consolidate_kernels(run))
    assert set(df["trial_id"]) == set(stored)
    for tid, res in stored.items():
        assert (df["trial_id"] == tid).sum() == len(res.kernels)
        assert df.loc[df["trial_id"] == tid, "share_of_step"].sum() == pytest.approx(1.0)

"""harness.env: GPU identity through CUDA_VISIBLE_DEVICES, the hardware fingerprint, code_version, cgroup CPU
limits and the environment fields of a record. Pure and fast: no GPU, no Ray."""

import shutil
from pathlib import Path

import pytest
import torch

from harness import env

SMI = """\
0, GPU-aaaaaaaa-0000-0000-0000-000000000000, NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB
1, GPU-bbbbbbbb-1111-1111-1111-111111111111, NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB
2, GPU-cccccccc-2222-2222-2222-222222222222, NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB
3, GPU-dddddddd-3333-3333-3333-333333333333, NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB
"""
ROWS = env.parse_smi(SMI)
UUID = {r["index"]: r["uuid"] for r in ROWS}

PARTS = {"cpu_model": "AMD EPYC 9654", "cpu_physical_cores": 96, "smt": True, "mem_gb": 755.5,
         "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_uuid": UUID[3], "gpu_driver": "550.54.15",
         "cuda_version": "12.4", "cudnn_version": 90100, "torch_version": "2.4.0+cu124"}


def test_parse_smi():
    assert len(ROWS) == 4
    assert ROWS[1] == {"index": 1, "uuid": "GPU-bbbbbbbb-1111-1111-1111-111111111111",
                       "name": "NVIDIA H100 80GB HBM3", "driver_version": "550.54.15", "memory.total": "81559 MiB"}
    assert env.parse_smi("") == []
    assert env.parse_smi("NVIDIA-SMI has failed because it couldn't communicate with the driver.\n") == []


@pytest.mark.parametrize("visible, cuda_index, physical", [
    ("2,3", 1, 3), ("2,3", 0, 2), (" 3 , 1", 0, 3), (None, 1, 1), (None, 3, 3),
    (f"{UUID[2]},{UUID[0]}", 1, 0), ("GPU-dddd", 0, 3),  # a unique UUID prefix is enough for CUDA
    (f"1,{UUID[2]}", 1, 2),
])
def test_physical_gpu(visible, cuda_index, physical):
    assert env.physical_gpu(cuda_index, visible, ROWS)["uuid"] == UUID[physical]


@pytest.mark.parametrize("visible, cuda_index", [
    ("2,3", 2), ("", 0), ("-1", 0), ("2,-1,3", 1),  # CUDA stops at the first invalid entry
    (None, 4), ("7", 0), ("GPU-ffff", 0), ("GPU-", 0),  # no such GPU; an ambiguous prefix
])
def test_physical_gpu_none(visible, cuda_index):
    assert env.physical_gpu(cuda_index, visible, ROWS) is None


def test_physical_gpu_mig():
    listing = (f"GPU 0: NVIDIA A100-SXM4-40GB (UUID: {UUID[0]})\n"
               f"GPU 1: NVIDIA A100-SXM4-40GB (UUID: {UUID[1]})\n"
               "  MIG 1g.5gb     Device  0: (UUID: MIG-11111111-aaaa-bbbb-cccc-000000000001)\n"
               "  MIG 1g.5gb     Device  1: (UUID: MIG-11111111-aaaa-bbbb-cccc-000000000002)\n")
    migs = env.parse_smi_list(listing)
    assert migs == {UUID[0]: [], UUID[1]: ["MIG-11111111-aaaa-bbbb-cccc-000000000001",
                                           "MIG-11111111-aaaa-bbbb-cccc-000000000002"]}
    rows = [r | {"mig_uuids": migs.get(r["uuid"], [])} for r in ROWS]
    row = env.physical_gpu(0, "MIG-11111111-aaaa-bbbb-cccc-000000000002", rows)
    assert row["index"] == 1 and row["uuid"] == "MIG-11111111-aaaa-bbbb-cccc-000000000002"
    legacy = env.physical_gpu(0, f"MIG-{UUID[2]}/1/0", ROWS)
    assert legacy["index"] == 2 and legacy["uuid"] == f"MIG-{UUID[2]}/1/0"


def test_physical_cores_of():
    block = "processor\t: {p}\nmodel name\t: X\nphysical id\t: {s}\ncore id\t\t: {c}\n\n"
    smt = "".join(block.format(p=p, s=p // 4, c=p % 2) for p in range(8))  # 2 sockets x 2 cores x 2 threads
    assert env.physical_cores_of(smt) == 4
    assert env.physical_cores_of("processor\t: 0\nmodel name\t: ARM\n\nprocessor\t: 1\n") is None


def test_hw_fingerprint():
    fp = env.hw_fingerprint(PARTS)
    assert len(fp) == 12 and int(fp, 16) >= 0
    assert env.hw_fingerprint(dict(reversed(list(PARTS.items())))) == fp  # the order of the mapping is not
    assert env.hw_fingerprint({**PARTS, "hostname": "other", "gpu_memory_gb": 1.0}) == fp  # only the parts count
    for key, other in [("cpu_model", "Intel Xeon"), ("cpu_physical_cores", 48), ("smt", False), ("mem_gb", 755.6),
                       ("gpu_uuid", UUID[2]), ("gpu_driver", "560.28.03"), ("cudnn_version", None),
                       ("torch_version", "2.5.0+cu124")]:
        assert env.hw_fingerprint({**PARTS, key: other}) != fp, key


def test_hw_fingerprint_cpu_trial_ignores_gpus():
    cpu = env.hw_fingerprint(PARTS, "cpu")
    assert cpu != env.hw_fingerprint(PARTS)
    assert env.hw_fingerprint({**PARTS, "gpu_name": "NVIDIA A100", "gpu_uuid": UUID[0], "gpu_driver": "1"},
                              "cpu") == cpu
    assert env.hw_fingerprint({**PARTS, "gpu_name": None, "gpu_uuid": None, "gpu_driver": None}, "cpu") == cpu
    assert env.hw_fingerprint({**PARTS, "gpu_name": None, "gpu_uuid": None, "gpu_driver": None}) == cpu
    assert env.hw_fingerprint({**PARTS, "mem_gb": 1.0}, "cpu") != cpu


def test_code_version_follows_the_files(tmp_path):
    tree = tmp_path / "harness"
    shutil.copytree(Path(env.__file__).parent, tree, ignore=shutil.ignore_patterns("__pycache__"))
    before = env.code_version(tree)
    assert before == env.code_version(tree)
    assert before.split("+git:")[0] == env.tree_hash(tree) and len(env.tree_hash(tree)) == 12
    (tree / "notes.txt").write_text("not code")
    assert env.code_version(tree) == before
    (tree / "report" / "tables.py").write_text((tree / "report" / "tables.py").read_text() + "\n# edited\n")
    edited = env.code_version(tree)
    assert edited != before
    (tree / "report" / "tables.py").rename(tree / "report" / "tables2.py")  # same bytes, another name
    assert env.code_version(tree) not in (before, edited)
    own = env.code_version()
    assert own is env.code_version()  # cached per process
    assert own.startswith(env.tree_hash(Path(env.__file__).parent))


def test_code_version_git_suffix(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x = 1\n")
    env.git_commit.cache_clear()
    try:
        monkeypatch.setenv("LSTM_BENCH_COMMIT", "2ca0ab5")
        assert env.code_version(tmp_path) == env.tree_hash(tmp_path) + "+git:2ca0ab5"
        env.git_commit.cache_clear()
        monkeypatch.setenv("LSTM_BENCH_COMMIT", "unknown")
        assert env.code_version(tmp_path) == env.tree_hash(tmp_path)
    finally:
        env.git_commit.cache_clear()


def _files(root: Path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return str(root)


V2_STAT = "usage_usec 8000\nuser_usec 6000\nsystem_usec 2000\nnr_periods 40\nnr_throttled 3\nthrottled_usec 1234\n"


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "200000 100000\n", "cpu.stat": V2_STAT}, (2.0, 1234, 3)),
    ({"cpu.max": "150000 100000\n", "cpu.stat": V2_STAT}, (1.5, 1234, 3)),
    ({"cpu.max": "max 100000\n", "cpu.stat": V2_STAT}, (None, 1234, 3)),
    ({"cpu.stat": "usage_usec 8000\n"}, (None, None, None)),  # the root cgroup: no quota, no throttling
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n",
      "cpu/cpu.stat": "nr_periods 9\nnr_throttled 4\nthrottled_time 5000000\n"}, (0.5, 5000, 4)),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
      "cpu,cpuacct/cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"}, (None, 0, 0)),
    ({"cpu/cpu.shares": "1024\n"}, (None, None, None)),
    ({}, (None, None, None)),
])
def test_cgroup_cpu(tmp_path, files, expected):
    got = env.cgroup_cpu(_files(tmp_path, files), self_cgroup=None)
    assert (got["quota_cores"], got["throttled_usec"], got["nr_throttled"]) == expected
    assert env.cgroup_cpu(str(tmp_path / "missing"), self_cgroup=None) == {
        "quota_cores": None, "throttled_usec": None, "nr_throttled": None}


def test_cgroup_cpu_own_cgroup(tmp_path):
    root = _files(tmp_path / "fs", {"cpu.stat": "usage_usec 1\n", "job/cpu.max": "300000 100000\n",
                                    "job/cpu.stat": V2_STAT})
    self_cgroup = _files(tmp_path, {"self": "0::/job\n"}) + "/self"
    assert env.cgroup_cpu(root, self_cgroup)["quota_cores"] == 3.0
    v1 = _files(tmp_path / "v1", {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "200000\n",
                                  "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"})
    _files(tmp_path, {"self1": "12:pids:/docker/x\n4:cpu,cpuacct:/docker/x\n1:name=systemd:/docker/x\n"})
    assert env.cgroup_cpu(v1, str(tmp_path / "self1"))["quota_cores"] == 2.0


def test_available_cpu_cores(monkeypatch):
    monkeypatch.setattr(env.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(env, "cgroup_cpu", lambda: {"quota_cores": None})
    assert env.available_cpu_cores() == 4
    monkeypatch.setattr(env, "cgroup_cpu", lambda: {"quota_cores": 1.5})
    assert env.available_cpu_cores() == 1.5
    monkeypatch.setattr(env, "cgroup_cpu", lambda: {"quota_cores": 8.0})
    assert env.available_cpu_cores() == 4


NEW_FIELDS = {"cpu_model": str, "cpu_physical_cores": int, "smt": bool, "mem_gb": float, "gpu_name": type(None),
              "gpu_uuid": type(None), "gpu_driver": type(None), "torch_version": str, "hw_fingerprint": str,
              "code_version": str}
OLD_FIELDS = ("hostname", "node_ip", "cpu_model", "cpu_count", "threads", "gpu_name", "gpu_driver", "gpu_memory_gb",
              "cuda_version", "cudnn_version", "torch_version", "torchvision_version", "ray_version",
              "python_version", "git_commit")


def test_environment_cpu():
    e = env.environment(torch.device("cpu"))
    assert set(OLD_FIELDS) | set(NEW_FIELDS) | set(env.HW_PARTS) <= set(e)
    for name, typ in NEW_FIELDS.items():
        assert type(e[name]) is typ, name
    assert e["cuda_version"] is None or isinstance(e["cuda_version"], str)
    assert e["cudnn_version"] is None or isinstance(e["cudnn_version"], int)
    assert e["cpu_physical_cores"] >= 1 and e["smt"] == (e["cpu_count"] > e["cpu_physical_cores"])
    assert e["mem_gb"] > 0 and round(e["mem_gb"], 1) == e["mem_gb"]
    assert e["hw_fingerprint"] == env.hw_fingerprint(e, "cpu") == env.hw_fingerprint(e)
    assert len(e["hw_fingerprint"]) == 12 and e["code_version"] == env.code_version()
    assert env.environment(torch.device("cpu")) == e


@pytest.mark.parametrize("smi, torch_uuid, visible, uuid, driver", [
    (SMI, None, "2,3", UUID[3], "550.54.15"),              # old torch: CUDA_VISIBLE_DEVICES mapping
    (SMI, UUID[1][4:], "2,3", UUID[1], "550.54.15"),       # torch's own UUID wins when nvidia-smi lists it
    ("", "dddddddd-3333-3333-3333-333333333333", "2,3", UUID[3], None),  # no nvidia-smi: torch's UUID
    (SMI, None, "7,8", None, "550.54.15"),                 # unmappable: still the node's driver
])
def test_gpu_info(monkeypatch, smi, torch_uuid, visible, uuid, driver):
    from types import SimpleNamespace
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30, uuid=torch_uuid)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(env, "smi_rows", lambda: tuple(env.parse_smi(smi)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert env.gpu_info.__wrapped__(1) == {"gpu_name": "NVIDIA H100 80GB HBM3", "gpu_uuid": uuid,
                                           "gpu_driver": driver, "gpu_memory_gb": 80.0}

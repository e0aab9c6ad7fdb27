"""The result record, declared once: every field a trial record can hold, with its type, unit and meaning.

A record is flat JSON: the trial's spec (the fields of Variant, TrainConfig and TrialSpec, whose meanings live
beside their defaults in spec.py and are read from there), then what the trial measured (declared below). The
results store checks records against this, the CLI table and the report pick their columns from it, and the
docs/record-fields.md's field table is generated from it (`python scripts/schema_table.py --write`; a test keeps them equal).

What crosses from a Ray worker to the driver is a `TrialResult`: the record plus a profile's trace files and
kernel rows, which the driver's store writes beside the record (never as hidden keys inside it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# The run directory: results/<suite>/<run_id>/...
TRIALS = "trials.jsonl"        # one record per finished trial, appended and fsynced as it arrives
PARQUET = "trials.parquet"     # the same, latest record per trial, consolidated at the end of a run
RUN_JSON = "run.json"          # suite, overrides, cluster, start/end, counts
PROFILES = "profiles"          # profiles/<trial_id>/: trace(s) and that trial's kernels.parquet
KERNELS = "kernels.parquet"    # every profiled trial's kernel rows, with trial_id

TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list, "dict": dict}


@dataclass(frozen=True)
class Field:
    name: str
    type: str          # a key of TYPES; every field may also be null (a failed trial measures nothing)
    unit: str          # "" when the field has none
    meaning: str
    group: str         # spec, outcome, environment, timing, accuracy, profile
    fmt: str = "{}"    # how the CLI shows it


def _f(group: str, rows: str) -> tuple[Field, ...]:
    """Rows of `name | type | unit | fmt | meaning`, one field per line."""
    out = []
    for line in rows.strip().splitlines():
        name, typ, unit, fmt, meaning = (p.strip() for p in line.split("|", 4))
        out.append(Field(name, typ, unit, meaning, group, fmt or "{}"))
    return tuple(out)


RESULT_FIELDS: tuple[Field, ...] = (
    *_f("outcome", """
trial_id       | str   |      |          | stable hash of the trial's identity (spec without budget or suite name)
status         | str   |      |          | ok, failed, timeout, infeasible (contaminated: an attempt the sweep ran again)
error          | str   |      |          | one line: why the trial did not finish ok
error_detail   | str   |      |          | the last lines of the traceback of a failed trial
started_at     | str   |      |          | ISO time the trial started (UTC)
duration_s     | float | s    | {:.1f}   | wall time of the whole trial: data, model, warm-up, timing, backend detection
dataset        | str   |      |          | official, unofficial:<sha256 prefix>, or synthetic
node_id        | str   |      |          | Ray node the trial ran on
node_ip        | str   |      |          | that node's address
worker_pid     | int   |      |          | the Ray worker process
attempt        | int   |      |          | which attempt of the Ray task this is (a task lost with its node is retried)
placement      | str   |      |          | exclusive (no other timing trial on the node meanwhile) or shared
"""),
    *_f("environment", """
hostname            | str   |     | | host name of the node
cpu_model           | str   |     | | CPU model name (/proc/cpuinfo)
cpu_count           | int   |     | | logical CPUs of the node
cpu_physical_cores  | int   |     | | physical cores of the node
smt                 | bool  |     | | simultaneous multithreading on (more logical CPUs than cores)
mem_gb              | float | GiB | | the node's memory
gpu_uuid            | str   |     | | UUID of the GPU the trial used (found from Ray's CUDA_VISIBLE_DEVICES, not index 0)
hw_fingerprint      | str   |     | | hash of the hardware and software parts; numbers compare only within one fingerprint
code_version        | str   |     | | hash of the harness code the worker imported (+git commit when known)
gpu_name            | str   |     | | the trial's GPU (null on CPU)
gpu_driver          | str   |     | | NVIDIA driver version
gpu_memory_gb       | float | GiB | | the GPU's memory
cuda_version        | str   |     | | CUDA torch was built with
cudnn_version       | int   |     | | cuDNN version torch reports
torch_version       | str   |     | | torch.__version__
torchvision_version | str   |     | | torchvision.__version__
ray_version         | str   |     | | ray.__version__
python_version      | str   |     | | Python version
git_commit          | str   |     | | the harness commit (-dirty with local changes)
"""),
    *_f("timing", """
img_per_s          | float | img/s  | {:,.1f} | headline throughput: median over timed blocks (accuracy: training images / training time)
img_per_s_iqr      | float | img/s  | {:,.1f} | interquartile range of the per-block img/s
rel_iqr            | float |        | {:.3f}  | img_per_s_iqr / img_per_s: the spread of the timed blocks
rel_iqr_low        | float |        | {:.3f}  | lower end of a 95% bootstrap interval of rel_iqr (blocks resampled; null in records before it)
rel_iqr_high       | float |        | {:.3f}  | upper end of that interval
wide_spread        | bool  |        |         | rel_iqr above 5%: variance, kept in plots and verdicts with its interval (null in records before it, where a wide spread set noisy)
latency_ms_p50     | float | ms     | {:.2f}  | median time of one step (one batch)
latency_ms_p90     | float | ms     | {:.2f}  | 90th percentile step time
latency_ms_p99     | float | ms     | {:.2f}  | 99th percentile step time
lstm_gflop_per_batch | float | GFLOP | {:.3f} | analytic FLOPs of the LSTM GEMMs per batch (x3 when training)
gflop_per_s        | float | GFLOP/s | {:,.2f} | lstm_gflop_per_batch achieved per second
noisy              | bool  |        |         | contaminated: biased or off its plan, left out of verdicts and medians (see noise_reasons); a wide spread alone is not noisy (before 2026-12-07 it was)
reruns             | int   |        |         | how often the sweep ran this trial again because it came back contaminated from outside (null: never); the earlier attempts' records have status contaminated
noise_reasons      | str   |        |         | why noisy: the plan not finished, the warm-up unsettled, other processes using the cores, cgroup throttling, a node's drift, a recompile, profiled
external_cpu_cores | float | cores  |         | CPU other processes kept busy during the timed window
steal_cpu_cores    | float | cores  |         | of which hypervisor steal: time this VM's vCPUs waited while the host ran other guests (/proc/stat; null where not reported, and before 2026-12-07)
cgroup_throttled_ms | float | ms    |         | time the container's CPU quota held the trial back in its timed window (null: no quota)
timed_blocks       | int   |        |         | timed blocks
planned_blocks     | int   |        |         | the blocks the trial's sample plan fixed before it started (fewer timed: the plan was cut by max_budget_s)
warmup_rule        | str   |        |         | what ended the warm-up: trend (no trend over the last 10 blocks) or cap (the warm-up cap; flagged noisy)
timed_steps        | int   |        |         | timed steps (all blocks)
warmup_steps       | int   |        |         | steps run before timing, excluded from every figure
block_img_per_s    | list  | img/s  |         | img/s of every timed block, in order
step_ms            | list  | ms     |         | every timed step's time, in order (the samples compare uses)
timed_start        | float | epoch s |        | start of the timed window (warm-up excluded)
timed_end          | float | epoch s |        | end of the timed window
model_img_per_s    | float | img/s  | {:,.1f} | the same step on one fixed batch already on the device: the model alone, no data path
model_rel_iqr      | float |        | {:.3f}  | relative IQR of the model-only blocks
model_noise_reasons | str  |        |         | noise reasons of the model-only pass (the headline noisy flag is the end-to-end pass's)
data_ms_per_step   | float | ms     | {:.3f}  | producing one batch alone: gather, normalize, augment on the device, synced
peak_mem_mb        | float | MiB    | {:,.1f} | peak memory above the resident dataset: CUDA max allocated, or CPU peak RSS growth
compile_s          | float | s      | {:.1f}  | impl compiled: what the compiling warm-up steps took beyond a plain step (torch.compile), before the timed window
recompiles         | int   |        |         | impl compiled: compiles inside the timed window (a failed guard); any flags the trial noisy
capture_s          | float | s      | {:.3f}  | impl graphed: wall time of capturing the whole step in a CUDA graph, before the timed window
backend            | str   |        |         | the recurrent kernel that ran: cudnn, onednn-rnn, python-loop:...
ceiling_gflop_per_s | float | GFLOP/s | {:,.1f} | square-GEMM ceiling at the trial's precision, probed in the trial's process right after its timed windows (harness/ceiling.py; before 2026-12-07: the node's probe at the run's start)
ceiling_frac       | float |        | {:.3f}  | gflop_per_s / ceiling_gflop_per_s: how far the LSTM's GEMMs sit from what the hardware gave this trial
node_ceiling_gflop_per_s | float | GFLOP/s | {:,.1f} | the node's ceiling from the sweep's start probe (null outside a sweep): far from ceiling_gflop_per_s, the trial ran in another load mode
co_tenants         | int   |        |         | other trials that ran on the node during this trial's timed window
tf32_cudnn         | bool  |        |         | cuDNN was allowed TF32 tensor cores (set by the trial from dtype)
tf32_matmul        | bool  |        |         | matmul (cuBLAS) was allowed TF32 tensor cores
"""),
    *_f("accuracy", """
test_acc          | float | fraction | {:.4f} | top-1 on every test image after the last epoch
test_loss         | float |          | {:.4f} | mean cross-entropy on the test set after the last epoch
best_test_acc     | float | fraction | {:.4f} | best top-1 over the epochs
epochs_run        | int   |          |        | epochs started (the last may be partial when stopped by the budget)
steps_run         | int   |          |        | optimizer steps taken
steps_per_epoch   | int   |          |        | full batches per epoch
stopped_by        | str   |          |        | epochs, target or time_budget
time_to_target_s  | dict  | s        |        | target accuracy -> training seconds to first reach it (null: never)
epochs_to_target  | dict  |          |        | target accuracy -> epoch that first reached it
curve             | list  |          |        | per epoch: steps, train_loss, test_loss, test_acc, elapsed_s, lr
train_s           | float | s        | {:.1f} | training time (evaluation excluded)
eval_s            | float | s        | {:.1f} | evaluation time
train_img_per_s   | float | img/s    | {:,.1f} | training images / training time, after the first 10 steps (warm-up)
eval_peak_mem_mb  | float | MiB      | {:,.1f} | peak memory of evaluation, apart from training's (peak_mem_mb)
"""),
    *_f("profile", """
launches_per_step      | float |       | {:,.0f} | GPU: kernels, memcpys and memsets per step; CPU: ATen operator calls per step
gemm_share             | float |       | {:.3f}  | share of the profiled self time spent in GEMMs
top_kernel             | str   |       |         | the kernel or operator with the most self time
op_time_ms_per_step    | float | ms    | {:.2f}  | the profiled rows' self time per step
aten_ops_per_step      | float |       | {:,.0f} | ATen operator calls per step, nested ones included
top_level_ops_per_step | float |       | {:,.0f} | ATen calls per step made from outside ATen
profiled_steps         | int   |       |         | steps recorded by the profiler
profile_activities     | str   |       |         | cpu or cpu+cuda
profile_trace_files    | list  |       |         | trace file names under profile_dir
profile_trace_bytes    | int   | bytes |         | their size
profile_trace_omitted  | str   |       |         | why the trace was not shipped (too large)
profile_dir            | str   |       |         | profiles/<trial_id>, relative to the run directory
"""),
)

# kernels.parquet: one row per kernel (GPU) or ATen operator (CPU) name of one profiled trial.
KERNEL_FIELDS: tuple[Field, ...] = _f("kernels", """
name                | str   |      | | kernel or operator name
category            | str   |      | | gemm, cudnn-rnn, elementwise, reduction, memcpy, other
calls               | int   |      | | calls over the profiled steps
self_device_time_us | float | us   | | device time of the calls (GPU only)
self_cpu_time_us    | float | us   | | self CPU time of the calls
share_of_step       | float |      | | share of all rows' self time
launches_per_step   | float |      | | calls per profiled step
""")
KERNEL_COLUMNS = tuple(f.name for f in KERNEL_FIELDS)

# What `lstm-bench results` shows per trial, and what `lstm-bench trial` prints for one.
SUMMARY_COLUMNS = ("trial_id", "seq", "patch_size", "hidden_size", "num_layers", "impl", "batch_size", "dtype",
                   "mode", "device", "status", "img_per_s", "img_per_s_iqr", "latency_ms_p50", "peak_mem_mb",
                   "gflop_per_s", "test_acc", "noisy", "backend", "node_ip")
TRIAL_COLUMNS = ("trial_id", "mode", "device", "backend", "status", "img_per_s", "img_per_s_iqr", "latency_ms_p50",
                 "latency_ms_p90", "latency_ms_p99", "peak_mem_mb", "gflop_per_s", "launches_per_step",
                 "gemm_share", "top_kernel", "noisy", "noise_reasons", "test_acc", "best_test_acc", "epochs_run",
                 "stopped_by", "train_img_per_s", "time_to_target_s", "dataset", "threads", "gpu_name",
                 "duration_s", "error")


def _type_name(annotation) -> str:
    text = str(annotation)
    for name in ("bool", "int", "float", "str", "tuple", "list", "dict"):
        if text.startswith(name):
            return {"tuple": "list"}.get(name, name)
    return "str"


def spec_fields() -> tuple[Field, ...]:
    """The spec's fields as record fields, read off the dataclasses (meaning and unit from their metadata)."""
    from .spec import TrainConfig, TrialSpec
    from .variants import Variant
    out = []
    for cls in (Variant, TrialSpec, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name in ("variant", "train"):
                continue
            out.append(Field(f.name, _type_name(f.type), f.metadata.get("unit", ""), f.metadata.get("help", ""),
                             "spec"))
    return tuple(out)


def all_fields() -> dict[str, Field]:
    """name -> Field for every field a record may hold, spec fields first."""
    fields = {f.name: f for f in spec_fields()}
    for f in RESULT_FIELDS:
        fields.setdefault(f.name, f)
    return fields


def check_record(record: dict) -> list[str]:
    """Problems of a record against the schema: unknown fields and values of the wrong type (null is allowed)."""
    fields = all_fields()
    problems = []
    for key, value in record.items():
        f = fields.get(key)
        if f is None:
            problems.append(f"{key}: not a record field")
        elif value is not None and not (isinstance(value, TYPES[f.type])
                                        and not (f.type in ("int", "float") and isinstance(value, bool))):
            problems.append(f"{key}: expected {f.type}, got {type(value).__name__}")
    return problems


def markdown_field_table() -> str:
    """The field table of docs/record-fields.md."""
    lines = ["| field | group | type | unit | meaning |", "|---|---|---|---|---|"]
    for f in all_fields().values():
        lines.append(f"| `{f.name}` | {f.group} | {f.type} | {f.unit} | {f.meaning} |")
    return "\n".join(lines)


@dataclass
class TrialResult:
    """What a trial hands back (from a Ray worker to the driver): its record, and for a profile trial the trace
    files (name -> bytes) and kernel rows that the driver's store writes under profiles/<trial_id>/."""
    record: dict
    artifacts: dict[str, bytes] = field(default_factory=dict)
    kernels: list[dict] | None = None

    @property
    def trial_id(self) -> str:
        return self.record["trial_id"]

    @property
    def ok(self) -> bool:
        return self.record.get("status") == "ok"

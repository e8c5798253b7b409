"""MetaSchedule tuning of a model's kernels into a persistent database shared by all models.

Policy (why):

* A candidate costs 1.5-3 s to build on 2 cores, so a few minutes buy ~100 trials. They go where the
  time is: the budget is split over the kernels by FLOP share (FLOPs x calls); kernels whose share
  buys fewer than ``MIN_TRIALS`` get none (the default schedule serves them).
* The plan depends only on the model and the budget; planned kernels already in the database
  (tuned for any model) are skipped, so compiling the same model again tunes nothing.
* After a kernel is tuned, MetaSchedule's best record and the default schedule (``tvm_schedule``)
  are timed against each other in this process, interleaved over several rounds, and the verdict is
  stored in ``repfx_choices.json`` beside the database. MetaSchedule's own numbers come from one
  noisy run per candidate; on this shared 2-core host they picked a record 15 % slower than the
  default. So tuning can only ever make a kernel faster.

Over TVM RPC (``config.tune_rpc``, see ``tvm_tune_rpc``): candidates are built and cross-linked here and
timed on a device from the tracker, the A/B too; the database is the same one, keyed by the target.

Files in the database folder: ``database_workload.json`` and ``database_tuning_record.json``
(MetaSchedule's ``JSONDatabase``, usable by plain TVM) and ``repfx_choices.json``. A database that cannot be
read (a write cut short by a kill, a hand edit) is a ``TuningDatabaseError`` naming the file and line, since
every compile for the target reads it; within ``fresh_tuning()`` (the CLI's ``--fresh-tuning``) it is moved
aside as ``<folder>.corrupt-<time>`` and a new one is started.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from repfx_deploy.atomic import atomic_file
from repfx_deploy.compile.config import CompileConfig
from repfx_deploy.compile.tvm_ab import ab_compare
from repfx_deploy.errors import TuningDatabaseError
from repfx_deploy.report import strict_json

log = logging.getLogger("repfx_deploy.compile")

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
CHOICES_FILE = "repfx_choices.json"
MIN_TRIALS = 8
TRIALS_PER_ROUND = 16  # MetaSchedule's 64 leaves small budgets a single round of cost-model feedback
POPULATION = 128  # evolutionary-search population; the default 512 costs more search than measuring


@dataclass
class TaskResult:
    name: str
    flops_share: float
    trials: int
    choice: str = "default"
    default_us: float | None = None
    tuned_us: float | None = None


@dataclass
class TuneReport:
    """What a tuning run did: counts, wall time, and the per-kernel results."""

    tasks_total: int = 0
    tasks_reused: int = 0  # planned, but already in the database: not tuned again
    tasks_tuned: int = 0
    tasks_below_budget: int = 0  # FLOP share too small for MIN_TRIALS
    trials_run: int = 0
    tune_s: float = 0.0
    stopped_by_time: bool = False
    tasks: list[TaskResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tune_s"] = round(self.tune_s, 2)
        return d


def database_exists(db_dir: Path) -> bool:
    return (Path(db_dir) / RECORD_FILE).is_file() or (Path(db_dir) / CHOICES_FILE).is_file()


_fresh = contextvars.ContextVar("repfx_fresh_tuning", default=False)


@contextlib.contextmanager
def fresh_tuning(enabled: bool = True) -> Iterator[None]:
    """Within the block, a tuning database found corrupt is moved aside and a new one started, with a warning,
    instead of failing the compile (the CLI's ``--fresh-tuning``). A healthy database is used as it is."""
    token = _fresh.set(enabled)
    try:
        yield
    finally:
        _fresh.reset(token)


def _corrupt(db_dir: Path, problem: str, cause: BaseException | None = None) -> None:
    """A corrupt database: ``TuningDatabaseError`` naming it, or, under ``fresh_tuning``, moved aside."""
    if not _fresh.get():
        raise TuningDatabaseError(
            f"The tuning database {str(db_dir)!r} is corrupt: {problem}. Every compile for this target reads it.",
            f"Rerun with --fresh-tuning to move it aside (kept as {db_dir.name}.corrupt-<time> beside it) and start "
            "a new one; or delete that folder.",
        ) from cause
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = db_dir.with_name(f"{db_dir.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = db_dir.with_name(f"{db_dir.name}.corrupt-{stamp}-{n}")
    db_dir.rename(aside)
    db_dir.mkdir(parents=True, exist_ok=True)
    log.warning("the tuning database %s was corrupt (%s); moved it to %s and started a new one", db_dir, problem, aside)


def _first_bad_line(path: Path) -> str | None:
    """Where a MetaSchedule JSON-lines file stops being JSON (``"<file> line <n>: <error>"``), if it does."""
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return f"{path.name}: {e}"
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError as e:
                return f"{path.name} line {n}: {e}"
    return None


def open_database(db_dir: Path):
    """The MetaSchedule ``JSONDatabase`` in ``db_dir`` (created if missing). One that TVM cannot load is a
    ``TuningDatabaseError`` naming the file and line (or, under ``fresh_tuning``, replaced by a new one)."""
    from tvm.s_tir import meta_schedule as ms

    db_dir = Path(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    read_choices(db_dir)  # checked first: replacing the folder after TVM loaded it would split the two

    def load():
        return ms.database.JSONDatabase(
            path_workload=str(db_dir / WORKLOAD_FILE),
            path_tuning_record=str(db_dir / RECORD_FILE),
            allow_missing=True,
            module_equality="structural",
        )

    try:
        return load()
    except Exception as e:  # TVM reports a bad file as RuntimeError, TypeError, InternalError or a decode error
        where = _first_bad_line(db_dir / WORKLOAD_FILE) or _first_bad_line(db_dir / RECORD_FILE)
        _corrupt(db_dir, where or f"TVM cannot load it ({type(e).__name__}: {e})", e)
    return load()


def count_records(db_dir: Path) -> int:
    """Lines in the record file: one per measured candidate (for tests and reports)."""
    path = Path(db_dir) / RECORD_FILE
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def workload(func):
    """A kernel as MetaSchedule keys it: an IRModule whose ``main`` has ``global_symbol`` "main"."""
    import tvm

    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def workload_key(task_mod) -> str:
    """The structural hash MetaSchedule's JSONDatabase files a workload under."""
    import tvm_ffi

    return str(tvm_ffi.structural_hash(task_mod))


def read_choices(db_dir: Path) -> dict:
    """Tuning's per-kernel verdicts (``repfx_choices.json``); ``{}`` when there are none. A file that is not a
    JSON table of tables is a ``TuningDatabaseError`` (or, under ``fresh_tuning``, the database is replaced)."""
    db_dir = Path(db_dir)
    path = db_dir / CHOICES_FILE
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        _corrupt(db_dir, f"{CHOICES_FILE}: {e}", e)
        return {}
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        _corrupt(db_dir, f"{CHOICES_FILE} is not a table of per-kernel entries")
        return {}
    return doc


def _record_choice(db_dir: Path, key: str, entry: dict) -> None:
    choices = read_choices(db_dir)  # re-read: another model may have added kernels meanwhile
    choices[key] = entry
    with atomic_file(Path(db_dir) / CHOICES_FILE) as tmp:
        tmp.write_text(strict_json.dumps(choices, indent=1, sort_keys=True) + "\n")


def tuned_schedule(db, choices: dict, task_mod, target):
    """The schedule tuning chose for this kernel: a ``Schedule``, ``"default"``, or None if never tuned."""
    key = workload_key(task_mod)
    if choices.get(key, {}).get("choice") == "default":
        return "default"
    if not db.has_workload(task_mod):
        return None
    return db.query_schedule(task_mod, target, "main")


def allocate_trials(flops: list[float], total: int, min_trials: int = MIN_TRIALS) -> list[int]:
    """Split ``total`` trials over tasks in proportion to ``flops``; shares under ``min_trials`` get 0.

    The dropped shares go to the remaining tasks, so the sum stays ``total`` whenever at least one
    task gets ``min_trials``.
    """
    alive = [i for i, f in enumerate(flops) if f > 0]
    while alive:
        mass = sum(flops[i] for i in alive)
        raw = {i: total * flops[i] / mass for i in alive}
        small = [i for i in alive if raw[i] < min_trials]
        if not small:
            out = [0] * len(flops)
            for i in alive:
                out[i] = int(raw[i])
            for i in sorted(alive, key=lambda j: raw[j] - int(raw[j]), reverse=True)[: total - sum(out)]:
                out[i] += 1  # the rounding remainder goes to the largest fractions
            return out
        if len(small) == len(alive):  # even the biggest is below the minimum: it gets everything
            out = [0] * len(flops)
            out[max(alive, key=lambda j: flops[j])] = total if total >= min_trials else 0
            return out
        alive = [i for i in alive if i not in small]
    return [0] * len(flops)


def _import_cpu_tensor_intrinsics(target_dict: dict) -> None:
    """Register only the CPU tensor intrinsics before MetaSchedule imports all of them.

    ``TuneContext`` and the builder run ``import tvm.s_tir.tensor_intrin``, whose CUDA and ROCm
    modules build thousands of TVMScript functions: 39 s of CPU here (CUDA alone 25 s), paid once per
    process and again in every builder worker, which MetaSchedule restarts for every batch. A CPU
    target only looks up the x86/Arm/RISC-V intrinsics, so the package is pre-registered with just
    those; its other submodules stay importable by their full names.
    """
    import importlib
    import importlib.util
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        import tvm.s_tir

        spec = importlib.util.find_spec(name)
        if spec is None:
            raise ImportError(f"{name} not found: this TVM build lacks its tensor intrinsics", name=name)
        package = types.ModuleType(name, "CPU subset of TVM's tensor intrinsics (see repfx_deploy.compile.tvm_tune)")
        package.__path__ = list(spec.submodule_search_locations or [])
        package.__spec__ = spec
        package.__package__ = name
        sys.modules[name] = package
        tvm.s_tir.tensor_intrin = package
    triple = str(target_dict.get("mtriple", ""))
    wanted = ["x86"] if triple.startswith(("x86", "i686")) or not triple else []
    wanted += ["arm_cpu"] if triple.startswith(("aarch64", "arm")) else []
    wanted += ["riscv_cpu"] if triple.startswith("riscv") else []
    for sub in wanted:
        importlib.import_module(f"{name}.{sub}")


def _build_without_gpu_intrinsics(mod, target, _params):
    """MetaSchedule's default build minus its ``import tvm.s_tir.tensor_intrin`` (see above).

    Runs in the builder's worker processes: pickled by value, so it must import what it uses.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def tune_kernels(kernels_mod, target, config: CompileConfig) -> TuneReport:
    """Tune the kernels of ``kernels_mod`` (output of ``tvm_build.lower_to_kernels``) into ``config.tuning_db``.

    Spends at most ``config.tune_trials`` trials (fewer if planned kernels are already in the
    database or ``config.tune_max_s`` runs out); logs progress on ``repfx_deploy.compile``.
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    from repfx_deploy.compile.tvm_runtime import set_tvm_threads

    started = time.perf_counter()
    rpc = config.tune_rpc
    if rpc is not None:  # a wrong tracker or key must fail now, not after minutes of building candidates
        from repfx_deploy.measure.rpc.endpoint import RpcEndpoint
        from repfx_deploy.measure.rpc.tracker import check_device

        check_device(RpcEndpoint.parse(rpc.tracker), rpc.key)
    report = TuneReport()
    db = open_database(config.tuning_db_path)
    choices = read_choices(config.tuning_db_path)
    tasks = ms.relax_integration.extract_tasks(kernels_mod, target)
    report.tasks_total = len(tasks)
    flops = [float(estimate_tir_flops(t.dispatched[0])) * t.weight for t in tasks]
    total_flops = sum(flops) or 1.0
    plan = []
    for task, fl, trials in sorted(zip(tasks, flops, allocate_trials(flops, config.tune_trials)), key=lambda t: -t[1]):
        if trials == 0:
            report.tasks_below_budget += 1
        elif workload_key(task.dispatched[0]) in choices or tuned_schedule(db, choices, task.dispatched[0], target):
            report.tasks_reused += 1
        else:
            plan.append((task, fl, trials))
    log.info(
        "tuning: %d kernels; %d planned kernels already in %s; tuning %d with %d trials",
        len(tasks),
        report.tasks_reused,
        config.tuning_db,
        len(plan),
        sum(n for _, _, n in plan),
    )
    if not plan:
        report.tune_s = time.perf_counter() - started
        return report

    _import_cpu_tensor_intrinsics(config.target_dict)
    num_cores = int(config.target_dict.get("num-cores", os.cpu_count() or 1))
    set_tvm_threads(num_cores)  # for the in-process A/B timing
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    old_level = ms_logger.level
    ms_logger.setLevel(logging.WARNING)  # its INFO tables are per-round noise; ours summarize
    # The runner's worker process reads TVM_NUM_THREADS when it starts: measure with the target's cores.
    with _env("TVM_NUM_THREADS", str(num_cores)), tempfile.TemporaryDirectory(prefix="repfx-ms-") as work_dir:
        build = dict(timeout_sec=config.builder_timeout_s, max_workers=num_cores, f_build=_build_without_gpu_intrinsics)
        if rpc is None:
            builder = ms.builder.LocalBuilder(**build)
            runner = ms.runner.LocalRunner(
                timeout_sec=60, evaluator_config=ms.runner.EvaluatorConfig(number=5, repeat=3, min_repeat_ms=40)
            )
            compare = ab_compare
        else:
            from repfx_deploy.compile import tvm_tune_rpc

            builder = ms.builder.LocalBuilder(
                **build, f_export=functools.partial(tvm_tune_rpc.export_for_device, config.target_json)
            )
            runner = tvm_tune_rpc.rpc_runner(rpc)
            compare = functools.partial(tvm_tune_rpc.ab_compare_on_device, rpc=rpc, target_dict=config.target_dict)
            log.info("tuning: candidates timed on %r via the tracker %s", rpc.key, rpc.tracker)
        try:
            for i, (task, fl, trials) in enumerate(plan):
                if config.tune_max_s is not None and time.perf_counter() - started > config.tune_max_s:
                    report.stopped_by_time = True
                    log.info(
                        "tuning: time limit %.0f s reached; %d kernels left untuned", config.tune_max_s, len(plan) - i
                    )
                    break
                report.tasks.append(
                    _tune_one(
                        task,
                        fl / total_flops,
                        trials,
                        target,
                        db,
                        builder,
                        runner,
                        work_dir,
                        num_cores,
                        config,
                        compare,
                    )
                )
                report.trials_run += trials
                report.tasks_tuned += 1
        finally:
            ms_logger.setLevel(old_level)
    report.tune_s = time.perf_counter() - started
    return report


def _tune_one(
    task, share, trials, target, db, builder, runner, work_dir, num_cores, config, compare=ab_compare
) -> TaskResult:
    from tvm.s_tir import meta_schedule as ms

    mod = task.dispatched[0]
    t0 = time.perf_counter()
    ctx = ms.TuneContext(
        mod=mod,
        target=target,
        space_generator="post-order-apply",
        search_strategy=ms.search_strategy.EvolutionarySearch(population_size=POPULATION),
        task_name=task.task_name,
        logger=_quiet_logger(f"repfx_deploy.compile.ms.{task.task_name}"),
        num_threads=num_cores,
    ).clone()
    ms.tune_tasks(
        tasks=[ctx],
        task_weights=[1.0],
        work_dir=work_dir,
        max_trials_global=trials,
        max_trials_per_task=trials,
        num_trials_per_iter=min(TRIALS_PER_ROUND, trials),
        builder=builder,
        runner=runner,
        database=db,
        task_scheduler="round-robin",
    )
    choice, default_us, tuned_us = compare(mod, target, db)
    result = TaskResult(task.task_name, round(share, 4), trials, choice, _round(default_us), _round(tuned_us))
    _record_choice(
        config.tuning_db,
        workload_key(mod),
        {
            "name": task.task_name,
            "choice": choice,
            "trials": trials,
            "default_us": result.default_us,
            "tuned_us": result.tuned_us,
            "unix_time": int(time.time()),
        },
    )
    log.info(
        "tuned %s (%.0f%% of FLOPs): %d trials in %.0f s; default %s us vs best record %s us -> %s",
        task.task_name,
        100 * share,
        trials,
        time.perf_counter() - t0,
        result.default_us,
        result.tuned_us,
        choice,
    )
    return result


def _quiet_logger(name: str) -> logging.Logger:
    # MetaSchedule logs every design space and candidate at INFO (pages of TIR per task)
    lg = logging.getLogger(name)
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.WARNING)
    return lg


def _round(us: float | None) -> float | None:
    return None if us is None else round(us, 2)

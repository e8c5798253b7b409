"""``search``: the most accurate model under the budgets on the target, with measured latency in the loop.

    load model, recipe, data -> prepare the chain once -> open (or resume) the study -> enqueue the uniform seeds
    -> trials (Optuna; the scorer's proxy accuracy and predicted latency) -> measure the front whole, recalibrate
    -> fine-tune the top K -> the most accurate within budget built by ``compress`` into ``best/`` -> report

The output folder holds ``study.db`` (the study, kept in place so the same command run again resumes it),
``report.md`` / ``report.json`` / ``front.json`` / ``front.png``, ``recipe.toml`` (``compress --recipe`` replays
it to the chosen model) and ``best/`` (compress's result folder for that model). The folder is locked for the
run; everything but the study is written atomically at the end, and ``best/`` replaces the previous one only
once complete. A time budget stops the trials cleanly; SIGINT/SIGTERM stop at once, lose at most the trial in
flight, and still write the report of what was found so far.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repfx_deploy.errors import OutputExistsError, RecipeError, SearchError
from repfx_deploy.ingest.loader import LoadOptions
from repfx_deploy.measure.timing import TimingConfig
from repfx_deploy.search.config import SearchConfig

if TYPE_CHECKING:
    import optuna
    import torch.nn as nn

    from repfx_deploy.ingest.loader import LoadedModel
    from repfx_deploy.passes.chain import PreparedChain, RecipeSpace
    from repfx_deploy.passes.protocol import Choice, PassContext
    from repfx_deploy.pipeline.compress import CompressRequest
    from repfx_deploy.pipeline.data import RecipeData
    from repfx_deploy.recipe import Recipe
    from repfx_deploy.search.objective import Objective
    from repfx_deploy.search.predictor import TieredPredictor
    from repfx_deploy.search.proxy import ProxyData
    from repfx_deploy.search.scorer import CandidateScorer
    from repfx_deploy.targets import TargetProfile

log = logging.getLogger("repfx_deploy.pipeline")

# The kept fractions of each site's choices the uniform seeds set (every site of a pass at the same one).
SEED_FRACTIONS = (0.5, 0.25, 0.75)
# Files of a search folder: one holding any of them may be searched into again (and resumed).
SEARCH_FILES = ("study.db", "report.json", "front.json", "workers")


@dataclass(frozen=True)
class SearchRequest:
    model_path: Path
    out_dir: Path
    recipe: Recipe
    config: SearchConfig = SearchConfig()
    load: LoadOptions = LoadOptions()
    target_file: Path | None = None
    timing: TimingConfig = TimingConfig()
    rpc: str | None = None  # tracker HOST:PORT: measure on a device of the target
    rpc_key: str | None = None
    progress: bool = False


@dataclass
class SearchSetup:
    """What every process of a search builds before its first trial."""

    profile: TargetProfile
    loaded: LoadedModel
    recipe: Recipe
    data: RecipeData
    context: PassContext
    chain: PreparedChain
    proxy: ProxyData
    predictor: TieredPredictor
    scorer: CandidateScorer
    runtime: str
    threads: int
    notes: list[str] = field(default_factory=list)

    @property
    def original(self) -> nn.Module:
        assert self.loaded.module is not None  # load_torch_model refuses a model without one
        return self.loaded.module


def uniform_seeds(space: RecipeSpace, fractions: Sequence[float] = SEED_FRACTIONS) -> list[dict[str, Choice]]:
    """The defaults (the recipe as written), then for each fraction every pass at once and each pass alone with
    all its sites at that kept fraction of their choices (the others at their defaults); no repeats."""
    defaults = space.defaults()
    seeds: list[dict[str, Choice]] = [dict(defaults)]
    for fraction in fractions:
        every = dict(defaults)
        alone = []
        for prefix, pass_space in zip(space.prefixes, space.spaces):
            one = dict(defaults)
            for site in pass_space.sites:
                choice = site.choices[math.floor(fraction * (len(site.choices) - 1) + 0.5)]
                one[f"{prefix}/{site.name}"] = every[f"{prefix}/{site.name}"] = choice
            alone.append(one)
        seeds += [every, *alone]
    unique: list[dict[str, Choice]] = []
    for seed in seeds:
        if seed not in unique:
            unique.append(seed)
    return unique


def prepare_search(request: SearchRequest) -> SearchSetup:
    """Load the model, the recipe's data and the target; prepare the passes once; build the scorer."""
    from repfx_deploy.passes.chain import prepare_chain
    from repfx_deploy.pipeline.data import load_data, load_torch_model, pass_context
    from repfx_deploy.search.predictor import TieredPredictor, choose_runtime
    from repfx_deploy.search.proxy import ProxyData
    from repfx_deploy.search.scorer import CandidateScorer
    from repfx_deploy.targets import get_profile, resolve_threads

    config, recipe = request.config, request.recipe
    if not recipe.passes:
        raise RecipeError("The recipe has no passes, so there is nothing to search.", "Add [[passes]] to the recipe.")
    if config.strategy == "greedy" and config.workers > 1:
        raise SearchError(
            "The greedy strategy takes one step at a time, in one process: --workers does not apply to it.",
            "Drop --workers, or use --strategy optuna.",
        )
    profile = get_profile(recipe.target, request.target_file)
    runtime = choose_runtime(profile, config.runtime)
    loaded = load_torch_model(request.model_path, recipe, request.load, "search")
    recipe = recipe.with_overrides(input_specs=loaded.input_specs, arch=loaded.arch)
    threads = resolve_threads(profile, recipe.threads)
    rpc = _rpc_config(request, profile, runtime, threads)
    data = load_data(recipe, loaded)
    proxy = ProxyData.from_recipe_data(data, config.bn_samples, config.holdout_samples, config.seed)
    assert loaded.module is not None
    context = pass_context(loaded, profile, data)
    log.info("preparing %d pass(es) once for the search", len(recipe.passes))
    chain = prepare_chain(loaded.module, recipe.passes, context)
    predictor = TieredPredictor(profile, runtime, loaded.input_specs, threads=threads, rpc=rpc, timing=request.timing)
    scorer = CandidateScorer(chain, proxy, predictor, profile, threads=threads)
    return SearchSetup(profile, loaded, recipe, data, context, chain, proxy, predictor, scorer, runtime, threads)


def _rpc_config(request: SearchRequest, profile: TargetProfile, runtime: str, threads: int):
    """The device to measure on, checked before any work (as compress checks it)."""
    if request.rpc is None:
        return None
    from repfx_deploy.errors import InputError
    from repfx_deploy.pipeline.bench_rpc import device_config
    from repfx_deploy.pipeline.latency import check_rpc_target

    if runtime != "tvm":
        raise InputError(
            "--rpc measures the TVM artifact on the device, but this search times onnxruntime.",
            "Drop --rpc, or search with --runtime tvm on a target whose runtimes include tvm.",
        )
    check_rpc_target(profile, ("tvm",))
    return device_config(profile, request.rpc, request.rpc_key, threads)


def check_search_folder(out_dir: Path) -> None:
    """A search writes into an empty or missing folder, or one a search wrote (which it resumes); any other
    existing path is refused, so a search never mixes its files into something else."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputExistsError(f"The output {str(out_dir)!r} exists and is not a folder.", "Choose another -o.")
    if any(out_dir.iterdir()) and not any((out_dir / name).exists() for name in SEARCH_FILES):
        raise OutputExistsError(
            f"The output {str(out_dir)!r} exists and holds no search (no {', '.join(SEARCH_FILES)}).",
            "Choose another -o: a search folder is resumed by running the same command on it again.",
        )


def run_search(request: SearchRequest) -> dict[str, Any]:
    """Run the search (see the module docstring); returns the report (also ``out_dir/report.json``)."""
    from repfx_deploy.outlock import output_lock

    check_search_folder(request.out_dir)
    request.out_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(request.out_dir):
        return _search(request)


def _search(request: SearchRequest) -> dict[str, Any]:
    from repfx_deploy.search.objective import Objective, run_study
    from repfx_deploy.search.study import enqueue_seeds, open_study, recover_orphans

    started = time.perf_counter()
    config = request.config
    setup = prepare_search(request)
    study = open_study(config, request.out_dir)
    if config.storage is None:  # the default file, in a folder this run has locked: a RUNNING trial is orphaned
        recover_orphans(study)
    stopped_by = "target"
    try:
        if config.strategy == "greedy":
            from repfx_deploy.search.greedy import run_greedy

            stopped_by = run_greedy(setup.scorer, setup.chain.space, config, study=study).stopped_by
        else:
            seeds = uniform_seeds(setup.chain.space)[: max(1, config.trials // 2)]  # the sampler keeps half
            enqueue_seeds(study, setup.chain.space, seeds)
            if config.workers > 1:
                _run_workers(request, study)
            else:
                objective = Objective(setup.scorer, setup.chain.space, config)
                stopped_by = run_study(study, objective, config, progress=request.progress).stopped_by
        from repfx_deploy.pipeline.search_result import finish_search

        return finish_search(request, setup, study, started, stopped_by=stopped_by)
    except KeyboardInterrupt:
        from repfx_deploy.pipeline.search_result import write_partial_report

        write_partial_report(request, setup, study, started)
        raise


WORKER_FACTORY = "repfx_deploy.pipeline.search:worker_objective"


def _run_workers(request: SearchRequest, study: optuna.Study) -> None:
    """``config.workers`` processes on the study, each building the same objective (``worker_objective``)."""
    from repfx_deploy.search.workers import run_workers, worker_command

    argv, env = worker_command(WORKER_FACTORY, request.config, request.out_dir, request_payload(request))
    run_workers(
        request.config.workers,
        argv,
        env=env,
        study=study,
        config=request.config,
        progress=request.progress,
        log_dir=request.out_dir / "workers",
    )


def request_payload(request: SearchRequest) -> dict[str, Any]:
    """What a worker process needs to rebuild the request (``request_from_payload``), JSON-ready."""
    import dataclasses

    load = request.load
    return {
        "model_path": str(Path(request.model_path).resolve()),
        "recipe": request.recipe.to_toml_dict(),
        "load": {
            "arch": load.arch,
            "python_path": [str(Path(p).resolve()) for p in load.python_path],
            "trust_pickle": load.trust_pickle,
            "input_shape": [f"{s.name}={','.join(map(str, s.shape))}:{s.dtype}" for s in load.input_specs],
        },
        "target_file": str(Path(request.target_file).resolve()) if request.target_file else None,
        "timing": dataclasses.asdict(request.timing),
        "rpc": request.rpc,
        "rpc_key": request.rpc_key,
    }


def request_from_payload(config: SearchConfig, out_dir: Path, payload: dict[str, Any]) -> SearchRequest:
    from repfx_deploy.recipe import parse_recipe
    from repfx_deploy.spec import parse_input_shapes

    load = payload["load"]
    return SearchRequest(
        model_path=Path(payload["model_path"]),
        out_dir=Path(out_dir),
        recipe=parse_recipe(payload["recipe"], Path("/")),  # its paths are absolute
        config=config,
        load=LoadOptions(
            arch=load["arch"],
            python_path=tuple(Path(p) for p in load["python_path"]),
            trust_pickle=bool(load["trust_pickle"]),
            input_specs=parse_input_shapes(load["input_shape"]),
        ),
        target_file=Path(payload["target_file"]) if payload.get("target_file") else None,
        timing=TimingConfig(**payload["timing"]),
        rpc=payload.get("rpc"),
        rpc_key=payload.get("rpc_key"),
    )


def worker_objective(config: SearchConfig, out_dir: Path, payload: dict[str, Any]) -> Objective:
    """The worker factory (``search/workers.py``): the objective one of ``--workers``' processes runs."""
    from repfx_deploy.search.objective import Objective

    setup = prepare_search(request_from_payload(config, out_dir, payload))
    return Objective(setup.scorer, setup.chain.space, config)


def default_passes(recipe: Recipe) -> Recipe:
    """``recipe``, or when it has no passes, the search ``compress --latency-budget`` runs without a recipe:
    channel pruning, and PTQ int8 where there is calibration data for it."""
    if recipe.passes:
        return recipe
    import dataclasses

    from repfx_deploy.passes.registry import parse_pass

    passes = [parse_pass({"kind": "prune", "ratio": 0.5}, 0)]
    if recipe.data.calibration is not None:
        passes.append(parse_pass({"kind": "quantize"}, 1))
    return dataclasses.replace(recipe, passes=tuple(passes))


def latency_budget_search(request: CompressRequest, latency_budget: str, *, progress: bool = False) -> dict[str, Any]:
    """``compress --latency-budget``: the search with its defaults into ``request.out_dir`` (the chosen model in
    its ``best/``), on the recipe's passes or ``default_passes``."""
    from repfx_deploy.errors import InputError
    from repfx_deploy.search.config import parse_budget

    budget = parse_budget(latency_budget)
    if budget.metric != "latency_ms":
        raise InputError(
            f"--latency-budget {latency_budget!r} is a size, not a latency.",
            "Give a time (20ms, 4.5ms), or use `repfx-deploy search --budget size_bytes=...`.",
        )
    return run_search(
        SearchRequest(
            model_path=request.model_path,
            out_dir=request.out_dir,
            recipe=default_passes(request.recipe),
            config=SearchConfig(budgets=(budget,)),
            load=request.load,
            target_file=request.target_file,
            timing=request.timing,
            rpc=request.rpc,
            rpc_key=request.rpc_key,
            progress=progress,
        )
    )

"""A lookup table of measured per-layer latencies on this machine, cached on disk.

One file per runtime, runtime version, CPU and thread count:
``${REPFX_CACHE:-~/.cache/repfx-deploy}/latency-lut/onnxruntime-<version>-<hash of CPU and threads>.json``,
keyed by layer signature. A layer whose signature is in the table is never measured again, so an estimator
called in a loop (a search over prune ratios) only measures the layers it has not seen. Each entry records the
statistics it came from, the runtime and its version, and the thread count. The file is rewritten atomically
(merged with what another process may have added meanwhile). A corrupt file is warned about and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from repfx_deploy.atomic import atomic_file
from repfx_deploy.estimate.ort_layers import OrtGraph, OrtLayer
from repfx_deploy.measure.runtimes import session_options
from repfx_deploy.measure.timing import LatencyStats, TimingConfig, time_callable
from repfx_deploy.report import strict_json

log = logging.getLogger("repfx_deploy.estimate")

RUNTIME = "onnxruntime"
_FORMAT = 1
# Per layer: >= 30 calls after a warm-up, stretched to 100 ms of timed calls (enough for the fastest call to be
# an undisturbed one on a shared machine; a model has tens to hundreds of layers, measured once), re-measured
# once when the spread is wide.
LAYER_TIMING = TimingConfig(warmup=5, repeats=30, min_time_s=0.1, max_repeats=5000, max_spread=0.25, remeasure=1)


def cache_root() -> Path:
    """``$REPFX_CACHE`` or ``~/.cache/repfx-deploy``."""
    return Path(os.environ.get("REPFX_CACHE") or Path.home() / ".cache" / "repfx-deploy")


def runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def table_path(threads: int, version: str | None = None, root: Path | None = None) -> Path:
    """Where the table for this CPU, ``threads`` and the runtime ``version`` (default: the installed one) lives."""
    from repfx_deploy.measure.environment import cpu_model

    version = version or runtime_version()
    machine = hashlib.sha256(f"{cpu_model()}|threads={threads}".encode()).hexdigest()[:12]
    return (root or cache_root()) / "latency-lut" / f"{RUNTIME}-{version}-{machine}.json"


@dataclass
class LatencyTable:
    """Measured latencies by layer signature for one runtime version, CPU and thread count.

    ``measured`` counts the layers this object timed itself (it stays 0 when every layer was in the table).
    """

    path: Path
    threads: int
    version: str
    timing: TimingConfig = LAYER_TIMING
    entries: dict[str, dict] = field(default_factory=dict)
    measured: int = 0
    _unsaved: int = 0

    @classmethod
    def open(cls, threads: int, root: Path | None = None, timing: TimingConfig = LAYER_TIMING) -> LatencyTable:
        version = runtime_version()
        path = table_path(threads, version, root)
        return cls(path=path, threads=threads, version=version, timing=timing, entries=_read(path))

    def latency_ms(self, graph: OrtGraph, layer: OrtLayer) -> float:
        """The layer's standalone latency: from the table, else measured now and added to it.

        The figure used is the fastest of the timed calls (median, p90 and spread are stored beside it): on a
        machine shared with other work the median measures the neighbours as much as the layer, while the
        fastest call is the layer undisturbed, and that is what a prediction can be made from. On a quiet
        machine the two are within a few percent.
        """
        entry = self.entries.get(layer.signature)
        if entry is None:
            entry = self._measure(graph, layer)
            self.entries[layer.signature] = entry
            self.measured += 1
            self._unsaved += 1
        return float(entry["min_ms"])

    def _measure(self, graph: OrtGraph, layer: OrtLayer) -> dict:
        return self.entry(layer, time_callable(layer_callable(graph, layer, self.threads), self.timing))

    def entry(self, layer: OrtLayer, stats: LatencyStats) -> dict:
        """The table entry for ``layer`` measured as ``stats`` (also used by callers that time it themselves)."""
        return {
            "op": f"{layer.domain + '.' if layer.domain else ''}{layer.op_type}",
            "median_ms": stats.median_ms,
            "p90_ms": stats.p90_ms,
            "min_ms": stats.min_ms,
            "spread": round(stats.spread, 4),
            "repeats": stats.repeats,
            "remeasured": stats.remeasured,
            "runtime": RUNTIME,
            "runtime_version": self.version,
            "threads": self.threads,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def add(self, layer: OrtLayer, stats: LatencyStats) -> None:
        """Store a measurement of ``layer`` taken by the caller (e.g. interleaved with a whole-model run)."""
        self.entries[layer.signature] = self.entry(layer, stats)
        self.measured += 1
        self._unsaved += 1

    def save(self) -> None:
        """Write the table (merged with entries another process saved meanwhile), atomically; a no-op if unchanged."""
        if not self._unsaved:
            return
        header = {"format": _FORMAT, "runtime": RUNTIME, "runtime_version": self.version, "threads": self.threads}
        self.entries = write_table(self.path, header, self.entries)
        self._unsaved = 0


def write_table(path: Path, header: dict, entries: dict[str, dict]) -> dict[str, dict]:
    """Write a latency table at ``path``: ``header`` and ``entries`` merged over the entries another process
    saved there meanwhile (ours win), atomically, as strict JSON (a NaN figure is written as null, and that
    entry is measured again when read). Returns the merged entries."""
    merged = {**_read(path, quiet=True), **entries}
    with atomic_file(path) as tmp:
        tmp.write_text(strict_json.dumps({**header, "entries": merged}, indent=1, sort_keys=True))
    return merged


def l2_cache_bytes() -> int:
    """This CPU's per-core L2 cache size (Linux sysfs); 1 MiB when it cannot be read."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip()
                return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        except (OSError, ValueError):
            continue
    return 1 << 20


def cold_weight_bytes(layers: list[OrtLayer], cache_bytes: int) -> list[int]:
    """Per layer, the weight bytes it reads cold in the graph but hot when timed alone.

    A layer timed standalone, call after call, keeps its weights in L2 when they fit there; in the graph the
    other layers' weights evict them when all of them together do not fit. Weights larger than L2 are read
    from further out in both cases, so the standalone timing already includes them.
    """
    total = sum(layer.weight_bytes for layer in layers)
    if total <= cache_bytes:
        return [0] * len(layers)
    return [layer.weight_bytes if layer.weight_bytes <= cache_bytes else 0 for layer in layers]


def layer_callable(graph: OrtGraph, layer: OrtLayer, threads: int) -> Callable[[], object]:
    """A call running ``layer`` alone in its own ORT session on the inputs it saw in-graph.

    Inputs and outputs are bound once to preallocated buffers (IOBinding): a plain ``run`` would allocate each
    output and copy it into a new numpy array, a cost (tens of microseconds for a large activation) that the
    layer does not pay inside the graph.
    """
    import numpy as np
    import onnxruntime as ort

    model_bytes, feed = graph.standalone(layer)
    # The node is already ORT's optimised kernel; optimising again would only re-insert layout reorders.
    session = ort.InferenceSession(
        model_bytes, session_options(threads, optimize=False), providers=["CPUExecutionProvider"]
    )
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for out in session.get_outputs():
        ref = graph.values[out.name]
        binding.bind_ortvalue_output(out.name, ort.OrtValue.ortvalue_from_numpy(np.empty(ref.shape, ref.dtype)))
    return lambda: session.run_with_iobinding(binding)


def _read(path: Path, *, quiet: bool = False) -> dict[str, dict]:
    """Entries of the table at ``path``; a missing file is an empty table.

    A cache is only ever a cache: a file that is not JSON, of another format, or whose entries lack their
    figures (an older or hand-edited file, a write cut short) is warned about and rebuilt, its usable entries
    kept and the rest measured again; it never fails an estimate. ``quiet`` skips the warnings (the re-read
    before a save, which the first read already warned about).
    """
    warn = (lambda *a: None) if quiet else log.warning
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        warn("the latency table %s is unreadable (%s); rebuilding it (layers are measured again)", path, e)
        return {}
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("entries"), dict):
        warn("the latency table %s has an unknown format; rebuilding it (layers are measured again)", path)
        return {}
    entries = {k: v for k, v in doc["entries"].items() if _usable(v)}
    dropped = len(doc["entries"]) - len(entries)
    if dropped:
        warn("the latency table %s has %d corrupt entries; those layers are measured again", path, dropped)
    return entries


def _usable(entry: object) -> bool:
    """Whether a table entry holds the figure a lookup reads (a finite, non-negative ``min_ms``)."""
    if not isinstance(entry, dict):
        return False
    value = entry.get("min_ms")
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0

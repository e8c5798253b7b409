"""ANN -> SNN conversion on the ``torch.fx`` graph: fold BatchNorm, move max-pools before the neurons, balance
thresholds on calibration data, replace every ReLU by an integrate-and-fire layer.

What is handled and why:

- ``conv/linear -> BatchNorm`` (eval) is folded into the conv (exact), so the spiking net has no BN and its
  synaptic operations are plain accumulates of the folded weights.
- ``ReLU -> MaxPool`` on the first layers (whose input current is the analog image, the same at every step)
  becomes ``MaxPool -> neuron``: exact (they commute) and 4x fewer neurons. Deeper max-pools stay after the
  neurons and pool spikes: by spike count (``SpikeMaxPool``, ``maxpool = "count"``, the default) or as a plain
  max over the spikes (an OR, ``maxpool = "or"``). Pooling the time-varying input currents of deeper layers
  instead (``maxpool = "current"``) was measured worse for conversion on LeNet-5/MNIST (98.45 % vs 98.75 % with
  "or" at T = 32: a max of per-step currents overestimates the max of their averages), but at T = 1 it gives
  the same output as pooling spikes, and trains better there: the gradient reaches each window's strongest
  current instead of one of its tied binary spikes (LeNet-5 T = 1 retraining: see the README).
- The CIFAR ResNets' option-A shortcut (``F.pad(x[:, :, ::2, ::2], ...)``) and residual adds are stateless
  and act per step on the time-batched tensor; a tensor that reaches a time-batched op without having passed a
  neuron (a skip from the input) is repeated over the steps (``TimeExpand``).
- Other nonlinearities (GELU, sigmoid, softmax, LayerNorm, attention) have no rate-coded equivalent here and
  are refused by name.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from repfx_deploy.errors import PassError
from repfx_deploy.passes.snn.balance import ActivationProbe, calibrate
from repfx_deploy.passes.snn.config import SnnConfig
from repfx_deploy.passes.snn.neurons import IFNeuron, SpikeMaxPool, TimeExpand
from repfx_deploy.passes.snn.simulate import SpikingNet

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_MAXPOOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d)
_REFUSED_MODULES = (
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.ELU,
    nn.Mish,
    nn.Softmax,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.MultiheadAttention,
)
_REFUSED_FUNCTIONS = (
    F.gelu,
    F.silu,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
    F.tanh,
    F.relu6,
    F.leaky_relu,
    F.hardswish,
    F.elu,
    F.softmax,
    torch.softmax,
    F.layer_norm,
    F.group_norm,
    F.scaled_dot_product_attention,
)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class ConversionReport:
    """What conversion did: BN layers folded (and left), max-pools moved, neuron layers with their thresholds."""

    bn_folded: int
    bn_left: int
    maxpools_moved: int
    time_expands: int
    neurons: tuple[tuple[str, str, float], ...]  # (neuron module, the ANN node it replaces, threshold)

    def to_dict(self) -> dict:
        return {
            "bn_folded": self.bn_folded,
            "bn_left": self.bn_left,
            "maxpools_moved_before_neurons": self.maxpools_moved,
            "time_expands": self.time_expands,
            "neurons": [{"name": n, "replaces": r, "threshold": round(t, 6)} for n, r, t in self.neurons],
        }


def convert(
    model: nn.Module,
    calibration: Sequence[torch.Tensor] | None,
    config: SnnConfig,
) -> tuple[SpikingNet, ConversionReport]:
    """A spiking copy of ``model`` (left untouched) at ``config.initial_timesteps``.

    ``calibration``: input batches for threshold balancing. ``None`` builds the structure only, with
    thresholds 1.0, for loading a saved SNN ``state_dict`` into. ``PassError`` when the model cannot be traced
    or holds an operation that has no spiking equivalent here.
    """
    ann = copy.deepcopy(model).eval()
    device = next((p.device for p in ann.parameters()), torch.device("cpu"))
    try:
        gm = fx.symbolic_trace(ann)
    except Exception as e:
        raise PassError(
            f"snn: the model cannot be traced with torch.fx ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}).",
            "Make its forward free of data-dependent Python control flow (the pass needs the layer graph).",
        ) from e
    _refuse_unsupported(gm)
    folded = _fold_batchnorm(gm)
    moved = _move_maxpools(gm, every_layer=config.maxpool == "current")
    probes = _insert_probes(gm)
    if not probes:
        raise PassError(
            "snn: the model has no ReLU, so there is nothing to turn into spiking neurons.", "Convert a ReLU network."
        )
    if calibration is not None:
        gm.recompile()
        thresholds = calibrate(gm, [p for _, _, p in probes], list(calibration), config.percentile)
    else:
        thresholds = [1.0] * len(probes)
    neurons = []
    for (name, replaces, _), thr in zip(probes, thresholds):
        neuron = IFNeuron(
            thr,
            learn_threshold=config.learn_threshold,
            learn_leak=config.learn_leak,
            initial_membrane=config.initial_membrane,
            surrogate=config.surrogate,
        ).to(device)
        gm.add_submodule(name, neuron)
        neurons.append((name, replaces, thr))
    expands = _mark_time(gm, config)
    gm.delete_all_unused_submodules()
    gm.recompile()
    bn_left = sum(isinstance(m, _BN) for m in gm.modules())
    snn = SpikingNet(gm, config.initial_timesteps)
    return snn, ConversionReport(folded, bn_left, moved, expands, tuple(neurons))


def _modules(gm: fx.GraphModule) -> dict[str, nn.Module]:
    return dict(gm.named_modules())


def _module_name(node: fx.Node) -> str:
    """The qualified name of the module a ``call_module`` node calls (its target is always that string)."""
    return cast(str, node.target)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[_module_name(node)]) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_maxpool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[_module_name(node)], _MAXPOOL_MODULES)
    return node.op == "call_function" and node.target in _MAXPOOL_FUNCTIONS


def _refuse_unsupported(gm: fx.GraphModule) -> None:
    modules = _modules(gm)
    for node in gm.graph.nodes:
        what = None
        if node.op == "call_module" and isinstance(modules[node.target], _REFUSED_MODULES):
            what = type(modules[node.target]).__name__
        elif node.op == "call_function" and node.target in _REFUSED_FUNCTIONS:
            what = getattr(node.target, "__name__", str(node.target))
        elif node.op == "call_method" and node.target in ("sigmoid", "tanh", "softmax"):
            what = node.target
        if what is not None:
            raise PassError(
                f"snn: {node.name} ({what}) has no integrate-and-fire equivalent; only ReLU activations convert.",
                "Convert a ReLU network (retrain the ANN with ReLU in place of that activation).",
            )


def _fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold each eval BatchNorm whose input is a conv/linear used by it alone; returns how many were folded."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    modules = _modules(gm)
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = modules[_module_name(node)]
        if not isinstance(bn, _BN):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        layer = modules[_module_name(src)]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        fused: nn.Module
        if isinstance(layer, _CONV):
            fused = fuse_conv_bn_eval(layer, bn)
        elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer, bn)
        else:
            continue
        _set_module(gm, _module_name(src), fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    return folded


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def _move_maxpools(gm: fx.GraphModule, *, every_layer: bool = False) -> int:
    """Rewrite ``relu -> maxpool`` (the pool the ReLU's only user) as ``maxpool -> relu`` where the ReLU's
    input passed no other ReLU (its current is the same at every step, so pooling it first is exact), or with
    ``every_layer`` wherever the pattern occurs (exact at T = 1 only)."""
    modules = _modules(gm)
    after_relu: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if _is_relu(node, modules) or any(a in after_relu for a in node.all_input_nodes):
            after_relu.add(node)
    moved = 0
    for relu in list(gm.graph.nodes):
        if not _is_relu(relu, modules) or len(relu.users) != 1 or (relu.args[0] in after_relu and not every_layer):
            continue
        pool = next(iter(relu.users))
        if not _is_maxpool(pool, modules) or pool.args[0] is not relu:
            continue
        source = relu.args[0]
        pool.replace_all_uses_with(relu)
        pool.args = (source, *pool.args[1:])
        relu.args = (pool, *relu.args[1:])
        pool.prepend(relu)  # keep topological order: the pool now comes first
        relu.prepend(pool)
        moved += 1
    gm.graph.lint()
    return moved


def _insert_probes(gm: fx.GraphModule) -> list[tuple[str, str, ActivationProbe]]:
    """Replace each ReLU node by a call of a probe module named ``snn_neuron_<i>``; returns (name, replaced
    node, probe) in graph order."""
    modules = _modules(gm)
    probes: list[tuple[str, str, ActivationProbe]] = []
    for node in list(gm.graph.nodes):
        if not _is_relu(node, modules):
            continue
        name = f"snn_neuron_{len(probes)}"
        replaces = node.target if node.op == "call_module" else node.name
        probe = ActivationProbe(seed=len(probes))
        gm.add_submodule(name, probe)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        probes.append((name, replaces, probe))
    return probes


def _mark_time(gm: fx.GraphModule, config: SnnConfig) -> int:
    """Set each neuron's ``constant_input`` (its input has passed no neuron yet: the same at every step),
    insert ``TimeExpand`` where an input-dependent, step-independent tensor meets a time-batched one, and
    (``maxpool = "count"``) turn max-pools of spikes into ``SpikeMaxPool``."""
    modules = _modules(gm)
    timed: dict[fx.Node, bool] = {}
    depends: dict[fx.Node, bool] = {}
    expands = 0
    for node in list(gm.graph.nodes):
        inputs = [a for a in node.all_input_nodes if a in timed]
        if node.op == "placeholder":
            timed[node], depends[node] = False, True
            continue
        if node.op == "get_attr":
            timed[node], depends[node] = False, False
            continue
        neuron = modules.get(_module_name(node)) if node.op == "call_module" else None
        if isinstance(neuron, IFNeuron):
            neuron.constant_input = not timed[node.args[0]]
            timed[node], depends[node] = True, True
            continue
        any_timed = any(timed[a] for a in inputs)
        if node.op == "output":
            if not any_timed:
                raise PassError("snn: the model's output does not depend on any ReLU layer.", "Convert a ReLU network.")
            if not isinstance(node.args[0], fx.Node):
                raise PassError(
                    "snn: models with several outputs are not supported.", "Convert a model with one output tensor."
                )
            continue
        if any_timed and _is_maxpool(node, modules) and config.maxpool == "count":
            _use_spike_maxpool(gm, node, modules)
        if any_timed and not _is_shape_query(node):
            for a in inputs:
                if depends[a] and not timed[a] and not _is_shape_value(a):
                    name = f"snn_time_expand_{expands}"
                    gm.add_submodule(name, TimeExpand())
                    with gm.graph.inserting_before(node):
                        rep = gm.graph.call_module(name, (a,))
                    node.replace_input_with(a, rep)
                    timed[rep], depends[rep] = True, True
                    expands += 1
        timed[node] = any_timed and not _is_shape_query(node)
        depends[node] = any(depends[a] for a in inputs)
    return expands


def _use_spike_maxpool(gm: fx.GraphModule, node: fx.Node, modules: dict[str, nn.Module]) -> None:
    """Replace the max-pool ``node`` (module or function call) by a ``SpikeMaxPool`` around the same pooling."""
    pool: nn.Module
    if node.op == "call_module":
        pool = modules[_module_name(node)]
    else:
        modules_for: dict[Callable[..., Any], type[nn.modules.pooling._MaxPoolNd]] = {
            F.max_pool1d: nn.MaxPool1d,
            F.max_pool2d: nn.MaxPool2d,
            F.max_pool3d: nn.MaxPool3d,
        }
        dims = modules_for[cast(Callable[..., Any], node.target)]  # a call_function node's target is the function
        if node.kwargs.get("return_indices") or (len(node.args) > 6 and node.args[6]):
            raise PassError(
                f"snn: {node.name} returns max-pool indices, which a spiking max-pool cannot give.",
                "Pool without return_indices.",
            )
        # the pooling parameters (kernel size, stride, ...) are literals of the traced call, not nodes
        params: tuple[Any, ...] = node.args[1:]
        options: dict[str, Any] = dict(node.kwargs)
        pool = dims(*params, **options)
    name = f"snn_spike_maxpool_{sum(isinstance(m, SpikeMaxPool) for m in gm.modules())}"
    gm.add_submodule(name, SpikeMaxPool(pool))
    node.op, node.target, node.args, node.kwargs = "call_module", name, (node.args[0],), {}


def _is_shape_query(node: fx.Node) -> bool:
    """``x.size()``, ``x.shape``, ``x.dim()``: values about a tensor, not a tensor that runs over time."""
    return (node.op == "call_method" and node.target in ("size", "dim")) or (
        node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim")
    )


def _is_shape_value(node: fx.Node) -> bool:
    """A value derived from a shape query (e.g. ``x.size()[3]``), never expanded over time."""
    if _is_shape_query(node):
        return True
    return (
        node.op == "call_function"
        and node.target is operator.getitem
        and isinstance(node.args[0], fx.Node)
        and _is_shape_value(node.args[0])
    )

"""The search's goal on ResNet-56 / CIFAR-10: the searched model against the best uniform baseline, side by side.

    python benchmarks/search_resnet56.py                                  # the issue's scale: both runtimes, 50 % and 30 %
    python benchmarks/search_resnet56.py --runtimes onnxruntime --budgets 0.5 --trials 20 --finetune-steps 100
    python benchmarks/search_resnet56.py --recipe search-resnet56-lowrank.toml     # prune + lowrank + int8
    python benchmarks/search_resnet56.py --no-search --samplers tpe,nsga2,nsga3,gp --sampler-trials 16

Per runtime and budget (a fraction of the dense model's latency measured whole on that runtime): the search
(``pipeline.search.run_search``, prune + int8 PTQ by default), the uniform baselines (one prune ratio, int8
everywhere, both), the same KD fine-tune for all and the dense model, CIFAR-10 test top-1 and batch-1 latency
timed side by side. Prints one table per budget with the goals met or not, and the predictor's error and the
compile share of the search time. See _search_common.py; results in docs/benchmarks.md and docs/search.md.
"""

from __future__ import annotations

from _search_common import Bench, main

RESNET56 = Bench(
    name="resnet56",
    model_file="cifar10-resnet56.th",
    arch="zoo_arch:resnet56",
    recipe="search-resnet56.toml",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)

if __name__ == "__main__":
    main(RESNET56, __doc__ or "")

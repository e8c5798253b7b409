"""The search's goal on the CIFAR ViT: tokens + lowrank + int8 searched, against the best uniform baseline.

    python benchmarks/search_vit.py                                       # both runtimes, 50 % and 30 %
    python benchmarks/search_vit.py --runtimes onnxruntime --budgets 0.5 --trials 16 --finetune-steps 100

The same comparison as search_resnet56.py (see _search_common.py) on the ViT of ../shared/assets: the uniform
baselines are one kept-token fraction everywhere, one rank fraction everywhere, int8 everywhere, and all three.
"""

from __future__ import annotations

from _search_common import Bench, main

VIT = Bench(
    name="vit",
    model_file="cifar10-vit.pth",
    arch="zoo_arch:cifar_vit",
    recipe="search-vit.toml",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2023, 0.1994, 0.2010),
)

if __name__ == "__main__":
    main(VIT, __doc__ or "")

"""Train the default example model (FashionCNN on Fashion-MNIST) and write its committed artifacts.

Reads the IDX files of the Debian package ``dataset-fashion-mnist`` and writes, each atomically:

    examples/fashion-mnist/model.pt              plain state_dict (tensors only), taken in eval mode
    calibration/fashion-mnist/calib-512.npz      512 stratified TRAINING images, x uint8 (512,28,28), y int64
    examples/fashion-mnist/eval-1000.npz         1000 TEST images, 100 per class, same format

Seeds are fixed and the thread count is pinned. The subsets depend only on the seed and the data, never on
training, so a rerun reproduces them exactly; the weights repeat as far as the CPU kernels are deterministic
(same machine, same torch build). About 30 s per epoch on 2 idle cores. Run from anywhere:

    python examples/train_fashion_mnist.py [--epochs N] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import io
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
# The script is run by path, which puts examples/ (not the repo root) on sys.path; this makes it work
# without installing the package.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from repfx_deploy.examples.fashion_mnist import CLASSES, MEAN, STD, FashionCNN  # noqa: E402

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
MODEL_OUT = REPO_ROOT / "examples" / "fashion-mnist" / "model.pt"
CALIB_OUT = REPO_ROOT / "calibration" / "fashion-mnist" / "calib-512.npz"
EVAL_OUT = REPO_ROOT / "examples" / "fashion-mnist" / "eval-1000.npz"

SEED = 20240
CALIB_SIZE = 512
EVAL_PER_CLASS = 100

IDX_DTYPE_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes into an array of its declared shape.

    Header: two zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions, then one
    big-endian uint32 per dimension.
    """
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic).")
    if data[2] != IDX_DTYPE_UBYTE:
        raise ValueError(f"{path}: IDX type 0x{data[2]:02x} is not unsigned byte.")
    ndim = data[3]
    header_len = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=header_len)
    if body.size != math.prod(shape):
        raise ValueError(f"{path}: header says {shape}, body has {body.size} bytes.")
    return body.reshape(shape).copy()


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 (N, 28, 28), labels int64 (N,))`` for ``split`` in {"train", "t10k"}."""
    x = read_idx(data_dir / f"{split}-images-idx3-ubyte.gz")
    y = read_idx(data_dir / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    if x.shape[0] != y.shape[0] or x.shape[1:] != (28, 28):
        raise ValueError(f"{split}: images {x.shape} and labels {y.shape} do not match.")
    return x, y


def stratified_indices(y: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``total`` indices with ``total // 10`` per class; the remainder goes to randomly drawn classes.

    The result is shuffled, so any prefix is also roughly balanced.
    """
    n_classes = len(CLASSES)
    counts = np.full(n_classes, total // n_classes)
    counts[rng.choice(n_classes, size=total % n_classes, replace=False)] += 1
    picked = [rng.choice(np.flatnonzero(y == c), size=counts[c], replace=False) for c in range(n_classes)]
    return rng.permutation(np.concatenate(picked))


def normalize(x_uint8: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28): /255, then (x - MEAN) / STD (the model's input contract)."""
    x = torch.as_tensor(x_uint8).float().div_(255.0)
    return x.sub_(MEAN).div_(STD).unsqueeze(1)


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random 28x28 crop of the 2-pixel zero-padded batch, and a horizontal flip with probability 1/2.

    Padding uses the normalized value of a black pixel, so the border looks like the real background.
    """
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), value=(0.0 - MEAN) / STD)
    dy = torch.randint(0, 5, (n,), generator=gen)
    dx = torch.randint(0, 5, (n,), generator=gen)
    ar = torch.arange(28)
    rows = (dy[:, None] + ar)[:, :, None]  # (n, 28, 1)
    cols = (dx[:, None] + ar)[:, None, :]  # (n, 1, 28)
    out = padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x_uint8: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on raw uint8 images."""
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        logits = model(normalize(x_uint8[i : i + batch]))
        correct += int((logits.argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / len(y)


def train(model: FashionCNN, x: np.ndarray, y: np.ndarray, epochs: int, batch: int, seed: int) -> None:
    """SGD + Nesterov momentum, linear warm-up then cosine decay per step, label smoothing 0.1."""
    gen = torch.Generator().manual_seed(seed)
    x_all = normalize(x)
    y_all = torch.as_tensor(y)
    steps_per_epoch = len(y) // batch  # drop the ragged last batch: a tiny batch upsets BatchNorm
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch // 2
    # BN and bias parameters are excluded from weight decay: decaying them only fights the normalization.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    step = 0
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(y_all), generator=gen)
        running = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * batch : (b + 1) * batch]
            xb = augment(x_all[idx], gen)
            loss = F.cross_entropy(model(xb), y_all[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            step += 1
        print(
            f"epoch {epoch + 1}/{epochs}  loss {running / steps_per_epoch:.4f}  "
            f"lr {sched.get_last_lr()[0]:.4f}  {time.perf_counter() - t0:.1f}s",
            flush=True,
        )


def write_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a temporary sibling and ``os.replace`` it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would, so others can read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def npz_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    """Serialize a subset as an uncompressed .npz with ``x`` uint8 and ``y`` int64."""
    buf = io.BytesIO()
    np.savez(buf, x=np.ascontiguousarray(x, dtype=np.uint8), y=np.ascontiguousarray(y, dtype=np.int64))
    return buf.getvalue()


def state_dict_bytes(model: torch.nn.Module) -> bytes:
    """Serialize a tensors-only state_dict (cloned, contiguous CPU tensors) so ``weights_only=True`` loads it."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    x_train, y_train = load_split(args.data_dir, "train")
    x_test, y_test = load_split(args.data_dir, "t10k")

    # Subsets come from their own generator, so they do not change when training settings do.
    rng = np.random.default_rng(args.seed)
    calib_idx = stratified_indices(y_train, CALIB_SIZE, rng)
    eval_idx = stratified_indices(y_test, EVAL_PER_CLASS * len(CLASSES), rng)

    model = FashionCNN()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"FashionCNN: {n_params} parameters; training {args.epochs} epochs on {len(y_train)} images", flush=True)
    t0 = time.perf_counter()
    train(model, x_train, y_train, args.epochs, args.batch, args.seed)
    train_s = time.perf_counter() - t0
    model.eval()

    test_acc = accuracy(model, x_test, y_test)
    eval_acc = accuracy(model, x_test[eval_idx], y_test[eval_idx])

    write_atomic(MODEL_OUT, state_dict_bytes(model))
    write_atomic(CALIB_OUT, npz_bytes(x_train[calib_idx], y_train[calib_idx]))
    write_atomic(EVAL_OUT, npz_bytes(x_test[eval_idx], y_test[eval_idx]))

    print(f"training time: {train_s:.1f}s")
    print(f"test accuracy (10k test set): {test_acc:.4f}")
    print(f"eval accuracy (eval-1000 subset): {eval_acc:.4f}")
    for p in (MODEL_OUT, CALIB_OUT, EVAL_OUT):
        print(f"wrote {p.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()

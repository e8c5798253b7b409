"""Load a Hugging Face model folder offline, as a module that takes token ids and returns one tensor.

A folder is a Hugging Face model when it holds ``config.json`` (weights as safetensors or a PyTorch bin beside
it) or a single ``.gguf`` file (read by transformers with the ``gguf`` package, dequantized to float32).
Nothing is downloaded: loading runs with ``local_files_only`` and ``HF_HUB_OFFLINE``. Nothing in the folder
runs: custom modelling code (``auto_map``) is never trusted, and unless the caller trusts pickles every pickled
weights file transformers could read (``pytorch_model*.bin``, the shards an index names, a PEFT
``adapter_model.bin``) is vetted with the weights-only unpickler first; safetensors and GGUF hold no pickle. Needs the ``hf`` extra
(``pip install "repfx-deploy[hf]"``).

The returned module is ``CausalLMLogits`` (decoders: ``input_ids -> logits``) or ``EncoderHiddenStates``
(encoders: ``input_ids -> last_hidden_state``); the Hugging Face model is its ``hf_model``, where passes that
understand transformers (``slicegpt``) find it. A plain tensor output is what ONNX export and the runtimes need.
Import this module only when a folder is loaded (it imports torch; transformers only inside ``load_hf_folder``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from repfx_deploy.errors import ModelLoadError
from repfx_deploy.spec import InputSpec

Task = Literal["auto", "causal-lm", "encoder"]
DEFAULT_SEQ_LEN = 128


def folder_sha256(path: Path) -> str:
    """One digest over every file in the folder (relative names and contents, in sorted order)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class CausalLMLogits(nn.Module):
    """``input_ids (batch, seq) int64 -> logits (batch, seq, vocab)``, no key/value cache."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf_model = hf_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf_model(input_ids=input_ids, use_cache=False).logits


class EncoderHiddenStates(nn.Module):
    """``input_ids (batch, seq) int64 -> last_hidden_state (batch, seq, hidden)``; every token attended."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf_model = hf_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf_model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state


def wrap_hf_model(hf_model: nn.Module, task: Literal["causal-lm", "encoder"]) -> nn.Module:
    """The tensor-in, tensor-out module for ``hf_model`` (see the module docstring)."""
    return (CausalLMLogits if task == "causal-lm" else EncoderHiddenStates)(hf_model).eval()


def pickled_weight_files(path: Path) -> list[Path]:
    """The files in the folder that transformers (or PEFT) would read with ``torch.load``.

    Other pickles a training run leaves beside the weights (``training_args.bin``, ``optimizer.pt``) are not
    loaded by anything here, so they are not vetted (they hold Python objects and would always be refused).
    """
    import json

    found = set(path.glob("pytorch_model*.bin")) | set(path.glob("adapter_model.bin"))
    for index in path.glob("*.bin.index.json"):
        try:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            continue  # transformers cannot use the index either
        if isinstance(weight_map, dict):
            found |= {path / str(shard) for shard in weight_map.values() if not str(shard).endswith(".safetensors")}
    return sorted(f for f in found if f.is_file())


def load_hf_folder(
    path: Path, *, task: Task = "auto", attn_implementation: str = "eager", trust_pickle: bool = False
) -> tuple[nn.Module, tuple[InputSpec, ...]]:
    """Load the model in ``path`` offline; returns the wrapped module and a default ``input_ids`` signature of
    ``(1, 128)`` int64. ``attn_implementation`` ``eager`` (plain matmul + softmax) is what exports to an ONNX
    graph TVM 0.27 imports; ``sdpa`` is faster in torch. Without ``trust_pickle`` a pickled weights file that
    is more than tensors raises ``UntrustedPickleError`` before transformers opens it."""
    path = Path(path)
    if not trust_pickle:
        from repfx_deploy.ingest.safe_pickle import vet_torch_file

        for weights in pickled_weight_files(path):
            vet_torch_file(weights)
    try:
        import transformers
    except ImportError as e:
        raise ModelLoadError(
            f"{str(path)!r} is a Hugging Face model folder, and loading it needs the transformers package.",
            'Install the hf extra: pip install "repfx-deploy[hf]" (transformers and gguf).',
        ) from e
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    has_config = (path / "config.json").is_file()
    if not has_config and len(ggufs) != 1:
        raise ModelLoadError(
            f"{str(path)!r} has no config.json and {len(ggufs)} .gguf files, so it is not a model folder transformers can load.",
            "Point at the folder holding config.json and the weights, or at a folder with exactly one .gguf file.",
        )
    source: dict[str, Any] = {} if has_config else {"gguf_file": ggufs[0]}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        config = transformers.AutoConfig.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, **source
        )
        if task == "auto":
            archs = " ".join(getattr(config, "architectures", None) or [])
            task = (
                "causal-lm"
                if ("CausalLM" in archs or not has_config) and not getattr(config, "is_encoder_decoder", False)
                else "encoder"
            )
            if config.model_type in ("bert", "roberta", "distilbert", "xlm-roberta"):
                task = "encoder"
        auto = transformers.AutoModelForCausalLM if task == "causal-lm" else transformers.AutoModel
        model = auto.from_pretrained(
            str(path),
            local_files_only=True,
            trust_remote_code=False,
            attn_implementation=attn_implementation,
            dtype="float32",
            **source,
        )
    except ImportError as e:  # gguf is missing
        raise ModelLoadError(
            f"Loading {str(path)!r} needs a package that is not installed: {e}",
            'Install the hf extra: pip install "repfx-deploy[hf]".',
        ) from e
    except Exception as e:  # transformers raises many types (OSError, ValueError, safetensors' own errors)
        if "accelerate" in str(e):  # transformers asks for accelerate to read GGUF files
            raise ModelLoadError(
                f"Reading the GGUF file in {str(path)!r} needs the accelerate package.",
                "pip install --no-deps accelerate (without --no-deps pip may replace the CPU torch build).",
            ) from e
        raise ModelLoadError(
            f"transformers cannot load {str(path)!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "Check that the folder is complete (config.json and weights, or one .gguf file) and that this model type is supported.",
        ) from e
    module = wrap_hf_model(model.eval(), task)
    return module, (InputSpec("input_ids", (1, DEFAULT_SEQ_LEN), "int64"),)

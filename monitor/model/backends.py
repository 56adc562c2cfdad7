"""Scorer backends by name: ``make_scorer(base, backend, device)``.

Every backend is the same Scorer (model/scorer.py: noising, errors, terms, cohort, decision)
with another network call (a ``Denoiser``, model/denoisers.py):

- ``torch``: the Exam module; on CUDA with bf16 autocast and CUDA graphs.
- ``onnxruntime``: the denoiser exported to ONNX (model/onnx_export.py) on onnxruntime, with a
  dynamic batch; CPUExecutionProvider, or CUDAExecutionProvider with IOBinding (inputs and
  output stay in GPU memory) when onnxruntime-gpu is installed and the device is CUDA.
- ``auto``: onnxruntime when its CUDA provider is available and the device is CUDA, else torch
  on CUDA; on the CPU the backend measured faster there (``CPU_DEFAULT``: torch;
  bench/scorer_backends.py and README "Performance": onnxruntime was no faster on this CPU with its
  memory arena off, and with the arena on it keeps gigabytes resident; torch also needs no
  export at start and gives the very numbers enrollment calibrated the profiles with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from expose.monitor.errors import ExposeError, ModelFileError
from expose.monitor.model.denoisers import TorchDenoiser
from expose.monitor.model.exam import LoadedModel
from expose.monitor.model.onnx_export import INPUTS, ONNX_FORMAT, OUTPUT, export_onnx, read_onnx
from expose.monitor.model.scorer import Scorer

Backend = Literal["auto", "torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime")
# What ``auto`` takes on the CPU, by measurement (bench/scorer_backends.py, README "Performance").
CPU_DEFAULT = "torch"


def ort_cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> the backend it stands for on ``device``; other names are checked and returned."""
    if backend not in BACKENDS:
        raise ExposeError(f"unknown scorer backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend != "auto":
        return backend
    if device.type == "cuda":
        return "onnxruntime" if ort_cuda_available() else "torch"
    return CPU_DEFAULT


class OrtDenoiser:
    """The exported denoiser on an onnxruntime session; any batch size. On a CUDA device with
    onnxruntime's CUDA provider, inputs and output are bound in place (IOBinding: no copy
    through host memory); otherwise the CPU provider, through numpy (tensors moved to the CPU
    and back when the scorer's device is not the CPU)."""

    name = "onnxruntime"

    def __init__(self, model: bytes, device: torch.device, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.device = device
        self.cuda = device.type == "cuda" and ort_cuda_available() and torch.cuda.is_available()
        self.device_id = (device.index if device.index is not None else torch.cuda.current_device()) if self.cuda else 0
        opts = ort.SessionOptions()
        # as many threads as torch uses (the live monitor sets one: live.native_threads)
        opts.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # no CPU arena: it keeps the largest batch's activations for good (3.8 GB resident after
        # a batch of 64 windows with the starter model, against 0.64 GB without, at the same speed)
        opts.enable_cpu_mem_arena = False
        providers: list[str | tuple[str, dict[str, object]]] = ["CPUExecutionProvider"]
        if self.cuda:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device_id}))
        self.session = ort.InferenceSession(model, opts, providers=providers)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, audio_h: torch.Tensor,
                 tokens: torch.Tensor) -> torch.Tensor:
        inputs = (x_t, t, audio_h, tokens)
        if self.cuda and x_t.is_cuda:
            return self._bound(inputs)
        feeds = {name: v.detach().to("cpu", torch.float32).contiguous().numpy()
                 for name, v in zip(INPUTS, inputs, strict=True)}
        out = self.session.run([OUTPUT], feeds)[0]
        return torch.from_numpy(out).to(x_t.device)

    def _bound(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """CUDA provider with IOBinding: ORT reads the torch tensors and writes the output in place."""
        held = [v.detach().to(torch.float32).contiguous() for v in inputs]  # alive until the run ends
        out = torch.empty(held[0].shape, dtype=torch.float32, device=held[0].device)
        binding = self.session.io_binding()
        for name, v in zip(INPUTS, held, strict=True):
            binding.bind_input(name, "cuda", self.device_id, np.float32, tuple(v.shape), v.data_ptr())
        binding.bind_output(OUTPUT, "cuda", self.device_id, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(held[0].device).synchronize()  # inputs written on torch's stream
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out


def cached_onnx(base: LoadedModel, cache_dir: Path) -> bytes:
    """The base model's exported denoiser from ``cache_dir/onnx`` (keyed by the checkpoint's
    sha256, the export format and torch's version), exported there on first use."""
    path = Path(cache_dir) / "onnx" / f"{base.sha256[:32]}-{ONNX_FORMAT}-torch{torch.__version__}.onnx"
    if path.is_file():
        try:
            return read_onnx(path)[0]
        except ModelFileError:
            pass  # damaged (an interrupted write cannot be: it is atomic): export it again
    return export_onnx(base, path)


def make_scorer(base: LoadedModel, backend: str = "auto", device: torch.device | None = None,
                onnx: Path | bytes | None = None, threads: int | None = None,
                cache_dir: Path | None = None) -> Scorer:
    """The scorer of a loaded checkpoint (its fusion weights and decision, as ``Scorer.of``) on
    the named backend. ``onnx``: an exported denoiser (``expose export-onnx``) for the
    onnxruntime backend, which must come from this checkpoint; None: the one cached in
    ``cache_dir`` (``cached_onnx``), else exported now (seconds)."""
    device = device or torch.device("cpu")
    name = resolve_backend(backend, device)
    if name == "torch":
        denoiser = TorchDenoiser(base.model.to(device), device, cuda_fast=True)
        return Scorer(base.model, base.weights.settings(), device, base.decision, denoiser=denoiser)
    if onnx is None:
        onnx = cached_onnx(base, cache_dir) if cache_dir is not None else export_onnx(base)
    data, meta = read_onnx(onnx)
    if meta.source_sha256 != base.sha256:
        where = onnx if isinstance(onnx, Path) else "the ONNX model"
        raise ModelFileError(f"{where} was exported from another checkpoint (sha256 {meta.source_sha256[:12]}, "
                             f"the base model is {base.sha256[:12]}); export it again with expose export-onnx")
    return Scorer(base.model, base.weights.settings(), device, base.decision,
                  denoiser=OrtDenoiser(data, device, threads))

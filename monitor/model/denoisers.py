"""The scorer's network call, behind one interface: ``denoise(x_t, t, audio_h, tokens) -> x0_hat``.

The scorer (model/scorer.py) does everything else itself: normalisation, the audio encoder,
noising, reconstruction errors, the terms and the decision. Backends differ only here:
``TorchDenoiser`` (this module: the Exam module itself; on CUDA, on request, bf16 autocast
and CUDA graphs) and ``OrtDenoiser`` (model/backends.py: the exported graph on onnxruntime).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from expose.monitor.model.exam import Exam


class Denoiser(Protocol):
    """x_t (B, T, D) noisy normalised expressions, t (B,), audio_h (B, T, d) encoded audio,
    tokens (B, K, d) -> x0_hat (B, T, D) float32, on the inputs' device. Rows are independent:
    a row's output does not depend on the others in the batch."""

    name: str

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, audio_h: torch.Tensor,
                 tokens: torch.Tensor) -> torch.Tensor: ...


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    output: torch.Tensor


def graph_bucket(n: int, smallest: int = 32) -> int:
    """The batch size a CUDA graph is captured for: the next power of two (at least ``smallest``)."""
    size = smallest
    while size < n:
        size *= 2
    return size


class TorchDenoiser:
    """The Exam module's forward. On the CPU (and by default) exactly ``model(...)``. With
    ``cuda_fast`` on a CUDA device: bf16 autocast, and for the model's fixed window length one
    CUDA graph per batch-size bucket (``graph_bucket``: a batch is padded up to it; rows are
    independent, so padding changes no real row), captured on first use; batches over
    ``max_graph_batch`` run eagerly under autocast. Outputs are float32 either way.
    Not exercised on the development machine (no GPU)."""

    name = "torch"

    def __init__(self, model: Exam, device: torch.device | None = None, *, cuda_fast: bool = False,
                 max_graph_batch: int = 8192) -> None:
        self.model = model
        dev = device if device is not None else next(model.parameters()).device
        self.fast = cuda_fast and dev.type == "cuda" and torch.cuda.is_available()
        self.max_graph_batch = max_graph_batch
        self._graphs: dict[int, _Captured] = {}

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, audio_h: torch.Tensor,
                 tokens: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return self.model(x_t, t, audio_h, tokens)
        n = x_t.shape[0]
        if n > self.max_graph_batch or x_t.shape[1] != self.model.cfg.window:
            return self._autocast(x_t, t, audio_h, tokens).float()
        cap = self._graphs.get(graph_bucket(n)) or self._capture(graph_bucket(n), x_t.device)
        for buf, src in zip(cap.inputs, (x_t, t, audio_h, tokens), strict=True):
            buf[:n].copy_(src)
        cap.graph.replay()
        return cap.output[:n].float().clone()  # the static output is overwritten by the next replay

    def _autocast(self, x_t: torch.Tensor, t: torch.Tensor, audio_h: torch.Tensor,
                  tokens: torch.Tensor) -> torch.Tensor:
        # no autocast weight cache: cached casts would be freed outside the captured graph's pool
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            return self.model(x_t, t, audio_h, tokens)

    def _capture(self, size: int, device: torch.device) -> _Captured:
        cfg = self.model.cfg
        inputs = (torch.zeros(size, cfg.window, cfg.expr_dim, device=device), torch.full((size,), 0.5, device=device),
                  torch.zeros(size, cfg.window, cfg.d_model, device=device),
                  torch.zeros(size, cfg.n_id_tokens, cfg.d_model, device=device))
        with torch.no_grad():
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up off the capture: kernels chosen, workspaces allocated
                for _ in range(3):
                    self._autocast(*inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = self._autocast(*inputs)
        cap = _Captured(graph, inputs, output)
        self._graphs[size] = cap
        return cap

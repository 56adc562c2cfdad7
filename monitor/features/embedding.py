"""Identity embeddings: the interface, a registry by name, and distances between sets.

An embedder is a pretrained network that maps one input (an aligned face, a span of
speech) to a fixed-size vector in which a small L2 distance means "the same person". The
verification terms only use it through ``Embedder``, so the configuration picks one by
name (``create_embedder("face", "dlib-resnet")``) and another network plugs in with
``register_embedder`` without touching the callers.

Built-in embedders are registered as ``"module:attribute"`` strings and imported on first
use: a process that never verifies faces never loads dlib.

``IsolatedEmbedder`` runs a registered embedder in a worker process shared by the whole
process. The live monitor needs it for dlib: its Python binding holds the GIL for the
~100 ms of every face descriptor (measured: a Python loop on another thread ran at 9 % of
its speed meanwhile; the GE2E encoder, a torch module, leaves 94 %), so in-thread faces
stalled every other stream's featurizer and the event loop, and cost one of the two streams
the dev machine sustains. In the worker they cost CPU only. The worker is started with
``spawn`` (forking a process that runs MediaPipe and asyncio threads is unsafe), builds each
embedder once, and is restarted once if it dies; the vectors are the in-process ones bit for
bit (same library, same inputs).

Distances are between a set of probe descriptors (the frames of a window) and a profile's
reference set (``reference_distances``); ``farthest_point_order`` picks a spread-out
subset of references (over head pose for faces).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from expose.monitor.errors import ConfigError, ExposeError

InputT_contra = TypeVar("InputT_contra", contravariant=True)


@runtime_checkable
class Embedder(Protocol[InputT_contra]):
    """Maps inputs to identity descriptors; equal inputs give bit-identical vectors."""

    @property
    def name(self) -> str:
        """The registry name, stored with reference descriptors so a profile is never
        compared with vectors from another network."""
        ...

    @property
    def dim(self) -> int: ...

    def embed(self, items: Sequence[InputT_contra]) -> np.ndarray:
        """(N,) inputs -> (N, dim) float32 descriptors, one per input, in order."""
        ...


EmbedderFactory = Callable[..., Embedder[Any]]

# modality ("face", "voice") -> name -> a factory, or "module:attribute" naming one
_REGISTRY: dict[str, dict[str, EmbedderFactory | str]] = {
    "face": {"dlib-resnet": "expose.monitor.features.face_id:DlibFaceEmbedder"},
    "voice": {"ge2e": "expose.monitor.features.voice_id:VoiceEncoder"},
    "appearance": {"difffake-sbi": "expose.monitor.features.appearance:AppearanceEmbedder"},
}


def register_embedder(modality: str, name: str, factory: EmbedderFactory | str) -> None:
    """Make ``create_embedder(modality, name, ...)`` call ``factory(...)``; a string
    ``"package.module:attribute"`` is imported on first use."""
    _REGISTRY.setdefault(modality, {})[name] = factory


def available_embedders(modality: str) -> list[str]:
    return sorted(_REGISTRY.get(modality, {}))


def create_embedder(modality: str, name: str, **options: Any) -> Embedder[Any]:
    """The embedder registered as ``name`` for ``modality``, built with ``options``.

    Raises ConfigError naming the known embedders when ``name`` is not registered; the
    factory raises AssetError when its model files are missing.
    """
    return _resolve(_entry(modality, name))(**options)


def _entry(modality: str, name: str) -> EmbedderFactory | str:
    entry = _REGISTRY.get(modality, {}).get(name)
    if entry is None:
        known = ", ".join(available_embedders(modality)) or "none"
        raise ConfigError(f"unknown {modality} embedder {name!r} (known: {known})")
    return entry


def _resolve(entry: EmbedderFactory | str) -> EmbedderFactory:
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
    return entry


class EmbedderWorkerError(ExposeError):
    """The embedder worker process died twice in a row on the same call."""


# ---- embedders in a worker process -----------------------------------------------------

_pool_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_built: dict[tuple[Any, ...], Embedder[Any]] = {}  # in the worker: embedders by (modality, name, options)


def _worker_count() -> int:
    """One worker per two cores: a descriptor is ~0.1 core-second per face, once a second
    per stream, so one worker serves about ten streams and leaves the cores to featurizing."""
    return max(1, (os.cpu_count() or 1) // 2)


def _shared_pool(broken: ProcessPoolExecutor | None = None) -> ProcessPoolExecutor:
    """The process's embedder pool; a new one when ``broken`` is the current one."""
    global _pool
    with _pool_lock:
        if _pool is not None and _pool is broken:
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None
        if _pool is None:
            _pool = ProcessPoolExecutor(_worker_count(), mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_watch_parent, initargs=(os.getpid(),))
        return _pool


def _watch_parent(parent: int) -> None:
    """In the worker: exit when the process that started it is gone. A pool's workers are
    only joined by the interpreter's exit hooks, which a multiprocessing child (a live worker
    process) or a killed process never runs: without this they lived on, orphaned."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _in_worker(key: tuple[Any, ...]) -> Embedder[Any]:
    if key not in _built:
        entry, options = key
        _built[key] = _resolve(entry)(**dict(options))
    return _built[key]


def _worker_describe(key: tuple[Any, ...]) -> tuple[str, int]:
    embedder = _in_worker(key)
    return embedder.name, embedder.dim


def _worker_embed(key: tuple[Any, ...], items: list[Any]) -> np.ndarray:
    return np.asarray(_in_worker(key).embed(items), dtype=np.float32)


class IsolatedEmbedder:
    """``Embedder`` that runs the registered embedder ``name`` in the shared worker process.

    Building it builds the embedder in the worker, so missing model files raise their
    AssetError here, as in-process. Thread-safe: calls from several streams queue at the
    pool. Inputs and outputs are pickled (a face input carries its frame: ~1 ms for 512 x 512).
    """

    def __init__(self, modality: str, name: str, **options: Any) -> None:
        # The registry entry travels to the worker (a spawned process has only the built-in
        # registrations): a "module:attribute" string, or a factory that pickles by reference.
        self._key = (_entry(modality, name), tuple(sorted(options.items())))
        self._label = f"{modality} embedder {name!r}"
        self.name, self.dim = self._call(_worker_describe)

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        return self._call(_worker_embed, list(items))  # type: ignore[no-any-return]

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        pool = _shared_pool()
        try:
            return pool.submit(fn, self._key, *args).result()
        except BrokenProcessPool:  # the worker died (killed, out of memory): once more on a new one
            pool = _shared_pool(broken=pool)
            try:
                return pool.submit(fn, self._key, *args).result()
            except BrokenProcessPool:
                raise EmbedderWorkerError(f"the worker process of the {self._label} died twice in a row") from None


def pairwise_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, D), (M, D) -> (N, M) Euclidean distances, computed in float64 so that the
    result does not depend on how the rows were batched."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    return np.sqrt(np.maximum(((a64[:, None, :] - b64[None, :, :]) ** 2).sum(-1), 0.0))


SetDistance = Literal["knn", "centroid"]


def reference_distances(probes: np.ndarray, references: np.ndarray, method: SetDistance = "knn",
                        k: int = 3) -> np.ndarray:
    """(N, D) probe descriptors, (M, D) references -> (N,) distance of each probe to the set.

    ``knn``: mean of the ``k`` smallest distances to the references (``min(k, M)``): a
    probe near one enrolled pose counts as near, yet one stray reference cannot vouch
    for a stranger on its own. ``centroid``: distance to the mean reference.
    """
    if probes.ndim != 2 or references.ndim != 2 or probes.shape[1] != references.shape[1]:
        raise ValueError(f"need (N, D) probes and (M, D) references, got {probes.shape} and {references.shape}")
    if len(references) == 0:
        raise ValueError("the reference set is empty")
    if method == "centroid":
        return pairwise_l2(probes, references.mean(axis=0, keepdims=True))[:, 0]
    if method == "knn":
        d = np.sort(pairwise_l2(probes, references), axis=1)  # (N, M)
        return d[:, : max(1, min(k, d.shape[1]))].mean(axis=1)
    raise ValueError(f"unknown set distance {method!r}")


def farthest_point_order(points: np.ndarray, k: int, first: int = 0) -> np.ndarray:
    """Indices of ``k`` rows of ``points`` (N, D) chosen greedily, each the farthest from
    those already chosen, starting at ``first``: a deterministic spread-out subset (ties
    go to the lower index)."""
    n = len(points)
    if n == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    pts = np.asarray(points, dtype=np.float64)
    chosen = [int(first)]
    nearest = np.linalg.norm(pts - pts[first], axis=1)  # (N,) distance to the chosen set
    while len(chosen) < min(k, n):
        i = int(np.argmax(nearest))
        if nearest[i] <= 0.0:
            break  # only duplicates of chosen points are left
        chosen.append(i)
        nearest = np.minimum(nearest, np.linalg.norm(pts - pts[i], axis=1))
    return np.array(chosen, dtype=np.int64)

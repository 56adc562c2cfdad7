"""The onnxruntime scorer backend against the torch one: the denoiser exported to ONNX
(model/onnx_export.py), its metadata, the same scores on real windows within a stated
tolerance, any batch size, the backend names, and ``expose export-onnx``'s errors.

Parity measured on the starter model, 18 windows of real/bobmenendez/hdtf_000.mp4 (hop 8)
against a training identity's tokens and a 4-member cohort (2026-12-01, torch 2.13 CPU,
onnxruntime 1.32): largest |difference| 8.3e-7 on distances around 3 (2.7e-7 relative),
1.4e-6 on the T-normalised identity term, 1.2e-7 on sync. The tests allow 1e-4 relative
(plus 1e-5 absolute for terms near 0): operator order may differ between runtimes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from expose.monitor.config import STARTER_MODEL
from expose.monitor.errors import ExposeError, ModelFileError
from expose.monitor.features.windows import Window, windows_of
from expose.monitor.model.backends import OrtDenoiser, cached_onnx, make_scorer, resolve_backend
from expose.monitor.model.denoisers import TorchDenoiser, graph_bucket
from expose.monitor.model.exam import Exam, LoadedModel, ModelConfig, load_model, save_model
from expose.monitor.model.onnx_export import export_onnx, read_onnx
from expose.monitor.model.score import Score
from expose.monitor.model.scorer import Scorer, ScoreRequest, nearest_cohort, requests_for

if TYPE_CHECKING:
    from tests.conftest import Clip, Extract, RunCli

CLIP = "real/bobmenendez/hdtf_000.mp4"  # 8 s, a face and speech throughout: 18 windows at hop 8
TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, audio_layers=1, n_identities=3)
FIELDS = ("distance", "identity", "sync", "fit", "identity_mouth", "identity_tnorm", "err_subject", "err_null")
REL, ABS = 1e-4, 1e-5


@pytest.fixture(scope="module")
def starter() -> LoadedModel:
    return load_model(STARTER_MODEL)


@pytest.fixture(scope="module")
def starter_onnx(starter: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "exam-small.onnx"
    export_onnx(starter, path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_model(Exam(TINY), path, {"note": "untrained test model"})
    return load_model(path)


@pytest.fixture(scope="module")
def windows(extract: Extract, clip: Clip) -> list[Window]:
    ws = windows_of(extract(clip(CLIP)), 64, 8)
    assert len(ws) >= 17
    return ws


def _close(a: list[Score], b: list[Score]) -> float:
    """Asserts every term within REL relative (ABS absolute); returns the largest relative difference."""
    worst = 0.0
    assert [s.status for s in a] == [s.status for s in b]
    for x, y in zip(a, b, strict=True):
        for f in FIELDS:
            u, v = getattr(x, f), getattr(y, f)
            assert (u is None) == (v is None), f
            if u is None:
                continue
            assert v == pytest.approx(u, rel=REL, abs=ABS), (f, x.t0)
            worst = max(worst, abs(u - v) / max(abs(u), 1e-12))
    return worst


def test_export_metadata_round_trips(starter: LoadedModel, starter_onnx: Path) -> None:
    data, meta = read_onnx(starter_onnx)
    assert data == starter_onnx.read_bytes()
    assert meta.config == starter.model.cfg
    assert meta.weights == starter.weights
    assert meta.settings == starter.weights.settings()
    assert meta.source_sha256 == starter.sha256
    assert meta.source_name == STARTER_MODEL.name


def test_onnxruntime_scores_equal_torch_on_real_windows(starter: LoadedModel, starter_onnx: Path,
                                                        windows: list[Window]) -> None:
    tokens = starter.model.id_tokens[0].detach().clone()
    cohort = nearest_cohort(starter.model, tokens, 4, exclude=(0,))
    reqs = [ScoreRequest(w, tokens, "p", cohort) for w in windows]
    ref = make_scorer(starter, "torch").score(reqs)
    ort_scorer = make_scorer(starter, "onnxruntime", onnx=starter_onnx)
    assert isinstance(ort_scorer.denoiser, OrtDenoiser)
    got = ort_scorer.score(reqs)
    assert all(s.status == "scored" and s.identity_tnorm is not None for s in ref)
    assert _close(ref, got) < REL


def test_torch_backend_is_the_plain_scorer_bit_for_bit(starter: LoadedModel, windows: list[Window]) -> None:
    reqs = requests_for(windows[:3], starter.model.null_tokens.detach() + 0.05, "p")
    assert make_scorer(starter, "torch").score(reqs) == Scorer.of(starter).score(reqs)


def test_dynamic_batch_sizes_give_the_same_scores(starter: LoadedModel, starter_onnx: Path,
                                                  windows: list[Window]) -> None:
    scorer = make_scorer(starter, "onnxruntime", onnx=starter_onnx)
    reqs = requests_for(windows[:17], starter.model.id_tokens[1].detach().clone(), "p")
    whole = scorer.score(reqs)  # 17 windows: 612 rows in one session run
    ones = [s for r in reqs[:3] for s in scorer.score([r])]
    threes = [s for i in range(0, 17, 3) for s in scorer.score(reqs[i: i + 3])]
    _close(whole[:3], ones)
    _close(whole, threes)


def test_tiny_untrained_model_exports_and_agrees(tiny: LoadedModel, windows: list[Window], tmp_path: Path) -> None:
    data = cached_onnx(tiny, tmp_path)  # exported into the cache
    assert read_onnx(data)[1].config == TINY
    (cached,) = (tmp_path / "onnx").iterdir()
    assert tiny.sha256[:32] in cached.name
    stamp = cached.stat().st_mtime_ns
    assert cached_onnx(tiny, tmp_path) == data and cached.stat().st_mtime_ns == stamp  # read back, not redone
    reqs = requests_for(windows[:5], tiny.model.null_tokens.detach() + 0.1, "p")
    _close(make_scorer(tiny, "torch").score(reqs), make_scorer(tiny, "onnxruntime", onnx=data).score(reqs))


def test_onnx_of_another_checkpoint_or_not_onnx_is_refused(tiny: LoadedModel, starter_onnx: Path,
                                                           tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="another checkpoint"):
        make_scorer(tiny, "onnxruntime", onnx=starter_onnx)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with pytest.raises(ModelFileError, match="unreadable ONNX"):
        read_onnx(junk)
    with pytest.raises(ModelFileError, match="not found"):
        read_onnx(tmp_path / "missing.onnx")


def test_backend_names() -> None:
    cpu = torch.device("cpu")
    assert resolve_backend("torch", cpu) == "torch"
    assert resolve_backend("onnxruntime", cpu) == "onnxruntime"
    assert resolve_backend("auto", cpu) in ("torch", "onnxruntime")
    with pytest.raises(ExposeError, match="unknown scorer backend"):
        resolve_backend("tensorrt", cpu)
    assert [graph_bucket(n) for n in (1, 32, 33, 612, 1152)] == [32, 32, 64, 1024, 2048]


def test_export_onnx_command(run_cli: RunCli, tiny: LoadedModel, tmp_path: Path) -> None:
    out = tmp_path / "tiny.onnx"
    done = run_cli("export-onnx", "--model", tiny.path, "--out", out, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_onnx(out)[1].source_sha256 == tiny.sha256
    assert tiny.sha256[:12] in done.stdout
    missing = run_cli("export-onnx", "--model", tmp_path / "nope.safetensors", "--out", out)
    assert missing.returncode == 2 and "model file not found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    invalid = run_cli("export-onnx", "--model", bad, "--out", tmp_path / "bad.onnx")
    assert invalid.returncode == 2 and "unreadable model file" in invalid.stderr
    assert len(invalid.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad.onnx").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_backends_agree_with_the_cpu(starter: LoadedModel, starter_onnx: Path, windows: list[Window]) -> None:
    """bf16 autocast and CUDA graphs (torch), IOBinding (onnxruntime-gpu): close to the CPU's
    float32 scores (bf16: a looser tolerance), and the same at any batch size."""
    cuda = torch.device("cuda")
    reqs = requests_for(windows[:17], starter.model.id_tokens[0].detach().clone(), "p")
    ref = Scorer.of(load_model(STARTER_MODEL)).score(reqs)
    fast = make_scorer(load_model(STARTER_MODEL), "torch", cuda)
    assert isinstance(fast.denoiser, TorchDenoiser) and fast.denoiser.fast
    got = fast.score(reqs)
    for a, b in zip(ref, got, strict=True):
        assert b.distance == pytest.approx(a.distance, rel=0.05, abs=0.05)
    again = [s for i in range(0, 17, 3) for s in fast.score(reqs[i: i + 3])]  # other graph buckets
    for a, b in zip(got, again, strict=True):
        assert b.distance == pytest.approx(a.distance, rel=0.02, abs=0.02)
    ort_cuda = make_scorer(load_model(STARTER_MODEL), "onnxruntime", cuda, onnx=starter_onnx)
    assert isinstance(ort_cuda.denoiser, OrtDenoiser)
    if not ort_cuda.denoiser.cuda:
        pytest.skip("onnxruntime has no CUDA provider here (pip install expose[gpu])")
    for a, b in zip(ref, ort_cuda.score(reqs), strict=True):  # TF32 matmuls on the GPU: 1e-3
        assert b.distance == pytest.approx(a.distance, rel=1e-3, abs=1e-3)

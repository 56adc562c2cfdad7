"""The EXAM denoiser as ONNX: what the scorer runs per batch, for the onnxruntime backend.

The scorer's cost is one batched forward pass of the denoiser over every (window, time,
draw, branch): (noisy expression windows x_t (B, T, D), diffusion times t (B,), encoded
audio audio_h (B, T, d), identity tokens (B, K, d)) -> the predicted clean windows x0_hat
(B, T, D). That call, ``Exam.forward``, is what is exported, with a dynamic batch axis; the
rest (normalisation, the audio encoder, run once per window, noising and the errors) stays
in torch (model/scorer.py), shared by every backend.

The file carries in its ``metadata_props`` the model config, the checkpoint's fusion weights
and the score settings they imply, and the source checkpoint's sha256, so a loader can check
that it belongs to the base model it is used with and needs nothing else to know what it is.
Export needs ``onnx`` and ``onnxscript`` (torch's exporter); reading needs onnxruntime only.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from expose.monitor.errors import ExposeError, ModelFileError
from expose.monitor.model.exam import Exam, LoadedModel, ModelConfig
from expose.monitor.model.score import FusionWeights, ScoreSettings

ONNX_FORMAT = "expose-exam-denoiser-1"
INPUTS = ("x_t", "t", "audio_h", "tokens")
OUTPUT = "x0_hat"
OPSET = 20


class _Denoise(nn.Module):
    """``Exam.forward`` alone (the module's other methods are not traced)."""

    def __init__(self, model: Exam) -> None:
        super().__init__()
        self.model = model

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, audio_h: torch.Tensor,
                tokens: torch.Tensor) -> torch.Tensor:
        return self.model(x_t, t, audio_h, tokens)


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported denoiser says about itself (its ``metadata_props``)."""

    config: ModelConfig
    weights: FusionWeights
    settings: ScoreSettings
    source_sha256: str
    source_name: str
    torch_version: str

    def props(self) -> dict[str, str]:
        return {"format": ONNX_FORMAT, "config": json.dumps(asdict(self.config)),
                "score_weights": self.weights.model_dump_json(),
                "score_settings": json.dumps(asdict(self.settings)),
                "source_sha256": self.source_sha256, "source_name": self.source_name,
                "torch_version": self.torch_version}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str) -> OnnxMetadata:
        if props.get("format") != ONNX_FORMAT:
            raise ModelFileError(f"{where}: not an expose ONNX denoiser (format {props.get('format')!r})")
        try:
            settings = json.loads(props["score_settings"])
            settings["times"] = tuple(settings["times"])
            return cls(ModelConfig(**json.loads(props["config"])),
                       FusionWeights.model_validate_json(props["score_weights"]), ScoreSettings(**settings),
                       props["source_sha256"], props.get("source_name", ""), props.get("torch_version", ""))
        except Exception as err:  # noqa: BLE001 (missing key, bad JSON, unknown field: one message)
            raise ModelFileError(f"{where}: damaged ONNX metadata ({type(err).__name__}: {err})") from None


def metadata_of(base: LoadedModel) -> OnnxMetadata:
    return OnnxMetadata(base.model.cfg, base.weights, base.weights.settings(), base.sha256, base.path.name,
                        torch.__version__)


def export_onnx(base: LoadedModel, out: Path | None = None) -> bytes:
    """The base model's denoiser as an ONNX model (bytes; also written atomically to ``out``)."""
    try:
        import onnx  # noqa: F401  (the exporter needs both; a clear message when they are missing)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExposeError(f"ONNX export needs the onnx and onnxscript packages ({err}); "
                          "pip install onnx onnxscript") from None
    model = copy.deepcopy(base.model).cpu().eval()
    cfg = model.cfg
    n = 2  # example batch; the batch axis is dynamic (1..)
    example = (torch.zeros(n, cfg.window, cfg.expr_dim), torch.full((n,), 0.5),
               torch.zeros(n, cfg.window, cfg.d_model), torch.zeros(n, cfg.n_id_tokens, cfg.d_model))
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" notices on stderr
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and "axis name" notices
            program = torch.onnx.export(_Denoise(model), example, dynamo=True, input_names=list(INPUTS),
                                        output_names=[OUTPUT], dynamic_shapes=tuple({0: batch} for _ in INPUTS),
                                        opset_version=OPSET, verbose=False)
    finally:
        quiet.setLevel(level)
    if program is None:  # only the legacy exporter writes to a file and returns None
        raise ExposeError("torch.onnx.export returned no program")
    proto = program.model_proto
    del proto.metadata_props[:]
    for key, value in metadata_of(base).props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data: bytes = proto.SerializeToString()
    if out is not None:
        out = Path(out)
        tmp = out.with_name(f"{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # concurrent exporters
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            tmp.replace(out)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise ExposeError(f"cannot write {out}: {err.strerror or err}") from None
    return data


def read_onnx(source: bytes | Path) -> tuple[bytes, OnnxMetadata]:
    """An exported denoiser's bytes and metadata, checked (ModelFileError: missing, not ONNX,
    not one of ours, or not the denoiser's inputs)."""
    import onnxruntime as ort

    where = "ONNX model" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ModelFileError(f"ONNX model file not found: {path}")
        data = path.read_bytes()
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 (onnxruntime raises its own Fail/InvalidGraph types)
        raise ModelFileError(f"{where}: unreadable ONNX model ({str(err).splitlines()[0][:200]})") from None
    meta = OnnxMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map), where)
    names = tuple(i.name for i in session.get_inputs())
    if names != INPUTS or [o.name for o in session.get_outputs()] != [OUTPUT]:
        raise ModelFileError(f"{where}: inputs {names} are not the denoiser's {INPUTS}")
    return data, meta


"""Voice verification: the GE2E speaker encoder that the ``resemblyzer`` wheel ships.

The network and its preprocessing are re-implemented here (a 3-layer LSTM over 40-band
power mel frames, a linear layer, ReLU, L2 norm; Wan et al., "Generalized End-to-End Loss
for Speaker Verification", 2018), matching resemblyzer 0.1.4's ``VoiceEncoder`` and
``wav_to_mel_spectrogram`` (librosa 0.11 ``melspectrogram`` defaults) number for number;
only its pretrained weights file ``pretrained.pt`` is read. Parity, measured on 12 corpus
clips fed to both: mel frames within 2e-7 (relative), embeddings at cosine >= 0.9999999
to resemblyzer's ``embed_utterance``.

Dependency decision: resemblyzer is installed without its dependencies and never
imported. Its metadata requires librosa (with numba, llvmlite, scipy, scikit-learn:
about 380 MB, used only to resample and to build a mel filterbank, both a few lines of
numpy here), ``typing`` (a backport for Python < 3.5) and ``webrtcvad``. That last one is the
reason it cannot be a plain dependency: ``webrtcvad`` 2.0.10 installs the same
``webrtcvad.py`` module as the ``webrtcvad-wheels`` this project uses, overwrites it, and
its version imports ``pkg_resources``, which setuptools >= 81 no longer has; checked in a
fresh venv: after ``pip install resemblyzer`` the project's own ``import webrtcvad``
fails. A ``pyproject.toml`` dependency cannot say "without its dependencies", so the
setup installs the wheel with ``pip install --no-deps "resemblyzer==0.1.4"``.

Where the weights come from, in order: the path the caller passes (config), env
``EXPOSE_VOICE_MODEL``, then ``pretrained.pt`` inside the installed resemblyzer package,
found with ``importlib.util.find_spec`` (which locates the package without executing its
``__init__``, which would import librosa and webrtcvad). A missing or unreadable file
raises ``AssetError`` with one line that says how to provide it.

Input: 16 kHz mono float32 speech, only the ticks the VAD marks as speech
(``speech_only`` keeps them from a span and its per-tick speech activity; resemblyzer
likewise cuts long silences out before embedding). It is cut into partial utterances of
1.6 s, 77 frames apart (resemblyzer's rate of 1.3 per second), each embedded, and their
mean re-normalised. Less than ``min_speech_s`` (default 2 s, more than one partial) gives
``None`` from ``embed_speech`` / ``embed_span`` and ``InsufficientSpeech`` from the
batched ``embed``: the caller reports ``insufficient``, never authentic.

Threads: the encoder is a small recurrent net whose per-step matrix products are too
small to share between cores. On the 2-core dev machine, with other work running, one
thread took 14 ms per second of speech and two threads 90-580 ms (OpenMP workers waiting
on each other and on the other processes). torch's intra-op thread count is
process-wide, so the encoder sets it to one only for the duration of its own forward
pass (``torch_threads``, under a lock) and restores it afterwards; while that runs,
other torch work in the process sees the same count. ``threads=None`` leaves the count
alone (for a worker process that set it once at start).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from expose.monitor.errors import AssetError
from expose.monitor.features.audio import SPEECH_THRESHOLD
from expose.monitor.features.face_model import sha256_file
from expose.monitor.features.timeline import SAMPLES_PER_FRAME
from expose.monitor.media.reader import AUDIO_RATE

ENV_VAR = "EXPOSE_VOICE_MODEL"
PACKAGE = "resemblyzer"
WEIGHTS_NAME = "pretrained.pt"
INSTALL_HINT = f'pip install --no-deps "{PACKAGE}==0.1.4"'

# resemblyzer.hparams, and the librosa defaults its melspectrogram call relies on.
N_MELS = 40
N_FFT = 400  # 25 ms window (win_length = n_fft)
HOP = 160  # 10 ms
PARTIAL_FRAMES = 160  # 1.6 s of mel frames per partial utterance
PARTIAL_RATE = 1.3  # partials per second: a step of 77 frames, about half a partial
MIN_COVERAGE = 0.75  # the last partial is kept when at least this much of it is audio
TARGET_DBFS = -30.0  # quiet audio is raised to this level, loud audio is left alone
HIDDEN = 256
LAYERS = 3
DIM = 256
DEFAULT_MIN_SPEECH_S = 2.0  # above one partial (1.6 s), so a verdict never rests on zero padding
_BATCH = 64  # partials per forward pass, so hours of enrollment speech use bounded memory


# ---- weights -------------------------------------------------------------------------

def find_voice_weights(configured: Path | None = None) -> Path:
    """Path of the GE2E weights, or AssetError saying how to provide them."""
    if configured is not None:
        return _existing(Path(configured).expanduser(), "the configured voice model")
    if env := os.environ.get(ENV_VAR):
        return _existing(Path(env).expanduser(), f"${ENV_VAR}")
    spec = importlib.util.find_spec(PACKAGE)  # locates the package; runs none of its code
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (path := Path(folder) / WEIGHTS_NAME).is_file():
            return path
    raise AssetError(
        f"voice encoder weights not found: install them with `{INSTALL_HINT}` "
        f"or set {ENV_VAR}=/path/to/{WEIGHTS_NAME}"
    )


def _existing(path: Path, origin: str) -> Path:
    if not path.is_file():
        raise AssetError(f"voice encoder weights from {origin} not found: {path}")
    return path


class GE2ENet(nn.Module):
    """resemblyzer's VoiceEncoder network: mel frames -> unit-length speaker embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, DIM)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """(B, T, 40) power mel -> (B, 256) L2-normalised embeddings."""
        _, (hidden, _) = self.lstm(mels)  # hidden: (LAYERS, B, HIDDEN)
        raw = torch.relu(self.linear(hidden[-1]))  # (B, DIM), non-negative
        return raw / torch.linalg.vector_norm(raw, dim=1, keepdim=True)


def load_ge2e(path: Path) -> GE2ENet:
    """The network with the weights of ``path`` (a resemblyzer checkpoint), in eval mode."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint["model_state"]
        # The checkpoint also holds GE2E's training-only similarity scale and bias.
        net = GE2ENet()
        net.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))})
    except Exception as err:  # noqa: BLE001 - any failure means the same thing to the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AssetError(f"cannot load voice encoder weights {path}: {first[:200]}") from None
    return net.eval()


# ---- preprocessing -------------------------------------------------------------------

def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear to 1 kHz, log above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = np.log(6.4) / 27.0
    linear = hz / f_sp
    log = min_log_hz / f_sp + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def slaney_mel_filterbank(sr: int = AUDIO_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                          fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangles on Slaney's mel scale, each scaled to unit
    area ("slaney" norm): librosa.filters.mel with its defaults."""
    fmax = sr / 2 if fmax is None else fmax
    fft_hz = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(fmin)), _hz_to_mel(np.array(fmax)), n_mels + 2))
    width = np.diff(edges)  # (n_mels + 1,)
    ramps = edges[:, None] - fft_hz[None, :]  # (n_mels + 2, F)
    rising = -ramps[:-2] / width[:-1, None]
    falling = ramps[2:] / width[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


_FILTERS = slaney_mel_filterbank()
# scipy.signal.get_window("hann", N_FFT) is the periodic Hann window (fftbins=True).
_WINDOW = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float64)


def ge2e_mel(samples: np.ndarray) -> np.ndarray:
    """(1 + len // HOP, 40) float32 power mel frames (not log), as resemblyzer's
    ``wav_to_mel_spectrogram``: frames centred every 10 ms, zero padding at both ends."""
    padded = np.pad(samples.astype(np.float64), N_FFT // 2)
    n_frames = 1 + len(samples) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]  # (n, N_FFT)
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2  # (n, N_FFT // 2 + 1)
    return (power.astype(np.float32) @ _FILTERS.T).astype(np.float32)


def normalize_volume(samples: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Raise quiet audio to ``target_dbfs`` RMS; leave louder audio as it is (resemblyzer's
    ``normalize_volume(..., increase_only=True)``: the encoder reads power, not log power)."""
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    if rms == 0.0:  # digital silence: nothing to raise (and log10(0) is -inf)
        return samples
    change_db = target_dbfs - 20.0 * np.log10(rms)
    if change_db <= 0:
        return samples
    return (samples * np.float32(10.0 ** (change_db / 20.0))).astype(np.float32)


def partial_slices(n_samples: int) -> list[slice]:
    """Mel-frame ranges of the partial utterances covering ``n_samples`` samples
    (resemblyzer's ``compute_partial_slices`` with rate 1.3 and min_coverage 0.75): at
    least one; the last one may run past the audio (the samples are zero-padded to it)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round(AUDIO_RATE / PARTIAL_RATE / HOP))  # 77
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step))
    last = starts[-1] * HOP
    if len(starts) > 1 and (n_samples - last) / (PARTIAL_FRAMES * HOP) < MIN_COVERAGE:
        starts.pop()
    return [slice(s, s + PARTIAL_FRAMES) for s in starts]


def speech_only(samples: np.ndarray, speech: np.ndarray, threshold: float = SPEECH_THRESHOLD) -> np.ndarray:
    """The samples of the ticks whose speech activity is at least ``threshold``, joined.

    ``samples`` is 16 kHz mono whose sample 0 is the instant of the first of the
    ``len(speech)`` ticks (as ``audio.tick_audio`` takes it); tick k owns the 40 ms
    centred on its instant, the same four 10 ms sub-frames its speech activity was
    measured on. Ticks whose audio lies before sample 0 or past the end give what exists.
    """
    if samples.ndim != 1:
        raise ValueError(f"samples must be 1-D, got shape {samples.shape}")
    keep = np.flatnonzero(np.asarray(speech) >= threshold)
    half = SAMPLES_PER_FRAME // 2
    parts = [samples[max(0, k * SAMPLES_PER_FRAME - half): k * SAMPLES_PER_FRAME + half] for k in keep]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, dtype=np.float32)


# ---- threads -------------------------------------------------------------------------

_THREADS_LOCK = threading.Lock()


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body with torch's intra-op thread count at ``n`` and restore it after
    (process-wide while it runs: torch has no per-call setting). None: leave it alone."""
    if n is None:
        yield
        return
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        if before != n:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if before != n:
                torch.set_num_threads(before)


# ---- the embedder --------------------------------------------------------------------

class InsufficientSpeech(ValueError):
    """Too little speech to embed: the caller reports ``insufficient``, never authentic."""

    def __init__(self, seconds: float, minimum: float) -> None:
        super().__init__(f"{seconds:.2f} s of speech, at least {minimum:.2f} s needed for a voice embedding")
        self.seconds = seconds
        self.minimum = minimum


class VoiceEncoder:
    """``Embedder[np.ndarray]``: GE2E speaker embeddings of 16 kHz mono float32 speech
    (only speech: see ``speech_only``), (256,) float32 unit vectors.

    ``embed_speech`` is the call for one span (None when there is too little speech);
    ``embed`` is the batched ``Embedder`` call and raises ``InsufficientSpeech`` instead,
    since it must return one row per input. Each input is embedded on its own, so a
    vector never depends on what else was in the batch.
    """

    name = "ge2e"
    dim = DIM

    def __init__(self, weights: Path | None = None, min_speech_s: float = DEFAULT_MIN_SPEECH_S,
                 threads: int | None = 1) -> None:
        if min_speech_s <= 0:
            raise ValueError(f"min_speech_s must be positive, got {min_speech_s}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1 or None, got {threads}")
        self.weights_path = find_voice_weights(weights)
        # Recorded with reference voices: ``name`` says which network, this which weights.
        self.weights_sha256 = sha256_file(self.weights_path)
        self.min_speech_s = min_speech_s
        self.threads = threads
        self.net = load_ge2e(self.weights_path)

    def enough_speech(self, samples: np.ndarray) -> bool:
        """Whether ``samples`` hold at least ``min_speech_s`` of audible, finite speech."""
        return (len(samples) >= self.min_speech_s * AUDIO_RATE and bool(np.isfinite(samples).all())
                and bool(np.any(samples)))

    def embed_speech(self, samples: np.ndarray) -> np.ndarray | None:
        """(256,) embedding of one span of speech samples, or None when it holds less than
        ``min_speech_s`` seconds or is silent."""
        samples = _as_samples(samples)
        if not self.enough_speech(samples):
            return None
        return self._embed_one(samples)

    def embed_span(self, samples: np.ndarray, speech: np.ndarray) -> np.ndarray | None:
        """Embedding of the speech ticks of a span (``speech_only``), or None."""
        return self.embed_speech(speech_only(samples, speech))

    def embed(self, items: Sequence[np.ndarray]) -> np.ndarray:
        """(N,) spans of speech samples -> (N, 256) float32; InsufficientSpeech if any span
        is too short (check with ``enough_speech`` or use ``embed_speech``)."""
        rows = []
        for item in items:
            samples = _as_samples(item)
            if not self.enough_speech(samples):
                raise InsufficientSpeech(len(samples) / AUDIO_RATE, self.min_speech_s)
            rows.append(self._embed_one(samples))
        return np.stack(rows) if rows else np.zeros((0, DIM), dtype=np.float32)

    def _embed_one(self, samples: np.ndarray) -> np.ndarray:
        partials = self.embed_partials(samples)
        mean = partials.mean(axis=0)
        return (mean / np.linalg.norm(mean)).astype(np.float32)

    def embed_partials(self, samples: np.ndarray) -> np.ndarray:
        """(P, 256) embeddings of the partial utterances of ``samples`` (no length check)."""
        slices = partial_slices(len(samples))
        wav = normalize_volume(samples)
        end = slices[-1].stop * HOP
        if end >= len(wav):
            wav = np.pad(wav, (0, end - len(wav)))
        mel = ge2e_mel(wav)  # (frames, 40)
        mels = np.stack([mel[s] for s in slices])  # (P, PARTIAL_FRAMES, 40)
        out = []
        with torch_threads(self.threads), torch.inference_mode():
            for i in range(0, len(mels), _BATCH):
                out.append(self.net(torch.from_numpy(mels[i: i + _BATCH])).numpy())
        return np.concatenate(out).astype(np.float32)


def _as_samples(item: np.ndarray) -> np.ndarray:
    samples = np.asarray(item, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"speech samples must be 1-D, got shape {samples.shape}")
    return samples

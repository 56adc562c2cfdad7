"""The 25 fps timeline: the one implementation of its rules, used by offline extraction
(``extract``) and by live featurising (``stream``) alike, so that a live window equals the
offline window at the same start.

Video: tick k is the instant ``k / FPS`` s from the media origin, and a frame at time t
lands on tick ``floor(t * FPS + 0.5)``. Only the first frame landing on a tick is kept (a
50 fps source costs no more than a 25 fps one); ticks that no frame lands on (sources
below 25 fps, VFR gaps) are linearly interpolated from their neighbours when the gap is
at most ``MAX_INTERPOLATED_GAP`` ticks and both neighbours have a face, otherwise they
are face-absent.

Audio: sample 0 is time 0; a chunk at time t starts at sample ``round(t * AUDIO_RATE)``;
samples before the origin are dropped and, where chunks overlap, the later one wins.
Tick k's instant is sample ``k * SAMPLES_PER_FRAME``, and its audio is described on
``SUBFRAMES_PER_FRAME`` sub-frames of 10 ms (the mel hop, the VAD frame and the phone
decoder's frame; ``audio`` says where they sit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from expose.monitor.media.reader import AUDIO_RATE, AudioChunk

FPS = 25
SAMPLES_PER_FRAME = AUDIO_RATE // FPS  # 640
SUBFRAME = AUDIO_RATE // 100  # 10 ms of samples
SUBFRAMES_PER_FRAME = SAMPLES_PER_FRAME // SUBFRAME  # 4
MAX_INTERPOLATED_GAP = 3
# Ticks beyond a span that can decide how its gaps are filled: a gap of at most
# MAX_INTERPOLATED_GAP ticks plus the neighbour that ends it.
INTERPOLATION_REACH = MAX_INTERPOLATED_GAP + 1


def tick_of(t: float) -> int:
    """The tick a frame at time ``t`` (seconds from the origin) lands on."""
    return int(np.floor(t * FPS + 0.5))


def sample_of(t: float) -> int:
    """The sample an audio chunk at time ``t`` starts at."""
    return int(round(t * AUDIO_RATE))


def interpolate_gaps(expr: np.ndarray, mask: np.ndarray, missing: list[bool]) -> None:
    """Fill short runs of ticks with no frame between two ticks that have a face."""
    n, k = len(mask), 0
    while k < n:
        if not missing[k]:
            k += 1
            continue
        start = k
        while k < n and missing[k]:
            k += 1
        before, after = start - 1, k
        if before >= 0 and after < n and mask[before] and mask[after] and k - start <= MAX_INTERPOLATED_GAP:
            for j in range(start, k):
                w = (j - before) / (after - before)
                expr[j] = (1 - w) * expr[before] + w * expr[after]
                mask[j] = True


@dataclass(frozen=True)
class VideoRows:
    """Per-tick expression rows of consecutive ticks."""

    expression: np.ndarray  # (N, D) float32; zero where there is no face
    face_mask: np.ndarray  # (N,) bool: a face, landmarked or interpolated
    observed: np.ndarray  # (N,) bool: a face landmarked on a frame of that tick


class TickRows:
    """Expression rows by tick while frames come in, held from tick ``base`` to ``end``.

    A held row of None is a tick with a frame but no face, or a tick no frame landed on.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._rows: list[np.ndarray | None] = []
        self._base = 0

    @property
    def base(self) -> int:
        return self._base

    @property
    def end(self) -> int:
        """One past the last tick a frame landed on (0 before the first frame)."""
        return self._base + len(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def tick_for(self, t: float) -> int | None:
        """The tick a frame at time ``t`` fills, or None when an earlier frame filled it."""
        tick = tick_of(t)
        return tick if tick >= self.end else None

    def put(self, tick: int, row: np.ndarray | None) -> None:
        """Row of a tick from ``tick_for``; the ticks skipped since the last one hold None."""
        if tick < self.end:
            raise ValueError(f"tick {tick} is already filled (rows end at {self.end})")
        self._rows.extend([None] * (tick - self.end))
        self._rows.append(row)

    def drop_before(self, tick: int) -> int:
        """Forget the rows of ticks before ``tick``; returns how many were held."""
        n = min(max(0, tick - self._base), len(self._rows))
        del self._rows[:n]
        self._base += n
        return n

    def span(self, lo: int, hi: int, context: int = 0) -> VideoRows:
        """Rows of ticks [lo, hi), gaps filled from the held ticks up to ``context`` beyond
        either end (``INTERPOLATION_REACH`` gives what the whole timeline gives). Ticks
        that are not held read as having no frame."""
        a = min(lo, max(self._base, lo - context))
        b = max(hi, min(self.end, hi + context))
        expr = np.zeros((b - a, self.dim), dtype=np.float32)
        mask = np.zeros(b - a, dtype=bool)
        missing = []
        for i, tick in enumerate(range(a, b)):
            r = self._rows[tick - self._base] if self._base <= tick < self.end else None
            missing.append(r is None)
            if r is not None:
                expr[i], mask[i] = r, True
        observed = mask.copy()
        interpolate_gaps(expr, mask, missing)
        s = slice(lo - a, hi - a)
        return VideoRows(expression=expr[s], face_mask=mask[s], observed=observed[s])


class SampleBuffer:
    """Audio samples on the timeline, held from sample ``base`` to ``end``."""

    def __init__(self) -> None:
        self._data = np.zeros(0, dtype=np.float32)  # capacity grows by doubling
        self._head = 0  # index in _data of sample ``base``
        self._len = 0
        self._base = 0

    @property
    def base(self) -> int:
        return self._base

    @property
    def end(self) -> int:
        return self._base + self._len

    def __len__(self) -> int:
        return self._len

    def put(self, chunk: AudioChunk) -> None:
        """Place a chunk; what falls before the origin or before ``base`` is dropped."""
        s, start = chunk.samples, sample_of(chunk.time)
        if start < self._base:
            s, start = s[self._base - start:], self._base
        rel = start - self._base
        n = max(self._len, rel + len(s))
        self._reserve(n)
        h = self._head
        if rel > self._len:
            self._data[h + self._len : h + rel] = 0.0  # silence between chunks
        self._data[h + rel : h + rel + len(s)] = s
        self._len = n

    def _reserve(self, n: int) -> None:
        if self._head + n <= len(self._data):
            return
        # Live buffers stay bounded (drop_before), so they are compacted rather than grown.
        data = np.zeros(max(len(self._data), 2 * n), dtype=np.float32)
        data[: self._len] = self._data[self._head : self._head + self._len]
        self._data, self._head = data, 0

    def drop_before(self, sample: int) -> int:
        """Forget the samples before ``sample``; returns how many were held."""
        n = min(max(0, sample - self._base), self._len)
        self._head += n
        self._len -= n
        self._base += n
        return n

    def read(self, a0: int, a1: int) -> np.ndarray:
        """Samples [a0, a1) as float32, silence where none are held."""
        out = np.zeros(a1 - a0, dtype=np.float32)
        lo, hi = max(a0, self._base), min(a1, self.end)
        if hi > lo:
            h = self._head - self._base
            out[lo - a0 : hi - a0] = self._data[h + lo : h + hi]
        return out

    def ticks(self, f0: int, f1: int) -> np.ndarray:
        """The samples from tick f0's instant to tick f1's (the input of ``audio.tick_audio``)."""
        return self.read(f0 * SAMPLES_PER_FRAME, f1 * SAMPLES_PER_FRAME)

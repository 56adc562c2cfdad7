"""Phone posteriors on the 25 fps timeline from a pretrained speech model.

With minutes of training data instead of hundreds of hours, a learned audio encoder
alone barely ties the mouth to the audio. pocketsphinx ships a pretrained English
acoustic model; its all-phone decoder gives phone segments on 10 ms frames (about
20x real time on one core). Phones map to mouth shapes, so they are a strong prior
for the audio-to-expression model, even for other languages (the decoder still
segments speech into the nearest English phones).

Per video frame the result is the fraction of its four 10 ms sub-frames assigned to
each phone (silence and noise fillers count as ``SIL``).
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache

import numpy as np

from expose.monitor.features.timeline import SUBFRAMES_PER_FRAME

PHONES: tuple[str, ...] = (
    "SIL", "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G",
    "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH",
    "UH", "UW", "V", "W", "Y", "Z", "ZH",
)
N_PHONES = len(PHONES)
_INDEX = {p: i for i, p in enumerate(PHONES)}
# pocketsphinx frame i spans [10 i, 10 i + 25) ms (centre +12.5 ms); our sub-frame j is
# centred at 10 j - 15 ms, so frame i lines up with sub-frame i + 3 (2.5 ms apart).
_FRAME_SHIFT = 3


@lru_cache(maxsize=1)
def _model_paths() -> tuple[str, str]:
    from pocketsphinx import get_model_path

    root = get_model_path()
    return os.path.join(root, "en-us", "en-us"), os.path.join(root, "en-us", "en-us-phone.lm.bin")


_local = threading.local()


def _decoder():  # type: ignore[no-untyped-def]
    """This thread's decoder, its feature state reset: the same audio always gives the same
    phones. Left alone, a reused decoder adapts its cepstral normalisation to earlier audio
    (resetting only that mean, ``set_cmn``, still changed 26 of 37 windows); ``reinit_feat``
    rebuilds the feature computation, and a decoder reset that way gave the phones of a new
    one on 44 of 44 random corpus spans (0.1-12 s) and 37 of 37 three-second windows, at
    0.15 s per three-second window instead of 0.27 (building a decoder loads the acoustic
    model: the live featurizer did that for every window). One per thread: a decoder is not
    thread-safe."""
    dec = getattr(_local, "decoder", None)
    if dec is None:
        from pocketsphinx import Decoder

        hmm, phone_lm = _model_paths()
        dec = _local.decoder = Decoder(hmm=hmm, allphone=phone_lm, lw=2.0, pip=0.3, beam=1e-20, pbeam=1e-20,
                                       logfn=os.devnull)
    else:
        dec.reinit_feat()
    return dec


def phone_posteriors(samples: np.ndarray, n_video_frames: int) -> np.ndarray:
    """16 kHz mono float32 (sample 0 = time 0) -> (N, 40) float32 phone fractions per frame."""
    n_sub = n_video_frames * SUBFRAMES_PER_FRAME
    labels = np.zeros(n_sub, dtype=np.int64)  # SIL by default
    if samples.size >= 1600 and n_sub:
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        dec = _decoder()
        dec.start_utt()
        dec.process_raw(pcm, full_utt=True)
        dec.end_utt()
        for seg in dec.seg():
            idx = _INDEX.get(seg.word, 0)
            a = max(0, seg.start_frame + _FRAME_SHIFT)
            b = min(n_sub, seg.end_frame + 1 + _FRAME_SHIFT)
            if b > a:
                labels[a:b] = idx
    onehot = np.zeros((n_sub, N_PHONES), dtype=np.float32)
    onehot[np.arange(n_sub), labels] = 1.0
    return onehot.reshape(n_video_frames, SUBFRAMES_PER_FRAME, N_PHONES).mean(axis=1)

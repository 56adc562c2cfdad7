"""Media -> FeatureTrack -> Window: the 25 fps timeline and its rules (``timeline``),
MediaPipe expressions and the face-model asset (``expressions``, ``face_model``), log-mel,
speech activity and the audio rows of a span of ticks (``audio``), phone posteriors
(``phones``), the FeatureTrack value type, the Windows cut from it and its file format
(``track``), Windows (``windows``), offline extraction of files (``extract``), live
per-stream featurising (``stream``) and the feature cache (``cache``). Offline and live
use the same rule implementations, so a live window equals the offline one.

May import: media
"""

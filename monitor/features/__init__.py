"""Media -> FeatureTrack -> Window: the 25 fps timeline and its rules (``timeline``),
MediaPipe expressions and the face-model asset (``expressions``, ``face_model``), log-mel,
speech activity and the audio rows of a span of ticks (``audio``), phone posteriors
(``phones``), the FeatureTrack value type, the Windows cut from it and its file format
(``track``), Windows (``windows``), offline extraction of files (``extract``), live
per-stream featurising (``stream``), the feature cache (``cache``), and pretrained
identity embeddings behind one interface (``embedding``): the dlib face descriptor
(``face_id``) and the GE2E speaker encoder (``voice_id``), and which ticks of the timeline
carry them in tracks and windows (``identity``); the appearance network of DiffFake
(``appearance``: face crops, the CNN, its weights file); the face landmarker's networks
converted to ONNX (``tflite_onnx``) and run batched across streams on onnxruntime
(``onnx_face``, ``features.face_backend = "onnx"``). Offline and live use the same rule
implementations, so a live window equals the offline one.

May import: media
"""

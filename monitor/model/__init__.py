"""The EXAM network and scoring: diffusion schedule (``diffusion``), the denoiser in one file
(``exam``), the Score value type (``score``, torch-free), the batched reconstruction scorer
(``scorer``) and its network call per backend (``denoisers``: torch; ``backends``: onnxruntime and
``make_scorer``, the backends by name; ``onnx_export``: the denoiser as ONNX), the fusion of
the score's terms (``fusion``), the smoothing ratios that set live thresholds (``smoothing``),
face and voice verification terms and the fused decision (``verification``), and DiffFake's
pair model over appearance embeddings (``difffake``).

May import: features
"""

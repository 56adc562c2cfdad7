"""The EXAM network and scoring: diffusion schedule (``diffusion``), the denoiser in one file
(``exam``), the Score value type (``score``, torch-free), the batched reconstruction scorer
(``scorer``), the fusion of the score's terms (``fusion``) and the smoothing ratios that set
live thresholds (``smoothing``).

May import: features
"""

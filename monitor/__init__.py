"""expose.monitor: the running system, in subpackages named after the pipeline's stages.

    media -> features -> model -> training | alerts -> evaluation | live -> api -> cli

The base modules here (``errors``, ``config``, ``metrics``) import no stage and may be
imported by every stage. A stage imports only the stages it lists under "May import" in
its own docstring (tests/test_layout.py checks this on the code): lower stages never
import higher ones.
"""

__version__ = "0.1.0"

"""expose.profiles: enrollment (personalising the frozen base model to one subject,
``enroll``), calibration, and the profile store (``store``).

May import: monitor.features, monitor.model, monitor.training
"""

"""Enrollment, personalization, calibration and the profile store."""

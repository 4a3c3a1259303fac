"""Whole-input inference on either backend, benchmarks, and model/environment reports."""

"""Evaluators: run a runtime over a dataset and return a result object (accuracy, LFW, ...)."""

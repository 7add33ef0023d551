"""Turning a model and data into numbers, files and pictures: the evaluator, its sections and
the reports."""

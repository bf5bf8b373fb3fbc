"""Evaluation on suites written apart from the training data (``eval/`` in the repository).

``suites``: the row schema and loader; ``labels``: hand judgements of the squad's outputs, keyed by
a hash of (question, original, output); ``run``: the squad over a suite, saved and reusable;
``report``: the per-criterion figures; ``judge``: an optional pairwise LLM judge over HTTP.
"""
from squad.eval.labels import OutputLabel, load_labels, output_key
from squad.eval.suites import SUITES, SuiteRow, load_suite

__all__ = ["OutputLabel", "SUITES", "SuiteRow", "load_labels", "load_suite", "output_key"]

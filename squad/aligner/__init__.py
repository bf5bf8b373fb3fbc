"""Aligners: rewrite a (question, answer) pair per criterion. The text generation engines
(CTranslate2 by default on CPU, PyTorch as the fallback, vLLM for batch jobs on GPUs) sit behind
one protocol in ``squad.aligner.engine``."""
from squad.aligner.engine import Engine, load_engine
from squad.aligner.rewriter import Aligner

__all__ = ["Aligner", "Engine", "load_engine"]

"""The pure squad: the algorithm every entry point calls, its Correction trace, and the handling of
untrusted text (markup neutralised before prompts, stripped from answers). No models are loaded here."""
from squad.core.algorithm import PairState, SquadPolicy, run_squad
from squad.core.correction import Correction, Step

__all__ = ["Correction", "PairState", "SquadPolicy", "Step", "run_squad"]

"""The supported formats: name -> record converter and the dataset(s) it reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from squad.data.importers.aligner_20k import convert_aligner
from squad.data.importers.hh_rlhf import convert_hh_rlhf
from squad.data.importers.pku_saferlhf import convert_pku_saferlhf
from squad.data.importers.records import ImportOptions, Triple
from squad.data.importers.ultrafeedback import convert_ultrafeedback
from squad.errors import SquadError


@dataclass(frozen=True)
class Format:
    name: str
    convert: Callable[[dict, ImportOptions], Triple]
    dataset: str


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("pku-saferlhf", convert_pku_saferlhf, "PKU-Alignment/PKU-SafeRLHF"),
    Format("hh-rlhf", convert_hh_rlhf, "Anthropic/hh-rlhf"),
    Format("ultrafeedback", convert_ultrafeedback, "openbmb/UltraFeedback, HuggingFaceH4/ultrafeedback_binarized"),
    Format("aligner", convert_aligner, "aligner/aligner-20K"),
)}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise SquadError(f"unknown format {name!r}: expected one of {', '.join(FORMATS)}") from None

"""Hub integration helpers: cards rendered from the Jinja templates in `sane_hf/hub/templates/` (package data)."""

from .cards import DATASET_CARD_TAGS, build_dataset_card, load_template
from .generated_cards import GENERATED_MODEL_TAGS, SAMPLER_DESCRIPTIONS, build_generated_model_card
from .sane_cards import SANE_MODEL_TAGS, build_sane_card, probe_eval_results, write_sane_card, zoo_summary


__all__ = [
    "GENERATED_MODEL_TAGS",
    "SAMPLER_DESCRIPTIONS",
    "build_generated_model_card",
    "DATASET_CARD_TAGS",
    "build_dataset_card",
    "load_template",
    "SANE_MODEL_TAGS",
    "build_sane_card",
    "probe_eval_results",
    "write_sane_card",
    "zoo_summary",
]

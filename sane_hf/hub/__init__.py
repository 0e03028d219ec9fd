"""Hub integration helpers: cards rendered from the Jinja templates in `sane_hf/hub/templates/` (package data)."""

from .cards import DATASET_CARD_TAGS, build_dataset_card, load_template
from .generated_cards import GENERATED_MODEL_TAGS, SAMPLER_DESCRIPTIONS, build_generated_model_card


__all__ = [
    "GENERATED_MODEL_TAGS",
    "SAMPLER_DESCRIPTIONS",
    "build_generated_model_card",
    "DATASET_CARD_TAGS",
    "build_dataset_card",
    "load_template",
]

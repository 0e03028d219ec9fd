"""Hub integration helpers: cards rendered from the Jinja templates in `sane_hf/hub/templates/` (package data)."""

from .cards import DATASET_CARD_TAGS, build_dataset_card, load_template


__all__ = ["DATASET_CARD_TAGS", "build_dataset_card", "load_template"]

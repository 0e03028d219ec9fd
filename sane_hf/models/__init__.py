"""Models of `sane_hf`."""

from .sane import (
    SANE_LAYOUT_NAME,
    SANE_NORMALIZATION_NAME,
    SaneConfig,
    SaneForPreTraining,
    SaneForPreTrainingOutput,
    SaneModel,
    SaneModelOutput,
    SanePreTrainedModel,
    haloed_window_index,
)


__all__ = [
    "SANE_LAYOUT_NAME",
    "SANE_NORMALIZATION_NAME",
    "SaneConfig",
    "SaneForPreTraining",
    "SaneForPreTrainingOutput",
    "SaneModel",
    "SaneModelOutput",
    "SanePreTrainedModel",
    "haloed_window_index",
]

"""Models of `sane_hf`."""

from .sane import (
    SaneConfig,
    SaneForPreTraining,
    SaneForPreTrainingOutput,
    SaneModel,
    SaneModelOutput,
    SanePreTrainedModel,
    haloed_window_index,
)


__all__ = [
    "SaneConfig",
    "SaneForPreTraining",
    "SaneForPreTrainingOutput",
    "SaneModel",
    "SaneModelOutput",
    "SanePreTrainedModel",
    "haloed_window_index",
]

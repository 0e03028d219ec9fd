"""SANE pretraining: two-view augmentation of token windows and the gamma-weighted contrastive + reconstruction loss.

A step, with `permuter = TokenPermuter(layout, permutation_spec_from_module(zoo_model))`:

```python
view_1, view_2 = make_two_views(batch, permuter, generator=generator)  # view 1 canonical, view 2 permuted
out_1 = model(view_1["tokens"], view_1["positions"])
out_2 = model(view_2["tokens"], view_2["positions"])
losses = sane_loss(out_1, out_2, view_1, view_2, gamma=0.05, temperature=0.1)
losses["loss"].backward()
```
"""

from .augmentations import (
    ErasingConfig,
    PretrainingCollator,
    additive_noise,
    augment_tokens,
    make_two_views,
    multiplicative_noise,
    random_erasing,
)
from .configs import PretrainConfig
from .loop import pretrain, train_step
from .losses import (
    RECONSTRUCTION_REDUCTIONS,
    masked_reconstruction_loss,
    nt_xent_loss,
    reconstruction_r2,
    sane_loss,
)


__all__ = [
    "RECONSTRUCTION_REDUCTIONS",
    "PretrainConfig",
    "pretrain",
    "train_step",
    "ErasingConfig",
    "PretrainingCollator",
    "additive_noise",
    "augment_tokens",
    "make_two_views",
    "masked_reconstruction_loss",
    "multiplicative_noise",
    "nt_xent_loss",
    "random_erasing",
    "reconstruction_r2",
    "sane_loss",
]

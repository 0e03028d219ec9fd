"""Task datasets zoo models learn (scikit-learn digits, Hugging Face image datasets) and the training of zoo members:
one at a time (`member_training.py`) or many of one Sequential architecture together (`batched_training.py`).

Example:

```python
>>> import torch
>>> from sane_hf.tasks import evaluate_split, load_task, make_optimizer, train_epoch
>>> from sane_hf.zoo_models import build_zoo_model
>>> task = load_task("digits", seed=0)
>>> _ = torch.manual_seed(0)
>>> model = build_zoo_model("mlp")  # 64 -> 32 -> 32 -> 10
>>> optimizer = make_optimizer("adam", model.parameters(), lr=3e-3)
>>> _ = train_epoch(model, task.train, optimizer, batch_size=32, generator=torch.Generator().manual_seed(0))
>>> evaluate_split(model, *task.test)["acc"] > 0.7
True
```
"""

from .batched_training import supports_batched_training, train_batched
from .datasets import (
    DIGITS_SPLIT_SIZES,
    EMBEDDED_TASKS,
    KNOWN_NORMALIZATIONS,
    NORMALIZATIONS,
    TASK_SPLITS,
    TaskData,
    TaskSplit,
    load_task,
)
from .member_training import DEFAULT_EVAL_BATCH_SIZE, OPTIMIZERS, evaluate_split, make_optimizer, train_epoch


__all__ = [
    "DEFAULT_EVAL_BATCH_SIZE",
    "DIGITS_SPLIT_SIZES",
    "EMBEDDED_TASKS",
    "KNOWN_NORMALIZATIONS",
    "NORMALIZATIONS",
    "TASK_SPLITS",
    "OPTIMIZERS",
    "TaskData",
    "TaskSplit",
    "evaluate_split",
    "load_task",
    "make_optimizer",
    "supports_batched_training",
    "train_batched",
    "train_epoch",
]

"""The permutation symmetries of a zoo (docs/method.md#canonicalization): the spec of its architecture, derived from a
rebuilt member (`zoo_permutation_spec`), which both the converter's canonicalization (every model mapped onto a
reference model by weight matching, SANE §3) and the permutation augmentation of pretraining and probing
(`build_permuter`) use."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from ..tokenization import (
    PermutationSpec,
    TokenPermuter,
    permutation_spec_from_module,
    permute_state_dict,
    weight_matching,
)
from ..zoo_models import build_zoo_model
from .zoo import CheckpointRecord, ZooReader


logger = logging.getLogger(__name__)


def zoo_permutation_spec(
    architecture: str, model_kwargs: Mapping[str, Any] | None
) -> tuple[PermutationSpec, list[str]]:
    """The permutation spec of the registered zoo `architecture` and its state_dict keys, derived from a member
    rebuilt from `model_kwargs` (only shapes and structure are read).

    Raises:
        `ValueError` (or the error `build_zoo_model` raises for bad arguments): the architecture is not registered,
        or its spec cannot be derived (the message names the module that blocks it).
    """
    member = build_zoo_model(architecture, **(model_kwargs or {}))
    return permutation_spec_from_module(member), list(member.state_dict())


def permutation_spec_known(architecture: str | None, model_kwargs: Mapping[str, Any] | None) -> bool:
    """Whether a zoo of `architecture` can be canonicalized: it is registered and its permutation spec derives."""
    if architecture is None or model_kwargs is None:
        logger.info("Not canonicalizing: the zoo does not name a registered architecture (no permutation spec).")
        return False
    try:
        zoo_permutation_spec(architecture, model_kwargs)
    except (ValueError, KeyError, TypeError, NotImplementedError) as err:
        logger.info("Not canonicalizing the %s zoo: its permutation spec cannot be derived (%s).", architecture, err)
        return False
    return True


class Canonicalizer:
    """Per-model weight-matching permutations onto the reference model (docs/method.md#canonicalization).

    The target is the reference model's last converted epoch (a trained network; matching onto an initialization
    would align models by random init weights). Each model's permutation is found once, on its last converted
    epoch that passes the reader's filter, cached (a few small index tensors per model), and applied to every epoch of that model, in both
    passes of the conversion (normalization fit and writing). Every model's matching starts from the same seeded
    generator, so the result does not depend on the order in which models are visited.
    """

    def __init__(self, reader: ZooReader, reference_model_id: str, architecture: str | None, model_kwargs, seed: int):
        if architecture is None or model_kwargs is None:
            raise ValueError(
                f"{reader.path}: canonicalize=True needs the zoo's architecture to derive its permutation spec; "
                "this zoo does not name a registered architecture (convert with canonicalize=False)."
            )
        self.reader = reader
        self.seed = seed
        self.spec, self.keys = zoo_permutation_spec(architecture, model_kwargs)
        self.reference = self._last_finite(reference_model_id)
        self.spec.validate(self.reference)
        self.permutations: dict[str, dict[str, torch.Tensor]] = {}

    def _by_position(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Members may name their keys differently (see `_BatchTokenizer`); the spec uses the architecture's names.
        if list(state_dict) == self.keys:
            return dict(state_dict)
        return dict(zip(self.keys, state_dict.values()))

    def _last_finite(self, model_id: str) -> dict[str, torch.Tensor]:
        member = self.reader.member(model_id)
        for epoch in reversed(self.reader.selected_epochs(member)):
            state_dict = self.reader.load_state_dict(member, epoch)
            # The reader's own filter (SANE §2.2), so the matched epoch is one the conversion keeps.
            if self.reader._filter_reason(state_dict) is None:
                return self._by_position(state_dict)
        raise ValueError(
            f"{member.path}: no checkpoint of model {model_id!r} passes the filter (finite, |w| <= "
            f"{self.reader.weight_threshold}); expected at least one to canonicalize the model with."
        )

    def permutations_of(self, model_id: str) -> dict[str, torch.Tensor]:
        if model_id not in self.permutations:
            generator = torch.Generator().manual_seed(self.seed)
            self.permutations[model_id] = weight_matching(
                self.spec, self.reference, self._last_finite(model_id), generator=generator
            )
        return self.permutations[model_id]

    def __call__(self, records: Iterable[CheckpointRecord]) -> Iterator[CheckpointRecord]:
        for record in records:
            state_dict = self._by_position(record.state_dict)
            permuted = permute_state_dict(state_dict, self.spec, self.permutations_of(record.model_id))
            yield dataclasses.replace(record, state_dict=permuted)


def build_permuter(zoo) -> TokenPermuter:
    """The permutation augmentation of a tokenized zoo (`SaneZooDataset`): a `TokenPermuter` over its layout with the
    spec of its architecture (`zoo_permutation_spec`), for pretraining's second view and for probing.

    Raises:
        `ValueError`: the dataset names no zoo architecture, or its spec cannot be derived; the message says how to
        run without the augmentation.
    """
    if not zoo.info.architecture:
        raise ValueError(
            "The dataset does not name its zoo architecture (meta/info.json `architecture`), so no permutation "
            "augmentation can be derived; pass --permutation_augmentation false."
        )
    try:
        spec, _ = zoo_permutation_spec(zoo.info.architecture, zoo.info.model_kwargs)
    except ValueError as err:
        # E.g. a zoo of transformers model folders (`--zoo_format models`, `bert`, `gpt2`): not a registered zoo
        # architecture, so no member is rebuilt to derive its spec from (the `vit` zoo architecture is; docs/
        # architecture.md#transformer-zoos); SANE still pretrains on it with the other augmentations.
        raise ValueError(
            f"{err} No permutation augmentation can be derived for the zoo architecture "
            f"{zoo.info.architecture!r}; pass --permutation_augmentation false to pretrain without it."
        ) from None
    return TokenPermuter(zoo.layout, spec)

"""Permuting whole state_dicts (the plain, reference way) and git re-basin weight matching / canonicalization
(SANE §3, docs/method.md#canonicalization)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .spec import AxisPermutation, HeadGroup, Permutations, PermutationSpec


logger = logging.getLogger(__name__)


def _block_index(perm: torch.Tensor, block: int) -> torch.Tensor:
    """Expand a permutation of `n` units to the `n * block` entries they own (unit c owns a contiguous block)."""
    if block == 1:
        return perm
    return (perm[..., :, None] * block + torch.arange(block, device=perm.device)).flatten(-2)


def _permute_tensor(
    tensor: torch.Tensor, axis: AxisPermutation, perms: Permutations, skip_axis: int | None = None
) -> torch.Tensor:
    if axis.out_group is not None and skip_axis != 0:
        tensor = tensor.index_select(0, perms[axis.out_group].to(tensor.device))
    if axis.in_group is not None and skip_axis != 1:
        tensor = tensor.index_select(1, _block_index(perms[axis.in_group].to(tensor.device), axis.in_block))
    return tensor


def permute_state_dict(
    state_dict: Mapping[str, torch.Tensor], spec: PermutationSpec, perms: Permutations
) -> dict[str, torch.Tensor]:
    """Apply one permutation per group to a checkpoint (the un-tokenized reference path, docs/method.md#canonicalization).

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): the checkpoint.
        spec (`PermutationSpec`): its permutation spec.
        perms (`dict[str, torch.Tensor]`): one LongTensor `[size]` per group; permuted row r is old row `perm[r]`.

    Returns:
        A new dict in the same key order. Permuted tensors are new; keys no group acts on keep their tensor objects.
    """
    missing = [g for g in spec.groups if g not in perms]
    if missing:
        raise ValueError(f"Missing permutations for groups {missing}.")
    result = {}
    for key, value in state_dict.items():
        axis = spec.axes.get(key)
        result[key] = value if axis is None else _permute_tensor(value, axis, perms)
    return result


def _unit_rows(tensor: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """`tensor` as `[size, -1]`: one row per unit of the group acting on `axis` (blocks of axis 1 included)."""
    if axis == 0:
        return tensor.reshape(size, -1)
    return tensor.reshape(tensor.shape[0], size, -1).transpose(0, 1).reshape(size, -1)


def weight_matching(
    spec: PermutationSpec,
    reference_sd: Mapping[str, torch.Tensor],
    sd: Mapping[str, torch.Tensor],
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    init_perms: Permutations | None = None,
) -> Permutations:
    """Git re-basin weight matching (Ainsworth et al. 2023; docs/method.md#canonicalization): permutations that bring `sd` to
    `reference_sd`.

    Coordinate descent: visit the groups (a head group as one unit) in random order; for a group of size n, build
    `C = sum over its (key, axis) of A_key[axis as rows] @ B_key[axis as rows, other axes permuted].T` and solve the
    linear assignment `max_perm sum_i C[i, perm[i]]` (`scipy.optimize.linear_sum_assignment(maximize=True)`). Stop
    when a full sweep improves no group by more than 1e-12 (the original's threshold), or after `max_iter` sweeps.

    Args:
        spec (`PermutationSpec`): the architecture's spec.
        reference_sd (`Mapping[str, torch.Tensor]`): the reference checkpoint (SANE §6.2 / §2.5).
        sd (`Mapping[str, torch.Tensor]`): the checkpoint to match.
        max_iter (`int`, *optional*, defaults to 100): maximum number of sweeps over all groups.
        generator (`torch.Generator`, *optional*): orders the groups in every sweep (mainly used for testing purposes).
        init_perms (`dict[str, torch.Tensor]`, *optional*): starting point; defaults to the identity.

    Returns:
        `dict[str, torch.Tensor]`: one LongTensor `[size]` per group, such that `permute_state_dict(sd, spec, perms)`
        is aligned with `reference_sd`.
    """
    from scipy.optimize import linear_sum_assignment

    spec.validate(reference_sd)
    spec.validate(sd)
    perms = {g: p.clone().cpu() for g, p in (init_perms or spec.identity_permutations()).items()}
    spec.fill_concatenated(perms)
    group_axes = spec.group_axes
    reference = {k: v.detach().cpu().double() for k, v in reference_sd.items() if k in spec.axes}
    other = {k: v.detach().cpu().double() for k, v in sd.items() if k in spec.axes}
    # Concatenated groups are not matched themselves: their axes add the diagonal blocks of their cost to the cost
    # of each part (a part's unit i is unit offset + i of the concatenation).
    segments: dict[str, list[tuple[str, int]]] = {name: [] for name in spec.groups}
    for name, parts in spec.concat.items():
        offset = 0
        for part in parts:
            segments[part].append((name, offset))
            offset += spec.groups[part]

    def own_cost(name: str) -> torch.Tensor:
        size = spec.groups[name]
        cost = torch.zeros(size, size, dtype=torch.float64)
        for key, axis in group_axes[name]:
            a = _unit_rows(reference[key], axis, size)
            b = _unit_rows(_permute_tensor(other[key], spec.axes[key], perms, skip_axis=axis), axis, size)
            cost += a @ b.T
        return cost

    def group_cost(name: str) -> torch.Tensor:
        cost = own_cost(name)
        size = spec.groups[name]
        for concatenated, offset in segments[name]:
            cost += own_cost(concatenated)[offset : offset + size, offset : offset + size]
        return cost

    def assign(cost: torch.Tensor) -> tuple[torch.Tensor, float]:
        rows, cols = linear_sum_assignment(cost.numpy(), maximize=True)
        return torch.from_numpy(cols.astype(np.int64)), float(cost[rows, cols].sum())

    # Units of the coordinate descent: every free group alone, and every head group as one unit (heads are matched
    # with the best within-head matching of every pair of heads as their score, then the within-head matchings of the
    # chosen pairs are kept; docs/method.md#transformer-symmetries).
    in_heads = {group for head in spec.heads.values() for group in head.groups}
    units: list[str | HeadGroup] = [g for g in spec.groups if g not in in_heads and g not in spec.concat]
    units += list(spec.heads.values())
    for iteration in range(max_iter):
        progress = False
        for unit_index in torch.randperm(len(units), generator=generator, device="cpu").tolist():
            unit = units[unit_index]
            if isinstance(unit, str):
                cost = group_cost(unit)
                new_perm, new_score = assign(cost)
                old_score = cost[torch.arange(spec.groups[unit]), perms[unit]].sum().item()
                new_perms = {unit: new_perm}
            else:
                costs = {group: group_cost(group) for group in unit.groups}
                old_score = sum(c[torch.arange(c.shape[0]), perms[g]].sum().item() for g, c in costs.items())
                n = unit.num_heads
                pair_score = torch.zeros(n, n, dtype=torch.float64)
                within: dict[tuple[str, int, int], torch.Tensor] = {}
                for group, cost in costs.items():
                    b = spec.groups[group] // n
                    for h in range(n):
                        for g in range(n):
                            within[group, h, g], score = assign(cost[h * b : (h + 1) * b, g * b : (g + 1) * b])
                            pair_score[h, g] += score
                head_perm, new_score = assign(pair_score)
                new_perms = {
                    group: torch.cat(
                        [
                            head_perm[h] * (spec.groups[group] // n) + within[group, h, int(head_perm[h])]
                            for h in range(n)
                        ]
                    )
                    for group in unit.groups
                }
            if new_score > old_score + 1e-12:
                progress = True
                perms.update(new_perms)
                spec.fill_concatenated(perms)
        if not progress:
            logger.debug("weight_matching converged after %d sweep(s)", iteration + 1)
            break
    else:
        logger.info("weight_matching stopped after max_iter=%d sweeps without converging", max_iter)
    return perms


def canonicalize(
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    reference: Mapping[str, torch.Tensor],
    spec: PermutationSpec,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    return_permutations: bool = False,
) -> list[dict[str, torch.Tensor]] | tuple[list[dict[str, torch.Tensor]], list[Permutations]]:
    """Map every checkpoint onto `reference` with `weight_matching` (docs/method.md#canonicalization, `map_to_canonical=True`).

    The original matches a model's *last* epoch and applies that permutation to all its epochs; do that with
    `perms = weight_matching(spec, reference, epochs[-1])` and `permute_state_dict(sd, spec, perms)` per epoch.

    Args:
        state_dicts (`Sequence[Mapping[str, torch.Tensor]]`): the checkpoints.
        reference (`Mapping[str, torch.Tensor]`): the reference checkpoint.
        spec (`PermutationSpec`): their permutation spec.
        max_iter (`int`, *optional*, defaults to 100): see `weight_matching`.
        generator (`torch.Generator`, *optional*): see `weight_matching`.
        return_permutations (`bool`, *optional*, defaults to `False`): also return the permutation of each model.

    Returns:
        The canonicalized checkpoints (and, optionally, their permutations).
    """
    canonical, all_perms = [], []
    for state_dict in state_dicts:
        perms = weight_matching(spec, reference, state_dict, max_iter=max_iter, generator=generator)
        canonical.append(permute_state_dict(state_dict, spec, perms))
        all_perms.append(perms)
    return (canonical, all_perms) if return_permutations else canonical

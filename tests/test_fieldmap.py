"""The field-map search: VARPRO cost against direct least squares, the neighbour penalty, region moves."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from cohortscale.backend import gpu_available
from cohortscale.ops import fieldmap
from cohortscale.ops.fatwater import ISMRM_6PEAK, fat_phasor, water_fat_basis
from cohortscale.ops.fieldmap import (
    NEIGHBOUR_PAIRS,
    SGM_DIRECTIONS,
    aggregate,
    coarsen,
    cost_period_hz,
    field_grid,
    field_penalty,
    flip_regions,
    varpro_cost,
)

FREQUENCY_HZ = 63.866e6
PENALTY = {"free_labels": 1, "penalty_per_label": 2.0, "max_penalty": 40.0, "periodic": True}


def field_energy(cost, labels, weights):
    """Σ data cost + Σ pair weight · neighbour penalty, computed pair by pair."""
    rows, cols, n_labels = cost.shape
    total = float(np.take_along_axis(cost, labels[..., None], axis=-1).sum())
    for (dy, dx), distance_weight in NEIGHBOUR_PAIRS:
        for y in range(rows - dy):
            for x in range(max(0, -dx), cols - max(0, dx)):
                weight = distance_weight * min(weights[y, x], weights[y + dy, x + dx])
                change = labels[y, x] - labels[y + dy, x + dx]
                total += weight * float(field_penalty(change, n_labels, **PENALTY))
    return total


@pytest.mark.parametrize("block_bytes", [80, 2**20])
def test_varpro_cost_is_the_least_squares_residual(block_bytes, monkeypatch):
    # 80 bytes hold two voxels' explained energies (3 × 3 float32 each): three blocks, the last one short.
    monkeypatch.setitem(fieldmap.COST_BLOCK_BYTES, "cpu", block_bytes)
    rng = np.random.default_rng(0)
    te = np.array([1.2e-3, 3.2e-3, 5.2e-3, 7.2e-3, 9.2e-3, 11.2e-3])
    phasor = fat_phasor(te, ISMRM_6PEAK, FREQUENCY_HZ)
    signal = (rng.standard_normal((5, te.size)) + 1j * rng.standard_normal((5, te.size))).astype(np.complex64)
    field = np.array([-120.0, 0.0, 75.0])
    r2star = np.array([0.0, 50.0, 400.0])
    cost, best = varpro_cost(signal, te, phasor, field, r2star)
    alone, no_best = varpro_cost(signal, te, phasor, field, r2star, with_best=False)
    assert no_best is None and np.array_equal(alone, cost)
    for v in range(signal.shape[0]):
        for k, psi in enumerate(field):
            residuals = []
            for r2 in r2star:
                decay = np.exp((2j * np.pi * psi - r2) * te)
                design = np.stack([decay, decay * phasor], axis=1)
                amplitudes = np.linalg.lstsq(design, signal[v], rcond=None)[0]
                residuals.append(np.sum(np.abs(signal[v] - design @ amplitudes) ** 2))
            assert cost[v, k] == pytest.approx(min(residuals), rel=1e-4, abs=1e-5)
            assert best[v, k] == int(np.argmin(residuals))


def test_field_grid_spans_one_alias_period_for_uniform_echoes():
    grid = field_grid(np.array([1e-3, 3e-3, 5e-3]), 50, 500.0, 10.0)
    assert grid.periodic
    assert grid.step_hz * 50 == pytest.approx(500.0)
    irregular = field_grid(np.array([1e-3, 2.5e-3, 5e-3]), 50, 300.0, 14.0)
    assert not irregular.periodic
    # ±300 Hz in steps of at most 14 Hz: 22 steps each side.
    assert irregular.values_hz.size == 45
    assert irregular.values_hz[[0, -1]].tolist() == [-300.0, 300.0]
    assert irregular.step_hz == pytest.approx(300.0 / 22)


def test_cost_repeats_when_echo_spacings_share_a_step():
    """Echoes at 1.2, 2.0 and 3.6 ms (a uniform 0.8 ms train with its third echo left out) repeat every
    1,250 Hz; 1.6, 2.4 and 3.9 ms share only 0.1 ms, a period (10 kHz) beyond any search."""
    te = np.array([1.2e-3, 2.0e-3, 3.6e-3])
    assert cost_period_hz(te, 2_554.8) == pytest.approx(1_250.0)
    assert cost_period_hz(np.array([1.6e-3, 2.4e-3, 3.9e-3]), 2_554.8) is None
    grid = field_grid(te, 64, 1_277.4, 10.0)
    assert grid.periodic and grid.values_hz.size == 125 and grid.step_hz == pytest.approx(10.0)
    # The residual itself repeats over that period, for any signal, with free or common phases.
    rng = np.random.default_rng(4)
    signal = rng.standard_normal((50, 3)) + 1j * rng.standard_normal((50, 3))
    phasor = fat_phasor(te, ISMRM_6PEAK, 127.74e6)
    for common_phase in (False, True):
        cost, _ = varpro_cost(signal, te, phasor, np.array([37.0, 37.0 + 1_250.0]), [0.0, 80.0], common_phase)
        assert np.allclose(cost[:, 0], cost[:, 1], rtol=1e-4)


def test_common_phase_cost_against_a_direct_fit(monkeypatch):
    """The closed-form common-phase residual against real least squares over a fine grid of phases."""
    te = np.array([1.6e-3, 2.4e-3, 3.9e-3, 5.0e-3])
    phasor = fat_phasor(te, ISMRM_6PEAK, 127.74e6)
    rng = np.random.default_rng(5)
    signal = rng.standard_normal((20, te.size)) + 1j * rng.standard_normal((20, te.size))
    field_hz, r2star_s = 55.0, 70.0
    cost, _ = varpro_cost(signal, te, phasor, np.array([field_hz]), [r2star_s], common_phase=True)
    design = (
        water_fat_basis(te, ISMRM_6PEAK, 127.74e6) * np.exp((2j * np.pi * field_hz - r2star_s) * te)[:, None]
    )
    stacked = np.concatenate([design.real, design.imag])
    best = np.full(len(signal), np.inf)
    for phase in np.linspace(0, np.pi, 3_601):  # real amplitudes of either sign: half a turn suffices
        turned = signal * np.exp(-1j * phase)
        target = np.concatenate([turned.real, turned.imag], axis=1).T
        fitted = stacked @ np.linalg.lstsq(stacked, target, rcond=None)[0]
        best = np.minimum(best, ((target - fitted) ** 2).sum(axis=0))
    assert np.allclose(cost[:, 0], best, rtol=1e-4)
    # In blocks of three voxels (4 bytes × 3 energies each: free, real and imaginary part), the same costs.
    monkeypatch.setitem(fieldmap.COST_BLOCK_BYTES, "cpu", 40)
    blocked, _ = varpro_cost(signal, te, phasor, np.array([field_hz]), [r2star_s], common_phase=True)
    assert np.array_equal(blocked, cost)
    # Water and fat under one phase fit exactly; with 90° between them only the free fit does.
    for offset, common_residual in ((0.0, 0.0), (np.pi / 2, 0.05)):
        voxel = design @ np.array([0.7 * np.exp(0.4j), 0.3 * np.exp(0.4j + 1j * offset)])
        free, _ = varpro_cost(voxel[None], te, phasor, np.array([field_hz]), [r2star_s])
        common, _ = varpro_cost(voxel[None], te, phasor, np.array([field_hz]), [r2star_s], common_phase=True)
        assert free[0, 0] < 1e-6
        assert (common[0, 0] > common_residual) == (offset > 0)


def test_coarsen_sums_blocks_of_the_tolerant_cost_and_averages_weights():
    rng = np.random.default_rng(3)
    cost = rng.random((2, 5, 7, 9)).astype(np.float32)
    weights = rng.random((2, 5, 7))
    coarse, coarse_weights = coarsen(cost, weights, 2, 1, periodic=False)
    assert coarse.shape == (2, 3, 4, 9) and coarse_weights.shape == (2, 3, 4)
    # Each voxel's cost is its minimum over ±1 label (the grid's ends do not wrap) before the sums.
    tolerant = np.minimum(
        cost,
        np.minimum(
            np.pad(cost, [(0, 0)] * 3 + [(1, 0)], constant_values=np.inf)[..., :-1],
            np.pad(cost, [(0, 0)] * 3 + [(0, 1)], constant_values=np.inf)[..., 1:],
        ),
    )
    assert np.allclose(coarse[1, 0, 2], tolerant[1, 0:2, 4:6].sum(axis=(0, 1)))
    # The last row and column of blocks are padded with zero cost and weight.
    assert np.allclose(coarse[0, 2, 3], tolerant[0, 4, 6])
    assert coarse_weights[0, 2, 3] == pytest.approx(weights[0, 4, 6] / 4)
    assert coarse_weights[1, 1, 0] == pytest.approx(weights[1, 2:4, 0:2].mean())


def test_field_penalty_free_band_slope_cap_and_wrap():
    values = field_penalty(np.array([0, 1, 2, 5, 30, 63]), 64, **PENALTY)
    # |Δ| ≤ 1 free, then 2 per label, capped at 40; 63 labels apart wraps to 1 on a periodic grid.
    assert values.tolist() == [0.0, 0.0, 2.0, 8.0, 40.0, 0.0]


def two_basin_cost(truth, shift, n_labels, truth_cost, alias_cost):
    """Cost volume with a minimum at ``truth`` and another at ``truth + shift`` (mod K), flat elsewhere."""
    rows, cols = truth.shape
    cost = np.full((rows, cols, n_labels), 100.0)
    index = np.indices((rows, cols))
    cost[index[0], index[1], truth % n_labels] = truth_cost
    cost[index[0], index[1], (truth + shift) % n_labels] = alias_cost
    return cost


def aggregate_by_definition(cost, weights, free_labels, penalty_per_label, max_penalty, periodic):
    """Semi-global aggregation voxel by voxel, in float64: along each direction, a voxel's path cost is its
    data cost plus the cheapest move from the previous voxel's path costs (penalty per label beyond the
    free band, capped, times the pair's smaller weight), less the previous voxel's lowest path cost."""
    planes, rows, cols, n_labels = cost.shape
    distance = np.abs(np.subtract.outer(np.arange(n_labels), np.arange(n_labels)))
    if periodic:
        distance = np.minimum(distance, n_labels - distance)
    jump = penalty_per_label * np.maximum(distance - free_labels, 0)  # (label, previous label)
    total = np.zeros(cost.shape)
    for dy, dx in SGM_DIRECTIONS:
        path = np.zeros(cost.shape)
        for z in range(planes):
            for y in range(rows) if dy >= 0 else range(rows - 1, -1, -1):
                for x in range(cols) if dx >= 0 else range(cols - 1, -1, -1):
                    path[z, y, x] = cost[z, y, x]
                    if 0 <= y - dy < rows and 0 <= x - dx < cols:
                        previous = path[z, y - dy, x - dx]
                        pair = min(weights[z, y, x], weights[z, y - dy, x - dx])
                        moves = np.minimum(previous + pair * jump, previous.min() + pair * max_penalty)
                        path[z, y, x] += moves.min(axis=1) - previous.min()
        total += path
    return total


def aggregation_case(periodic: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    cost = rng.uniform(0, 10, size=(2, 5, 7, 9)).astype(np.float32)
    weights = rng.uniform(0, 1, size=(2, 5, 7)).astype(np.float32)
    return (
        cost,
        weights,
        {"free_labels": 1, "penalty_per_label": 1.5, "max_penalty": 4.0, "periodic": periodic},
    )


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize(
    "free_labels, penalty_per_label, max_penalty",
    # The cap reached within a few labels; a free band wider than one doubling step; no cap within the grid
    # (the distance transform's shifts then compose every distance).
    [(1, 1.5, 4.0), (3, 0.7, 9.0), (0, 2.0, 1e4)],
)
def test_aggregation_follows_its_definition(periodic, free_labels, penalty_per_label, max_penalty):
    cost, weights, penalty = aggregation_case(periodic)
    penalty.update(free_labels=free_labels, penalty_per_label=penalty_per_label, max_penalty=max_penalty)
    expected = aggregate_by_definition(cost, weights, **penalty)
    np.testing.assert_allclose(aggregate(cost, weights, **penalty), expected, rtol=1e-5)
    # A plane wider than it is tall, with more labels.
    wide = np.random.default_rng(3).uniform(0, 30, size=(1, 4, 9, 23)).astype(np.float32)
    wide_weights = np.random.default_rng(4).uniform(0, 1, size=(1, 4, 9)).astype(np.float32)
    np.testing.assert_allclose(
        aggregate(wide, wide_weights, **penalty),
        aggregate_by_definition(wide, wide_weights, **penalty),
        rtol=1e-5,
    )


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize(
    "periodic, free_labels, max_penalty", [(True, 1, 4.0), (False, 1, 4.0), (True, 0, 1e4), (False, 3, 4.0)]
)
def test_gpu_aggregation_equals_cpu_bit_for_bit(periodic, free_labels, max_penalty):
    """The CUDA kernel does the CPU kernel's float32 operations in their order: the same volume exactly."""
    import cupy

    cost, weights, penalty = aggregation_case(periodic, seed=1)
    penalty.update(free_labels=free_labels, max_penalty=max_penalty)
    cost = np.concatenate([cost, cost[:, ::-1] * 3], axis=0)  # four planes: a thread block each
    weights = np.concatenate([weights, weights[:, ::-1]], axis=0)
    on_gpu = aggregate(cupy.asarray(cost), cupy.asarray(weights), **penalty)
    assert isinstance(on_gpu, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(on_gpu), aggregate(cost, weights, **penalty))
    # A plane wider than it is tall, and more labels than threads per line.
    rng = np.random.default_rng(2)
    wide = rng.uniform(0, 50, size=(1, 6, 40, 70)).astype(np.float32)
    wide_weights = rng.uniform(0, 1, size=(1, 6, 40)).astype(np.float32)
    np.testing.assert_array_equal(
        cupy.asnumpy(aggregate(cupy.asarray(wide), cupy.asarray(wide_weights), **penalty)),
        aggregate(wide, wide_weights, **penalty),
    )


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("half_width", [0, 1, 2, 3, 6, 11])
def test_label_minimum_filter_is_the_minimum_over_its_window(half_width, periodic):
    values = np.random.default_rng(half_width).uniform(0, 10, size=(2, 3, 12)).astype(np.float32)
    offsets = np.arange(-half_width, half_width + 1)
    labels = np.arange(12)[:, None] + offsets
    inside = (labels >= 0) & (labels < 12) if not periodic else np.ones(labels.shape, dtype=bool)
    windows = np.where(inside, values[..., labels % 12], np.inf)
    expected = windows.min(axis=-1)
    filtered = fieldmap._min_filter(values, half_width, periodic, np)
    assert np.array_equal(filtered, expected)
    assert filtered is not values


@pytest.mark.parametrize("periodic", [True, False])
def test_best_nearby_label_is_the_lowest_cost_in_its_window(periodic):
    rng = np.random.default_rng(3)
    n_labels, window = 12, 2
    # Few distinct values, so that ties occur: the lowest offset wins them.
    cost = rng.integers(0, 4, size=(400, n_labels)).astype(np.float32)
    centre = rng.integers(-2 * n_labels, 3 * n_labels, size=400)
    # Every other voxel, through the ``voxels`` argument: rows of the cost other than the first ones.
    voxels = np.arange(0, 400, 2)
    label, value = fieldmap._best_nearby(cost, centre[voxels], window, periodic, voxels)
    cost, centre = cost[voxels], centre[voxels]
    for v in range(cost.shape[0]):
        candidates = centre[v] + np.arange(-window, window + 1)
        if periodic:
            candidates %= n_labels
        candidates = candidates[(candidates >= 0) & (candidates < n_labels)]
        if candidates.size == 0:  # the window is off the grid
            assert value[v] == np.inf
            assert label[v] == np.clip(centre[v] - window, 0, n_labels - 1)
            continue
        first_lowest = candidates[np.argmin(cost[v, candidates])]
        assert (label[v], value[v]) == (first_lowest, cost[v, first_lowest])


@pytest.mark.parametrize("periodic", [True, False])
def test_island_on_the_alias_rejoins_its_surroundings(periodic):
    n_labels, shift = 64, 20
    truth = (np.arange(12)[None, :] + np.arange(10)[:, None]) // 3 + 10  # a smooth ramp
    cost = two_basin_cost(truth, shift, n_labels, truth_cost=0.0, alias_cost=1.0)
    # Inside the island the alias fits each voxel slightly better (model mismatch): the truth only wins
    # there through smoothness, which 1-D path aggregation can miss.
    island = np.s_[3:6, 4:8]
    cost[island] = two_basin_cost(truth[island], shift, n_labels, truth_cost=1.0, alias_cost=0.0)
    weights = np.ones(truth.shape)
    start = truth.copy()
    start[island] += shift
    penalty = {**PENALTY, "periodic": periodic}
    # Near the top of a non-periodic grid one of the shifts leaves it: that move is never taken.
    moved = flip_regions(cost, start, weights, (shift, -shift, 50), max_rounds=10, **penalty)
    assert np.array_equal(moved, truth)
    assert field_energy(cost, moved, weights) < field_energy(cost, start, weights)


def test_region_with_strong_evidence_keeps_its_alias():
    n_labels, shift = 64, 20
    truth = np.full((10, 12), 30)
    cost = two_basin_cost(truth, shift, n_labels, truth_cost=0.0, alias_cost=40.0)
    # Within the island the alias fits far better than its border costs: it stays.
    island = np.s_[2:8, 3:9]
    cost[island] = two_basin_cost(truth[island], shift, n_labels, truth_cost=60.0, alias_cost=0.0)
    start = truth.copy()
    start[island] += shift
    weights = np.ones(truth.shape)
    moved = flip_regions(cost, start, weights, (shift, -shift), max_rounds=10, **PENALTY)
    assert np.array_equal(moved, start)


def test_islands_move_before_the_region_around_them():
    """Many alias islands in one region: moving the islands, not the region, is the better way down."""
    n_labels, shift = 64, 20
    rng = np.random.default_rng(1)
    truth = np.full((24, 24), 12)
    cost = two_basin_cost(truth, shift, n_labels, truth_cost=0.0, alias_cost=0.3)
    start = truth.copy()
    islands = rng.random(truth.shape) < 0.1
    start[islands] += shift
    weights = np.ones(truth.shape)
    moved = flip_regions(cost, start, weights, (shift, -shift), max_rounds=20, **PENALTY)
    assert np.array_equal(moved, truth)


def test_moves_never_raise_the_energy():
    rng = np.random.default_rng(2)
    cost = rng.uniform(0, 10, (8, 9, 32))
    start = rng.integers(0, 32, (8, 9))
    weights = rng.uniform(0, 1, (8, 9))
    settled = flip_regions(cost, start, weights, (), max_rounds=1, **PENALTY)
    moved = flip_regions(cost, start, weights, (11, -11), max_rounds=10, **PENALTY)
    assert field_energy(cost, moved, weights) <= field_energy(cost, settled, weights) + 1e-9


def regions_moved_from_scratch(cost, start, weights, shifts, penalty, max_rounds, min_link_weight):
    """The region moves as specified, every gain an energy difference of the whole plane, every round anew.

    Regions: voxels linked by neighbour pairs whose field differs by at most ``free_labels + 1`` and whose
    pair weight is at least ``min_link_weight``. A move shifts a region's voxels by one of ``shifts`` to
    the lowest cost within the free band (ties to the lowest offset; +inf off the grid), and is applied
    where it lowers the energy by more per voxel than any neighbouring region's best move.
    """
    rows, cols, n_labels = cost.shape
    window = max(penalty["free_labels"], 1)
    pairs = [
        ((y, x), (y + dy, x + dx), w)
        for (dy, dx), w in NEIGHBOUR_PAIRS
        for y in range(rows - dy)
        for x in range(max(0, -dx), cols - max(0, dx))
    ]

    def energy(labels, data):
        total = sum(data[y, x, labels[y, x]] for y in range(rows) for x in range(cols))
        for p, q, w in pairs:
            change = labels[p] - labels[q]
            total += w * min(weights[p], weights[q]) * float(field_penalty(change, n_labels, **penalty))
        return total

    def nearest_best(y, x, centre):
        candidates = centre + np.arange(-window, window + 1)
        if penalty["periodic"]:
            candidates %= n_labels
        inside = candidates[(candidates >= 0) & (candidates < n_labels)]
        if inside.size == 0:
            return int(np.clip(centre - window, 0, n_labels - 1)), np.inf
        best = inside[np.argmin(cost[y, x, inside])]
        return int(best), cost[y, x, best]

    labels = np.array([[nearest_best(y, x, start[y, x])[0] for x in range(cols)] for y in range(rows)])
    for _ in range(max_rounds):
        graph = np.zeros((rows * cols, rows * cols))
        for p, q, w in pairs:
            change = abs(labels[p] - labels[q])
            if penalty["periodic"]:
                change = min(change, n_labels - change)
            if change <= penalty["free_labels"] + 1 and w * min(weights[p], weights[q]) >= min_link_weight:
                graph[p[0] * cols + p[1], q[0] * cols + q[1]] = 1
        _, region = connected_components(graph, directed=False)
        region = region.reshape(rows, cols)
        before = energy(labels, cost)
        best = {}
        for r in np.unique(region):
            for shift in shifts:
                moved, data = labels.copy(), cost.astype(float)
                for y, x in zip(*np.nonzero(region == r), strict=True):
                    moved[y, x], value = nearest_best(y, x, labels[y, x] + shift)
                    data[y, x, moved[y, x]] = value  # +inf off the grid
                gain = energy(moved, data) - before
                if gain < best.get(r, (0.0,))[0]:
                    best[r] = (gain, moved)
        priority = {r: gain / np.sum(region == r) for r, (gain, _) in best.items()}
        chosen = []
        for r, value in priority.items():
            neighbours = {region[q] for p, q, _ in pairs if region[p] == r and region[q] != r}
            neighbours |= {region[p] for p, q, _ in pairs if region[q] == r and region[p] != r}
            if all(value < priority.get(n, np.inf) for n in neighbours):
                chosen.append(r)
        if not chosen:
            break
        for r in chosen:
            labels[region == r] = best[r][1][region == r]
    return labels


@pytest.mark.parametrize(("seed", "periodic"), [(27, True), (36, False)])
def test_region_moves_match_their_specification_scored_from_scratch(seed, periodic):
    """The incremental bookkeeping of :func:`flip_regions` (only regions near last round's moves are
    scored again) gives the labels of the moves scored from scratch over the whole plane every round.

    With no free band the plane breaks into many small regions, and in these two planes a region that
    was not chosen becomes chosen when its neighbour's best move changes: judging only the regions that
    were scored again gets them wrong.
    """
    rng = np.random.default_rng(seed)
    rows, cols, n_labels = 6, 7, 12
    cost = rng.uniform(0, 6, (rows, cols, n_labels))
    start = rng.integers(0, n_labels, (rows, cols))
    weights = rng.uniform(0, 1, (rows, cols)) ** 2
    shifts = (4, -4, 7)
    for free_labels, min_link_weight in ((0, 0.0), (1, 0.3)):
        penalty = {**PENALTY, "periodic": periodic, "free_labels": free_labels}
        expected = regions_moved_from_scratch(cost, start, weights, shifts, penalty, 10, min_link_weight)
        moved = flip_regions(
            cost, start, weights, shifts, max_rounds=10, min_link_weight=min_link_weight, **penalty
        )
        assert np.array_equal(moved, expected)


def test_organ_carried_to_its_alias_through_a_dim_gap_moves_back():
    """A field ramp through a dark gap links an organ on its alias to the body: split regions at the gap."""
    n_labels, shift, rows = 64, 20, 8
    truth = np.full((rows, 28), 10)
    cost = two_basin_cost(truth, shift, n_labels, truth_cost=0.0, alias_cost=2.0)
    weights = np.ones(truth.shape)
    gap = np.s_[:, 8:18]
    weights[gap] = 0.05
    cost[gap] = 0.0  # no signal: every field fits the gap
    start = truth.copy()
    start[:, 8:18] = 10 + 2 * np.arange(1, 11)  # within the linking band at every step
    start[:, 18:] += shift
    whole = flip_regions(cost, start, weights, (shift, -shift), max_rounds=10, **PENALTY)
    assert np.array_equal(whole[:, 18:], start[:, 18:])  # one region with the body: it cannot move alone
    split = flip_regions(cost, start, weights, (shift, -shift), max_rounds=10, min_link_weight=0.3, **PENALTY)
    assert np.array_equal(split[:, 18:], truth[:, 18:])
    assert field_energy(cost, split, weights) < field_energy(cost, whole, weights)

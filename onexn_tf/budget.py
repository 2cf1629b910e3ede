"""Per-layer pruning rates under a latency budget: an exact multiple-choice knapsack.

Each layer takes one rate from a menu; each choice costs the layer's measured time at that rate and
keeps some importance score. The planner keeps the most total score whose predicted latency (the
fixed rest of the model plus every layer's time) fits the budget. Costs are discretised on a grid of
``resolution`` steps of the free budget, each rounded *up*, so the chosen plan's true predicted time
never exceeds the budget; over that grid the dynamic program is exact (it tries every combination
implicitly: layers × rates × grid steps).

Pure numpy: the scores come from :func:`kept_l1_scores` (the weights) or a measured sensitivity
(``training.sensitivity``), the costs from a latency table (``export.tvm.latency_table``).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from onexn_tf import masks
from onexn_tf.errors import InvalidArgument


@dataclasses.dataclass
class Plan:
    rates: dict[str, float]  # layer -> chosen rate
    predicted_ms: float  # fixed + Σ chosen costs
    score: float  # Σ chosen scores
    budget_ms: float


def choose(costs: dict[str, dict[float, float]], scores: dict[str, dict[float, float]], budget_ms: float, *,
           fixed_ms: float = 0.0, resolution: int = 4000) -> Plan:
    """The rate of every layer maximising Σ score with ``fixed_ms + Σ cost <= budget_ms``.

    ``costs[layer][rate]`` in ms and ``scores[layer][rate]`` (higher is better) over the same rates;
    raises :class:`InvalidArgument` when even the cheapest choice of every layer exceeds the budget.
    """
    layers, menus = _menus(costs, scores)
    floor = fixed_ms + sum(min(cost for _, cost, _ in menu) for menu in menus)
    if floor > budget_ms:
        raise InvalidArgument(f"a budget of {budget_ms:.4g} ms cannot be met: even the fastest rate of every layer "
                              f"gives {floor:.4g} ms (the rest of the model alone takes {fixed_ms:.4g} ms)")
    free = budget_ms - fixed_ms
    step = free / resolution if free > 0 else 1.0
    best = np.zeros(resolution + 1)  # best[b]: most score with the layers so far costing <= b steps
    choices = []
    for menu in menus:
        new = np.full(resolution + 1, -np.inf)
        pick = np.full(resolution + 1, -1, dtype=np.int64)
        for index, (_, cost, score) in enumerate(menu):
            units = math.ceil(cost / step - 1e-9) if cost > 0 else 0
            if units > resolution:
                continue
            candidate = np.full(resolution + 1, -np.inf)
            candidate[units:] = best[:resolution + 1 - units] + score
            better = candidate > new
            new[better], pick[better] = candidate[better], index
        best = new
        choices.append(pick)
    if not np.isfinite(best[resolution]):
        # Every layer fits alone, but not on the grid together: the rounding up cost a step per layer.
        raise InvalidArgument(f"a budget of {budget_ms:.4g} ms is too tight to plan on a grid of {resolution} steps "
                              f"(the fastest plan needs {floor:.4g} ms): raise the budget a little")
    rates, units_left, total_score = {}, resolution, 0.0
    for layer, menu, pick in zip(reversed(layers), reversed(menus), reversed(choices)):
        index = int(pick[units_left])
        rate, cost, score = menu[index]
        rates[layer] = rate
        total_score += score
        units_left -= math.ceil(cost / step - 1e-9) if cost > 0 else 0
    rates = {layer: rates[layer] for layer in layers}
    predicted = fixed_ms + sum(costs[layer][rates[layer]] for layer in layers)
    return Plan(rates, predicted, total_score, budget_ms)


def choose_accepted(costs: dict[str, dict[float, float]], scores: dict[str, dict[float, float]], accept, *,
                    resolution: int = 4000) -> Plan | None:
    """The most-scoring plan that ``accept(rates)`` approves (e.g. its whole predicted latency fits a
    budget), or None if it approves none; ``Plan.predicted_ms`` is then Σ chosen costs.

    For when the fit is not "Σ cost ≤ budget": a latency table's overhead depends on the total kernel
    time and can even fall as it grows, so plans that fit need not be the cheap ones. The dynamic
    program keeps the best plan for every *exact* total cost on a grid of ``resolution`` steps of the
    most expensive plan; the totals are then tried from the best score down until one is accepted.
    Exact over the grid (two plans rounding to one step keep the better-scoring one)."""
    layers, menus = _menus(costs, scores)
    high = sum(max(cost for _, cost, _ in menu) for menu in menus)
    step = high / resolution if high > 0 else 1.0
    units = [[int(round(cost / step)) for _, cost, _ in menu] for menu in menus]
    size = resolution + len(layers) + 1  # each layer's rounding may add a step
    best = np.full(size, -np.inf)
    best[0] = 0.0  # best[u]: most score with the layers so far costing exactly u steps
    choices = []
    for menu, menu_units in zip(menus, units):
        new = np.full(size, -np.inf)
        pick = np.full(size, -1, dtype=np.int64)
        for index, ((_, _, score), cost_units) in enumerate(zip(menu, menu_units)):
            candidate = np.full(size, -np.inf)
            candidate[cost_units:] = best[:size - cost_units] + score
            better = candidate > new
            new[better], pick[better] = candidate[better], index
        best = new
        choices.append(pick)
    for total in np.argsort(-best, kind="stable"):
        if not np.isfinite(best[total]):
            return None
        rates, units_left = {}, int(total)
        for layer, menu, menu_units, pick in zip(reversed(layers), reversed(menus), reversed(units), reversed(choices)):
            index = int(pick[units_left])
            rates[layer] = menu[index][0]
            units_left -= menu_units[index]
        rates = {layer: rates[layer] for layer in layers}
        if accept(rates):
            return Plan(rates, sum(costs[layer][rates[layer]] for layer in layers),
                        sum(scores[layer][rates[layer]] for layer in layers), float("nan"))
    return None


def _menus(costs: dict[str, dict[float, float]], scores: dict[str, dict[float, float]]) -> tuple[list, list]:
    """The layers, and each one's menu ``[(rate, cost, score)]`` by rate; the two tables must name the
    same layers and offer each the same rates."""
    layers = list(costs)
    if set(scores) != set(layers):
        raise InvalidArgument("the scores and the costs name different layers")
    menus = []
    for layer in layers:
        rates = sorted(costs[layer])
        if not rates or set(rates) != set(scores[layer]):
            raise InvalidArgument(f"layer {layer!r}: the scores and the costs offer different rates")
        menus.append([(rate, float(costs[layer][rate]), float(scores[layer][rate])) for rate in rates])
    return layers, menus


def kept_l1_scores(kernels: dict[str, np.ndarray], rates, n: int) -> dict[str, dict[float, float]]:
    """Score of each (layer, rate): the share of the layer's block L1 its 1×N mask keeps at that rate
    (1 at rate 0). Normalised per layer, so every layer weighs the same whatever its size."""
    out = {}
    for name, kernel in kernels.items():
        magnitude = np.abs(kernel)
        total = float(magnitude.sum()) or 1.0
        out[name] = {float(rate): float((magnitude * masks.compute_mask(kernel, rate, n=n).mask).sum()) / total
                     if rate > 0 else 1.0 for rate in rates}
    return out

"""A plan of per-layer rates from a latency table and a model: the knapsack's inputs gathered (costs
of the layers to plan, the fixed rest, importance scores) and its answer reported. Shared by
``onexn-plan choose``, ``onexn-demo --budget-speedup`` and the planner's benchmark."""
from __future__ import annotations

from export.tvm import latency_table
from onexn_tf import budget, models
from onexn_tf.errors import InvalidArgument


def choose(model, table: dict, *, budget_ms: float | None = None, speedup: float | None = None, full: bool = False,
           scores: dict | None = None) -> dict:
    """``{"rates": {layer: p}, "predicted_ms", "budget_ms", "dense_predicted_ms", "total_score", "layers": [...],
    "uniform_predicted_ms"}`` for the layers the reference prunes in ``model`` (``full``: the classifier
    too); ``scores`` default to the kept block L1 of the model's kernels."""
    planned = models.prunable_layers(model, full=full)
    missing = [name for name in planned if name not in table["layers"]]
    if missing:
        raise InvalidArgument(f"the latency table has no layer {missing[0]!r} of the model ({len(missing)} missing): "
                              "it was measured on another model")
    rates = [float(r) for r in table["rates"]]
    costs = {name: {rate: latency_table.layer_ms(table["layers"][name], rate) for rate in rates} for name in planned}
    dense = latency_table.predict(table, {})
    if (budget_ms is None) == (speedup is None):
        raise InvalidArgument("give either a budget in ms or a speedup over the dense prediction")
    budget_ms = budget_ms if budget_ms is not None else dense / speedup
    if scores is None:
        scores = budget.kept_l1_scores({name: model.get_layer(name).kernel.numpy() for name in planned}, rates,
                                       n=table["bsr"])
    plan, predicted = _best_fitting_plan(costs, scores, table, budget_ms)
    return {"rates": plan.rates, "predicted_ms": predicted, "budget_ms": budget_ms, "dense_predicted_ms": dense,
            "predicted_speedup": dense / predicted, "total_score": plan.score,
            "uniform_predicted_ms": {f"{r:g}": latency_table.predict(table, {n: r for n in planned}) for r in rates},
            "layers": [{"layer": name, "rate": plan.rates[name], "ms": costs[name][plan.rates[name]],
                        "score": scores[name][plan.rates[name]]} for name in planned]}


def _best_fitting_plan(costs: dict, scores: dict, table: dict, budget_ms: float) -> tuple:
    """The highest-scoring plan whose whole predicted latency (the table's rest and overhead included)
    fits ``budget_ms``, and that prediction. The overhead is measured, not modelled: on a small model it
    can grow as the kernels shrink, so the knapsack cannot take "the rest" as a fixed cost; it keeps
    the best plan per total kernel time instead, and the first total whose prediction fits wins."""
    def fits(rates):
        return latency_table.predict(table, rates) <= budget_ms * (1 + 1e-9)

    plan = budget.choose_accepted(costs, scores, fits)
    if plan is None:
        fastest = {name: min(menu, key=menu.get) for name, menu in costs.items()}
        raise InvalidArgument(f"a budget of {budget_ms:.4g} ms cannot be met once the rest of the model and the "
                              f"overhead are counted: every layer at its fastest rate is predicted at "
                              f"{latency_table.predict(table, fastest):.4g} ms; raise the budget")
    plan.budget_ms = budget_ms
    return plan, latency_table.predict(table, plan.rates)

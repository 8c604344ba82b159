"""Guided (NSGA-II / TPE) vs random search at equal budgets, and the cost model's held-out error.

Each (sampler, seed) runs its own study on the cached teacher of CONFIG; the
hypervolume of the feasible front is computed in a normalised objective space
(accuracy drop in points, latency and size as fractions of the teacher's),
with one shared reference point, after N and 2N trials.

    HF_HUB_OFFLINE=1 python bench/search_quality.py search_spaces/minilm_sst2.yaml \
        --trials 8 --seeds 0 1 2 --out bench/results/search_quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume

from autocompress.config import load_config, parse_config
from autocompress.cost import CostModel
from autocompress.search import SearchContext, make_objective, open_study
from autocompress.tracking import Tracker

REFERENCE = np.array([10.0, 1.1, 1.1])  # 10 pt drop, 110 % of teacher latency and size


def normalised(study: optuna.Study, count: int) -> np.ndarray:
    baseline = study.user_attrs["baseline"]
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE][:count]
    points = [
        (100 * (baseline["accuracy"] - t.values[0]), t.values[1] / baseline["latency_ms"], t.values[2] * 1e6 / baseline["size_bytes"])
        for t in trials
        if all(v <= 0 for v in t.constraints.values())
    ]
    inside = [p for p in points if np.all(np.array(p) < REFERENCE)]
    return np.array(inside) if inside else np.empty((0, 3))


def hypervolume(points: np.ndarray) -> float:
    return float(compute_hypervolume(points, REFERENCE)) if len(points) else 0.0


def held_out_mape(features: list[dict], values: list[float], train: int) -> float:
    model = CostModel().fit(features[:train], values[:train])
    predicted = model.predict(features[train:])
    truth = np.array(values[train:])
    return float(100 * np.mean(np.abs(predicted - truth) / truth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--trials", type=int, default=8, help="N: the guided budget; random gets N and 2N")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["nsga2", "random"])
    parser.add_argument("--out", type=Path, default=Path("bench/results/search_quality.json"))
    args = parser.parse_args()

    base = load_config(args.config)
    storage = f"sqlite:///{Path(args.out).with_suffix('.db').resolve()}"
    context = None
    results = []
    all_features, all_latencies = [], []
    for sampler in args.samplers:
        budget = args.trials if sampler != "random" else 2 * args.trials
        for seed in args.seeds:
            data = base.model_dump(mode="json", exclude={"source"})
            data["search"].update(sampler=sampler, seed=seed, n_trials=budget, study_name=f"bench-{sampler}-{seed}", storage=storage)
            data["tracking"]["experiment"] = "autocompress-bench"
            config = parse_config(data, source=args.config)
            if context is None:
                context = SearchContext.build(config)
            context.config = config
            study = open_study(config)
            study.set_user_attr("baseline", context.baseline.__dict__)
            done = len([t for t in study.trials if t.state.is_finished()])
            if done < budget:
                tracker = Tracker(study=study, experiment="autocompress-bench", tracking_uri=config.tracking.uri)
                study.optimize(make_objective(context, tracker), n_trials=budget - done, gc_after_trial=True)
                tracker.finish()
            for trial in study.trials:
                if trial.state == optuna.trial.TrialState.COMPLETE:
                    all_features.append(trial.user_attrs.get("features"))
                    all_latencies.append(trial.values[1])
            results.append({
                "sampler": sampler,
                "seed": seed,
                "hypervolume_at_N": hypervolume(normalised(study, args.trials)),
                "hypervolume_at_2N": hypervolume(normalised(study, 2 * args.trials)) if budget >= 2 * args.trials else None,
            })
            print(json.dumps(results[-1]), flush=True)

    summary = {}
    for sampler in args.samplers:
        rows = [r for r in results if r["sampler"] == sampler]
        summary[sampler] = {
            "mean_hypervolume_at_N": float(np.mean([r["hypervolume_at_N"] for r in rows])),
            "mean_hypervolume_at_2N": float(np.mean([r["hypervolume_at_2N"] for r in rows])) if rows[0]["hypervolume_at_2N"] is not None else None,
        }
    pairs = [(f, v) for f, v in zip(all_features, all_latencies) if f is not None]
    cost = {}
    if len(pairs) > 35:
        order = np.random.default_rng(0).permutation(len(pairs))
        features = [pairs[i][0] for i in order]
        values = [pairs[i][1] for i in order]
        cost = {f"mape_after_{n}": held_out_mape(features, values, n) for n in (8, 15, 30) if n < len(pairs) - 5}
        cost["held_out"] = len(pairs) - 30
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "trials": args.trials,
                                    "results": results, "summary": summary, "cost_model": cost}, indent=2))
    print(json.dumps({"summary": summary, "cost_model": cost}, indent=2))


if __name__ == "__main__":
    main()

"""Guided (NSGA-II / TPE) vs random search at equal budgets, and the cost model on the same measurements.

Each (seed, sampler) runs its own study on the cached teacher of CONFIG, seeds
in the outer loop so the machine's drift hits every sampler alike. The
hypervolume of the feasible front is computed in a normalised objective space
(dev accuracy drop in points, paired latency ratio and file size as fractions of the teacher's) with
one shared reference point, after N and 2N trials.

Guided samplers start as the product does: a new study first tries the
space's uniform policies (``search.start_uniform``); random search is the
plain control, sampled from the first trial.

The cost model is then replayed on every measured trial in the order they ran,
with features recomputed from each trial's stored policy by the current
featurizer (so a featurizer change is judged on the same measurements), once
on raw milliseconds and once on the paired ratio to the teacher (what the
search fits): its error on held-out trials after 8/15/30 measurements, and,
for limits at quartiles of what was measured, how many clearly infeasible
candidates (measured over 1.2x the limit) ``is_clearly_infeasible`` would have
rejected before evaluation and how many feasible ones it would wrongly reject.

    HF_HUB_OFFLINE=1 python bench/search_quality.py bench/g2_space.yaml \
        --trials 16 --seeds 0 1 2 --samplers tpe random --out bench/results/search_quality_g2.json
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
from autocompress.controller.preflight import preflight
from autocompress.controller.run import enqueue_uniform_starts, make_objective
from autocompress.controller.study import open_study, study_uid
from autocompress.controller.trial import SearchContext
from autocompress.controller.workers import InProcess
from autocompress.cost import FEATURES_VERSION, CostModel, is_clearly_infeasible, policy_features
from autocompress.paths import study_work_dir
from autocompress.policy import Policy
from autocompress.tracking.runs import Tracker

REFERENCE = np.array([10.0, 1.1, 1.1])  # 10 pt drop, 110 % of teacher latency and size
CLEAR_MARGIN = 1.2  # "clearly infeasible": measured latency at least 20 % over the limit, beyond this VM's 8-19 % noise


def normalised(study: optuna.Study, count: int) -> np.ndarray:
    baseline = study.user_attrs["baseline"]
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE][:count]
    points = [
        (
            100 * (baseline["dev_accuracy"] - t.values[0]),
            t.values[1],  # latency relative to the teacher, timed beside it
            t.values[2] * 1e6 / baseline["size_bytes"],
        )
        for t in trials
        if all(v <= 0 for v in t.constraints.values())
    ]
    inside = [p for p in points if np.all(np.array(p) < REFERENCE)]
    return np.array(inside) if inside else np.empty((0, 3))


def hypervolume(points: np.ndarray) -> float:
    return float(compute_hypervolume(points, REFERENCE)) if len(points) else 0.0


def mape(model: CostModel, features: list[dict], truth: list[float]) -> float:
    predicted = model.predict(features)
    return float(100 * np.mean(np.abs(predicted - np.array(truth)) / np.array(truth)))


def cost_model_replay(features: list[dict], latencies: list[float]) -> dict:  # latencies: ms or paired ratios
    """Held-out error and rejection rates of the cost model, fit only on measurements that came earlier."""
    result: dict = {"measurements": len(latencies)}
    for n in (8, 15, 30):
        if n + 5 <= len(latencies):
            result[f"mape_after_{n}_chronological"] = mape(
                CostModel().fit(features[:n], latencies[:n]), features[n:], latencies[n:]
            )
            order = np.random.default_rng(0).permutation(len(latencies))
            shuffled_f, shuffled_y = [features[i] for i in order], [latencies[i] for i in order]
            result[f"mape_after_{n}_shuffled"] = mape(
                CostModel().fit(shuffled_f[:n], shuffled_y[:n]), shuffled_f[n:], shuffled_y[n:]
            )
    # fit and scored on all of them: what noise and model error leave even without extrapolation
    result["mape_in_sample_all"] = mape(CostModel().fit(features, latencies), features, latencies)
    warmup = 8
    rejection = []
    for quantile in (0.25, 0.5, 0.75):
        limit = float(np.quantile(latencies, quantile))
        counts = {
            "clearly_infeasible": 0,
            "rejected_clearly_infeasible": 0,
            "feasible": 0,
            "rejected_feasible": 0,
            "rejected_in_between": 0,
        }
        for i in range(warmup, len(latencies)):
            model = CostModel().fit(features[:i], latencies[:i])
            reject, _ = is_clearly_infeasible(model, features[i], limit=limit)
            if latencies[i] >= CLEAR_MARGIN * limit:
                counts["clearly_infeasible"] += 1
                counts["rejected_clearly_infeasible"] += reject
            elif latencies[i] <= limit:
                counts["feasible"] += 1
                counts["rejected_feasible"] += reject
            else:
                counts["rejected_in_between"] += reject
        rejection.append(
            {
                "limit": limit,
                "quantile": quantile,
                **counts,
                "rejected_share_of_clearly_infeasible": counts["rejected_clearly_infeasible"]
                / max(counts["clearly_infeasible"], 1),
                "wrongly_rejected_share_of_feasible": counts["rejected_feasible"] / max(counts["feasible"], 1),
            }
        )
    result["rejection"] = rejection
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--trials", type=int, default=16, help="N: the guided budget; random gets 2N")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["nsga2", "random"])
    parser.add_argument("--population-size", type=int, default=None, help="NSGA-II population (default: the config's)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/search_quality.json"))
    args = parser.parse_args()

    base = load_config(args.config)
    storage = f"sqlite:///{Path(args.out).with_suffix('.db').resolve()}"
    context = None
    results, measured = [], []
    for seed in args.seeds:
        for sampler in args.samplers:
            budget = args.trials if sampler != "random" else 2 * args.trials
            data = base.model_dump(mode="json", exclude={"source"})
            data["search"].update(
                sampler=sampler, seed=seed, n_trials=budget, study_name=f"bench-{sampler}-{seed}", storage=storage
            )
            if args.population_size:
                data["search"]["population_size"] = args.population_size
            data["tracking"]["experiment"] = "autocompress-bench"
            config = parse_config(data, source=args.config)
            study = open_study(config, preflight(config).signature)
            if context is None:
                context = SearchContext.build(config, study_work_dir(study_uid(study)))
            context.config, context.workdir = config, study_work_dir(study_uid(study))
            if "baseline" not in study.user_attrs:
                study.set_user_attr("baseline", context.baseline)
            context.baseline = study.user_attrs["baseline"]
            if sampler != "random":
                enqueue_uniform_starts(study, config, context.model)
            done = len([t for t in study.trials if t.state.is_finished()])
            if done < budget:
                tracker = Tracker(study=study, experiment="autocompress-bench", tracking_uri=config.tracking.uri)
                study.optimize(make_objective(context, InProcess(context)), n_trials=budget - done, gc_after_trial=True, callbacks=[tracker.callback])
                tracker.finish()
            for trial in study.trials:
                if trial.state == optuna.trial.TrialState.COMPLETE:
                    policy = Policy.from_dict(trial.user_attrs["policy"])  # features as the current featurizer makes them
                    features = policy_features(policy, context.model, seq_len=trial.user_attrs["features"]["seq_len"])
                    attrs = trial.user_attrs
                    measured.append((trial.datetime_complete.timestamp(), features, attrs["latency_ms"], attrs["relative_latency"]))
            results.append(
                {
                    "sampler": sampler,
                    "seed": seed,
                    "trials": budget,
                    "baseline_latency_ms": study.user_attrs["baseline"]["latency_ms"],
                    "hypervolume_at_N": hypervolume(normalised(study, args.trials)),
                    "hypervolume_at_2N": hypervolume(normalised(study, 2 * args.trials)) if budget >= 2 * args.trials else None,
                    "feasible_at_N": len(normalised(study, args.trials)),
                    "trial_seconds": sum(
                        (t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials if t.datetime_complete
                    ),
                }
            )
            print(json.dumps(results[-1]), flush=True)

    summary = {}
    for sampler in args.samplers:
        rows = [r for r in results if r["sampler"] == sampler]
        summary[sampler] = {"mean_hypervolume_at_N": float(np.mean([r["hypervolume_at_N"] for r in rows]))}
        if rows[0]["hypervolume_at_2N"] is not None:
            summary[sampler]["mean_hypervolume_at_2N"] = float(np.mean([r["hypervolume_at_2N"] for r in rows]))
    if "random" in summary:
        for sampler in summary:
            if sampler != "random":
                per_seed = [
                    g["hypervolume_at_N"] / r["hypervolume_at_2N"]
                    for g in results
                    if g["sampler"] == sampler
                    for r in results
                    if r["sampler"] == "random" and r["seed"] == g["seed"] and r["hypervolume_at_2N"]
                ]
                summary[sampler]["guided_N_over_random_2N_per_seed"] = per_seed
    measured.sort(key=lambda row: row[0])
    cost = {
        "latency_ms": cost_model_replay([f for _, f, _, _ in measured], [ms for _, _, ms, _ in measured]),
        "relative_latency": cost_model_replay([f for _, f, _, _ in measured], [ratio for _, _, _, ratio in measured]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "trials": args.trials,
                "fingerprint": context.fingerprint,
                "features_version": FEATURES_VERSION,
                "results": results,
                "summary": summary,
                "cost_model": cost,
            },
            indent=2,
        )
    )
    print(json.dumps({"summary": summary, "cost_model": cost}, indent=2))


if __name__ == "__main__":
    main()

"""The model-quality dashboard: live metrics on real outcomes against the holdout baseline, the decay
verdict, label coverage and delay, and the feedback flowing in. Its own module so dashboards.py stays
small; built with the same helpers and listed by ``dashboards.build_all``."""

from __future__ import annotations

from keel.monitoring.dashboards import Dashboard, dashboard, or_zero, sel, stat, timeseries


def performance() -> Dashboard:
    decay = "keel_model_performance_decay"
    return dashboard("keel-performance", "keel / Model quality", "Were the predictions right? The performance "
                     "job joins real outcomes (keel feedback) to the prediction log; a version decays when its gate "
                     "metric falls behind its registration holdout by more than the spec allows.", [
        stat("Decay vs threshold", "How much worse than its holdout each served version's gate metric is on real "
             "outcomes (> 0: worse), next to the threshold KeelModelPerformanceDecay uses.",
             [(f"max by (model, version, metric) ({sel(decay)})", "{{model}} v{{version}} {{metric}}"),
              (f"max by (model, version) ({sel('keel_model_performance_decay_threshold')})",
               "threshold {{model}} v{{version}}")], w=8, thresholds=[(None, "green"), (0.05, "orange")]),
        stat("Label coverage", "Served rows with an outcome, per version, in the job's window.",
             [(f"max by (model, version) ({sel('keel_model_label_coverage_ratio')})", "{{model}} v{{version}}")],
             unit="percentunit", w=6),
        stat("Labelled rows", "Served rows with an outcome (the decay verdict needs the spec's min_labels).",
             [(f"max by (model, version) ({sel('keel_model_labelled_rows')})", "{{model}} v{{version}}")], w=5),
        stat("Performance job age", "Time since the performance job last succeeded, next to its schedule.",
             [(f"time() - max({sel('keel_performance_job_last_success_timestamp_seconds')})", "age"),
              (f"max({sel('keel_performance_job_interval_seconds')})", "schedule")], unit="s", w=5),
        timeseries("Live metrics", "Each task metric on the served rows that have outcomes, per version.",
                   [(f"max by (version, metric) ({sel('keel_model_performance')})", "v{{version}} {{metric}}")]),
        timeseries("Holdout baseline", "The same metrics on the holdout each version was registered with.",
                   [(f"max by (version, metric) ({sel('keel_model_performance_baseline')})",
                     "v{{version}} {{metric}}")]),
        timeseries("Decay", "Gate metric decay per version over time (> 0: worse than the holdout).",
                   [(f"max by (version, metric) ({sel(decay)})", "v{{version}} {{metric}}")]),
        timeseries("Label delay", "Outcome observed minus prediction made (median and 90th percentile).",
                   [(f"max by (version, quantile) ({sel('keel_model_label_delay_seconds')})",
                     "v{{version}} q{{quantile}}")], unit="s"),
        timeseries("Served and labelled rows", "Rows served in the job's window, and those with an outcome.",
                   [(f"max by (version) ({sel('keel_model_served_rows')})", "served v{{version}}"),
                    (f"max by (version) ({sel('keel_model_labelled_rows')})", "labelled v{{version}}")]),
        timeseries("Outcomes received (per hour)", "Outcomes sent to the controller's /v1/feedback, by result "
                   "(duplicates count once; corrections replace).",
                   [(or_zero(f"sum by (model, result) (increase({sel('keel_feedback_outcomes_total')}[1h]))",
                             "result"), "{{model}} {{result}}")], min=0),
    ])

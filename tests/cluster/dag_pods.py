"""Run in Airflow's venv: load keel's DAGs from a dags folder the way Airflow's DAG processor does, render
every KubernetesPodOperator task with a run's context (its conf, and its upstream steps' XComs as the
pods would have pushed them), and print the pod objects the operator would create, as JSON.

    python dag_pods.py DAGS_DIR CONF_JSON XCOMS_JSON
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

from airflow.dag_processing.dagbag import DagBag
from kubernetes.client import ApiClient


def main(dags: str, conf: str, xcoms: str) -> None:
    bag = DagBag(dags)
    if bag.import_errors:
        raise SystemExit(json.dumps({k: str(v)[-1500:] for k, v in bag.import_errors.items()}))
    pushed = json.loads(xcoms)
    out = []
    for dag in bag.dags.values():
        run = SimpleNamespace(conf=json.loads(conf), run_id="manual__2026-12-02T00:00:00+00:00")
        for op in dag.tasks:
            ti = SimpleNamespace(dag_id=dag.dag_id, task_id=op.task_id, map_index=-1, try_number=1,
                                 xcom_pull=lambda task_ids, **_: pushed[task_ids])
            context = {"run_id": run.run_id, "ds": "2026-12-02", "dag_run": run, "dag": dag, "task": op, "ti": ti}
            op.render_template_fields(context)
            pod = op.build_pod_request_obj(context)
            out.append({"dag": dag.dag_id, "task": op.task_id,
                        "pod": ApiClient().sanitize_for_serialization(pod)})
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""The model registry (MLflow) with keel's lineage, promotion gate, rollback and audit trail."""

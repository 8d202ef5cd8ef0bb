"""The keel controller: Alertmanager webhooks in, deduplicated and durable retraining triggers out."""

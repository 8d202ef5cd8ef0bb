"""Serving: one predictor core (features → model → response) behind thin KServe and Ray Serve adapters."""

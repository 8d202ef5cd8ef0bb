"""Drift jobs, dashboards and the other monitoring assets keel ships."""

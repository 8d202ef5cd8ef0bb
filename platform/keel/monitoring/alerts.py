"""What is alerting now: Prometheus's rule state joined with what reached Alertmanager."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from keel.config import Settings
from keel.errors import ServiceUnavailableError


def _get(service: str, url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError):
        raise ServiceUnavailableError(service, url.split("/api/")[0]) from None


def current(settings: Settings) -> list[dict[str, Any]]:
    rules = _get("Prometheus", f"{settings.prometheus_url}/api/v1/alerts")["data"]["alerts"]
    routed = _get("Alertmanager", f"{settings.alertmanager_url}/api/v2/alerts")
    keys = {(a["labels"].get("alertname"), a["labels"].get("model"), a["labels"].get("version")) for a in routed}
    out = []
    for a in sorted(rules, key=lambda a: (a["labels"].get("alertname", ""), a["labels"].get("model", ""))):
        lab = a["labels"]
        out.append({"alert": lab.get("alertname"), "state": a["state"], "severity": lab.get("severity", ""),
                    "model": lab.get("model", ""), "version": lab.get("version", ""),
                    "since": a.get("activeAt", "")[:19], "value": a.get("value", ""),
                    "alertmanager": "yes" if (lab.get("alertname"), lab.get("model"), lab.get("version")) in keys
                    else "no",
                    "summary": a.get("annotations", {}).get("summary", "")})
    return out

"""The README's SDK quick start, run as written, on the session stack (the fraud example's data)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.config import Settings
from tests.conftest import FRAUD, ROOT, keel_env


def _quick_start() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Quick start (SDK)"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


@pytest.fixture
def sdk_env(feature_data: dict[str, Path], stack_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process environment a user of the SDK has: KEEL_* pointing at the stack, the project's own
    directory importable (as when running from it)."""
    import keel

    for k, v in keel_env(stack_settings).items():
        if k.startswith("KEEL_"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("KEEL_PROJECT", str(FRAUD))
    monkeypatch.syspath_prepend(str(FRAUD))
    monkeypatch.setattr(keel, "_default", None)
    try:
        yield
    finally:
        from keel.serving.deploy import LocalTarget

        if "fraud" in LocalTarget(stack_settings).specs():
            LocalTarget(stack_settings).undeploy("fraud")


def test_readme_quick_start_runs_as_written(sdk_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = _quick_start()
    calls = [c for c in ("keel.register(", "keel.promote(", "keel.deploy(") if c in code]
    assert len(calls) == 3 and code.count("keel.") <= 7  # three calls after training, as the README says
    exec(compile(code, "README.md", "exec"), {"__name__": "__quickstart__"})
    out = capsys.readouterr().out
    assert "'model': 'fraud'" in out and "'predictions': [" in out and "'version': '1'" in out
    import keel

    v = keel.get_client()._registry().resolve("fraud", "champion")
    assert v.tags["keel.feature_service"] == "fraud_model_v1" and v.tags["keel.task"] == "binary"
    assert "fraud_model" in sys.modules


def test_platform_code_names_no_example_domain() -> None:
    hits = [str(p.relative_to(ROOT)) for p in (ROOT / "platform" / "keel").rglob("*.py")
            if re.search(r"fraud|customer_id|merchant|is_fraud", p.read_text(), re.I)]
    assert hits == []

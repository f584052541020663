"""The reference docs keep up with the code: docs/settings.md names every setting of the one settings object by its
environment variable, with the code's default, and docs/api.md names every problem type the service answers. A
setting or a problem added, renamed or re-defaulted without its line fails here."""

from __future__ import annotations

import json
import re

from service.config import ApiSettings
from tests.worker.conftest import ROOT


def documented() -> dict[str, str]:
    """{variable: default cell} from the table's rows."""
    rows = re.findall(r"^\| `([A-Z_]+)` \| (.+?) \| ", (ROOT / "docs" / "settings.md").read_text(), re.MULTILINE)
    assert len(rows) == len(dict(rows)), "a variable is listed twice"
    return dict(rows)


def as_documented(default: object) -> str:
    if default is None:
        return "unset"
    if default == []:
        return "empty"
    if isinstance(default, list):
        return f"`{json.dumps(default)}`"
    return f"`{default}`"  # Path, str, int and float print as the environment spells them


def test_every_setting_is_documented_with_its_default():
    expected = {}
    for name, field in ApiSettings.model_fields.items():
        env = "REDIS_URL" if name == "redis_url" else f"GLIMPSE_{name.upper()}"
        expected[env] = as_documented(field.default)
    assert documented() == expected


def test_the_documented_names_set_the_settings(monkeypatch):
    """The naming the table assumes: the GLIMPSE_ prefix, REDIS_URL without it, lists as JSON."""
    for env in documented():
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://example:1/0")
    monkeypatch.setenv("GLIMPSE_MAX_WAIT", "7.5")
    monkeypatch.setenv("GLIMPSE_QUEUES", '["a", "b"]')
    s = ApiSettings()
    assert (s.redis_url, s.max_wait, s.queues) == ("redis://example:1/0", 7.5, ["a", "b"])


def problem_kinds() -> set[str]:
    """Every problem type the service's code names: Problem(status, "kind"), kind="kind", TYPE_BASE + "kind"."""
    pattern = re.compile(r'Problem\(\d+, "([a-z-]+)"|kind="([a-z-]+)"|TYPE_BASE \+ "([a-z-]+)"')
    return {"".join(m) for path in (ROOT / "service").rglob("*.py") for m in pattern.findall(path.read_text())}


def test_every_problem_type_is_documented():
    kinds = problem_kinds()
    assert {"unknown-words", "bad-image", "malformed-http", "not-ready"} <= kinds and len(kinds) > 20  # it reads them
    api = (ROOT / "docs" / "api.md").read_text()
    assert sorted(k for k in kinds if f"`{k}`" not in api) == []

"""Webhook configuration: the TOML and environment forms, validation at start-up with clear
errors that never show a secret or a URL, the documentation of every key, and the pure
retry policy (verdicts and backoff)."""

from __future__ import annotations

import json
import random
import re
import subprocess
from pathlib import Path

import pytest

from gpuhistory.alerts.config import WebhookConfig, redact_url
from gpuhistory.alerts.policy import backoff_ms, verdict
from gpuhistory.config.layers import ConfigFileError, load_static
from tests.conftest import REPO
from tests.test_serve import gpuhistory

SECRET = "do-not-print-this-secret-0123"
TOKEN_URL = "https://hooks.example.com/services/T0/B0/url-token-xyz?sig=query-token"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gpuhistory.toml"
    path.write_text(text)
    return path


def test_toml_list_with_every_key(tmp_path: Path) -> None:
    """[[webhooks]] tables beside the thresholds; defaults filled in; ids from names or URLs."""
    path = write(tmp_path, f"""
temp_throttle = 83

[[webhooks]]
name = "pager"
url = "{TOKEN_URL}"
kinds = ["overheat", "critical", "gpu_lost", "overheat"]
gpus = [0, "GPU-abc", "3"]
secret = "{SECRET}"
timeout_seconds = 2.5
retry_initial_seconds = 1
retry_max_seconds = 60
give_up_after_seconds = 3600

[[webhooks]]
url = "http://127.0.0.1:9000/hook"
kinds = ["*", "overheat"]
""")
    layers = load_static(path, environ={})
    assert layers.config().temp_throttle == 83
    pager, unnamed = layers.webhooks
    assert (pager.id, pager.kinds, pager.gpus) == ("pager", ("overheat", "critical", "gpu_lost"),
                                                   (0, "GPU-abc", 3))
    assert (pager.gpu_indexes, pager.gpu_uuids) == ((0, 3), ("GPU-abc",))
    assert pager.secret is not None and pager.secret.get_secret_value() == SECRET
    assert pager.settings() == {"format": "signed", "timeout_seconds": 2.5,
                                "retry_initial_seconds": 1, "retry_max_seconds": 60,
                                "give_up_after_seconds": 3600}
    assert re.fullmatch(r"webhook-[0-9a-f]{8}", unnamed.id) and unnamed.kinds == ("*",)
    assert unnamed.secret is None and unnamed.timeout_seconds == 5


def test_under_the_gpuhistory_table_too(tmp_path: Path) -> None:
    path = write(tmp_path, """
[gpuhistory]
temp_throttle = 80

[[gpuhistory.webhooks]]
url = "https://a.example/x"
kinds = ["overheat"]
""")
    assert [h.url for h in load_static(path, environ={}).webhooks] == ["https://a.example/x"]


def test_environment_replaces_the_file_list(tmp_path: Path) -> None:
    """GPUHISTORY_WEBHOOKS (a JSON list) wins over the file's [[webhooks]]; empty means unset."""
    path = write(tmp_path, '[[webhooks]]\nurl = "https://file.example/"\nkinds = ["xid"]\n')
    env = {"GPUHISTORY_WEBHOOKS": json.dumps([{"name": "env", "url": "https://env.example/",
                                               "kinds": ["gpu_lost"], "gpus": [1]}])}
    assert [h.id for h in load_static(path, environ=env).webhooks] == ["env"]
    assert [h.url for h in load_static(path, environ={"GPUHISTORY_WEBHOOKS": ""}).webhooks] \
        == ["https://file.example/"]
    assert load_static(None, environ={}).webhooks == ()


@pytest.mark.parametrize(("hooks", "message"), [
    ([{"url": "ftp://files.example/secret-path", "kinds": ["overheat"]}],
     "webhooks.0.url: Value error, the URL scheme must be http or https"),
    ([{"url": "https:///no-host", "kinds": ["overheat"]}], "the URL needs a host"),
    ([{"url": "https://h.example:99999/", "kinds": ["overheat"]}], "not a valid URL"),
    ([{"url": "https://h.example/", "kinds": ["overheated"]}],
     "webhooks.0.kinds: Value error, unknown event kind(s) ['overheated']; known: "),
    ([{"url": "https://h.example/", "kinds": []}], "webhooks.0.kinds"),
    ([{"url": "https://h.example/"}], "webhooks.0.kinds: Field required"),
    ([{"url": "https://h.example/", "kinds": ["xid"], "secret": "short"}],
     "the secret must be 16 to 256 characters long"),
    ([{"url": "https://h.example/", "kinds": ["xid"], "gpus": [4096]}], "webhooks.0.gpus.0"),
    ([{"url": "https://h.example/", "kinds": ["xid"], "name": "no spaces"}],
     "webhooks.0.name"),
    ([{"url": "https://h.example/", "kinds": ["xid"], "retry_initial_seconds": 10,
       "retry_max_seconds": 5}], "retry_max_seconds must be at least retry_initial_seconds"),
    ([{"url": "https://h.example/", "kinds": ["xid"], "colour": "red"}],
     "webhooks.0.colour: Extra inputs are not permitted"),
    ([{"url": "https://h.example/a", "kinds": ["xid"]},
      {"url": "https://h.example/a", "kinds": ["overheat"]}],
     "webhooks.1: the id 'webhook-"),
])
def test_bad_webhooks_are_start_up_errors_naming_the_key(hooks, message: str) -> None:
    """Each mistake names the key and the reason; the secret and the URL are not repeated."""
    for entry in hooks:
        entry.setdefault("secret", SECRET)  # a good secret beside the mistake: never shown
    raw = json.dumps(hooks)
    with pytest.raises(ConfigFileError) as caught:
        load_static(None, environ={"GPUHISTORY_WEBHOOKS": raw})
    text = str(caught.value)
    assert text.startswith("invalid webhooks: ") and message in text, text
    for hidden in (SECRET, "secret-path", "no-host", "short"):
        assert hidden not in text


def test_one_table_instead_of_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, '[webhooks]\nurl = "https://h.example/"\nkinds = ["xid"]\n')
    with pytest.raises(ConfigFileError, match=re.escape("webhooks must be a list of tables "
                                                        "([[webhooks]] in TOML)")):
        load_static(path, environ={})


def test_bad_environment_json() -> None:
    with pytest.raises(ConfigFileError, match="GPUHISTORY_WEBHOOKS is not valid JSON"):
        load_static(None, environ={"GPUHISTORY_WEBHOOKS": "[{"})
    with pytest.raises(ConfigFileError, match="must be a JSON list"):
        load_static(None, environ={"GPUHISTORY_WEBHOOKS": '{"url": "x"}'})


def test_a_bad_webhook_stops_the_sampler_at_start_up(tmp_path: Path) -> None:
    """`gpuhistory sampler` with an unknown kind exits non-zero before doing anything, with
    the key and the reason and without the secret."""
    path = write(tmp_path, f'[[webhooks]]\nurl = "{TOKEN_URL}"\nkinds = ["overheated"]\n'
                           f'secret = "{SECRET}"\n')
    result = subprocess.run(gpuhistory("sampler", "--db", str(tmp_path / "x.db"), "--config",
                                       str(path), "--backend", "sim"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "invalid webhooks: webhooks.0.kinds: Value error, unknown event kind(s) " \
           "['overheated']" in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert "url-token" not in result.stderr and "query-token" not in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_urls_are_shown_as_scheme_host_and_port_only() -> None:
    assert redact_url(TOKEN_URL) == "https://hooks.example.com/…"
    assert redact_url("http://user:pw@10.0.0.1:8080/") == "http://10.0.0.1:8080/"
    assert redact_url("http://[::1]:9/x") == "http://[::1]:9/…"
    hook = WebhookConfig(url=TOKEN_URL, kinds=["xid"], secret=SECRET)
    assert "token" not in repr(hook) and SECRET not in repr(hook) and SECRET not in str(hook)


def test_every_webhook_key_is_documented() -> None:
    """docs/configuration.md has a row for every webhook key with its default (after the
    Webhooks heading), and the environment form; alerts.md points there."""
    configuration = (REPO / "docs" / "configuration.md").read_text()
    section = configuration[configuration.index("## Webhooks"):]
    for name, field in WebhookConfig.model_fields.items():
        row = re.search(rf"^\| `{name}` \| ([^|]+) \|", section, re.M)
        assert row, f"{name} missing from docs/configuration.md"
        if field.is_required():
            expected = "required"
        elif field.default is None:
            expected = "derived" if name == "name" else "unset"
        elif isinstance(field.default, str):
            expected = f"`{field.default}`"
        else:
            expected = f"{field.default:g}"
        assert row.group(1).strip() == expected, name
    assert "[[webhooks]]" in section and "GPUHISTORY_WEBHOOKS" in section
    assert "configuration.md#webhooks" in (REPO / "docs" / "alerts.md").read_text()


# -- the retry policy ---------------------------------------------------------------------
@pytest.mark.parametrize(("status", "expected"), [
    (200, "delivered"), (204, "delivered"), (299, "delivered"), (None, "retry"),
    (500, "retry"), (503, "retry"), (408, "retry"), (425, "retry"), (429, "retry"),
    (301, "rejected"), (400, "rejected"), (401, "rejected"), (404, "rejected"),
    (410, "rejected"),
])
def test_verdict(status: int | None, expected: str) -> None:
    assert verdict(status) == expected


def test_backoff_doubles_with_equal_jitter_up_to_the_cap() -> None:
    """After the n-th failure: within [d/2, d], d = min(cap, initial * 2**(n-1)); spread by
    the jitter; a Retry-After beyond it is honoured up to the cap."""
    rng = random.Random(1)
    for failures in range(1, 60):
        ceiling = min(300, 2 * 2 ** (failures - 1)) * 1000
        waits = [backoff_ms(failures, 2, 300, rng) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), failures
        assert len(set(waits)) > 10  # jittered, not one value
    assert backoff_ms(1, 2, 300, rng, retry_after_s=120) == 120_000
    assert backoff_ms(1, 2, 300, rng, retry_after_s=9999) == 300_000
    assert backoff_ms(5, 2, 300, rng, retry_after_s=0.5) >= 8_000  # shorter: backoff wins
    with pytest.raises(ValueError):
        backoff_ms(0, 2, 300, rng)

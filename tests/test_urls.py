"""One check of an endpoint's URL: the API, the configuration file and the SSRF guard agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from payflow import urls
from payflow.config import load_config
from payflow.errors import ConfigError
from payflow.webhooks.ssrf import AddressPolicy, SSRFRefused, check_url

BAD = ["ftp://x.example/h", "https://", "https://x.example:0/h", "https://x.example:99999/h",
       "https://x.example/a b", "https:// x.example/h", "https://x.example/" + "a" * 2048,
       "x.example/h", "mailto:a@x.example"]
GOOD = ["https://x.example/h", "http://x.example:8080/h?a=1", "HTTPS://X.EXAMPLE/h",
        "https://x.example/" + "a" * 2000]


@pytest.mark.parametrize("url", BAD)
def test_a_bad_url_is_refused_by_all_three(url: str, tmp_path: Path) -> None:
    assert urls.endpoint_url_error(url) is not None
    assert not urls.is_endpoint_url(url)
    with pytest.raises(ConfigError, match=r"endpoints\[0\]\.url: expected an http"):
        load_config(None, env={"PAYFLOW_WEBHOOKS_ENDPOINTS": url.replace(",", "%2C")})
    with pytest.raises(SSRFRefused):
        check_url(url, AddressPolicy([]))


@pytest.mark.parametrize("url", GOOD)
def test_a_good_url_passes_all_three(url: str) -> None:
    assert urls.endpoint_url_error(url) is None
    config = load_config(None, env={"PAYFLOW_WEBHOOKS_ENDPOINTS": url})
    assert [e.url for e in config.webhooks.endpoints] == [url]
    check_url(url, AddressPolicy([]))  # a name: checked when it is resolved, not here

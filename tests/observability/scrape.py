"""Reading a /metrics page as a Prometheus server would."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of the page at `base_url`/metrics."""
    response = httpx.get(f"{base_url}/metrics", timeout=5)
    response.raise_for_status()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def samples(page: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
            **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return [(dict(lbls), value) for (n, lbls), value in page.items()
            if n == name and wanted <= set(lbls)]

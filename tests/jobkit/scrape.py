"""Read a Prometheus exposition as prometheus-client's own parser does."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """The samples of one scrape; `value("name", label=...)` or 0 when there is none."""

    def __init__(self, text: str) -> None:
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples if s.name == name and _has(s.labels, labels)]
        assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples; name more labels"
        return found[0] if found else 0.0

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` with these labels (whatever the others)."""
        return sum(s.value for s in self.samples if s.name == name and _has(s.labels, labels))

    def labels(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]


def _has(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())

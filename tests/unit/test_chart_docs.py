"""The chart's metadata as chart-testing (`ct lint`) and Artifact Hub check it, and its README's
values table, which `make docs` generates from values.yaml (this test fails when they drift).
`helm lint --strict` and the rendering tests are in e2e/test_chart.py (they need helm)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from codeexec import chartdocs

CHART = Path(__file__).parents[2] / "charts" / "codeexec-operator"
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
)


def chart() -> dict[str, object]:
    return dict(yaml.safe_load((CHART / "Chart.yaml").read_text()))


def test_the_readme_values_table_matches_values_yaml() -> None:
    """caught: adding a `# --` key to values.yaml without `make docs` made this fail."""
    readme = (CHART / "README.md").read_text()
    regenerated = chartdocs.with_table(readme, (CHART / "values.yaml").read_text())
    assert readme == regenerated, "the chart README's values table is stale: run `make docs`"


def test_the_values_table_documents_nested_keys_with_their_defaults() -> None:
    text = "a:\n  # -- the b\n  # continued\n  b: 3\n  c: x\n# -- the d\nd: [1]\n"
    assert chartdocs.documented(text) == [("a.b", "the b continued"), ("d", "the d")]
    table = chartdocs.table(text)
    assert "| `a.b` | int | `3` | the b continued |" in table
    assert "| `d` | list | `[1]` | the d |" in table


def test_chart_yaml_passes_chart_testing_checks() -> None:
    meta = chart()
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == CHART.name
    assert SEMVER.match(str(meta["version"])), meta["version"]
    assert SEMVER.match(str(meta["appVersion"]))
    assert str(meta["kubeVersion"]).startswith(">=")
    maintainers = meta["maintainers"]
    assert isinstance(maintainers, list) and maintainers
    assert all(isinstance(m, dict) and m.get("name") for m in maintainers)
    json.loads((CHART / "values.schema.json").read_text())


def test_artifact_hub_annotations_are_well_formed() -> None:
    annotations = chart()["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["artifacthub.io/license"] == "Apache-2.0"
    crds = yaml.safe_load(annotations["artifacthub.io/crds"])
    crd_names = {c["name"] for c in crds}
    shipped = {
        yaml.safe_load(p.read_text())["metadata"]["name"] for p in (CHART / "crds").glob("*.yaml")
    }
    assert crd_names == shipped
    for key in ("artifacthub.io/images", "artifacthub.io/links", "artifacthub.io/crdsExamples"):
        assert isinstance(yaml.safe_load(annotations[key]), list)
    images = yaml.safe_load(annotations["artifacthub.io/images"])
    assert all(i["image"].endswith(":" + str(chart()["appVersion"])) for i in images)

"""Which namespaces may use a SandboxPool: its `spec.tenants`, applied to a namespace (pure)."""

from __future__ import annotations

from codeexec.api.models import LabelSelector, PoolTenants


def selects(selector: LabelSelector, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector, as the API server applies it (`{}` selects everything)."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
        if req.operator == "In" and (not present or labels[req.key] not in req.values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
    return True


def needs_labels(tenants: PoolTenants | None, namespace: str) -> bool:
    """Whether deciding needs the namespace's labels (an API read): not for open or listed."""
    return (
        tenants is not None
        and namespace not in tenants.namespaces
        and tenants.namespace_selector is not None
    )


def admits(tenants: PoolTenants | None, namespace: str, labels: dict[str, str] | None) -> bool:
    """An unset `tenants` admits every namespace; `labels` None means they were not read."""
    if tenants is None or namespace in tenants.namespaces:
        return True
    if tenants.namespace_selector is None or labels is None:
        return False
    return selects(tenants.namespace_selector, labels)

"""``cincer export``: the cleaned labels and the audit log of a project, as CSV or JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import CincerError
from .project import load_project
from .store import Store

LABEL_FIELDS = ["id", "original_label", "label", "original_name", "name", "changed"]
AUDIT_FIELDS = ["decision_id", "query_id", "who", "at", "action", "example", "role", "old_label", "new_label",
                "old_name", "new_name", "changed", "counterexample_shown", "suspicious", "undone_at"]


def export_rows(root: str | Path) -> tuple[list[dict], list[dict]]:
    """``(labels, audit)``: one row per pool example; one row per example touched by each decision
    (the suspicious one and the counter-example shown), undone decisions included and marked."""
    project = load_project(root)
    if not project.store_path.is_file():
        raise CincerError(f"{root}: no session yet (start one with `cincer serve --project {root}`)")
    store = Store(project.store_path)
    try:
        names = project.class_names
        labels = [{"id": i, "original_label": o, "label": c, "original_name": names[o], "name": names[c],
                   "changed": o != c} for i, (o, c) in enumerate(zip(store.original_labels(), store.labels()))]
        audit = []
        for d in store.decisions():
            roles = [("suspicious", d["suspicious"], d["suspicious_old"], d["suspicious_new"])]
            if d["counter"] is not None:
                roles.append(("counterexample", d["counter"], d["counter_old"], d["counter_new"]))
            for role, example, old, new in roles:
                audit.append({"decision_id": d["id"], "query_id": d["query_id"], "who": d["who"], "at": d["at"],
                              "action": d["action"], "example": example, "role": role, "old_label": old,
                              "new_label": new, "old_name": names[old], "new_name": names[new],
                              "changed": old != new, "counterexample_shown": d["counter"],
                              "suspicious": d["suspicious"], "undone_at": d["undone_at"]})
    finally:
        store.close()
    return labels, audit


def write_export(root: str | Path, *, fmt: str = "csv", out: str | Path | None = None) -> list[Path]:
    if fmt not in ("csv", "json"):
        raise CincerError(f"--format must be csv or json, got {fmt!r}")
    labels, audit = export_rows(root)
    out = Path(out) if out is not None else Path(root) / "export"
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path = out / "cleaned.json"
        path.write_text(json.dumps({"labels": labels, "audit": audit}, indent=1))
        return [path]
    paths = [out / "labels.csv", out / "audit.csv"]
    for path, rows, fields in ((paths[0], labels, LABEL_FIELDS), (paths[1], audit, AUDIT_FIELDS)):
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return paths

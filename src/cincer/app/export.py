"""``cincer export`` (and the page's download buttons): the cleaned labels and the audit log of a
project, as CSV, JSON or Parquet, keyed so that they join back to the user's file.

``labels``: one row per example of the input file that has a label, in the file's order, held-out
rows included and marked: ``key`` (the ``--id`` value, the image's file name, else the 0-based row
number of the input file), ``row`` (that row number), ``held_out``, ``id`` (the example id in the app;
empty for a held-out row), the original and the final class (``original_name``/``name``, and their
indices ``original_label``/``label``) and ``changed``.
``audit``: one row per example touched by each decision (the suspicious one and the counter-example
shown), undone decisions and taken-back skips included and marked, each with the example's key.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import CincerError
from .project import Project, load_project
from .store import Store

FORMATS = ("csv", "json", "parquet")
LABEL_FIELDS = ["key", "row", "held_out", "id", "original_label", "label", "original_name", "name", "changed"]
AUDIT_FIELDS = ["decision_id", "query_id", "who", "at", "action", "example", "key", "role", "old_label", "new_label",
                "old_name", "new_name", "changed", "counterexample_shown", "counterexample_key", "suspicious",
                "suspicious_key", "undone_at"]


def export_tables(project: Project, store: Store) -> tuple[list[dict], list[dict]]:
    """``(labels, audit)`` rows of a project and its session's store."""
    names = project.class_names
    labels = []
    for i, (o, c) in enumerate(zip(store.original_labels(), store.labels())):
        labels.append({"key": project.key(i), "row": None if project.rows is None else project.rows[i],
                       "held_out": False, "id": i, "original_label": o, "label": c, "original_name": names[o],
                       "name": names[c], "changed": o != c})
    if project.has_holdout:
        assert project.y_test is not None
        for j, y in enumerate(project.y_test.tolist()):
            labels.append({"key": None if project.keys_test is None else project.keys_test[j],
                           "row": None if project.rows_test is None else project.rows_test[j], "held_out": True,
                           "id": None, "original_label": y, "label": y, "original_name": names[y], "name": names[y],
                           "changed": False})
    if project.rows is not None:
        labels.sort(key=lambda r: r["row"])
    key = lambda i: None if i is None else project.key(i)
    audit = []
    for d in store.decisions():
        roles = [("suspicious", d["suspicious"], d["suspicious_old"], d["suspicious_new"])]
        if d["counter"] is not None:
            roles.append(("counterexample", d["counter"], d["counter_old"], d["counter_new"]))
        for role, example, old, new in roles:
            audit.append({"decision_id": d["id"], "query_id": d["query_id"], "who": d["who"], "at": d["at"],
                          "action": d["action"], "example": example, "key": key(example), "role": role,
                          "old_label": old, "new_label": new, "old_name": names[old], "new_name": names[new],
                          "changed": old != new, "counterexample_shown": d["counter"],
                          "counterexample_key": key(d["counter"]), "suspicious": d["suspicious"],
                          "suspicious_key": key(d["suspicious"]), "undone_at": d["undone_at"]})
    return labels, audit


def export_rows(root: str | Path) -> tuple[list[dict], list[dict]]:
    """:func:`export_tables` of the project folder ``root`` (read-only: works while it is served)."""
    project = load_project(root)
    if not project.store_path.is_file():
        raise CincerError(f"{root}: no session yet (start one with `cincer serve --project {root}`)")
    store = Store(project.store_path)
    try:
        return export_tables(project, store)
    finally:
        store.close()


def render(labels: list[dict], audit: list[dict], fmt: str) -> dict[str, bytes]:
    """File name -> contents: ``labels.csv`` + ``audit.csv``, ``cleaned.json``, or ``labels.parquet`` +
    ``audit.parquet``."""
    if fmt not in FORMATS:
        raise CincerError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        return {"cleaned.json": json.dumps({"labels": labels, "audit": audit}, indent=1).encode()}
    out = {}
    for name, rows, fields in (("labels", labels, LABEL_FIELDS), ("audit", audit, AUDIT_FIELDS)):
        if fmt == "csv":
            buf = io.StringIO(newline="")
            writer = csv.DictWriter(buf, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
            out[f"{name}.csv"] = buf.getvalue().encode()
        else:
            out[f"{name}.parquet"] = _parquet(rows, fields)
    return out


def _parquet(rows: list[dict], fields: list[str]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for f in fields:
        values = [r[f] for r in rows]
        try:
            columns[f] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types (keys of a project made before keys)
            columns[f] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    table = pa.table(columns) if rows else pa.table({f: pa.array([], type=pa.null()) for f in fields})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_export(root: str | Path, *, fmt: str = "csv", out: str | Path | None = None) -> list[Path]:
    if fmt not in FORMATS:
        raise CincerError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    files = render(*export_rows(root), fmt)
    out = Path(out) if out is not None else Path(root) / "export"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, body in files.items():
        path = out / name
        path.write_bytes(body)
        paths.append(path)
    return paths

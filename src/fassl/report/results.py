"""Every file a run writes for people and programs: JSON results and markdown tables.

One writer for results.json / analysis_*.json (atomic, strict JSON) and one formatter per
table; the pipeline, ``fassl eval`` and ``fassl compare`` only decide what to write
where. Columns follow ``COLUMNS`` (All, Frequent, Medium, Rare, Std).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from fassl.data import GROUPS
from fassl.errors import DamagedFile, printable
from fassl.files import write_text

# The column order of every results table and chart: All, then the groups, then the std
# of the per-group accuracies.
COLUMNS = ("all", *GROUPS, "std")


def _json_safe(value: Any) -> Any:
    """nan/inf -> null (strict JSON has no NaN), tensors -> lists, recursively."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(results: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``results`` as JSON atomically (``fassl.files``): a reader never sees a
    half-written file; NaN and infinities become null."""
    write_text(path, json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n")


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object a run wrote at ``path`` (results.json, analysis_*.json, grid.json);
    DamagedFile naming the file and what is wrong when it is empty, truncated or holds
    anything but an object (a copy cut short, a disk error, a hand edit)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DamagedFile(f"{printable(path)} is damaged: not UTF-8 text ({err.reason})") from err
    if not text.strip():
        raise DamagedFile(f"{printable(path)} is damaged: the file is empty")
    try:
        value = json.loads(text)
    except ValueError as err:
        what = f"not valid JSON ({err})"
        if isinstance(err, json.JSONDecodeError) and err.pos >= len(text.rstrip()):
            what = f"truncated JSON (it ends at line {err.lineno} before the object closes)"
        raise DamagedFile(f"{printable(path)} is damaged: {what}") from err
    if not isinstance(value, dict):
        raise DamagedFile(
            f"{printable(path)} is damaged: it holds a JSON {type(value).__name__}, not an object"
        )
    return value


def read_results(
    path: str | os.PathLike[str], then: str = "the run counts as unfinished"
) -> dict[str, Any] | None:
    """results.json (or another run file) at ``path``; None when it is missing or damaged
    (the run is then unfinished: probed again or listed as such), saying so on stderr,
    with what happens ``then``, when damaged."""
    if not os.path.isfile(path):
        return None
    try:
        return read_json_object(path)
    except DamagedFile as err:
        print(f"fassl: warning: {err}; {then}", file=sys.stderr)
        return None


_ROW_ORDER = ("standard", "few_shot", "knn")
EMPTY = "–"  # a group without classes, or a number that could not be taken


def _share(value: float | None) -> str:
    return EMPTY if value is None else f"{value:.2f}"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return EMPTY
    return f"{float(value):.2f}"


def _rows(results: dict[str, Any], label: str = "") -> list[str]:
    rows = []
    suffix = f" ({label})" if label else ""
    if "skipped" in results:
        return [f"| all{suffix} | skipped: {results['skipped']} |" + " |" * len(COLUMNS)]
    for setting in _ROW_ORDER:
        entry = results.get(setting)
        if entry is None:
            continue
        if "skipped" in entry:
            rows.append(
                f"| {setting}{suffix} | skipped: {entry['skipped']} |" + " |" * len(COLUMNS)
            )
            continue
        variant = f"k={entry['k']}" if setting == "knn" else entry.get("variant", "")
        cells = [_fmt(entry.get(col)) for col in COLUMNS]
        rows.append(f"| {setting}{suffix} | {variant} | " + " | ".join(cells) + " |")
    return rows


def results_table(results: dict[str, Any], reference: dict[str, Any] | None = None) -> str:
    """Markdown table: setting | variant | All | Frequent | Medium | Rare | Std.

    ``reference`` maps a name (e.g. "raw pixels") to another results dict, whose rows
    follow with the name in the setting column; a bare results dict is named "reference".
    """
    lines = [
        "| setting | variant | All | Frequent | Medium | Rare | Std |",
        "|---|---|---|---|---|---|---|",
        *_rows(results),
    ]
    if reference:
        if "meta" in reference or any(s in reference for s in _ROW_ORDER):
            reference = {"reference": reference}
        for name, ref in reference.items():
            lines.extend(_rows(ref, name))
    return "\n".join(lines) + "\n"


def enrichment_table(diagnostics: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: per weight, mean log phi and top-share per group."""
    lines = [
        "| weight | mean log phi F / M / R | share in top: F / M / R | base share F / M / R |"
        " Rare enrichment |",
        "|---|---|---|---|---|",
    ]

    def per_group(values: dict[str, float], spec: str) -> str:
        return " / ".join(format(values[g], spec) if g in values else EMPTY for g in GROUPS)

    for weight, d in diagnostics.items():
        rare = d["enrichment"].get("rare")
        lines.append(
            f"| {weight} | {per_group(d['mean_log_phi'], '+.4g')} | "
            f"{per_group(d['top_share'], '.3f')} | {per_group(d['base_share'], '.3f')} | "
            f"{EMPTY if rare is None else format(rare, '.2f')} |"
        )
    return "\n".join(lines)


def analysis_markdown(stage: str, diagnostics: dict, shares: dict[str, float]) -> str:
    """analysis_<stage>.md: the weight enrichment table and the prototypes' groups."""
    return (
        f"## Weight enrichment after {stage} (top 5% of weights)\n\n"
        f"{enrichment_table(diagnostics)}\n\nPrototypes whose nearest image is Frequent / "
        f"Medium / Rare: {' / '.join(_share(shares.get(g)) for g in GROUPS)}\n"
    )


def group_lines(meta: dict[str, Any]) -> list[str]:
    """One line per class group: its classes with their pre-training image counts
    (``Rare: airplane (50), automobile (77), ship (129)``), from results.json's meta; then
    one line naming the empty groups, which have no accuracy (``–`` in the tables), that
    says when there are fewer than three classes."""
    classes, counts = meta.get("classes") or [], meta.get("class_counts") or []
    groups = meta.get("groups") or {}
    if not classes or not groups:
        return []
    lines = []
    for group in GROUPS:
        ids = groups.get(group)
        if not ids:
            continue
        named = ", ".join(
            f"{classes[c]} ({counts[c]:,})" if c < len(counts) else classes[c] for c in ids
        )
        lines.append(f"{group.capitalize()}: {named}")
    empty = _empty_groups_line(len(classes), [g for g in GROUPS if not groups.get(g)])
    return [*lines, empty] if empty else lines


def _empty_groups_line(num_classes: int, empty: list[str]) -> str:
    """``Only 2 classes (fewer than three): Medium has no class (no accuracy in the
    tables)``; "" when no group is empty."""
    if not empty:
        return ""
    one = len(empty) == 1
    names = " and ".join(g.capitalize() for g in empty)
    what = f"{names} {'has' if one else 'have'} no class (no accuracy in the tables)"
    if num_classes < 3:
        plural = "class" if num_classes == 1 else "classes"
        return f"Only {num_classes} {plural} (fewer than three): {what}"
    return what


def run_report(
    title: str, notes: list[str], results: dict[str, Any] | None, reference: dict | None = None
) -> str:
    """report.md of a run: title, data notes, which classes are Frequent / Medium / Rare,
    warnings about splits too small to mean much, and the results table (None: no labels)."""
    extra = []
    if results is not None:
        extra = [*group_lines(results.get("meta", {})), *results.get("notes", [])]
    text = f"# {title}\n\n" + "\n".join(f"- {n}" for n in [*notes, *extra]) + "\n\n"
    if results is not None:
        text += results_table(results, reference) + "\n"
    return text

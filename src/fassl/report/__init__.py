"""Every file written for people about one run: results, reports, figures.

A comparison's and a sweep's tables live with them (``fassl.compare.tables``,
``fassl.compare.sweep_tables``).
"""

from fassl.report.results import (
    analysis_markdown,
    enrichment_table,
    group_lines,
    read_json_object,
    read_results,
    results_table,
    run_report,
    write_json,
)

__all__ = [
    "analysis_markdown",
    "enrichment_table",
    "group_lines",
    "read_json_object",
    "read_results",
    "results_table",
    "run_report",
    "write_json",
]

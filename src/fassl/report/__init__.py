"""Every file written for people: results, reports, comparison and sweep tables, figures."""

from fassl.report.comparison import (
    PAPER,
    PAPER_CIFAR10_LT,
    bar_chart,
    difference_tables,
    markdown_tables,
    paper_dataset,
    paper_elsewhere,
    summarize,
    weight_analysis_tables,
    write_csv,
)
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
    "PAPER",
    "PAPER_CIFAR10_LT",
    "analysis_markdown",
    "bar_chart",
    "difference_tables",
    "enrichment_table",
    "group_lines",
    "markdown_tables",
    "paper_dataset",
    "paper_elsewhere",
    "read_json_object",
    "read_results",
    "results_table",
    "run_report",
    "summarize",
    "weight_analysis_tables",
    "write_csv",
    "write_json",
]

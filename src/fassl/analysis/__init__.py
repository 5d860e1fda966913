"""Label-using analyses: weight enrichment, prototypes, reports and figures."""

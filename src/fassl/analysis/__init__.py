"""Analyses: rarity rankings, the prototypes' classes, training monitors.

A weight's enrichment (does it find the rare images?) lives with the weights:
``fassl.rebalance.enrichment``.
"""

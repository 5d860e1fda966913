"""Analyses: rarity rankings, weight enrichment, the prototypes' classes, training monitors."""

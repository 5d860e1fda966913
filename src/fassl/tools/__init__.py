"""Per-image answers for any collection: embeddings, a rarity ranking, exports, t-SNE."""

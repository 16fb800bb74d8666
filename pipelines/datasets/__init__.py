"""Dataset loaders: each reads one dataset's real on-disk layout into a :class:`~pipelines.datasets.base.Listing`.

``cremad``, ``ave``, ``crisismmd`` read the published layouts (quirks included, see each module);
``manifest`` reads a user's CSV; ``synthetic`` generates a small CREMA-D lookalike and reads it
with the CREMA-D loader. `pipelines.prepare` turns a listing into feature shards.
"""

DATASETS = ("cremad", "ave", "crisismmd", "manifest", "synthetic")

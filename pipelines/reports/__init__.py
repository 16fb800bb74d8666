"""`cmi report`: per-class, per-client and per-modality fairness reports of training runs.

- :mod:`~pipelines.reports.metrics`: the metrics themselves (shared with the training engine's
  per-round evaluation, so both agree to the last digit; imports numpy only).
- :mod:`~pipelines.reports.load`: reading a run directory and its partition, finished or not.
- :mod:`~pipelines.reports.analysis`: ``build_report`` recomputes every number of a report.
- :mod:`~pipelines.reports.aggregate`: runs grouped (``--group-by``, ``--experiment``) and their
  statistics over seeds (mean ± std, t intervals, paired differences and tests);
  :mod:`~pipelines.reports.aggregate_tables` its tables.
- :mod:`~pipelines.reports.tables` (rich / shared table model), :mod:`~pipelines.reports.exporters`
  (JSON, CSV, Markdown), :mod:`~pipelines.reports.latex` (booktabs), :mod:`~pipelines.reports.figures`
  (PNG / SVG / PDF, sized by :mod:`~pipelines.reports.style`) and :mod:`~pipelines.reports.html`
  (self-contained HTML, inline SVG); :mod:`~pipelines.reports.render` picks one by format name.

This package module imports nothing, so importing ``pipelines.reports.metrics`` stays cheap.
"""

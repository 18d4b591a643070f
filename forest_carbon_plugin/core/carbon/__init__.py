"""Carbon stock of project areas with a Monte Carlo confidence interval.

- :mod:`.tables` — height allometries, IPCC root-to-shoot ratios and carbon fraction, with their citations.
- :mod:`.polygons` — project polygons: reading, repair, ellipsoidal areas.
- :mod:`.random_field` — correlated Gaussian error fields (circulant embedding) and Monte Carlo error totals.
- :mod:`.variogram` — the error-correlation range: given, fitted from a validation report, or conservative;
  the error model recorded with a run's output.
- :mod:`.stock` — the algorithm, :func:`.stock.carbon_stock`, and its settings dataclasses.
- :mod:`.stock_report` — its HTML report.
"""

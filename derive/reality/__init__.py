"""Stage 8, reality: ensembles of actual random networks (``montecarlo``) and ``check``
(``check``): Monte Carlo at several widths against the predictions, with 1/n fits."""

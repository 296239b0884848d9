"""Stage 3, activations: activation functions as data (``catalogue``, from rules/activations/),
their Gaussian expectations, closed form or error-bounded quadrature (``gaussian``), and the
criticality analysis of an activation (``criticality``)."""

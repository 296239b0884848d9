"""Stage 6, emit: what a derivation is printed as — LaTeX in the book's notation (``printing``),
step-by-step documents through the jinja2 templates (``documents``) and generated numpy
evaluators (``numpy_module``)."""

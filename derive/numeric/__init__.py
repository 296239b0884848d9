"""Stage 7, numeric: numbers from the derived recursions — the batched evaluator
(``evaluate``) and ``predict`` (``prediction``), which runs a network through the generated
evaluator or the batched one."""

"""Stage 1, base: what every other stage stands on — the one exception family and its boundary
(``errors``), the parser of user strings (``parsing``, an ``ast`` whitelist) and the rule files
under rules/ (``rules``).  Imports nothing else from derive."""

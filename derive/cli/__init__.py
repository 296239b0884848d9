"""Stage 9, cli: the ``derive`` command (``main``) — spec files (``specfile``), the main job
(``jobs``) and outputs written atomically with a manifest (``outputs``)."""

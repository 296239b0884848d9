"""Stage 5, derivation: one layer derived from its forward equation (``layerstep``, cached
once per process), σ put in for a concrete activation (``specialise``), and ``derive``: the
recursions of a network with the plan of what feeds what (``derivation``)."""

"""Stage 4, architectures: the networks a derivation is about — the MLP specification
(``mlp``: depth, widths, activation, C_b, C_W) and the other architectures."""

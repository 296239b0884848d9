"""Independent, hand-derived single-input recursions of the dNTK's and ddNTKs' O(1/n)
statistics P, Q, R, S, T, Udd of an MLP (book ch. 11 and ∞; definitions in
docs/conventions.md §3).  Plain numpy on top of ``tests/ntk_reference.py`` (for K, Θ, B, F),
deliberately NOT importing ``derive``: an independent check of what the engine derives.

Definitions (λ diagonal; derivatives of layer ℓ's preactivations)
    dĤ_{i0i1i2}   = Σ λλ ∂²z_{i0} ∂z_{i1} ∂z_{i2}
    ddIĤ_{i0…i3}  = Σ λλλ ∂³z_{i0} ∂z_{i1} ∂z_{i2} ∂z_{i3}
    ddIIĤ_{i1…i4} = Σ λ_{μ1}λ_{μ2}λ_{μ3} ∂²z_{i1}/∂μ1∂μ2 ∂²z_{i2}/∂μ1∂μ3 ∂z_{i3}/∂μ2 ∂z_{i4}/∂μ3
    E[dĤ_{i0i1i2} z_{i3}] = (1/m)[δ01 δ23 P + δ02 δ13 P + δ03 δ12 Q]
    E[ddIĤ]  = (1/m)[δ01 δ23 R + δ02 δ13 R + δ03 δ12 R]
    E[ddIIĤ] = (1/m)[δ12 δ34 S + δ13 δ24 T + δ14 δ23 Udd]        (m = n_{ℓ−1})

Derivation (layer ℓ → ℓ+1, single input, m = n_{ℓ−1}, n = n_ℓ, r = n/m)
------------------------------------------------------------------------
z'_i = b_i + Σ_j W_ij s_j.  By the chain rule, with ∂ a derivative by a parameter of the layers
below and W the weights of layer ℓ+1 (λ_W/n each; biases have no second derivatives):
    ∂z'_i = Σ_j W_ij s'_j ∂z_j,   ∂_{W_mp} z'_i = δ_im s_p,
    ∂∂z'_i = Σ_j W_ij (s''_j ∂z_j ∂z_j + s'_j ∂∂z_j),   ∂_{W_mp} ∂z'_i = δ_im s'_p ∂z_p,
    ∂∂∂z'_i = Σ_j W_ij (s'''_j ∂z∂z∂z + s''_j (∂∂z ∂z + 2 perms) + s'_j ∂∂∂z),
    ∂_{W_mp} ∂∂z'_i = δ_im (s''_p ∂z_p ∂z_p + s'_p ∂∂z_p),  two W's: 0.
Each assignment of the λ-contracted parameters to "layer ℓ+1's W" or "below" is a term; the
products of derivatives of layer ℓ contracted by λ are its Ĥ, dĤ, ddĤ.  Wick over W_{ℓ+1}
fixes the δ-structure; the neuron sums split into equal and distinct neurons; then, to O(1/m):
    E[Ĥ_jj ...] → Θ;  for j ≠ k:  E[Ĥ_jk f(z_j) g(z_k)] = (F/m) <f'><g'>,
    E[Ĥ_jk Ĥ_jk f g] = (B/m) <f><g>,  E[dĤ_{jjk} f(z_j) g(z_k)] = (P/m) <f><g'>,
    E[dĤ_{jkk} f(z_j) g(z_k)] = (Q/m) <f'><g>,  E[ddIĤ_{jjkk}] = R/m, E[ddIIĤ_{jjkk}] = S/m,
    E[ddIIĤ_{jkjk}] = T/m, E[ddIIĤ_{jkkj}] = Udd/m;
dĤ has zero mean, and products of two fluctuating fields other than Ĥ Ĥ are O(1/m²).
With a = <s s''> + <s'²> = <(s s')'> and b = <s' s'''> + <s''²> = <(s' s'')'>, hyperparameters
C_W, λ_W of layer ℓ+1 and averages over K = K^{(ℓ)}:

  P' = λ_W C_W Θ <s'² s²> + C_W² Θ² <s'' s'² s> + r [λ_W C_W F a² + C_W² <s'²> P a + C_W² Θ F a b]
  Q' = C_W² Θ² <s'' s'² s> + r [C_W² <s'²> Q a + C_W² B <s s''> <s'²>]
  R' = λ_W C_W Θ² <s'' s s'²> + C_W² Θ³ <s''' s'³>
       + r [λ_W C_W B <s s''> <s'²> + λ_W C_W <s'²> Q a + C_W² Θ B <s''' s'> <s'²>
            + C_W² Θ <s'²> Q b + C_W² <s'²>² R]
  S' = λ_W C_W Θ² <s'⁴> + C_W² Θ³ <s''² s'²> + r [λ_W C_W B <s'²>² + C_W² Θ B <s''²> <s'²>
                                                 + C_W² <s'²>² S]
  T' = 2 λ_W C_W Θ² <s s'² s''> + λ_W² Θ <s'² s²> + C_W² Θ³ <s''² s'²>
       + r [2 λ_W C_W Θ F a b + 2 λ_W C_W <s'²> P a + λ_W² F a² + C_W² Θ² F b²
            + 2 C_W² Θ <s'²> P b + C_W² <s'²>² T]
  Udd' = C_W² Θ³ <s''² s'²> + r C_W² <s'²>² Udd
and all six vanish at layer 1 (z^{(1)} is linear in the parameters).  Examples of the steps:
P's λ_W C_W terms come from the W-edge on ∂z'_{i1}: δ_{i0i1} (λ_W/n) Σ_{j,k} s'_j s_j s'_k W_{i2k}
Ĥ_{jk}, whose Wick with z'_{i3} gives j = k (Θ) and j ≠ k (F); T's λ_W² term has both of the
leaves' edges on layer ℓ+1's weights, δ_{i1i3} δ_{i2i4} (λ_W/n)² Σ_{p,q} s'_p s_p s'_q s_q Ĥ_pq.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from ntk_reference import _per_layer, gauss, reference

__all__ = ["tangent_reference", "DERIVATIVES"]


def _tanh_derivatives(z):
    t = np.tanh(z)
    d1 = 1.0 - t * t
    return t, d1, -2.0 * t * d1, (6.0 * t * t - 2.0) * d1


def _erf_derivatives(z):
    d1 = 2.0 / math.sqrt(math.pi) * np.exp(-z * z)
    return erf(z), d1, -2.0 * z * d1, (4.0 * z * z - 2.0) * d1


def _linear_derivatives(z):
    return z, np.ones_like(z), np.zeros_like(z), np.zeros_like(z)


#: σ, σ', σ'', σ''' (smooth activations only: the dNTK of σ with kinks holds δ-functions)
DERIVATIVES = {"tanh": _tanh_derivatives, "erf": _erf_derivatives, "linear": _linear_derivatives}


def tangent_reference(activation: str, depth: int, widths: list, C_b, C_W, lambda_b, lambda_W,
                      G0: float) -> dict:
    """{name: {layer: float}} for P, Q, R, S, T, Udd (and K, Θ, B, F from ntk_reference) of a
    single input with G0 = |x|²/n_0; arguments as :func:`ntk_reference.reference`."""
    base = reference(activation, depth, widths, C_b, C_W, lambda_b, lambda_W, G0)
    ds = DERIVATIVES[activation]
    CW = _per_layer(C_W, depth, "C_W")
    lW = _per_layer(lambda_W, depth, "lambda_W")
    widths = [float(n) for n in widths]
    names = ("P", "Q", "R", "S", "T", "Udd")
    out = {k: {1: 0.0} for k in names}
    st = dict.fromkeys(names, 0.0)
    for l in range(1, depth):  # layer l → l + 1; hyperparameters of layer l + 1
        cw, lw = CW[l], lW[l]
        K, Th, B, F = (base[k][l] for k in ("K", "Theta", "B", "F"))
        r = widths[l - 1] / widths[l - 2] if l >= 2 else 0.0

        def avg(f):
            return gauss(lambda z: f(*ds(z)), K)

        p2 = avg(lambda s, s1, s2, s3: s1 ** 2)
        a = avg(lambda s, s1, s2, s3: s * s2 + s1 ** 2)
        b = avg(lambda s, s1, s2, s3: s1 * s3 + s2 ** 2)
        ss2 = avg(lambda s, s1, s2, s3: s * s2)
        s3s1 = avg(lambda s, s1, s2, s3: s3 * s1)
        s2sq = avg(lambda s, s1, s2, s3: s2 ** 2)
        p1s = avg(lambda s, s1, s2, s3: s1 ** 2 * s ** 2)
        mixed = avg(lambda s, s1, s2, s3: s2 * s1 ** 2 * s)
        third = avg(lambda s, s1, s2, s3: s3 * s1 ** 3)
        p4 = avg(lambda s, s1, s2, s3: s1 ** 4)
        s2p2 = avg(lambda s, s1, s2, s3: s2 ** 2 * s1 ** 2)
        P, Q, R, S, T, Udd = (st[k] for k in names)
        new = {
            "P": lw * cw * Th * p1s + cw ** 2 * Th ** 2 * mixed
            + r * (lw * cw * F * a ** 2 + cw ** 2 * p2 * P * a + cw ** 2 * Th * F * a * b),
            "Q": cw ** 2 * Th ** 2 * mixed + r * (cw ** 2 * p2 * Q * a + cw ** 2 * B * ss2 * p2),
            "R": lw * cw * Th ** 2 * mixed + cw ** 2 * Th ** 3 * third
            + r * (lw * cw * B * ss2 * p2 + lw * cw * p2 * Q * a + cw ** 2 * Th * B * s3s1 * p2
                   + cw ** 2 * Th * p2 * Q * b + cw ** 2 * p2 ** 2 * R),
            "S": lw * cw * Th ** 2 * p4 + cw ** 2 * Th ** 3 * s2p2
            + r * (lw * cw * B * p2 ** 2 + cw ** 2 * Th * B * s2sq * p2 + cw ** 2 * p2 ** 2 * S),
            "T": 2 * lw * cw * Th ** 2 * mixed + lw ** 2 * Th * p1s + cw ** 2 * Th ** 3 * s2p2
            + r * (2 * lw * cw * Th * F * a * b + 2 * lw * cw * p2 * P * a + lw ** 2 * F * a ** 2
                   + cw ** 2 * Th ** 2 * F * b ** 2 + 2 * cw ** 2 * Th * p2 * P * b
                   + cw ** 2 * p2 ** 2 * T),
            "Udd": cw ** 2 * Th ** 3 * s2p2 + r * cw ** 2 * p2 ** 2 * Udd,
        }
        st = new
        for k in names:
            out[k][l + 1] = float(st[k])
    for k in ("K", "Theta", "B", "F"):
        out[k] = base[k]
    return out

"""Independent, hand-derived single-input reference for the finite-width recursions
of an MLP's metric and neural tangent kernel (PDLT ch. 4, 8, 11 conventions).

Plain numpy, deliberately NOT importing anything from ``derive``: it is meant as
an independent check of what ``derive`` produces.  It is validated against a
self-contained Monte Carlo in ``tests/test_ntk_reference.py``.

Conventions
-----------
z^{(1)}_i = b^{(1)}_i + sum_j W^{(1)}_{ij} x_j,
z^{(l+1)}_i = b^{(l+1)}_i + sum_{j<=n_l} W^{(l+1)}_{ij} sigma(z^{(l)}_j),
E[b b] = delta C_b^{(l)},  E[W W] = delta delta C_W^{(l)} / n_{l-1}.

Layer l's statistics (single input; all 1/n statistics of layer l are divided by
n_{l-1}, the width of the layer *before*):
  E[z_i z_j]                 = delta_ij (K + G1/n_{l-1}) + O(1/n^2)
  connected E[z z z z]       = (1/n_{l-1}) [dd V + 2 perms]
  E[H_ii]                    = Theta + H1/n_{l-1}
  E[dH_{i1i2} dH_{i3i4}]     = (1/n_{l-1}) [d12 d34 A + d13 d24 B + d14 d23 B]
  E[dH_{i1i2} z_{i3} z_{i4}] = (1/n_{l-1}) [d12 d34 D + d13 d24 F + d14 d23 F]
with dH = H - E[H] and the NTK obeying the forward equation
  H^{(l+1)}_{i1i2} = d_{i1i2} [lb + (lW/n_l) sum_j s_j^2]
                     + sum_{j1 j2} W_{i1j1} W_{i2j2} s'_{j1} s'_{j2} H^{(l)}_{j1j2},
  H^{(1)}_{i1i2}   = d_{i1i2} [lb^{(1)} + lW^{(1)} G0],   G0 = |x|^2 / n_0.
So for i != j:  n_{l-1} Cov(H_ii, H_jj) -> A,  n_{l-1} E[H_ij^2] -> B,
                n_{l-1} Cov(H_ii, z_j^2) -> D,  n_{l-1} E[H_ij z_i z_j] -> F,
                n_{l-1} Cov(z_i^2, z_j^2) -> V.

Derivation (layer l -> l+1)
---------------------------
Write m = n_{l-1}, n = n_l, <.> = Gaussian average with variance K = K^{(l)},
hyperparameters C_b, C_W, lb, lW of layer l+1, s = sigma(z), s' = sigma'(z).

Tools.  Layer l is nearly Gaussian, so to O(1/m)
  (T1) E[f(z_j)] = <f> + (1/m) [G1/2 <f''> + V/8 <f''''>]        (single-neuron 4th cumulant = 3V/m)
  (T2) Cov(f(z_j), g(z_k)) = (V/(4m)) <f''> <g''>,  j != k
  (T3) E[dH_ab O(z)] = 1/2 sum_{c,d} E[dH_ab z_c z_d] <d_c d_d O>  (cumulant expansion: the joint
       cumulant of dH with two z's is O(1/m); E[dH z] = 0 by parity; higher ones are smaller.
       Equivalently E[dH | z] is, at O(1/m), a quadratic form in z.)
  (T4) E[dH dH O(z)] = E[dH dH] <O> at leading order.
Derivatives are evaluated derivative-free (exact Gaussian identities, valid for ReLU too):
  <f''> = <f (z^2-K)>/K^2,   <f''''> = <f (z^4 - 6K z^2 + 3K^2)>/K^4.

Conditional on layer l the rows w_i of W^{(l+1)} are independent Gaussian vectors with
covariance (C_W/n) I.  Put M_{ab} = s'_a s'_b H_{ab} and X_j = lW s_j^2 + C_W s'_j^2 H_jj.  Then
  E[z'_i^2 | l]      = G^ = C_b + (C_W/n) sum_j s_j^2
  E[H'_ii | l]       = Q^ = lb + (1/n) sum_j X_j
  Cov(H'_ii, H'_kk | l) = 0,  Cov(H'_ii, z'_k^2 | l) = 0      (i != k: different rows)
  E[H'_ik^2 | l]         = (C_W/n)^2 sum_{ab} M_ab^2        (i != k)
  E[H'_ik z'_i z'_k | l] = (C_W/n)^2 sum_{ab} M_ab s_a s_b  (i != k; bias terms vanish by parity)
Splitting every sum_{a,b} into a = b and a != b, and using (T1)-(T4):

 K:   K' = C_b + C_W <s^2>
 G1:  E[z'^2] = C_b + C_W E[s^2]  with (T1):
      G1' = (n/m) [chi_par G1 + (C_W/8) <(s^2)''''> V],          chi_par = (C_W/2) <(s^2)''>
 V:   n Var(G^) = C_W^2 [Var(s^2) + (n-1) Cov(s_j^2, s_k^2)]:
      V' = C_W^2 [<s^4> - <s^2>^2] + (n/m) chi_par^2 V
 Theta: Theta' = lb + lW <s^2> + C_W <s'^2> Theta                 chi_perp = C_W <s'^2>
 H1:  E[H'_ii] = lb + lW E[s^2] + C_W E[s'^2 H_jj], and
      E[s'^2 H_jj] = E[s'^2] (Theta + H1/m) + E[dH_jj s'_j^2],
      E[dH_jj s'_j^2] = (1/2)(D + 2F)/m <(s'^2)''>   by (T3)  (E[dH_jj z_j z_j] = (D+2F)/m).
      H1' = (n/m) { lW [G1/2 <(s^2)''> + V/8 <(s^2)''''>]
                  + C_W Theta [G1/2 <(s'^2)''> + V/8 <(s'^2)''''>]
                  + chi_perp H1 + (C_W/2) (D + 2F) <(s'^2)''> }
 A:   A' = n Var(Q^) = Var(X_j) + (n-1) Cov(X_j, X_k).  Cross terms at O(1/m):
        Cov(s_j^2, s_k^2)             = V/(4m) <(s^2)''>^2                          (T2)
        Cov(s_j^2, s'_k^2 H_kk)       = V/(4m) <(s^2)''><(s'^2)''> Theta + D/(2m) <s'^2><(s^2)''>
            [(T3) on s'_k^2 s_j^2: the c=d=k term cancels against the subtracted product of means,
             the c=d=j term has E[dH_kk z_j z_j] = D/m]
        Cov(s'_j^2 H_jj, s'_k^2 H_kk) = Theta^2 V/(4m) <(s'^2)''>^2
                                        + 2 Theta D/(2m) <s'^2><(s'^2)''>   (as the line above)
                                        + A/m <s'^2>^2                      (T4)
      With rho = (1/2)[lW <(s^2)''> + C_W Theta <(s'^2)''>]:
      A' = <Y^2> - <Y>^2 + (n/m) [rho^2 V + 2 rho chi_perp D + chi_perp^2 A],
      Y = lW s^2 + C_W Theta s'^2  (the same-neuron part: Var(X_j) at leading order)
 B:   B' = (C_W^2/n) [sum_a E[s'_a^4 H_aa^2] + sum_{a!=b} E[s'_a^2 s'_b^2 H_ab^2]]
      B' = C_W^2 Theta^2 <s'^4> + (n/m) chi_perp^2 B
 D:   D' = n Cov(Q^, G^) = Cov(X_j, C_W s_j^2) + (n-1) Cov(X_j, C_W s_k^2):
      D' = C_W [<Y s^2> - <Y><s^2>] + (n/m) chi_par [rho V + chi_perp D]
 F:   F' = (C_W^2/n) [sum_a E[s_a^2 s'_a^2 H_aa] + sum_{a!=b} E[H_ab f(z_a) f(z_b)]],  f = s s'.
      For a != b, (T3): only (c,d) = (a,b),(b,a) survive, E[H_ab z_a z_b] = F/m, giving
      F/m <f'>^2 with <f'> = <(s s')'> = (1/2)<(s^2)''>:
      F' = C_W^2 Theta <s^2 s'^2> + (n/m) chi_par^2 F
 Layer 1: K = C_b + C_W G0, Theta = lb + lW G0, and V = G1 = H1 = A = B = D = F = 0.
 Only the ratios n_l/n_{l-1} (l >= 2) enter.  Layer 2 is exact at any width (layer 1 is
 exactly Gaussian with a deterministic NTK), and for ReLU G1 = H1 = 0 at every layer (each
 neuron's law is symmetric under z -> -z with H_jj fixed, so E[s^2] = E[z^2]/2 and
 E[s'^2 H_jj] = E[H_jj]/2 exactly).

Validation (tests/test_ntk_reference.py): an own Monte Carlo of whole networks (tanh, ReLU;
widths [n, 2n]) reproduces V, A, B, D, F at layers 2 and 3 after an a + b/n extrapolation,
and H1, G1 (tanh, erf; 0 for ReLU, linear) as the 1/n slope of the NTK's and metric's means.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

__all__ = ["reference", "gauss", "ACTIVATIONS"]

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(200)
_WEIGHTS = _WEIGHTS / math.sqrt(2.0 * math.pi)


def _relu(z):
    return np.maximum(z, 0.0)


def _relu_p(z):
    return (z > 0).astype(float)


ACTIVATIONS = {
    "linear": (lambda z: z, lambda z: np.ones_like(z)),
    "relu": (_relu, _relu_p),
    "tanh": (np.tanh, lambda z: 1.0 / np.cosh(z) ** 2),
    "erf": (erf, lambda z: 2.0 / math.sqrt(math.pi) * np.exp(-z * z)),
}


def gauss(f, K: float) -> float:
    """<f(z)> for z ~ N(0, K), 200-node Gauss-Hermite on the symmetrised integrand.

    (f(z) + f(-z))/2 has the same Gaussian average; for ReLU's integrands (even
    polynomials times a step) it is a polynomial, so the quadrature is exact despite
    the kink; for tanh/erf it is smooth."""
    z = math.sqrt(K) * _NODES
    return float(np.sum(_WEIGHTS * 0.5 * (f(z) + f(-z))))


def _d2(f, K):
    """<f''>_K = <f (z^2 - K)>/K^2."""
    return gauss(lambda z: f(z) * (z * z - K), K) / K**2


def _d4(f, K):
    """<f''''>_K = <f (z^4 - 6 K z^2 + 3 K^2)>/K^4."""
    return gauss(lambda z: f(z) * (z**4 - 6 * K * z * z + 3 * K * K), K) / K**4


def _per_layer(x, depth, name):
    if np.ndim(x) == 0:
        return [float(x)] * depth
    x = [float(v) for v in x]
    if len(x) != depth:
        raise ValueError(f"{name}: expected a number or a list of length {depth}, got {len(x)}")
    return x


def reference(activation: str, depth: int, widths: list, C_b, C_W, lambda_b, lambda_W,
              G0: float) -> dict:
    """widths = [n_1, ..., n_{L-1}] hidden widths (n_0 enters only through G0 = |x|^2/n_0).
    C_b, C_W, lambda_b, lambda_W: a number (all layers) or a list of length depth (layer 1..L).
    Returns {name: {layer: float}} for names K, V, G1, Theta, H1, A, B, D, F, layers 1..depth."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; one of {sorted(ACTIVATIONS)}")
    widths = [float(n) for n in widths]
    if len(widths) != depth - 1:
        raise ValueError(f"widths: expected {depth - 1} hidden widths, got {len(widths)}")
    sig, dsig = ACTIVATIONS[activation]
    Cb = _per_layer(C_b, depth, "C_b")
    CW = _per_layer(C_W, depth, "C_W")
    lb = _per_layer(lambda_b, depth, "lambda_b")
    lW = _per_layer(lambda_W, depth, "lambda_W")

    s2 = lambda z: sig(z) ** 2
    p2 = lambda z: dsig(z) ** 2

    names = ("K", "V", "G1", "Theta", "H1", "A", "B", "D", "F")
    out = {k: {} for k in names}
    st = dict(K=Cb[0] + CW[0] * G0, Theta=lb[0] + lW[0] * G0,
              V=0.0, G1=0.0, H1=0.0, A=0.0, B=0.0, D=0.0, F=0.0)
    for k in names:
        out[k][1] = st[k]

    for l in range(1, depth):  # layer l -> l+1, hyperparameters index l (= layer l+1)
        cb, cw, lamb, lamw = Cb[l], CW[l], lb[l], lW[l]
        K, Th = st["K"], st["Theta"]
        V, G1, H1, A, B, D, F = (st[k] for k in ("V", "G1", "H1", "A", "B", "D", "F"))
        # ratio n_l / n_{l-1}; layer 1's 1/n statistics are all zero, so it is irrelevant at l = 1
        r = widths[l - 1] / widths[l - 2] if l >= 2 else 0.0

        S2 = gauss(s2, K)
        S4 = gauss(lambda z: s2(z) ** 2, K)
        P2 = gauss(p2, K)
        P4 = gauss(lambda z: p2(z) ** 2, K)
        S2P2 = gauss(lambda z: s2(z) * p2(z), K)
        S2_d2, S2_d4 = _d2(s2, K), _d4(s2, K)
        P2_d2, P2_d4 = _d2(p2, K), _d4(p2, K)

        chi_par = 0.5 * cw * S2_d2
        chi_perp = cw * P2
        rho = 0.5 * (lamw * S2_d2 + cw * Th * P2_d2)
        Y = lambda z: lamw * s2(z) + cw * Th * p2(z)
        Ym = lamw * S2 + cw * Th * P2
        varY = gauss(lambda z: Y(z) ** 2, K) - Ym**2
        covYs2 = gauss(lambda z: Y(z) * s2(z), K) - Ym * S2

        new = {}
        new["K"] = cb + cw * S2
        new["Theta"] = lamb + lamw * S2 + chi_perp * Th
        new["V"] = cw**2 * (S4 - S2**2) + r * chi_par**2 * V
        new["G1"] = r * (chi_par * G1 + cw / 8.0 * S2_d4 * V)
        new["H1"] = r * (lamw * (0.5 * G1 * S2_d2 + V / 8.0 * S2_d4)
                         + cw * Th * (0.5 * G1 * P2_d2 + V / 8.0 * P2_d4)
                         + chi_perp * H1
                         + 0.5 * cw * (D + 2.0 * F) * P2_d2)
        new["A"] = varY + r * (rho**2 * V + 2.0 * rho * chi_perp * D + chi_perp**2 * A)
        new["B"] = cw**2 * Th**2 * P4 + r * chi_perp**2 * B
        new["D"] = cw * covYs2 + r * chi_par * (rho * V + chi_perp * D)
        new["F"] = cw**2 * Th * S2P2 + r * chi_par**2 * F
        st = new
        for k in names:
            out[k][l + 1] = float(st[k])
    return out

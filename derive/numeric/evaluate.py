r"""Numbers from derived recursions: specialise σ, compile once, evaluate vectorised.

This is the numeric back end of the layer step (:mod:`derive.derivation.layerstep`), docs/conventions.md §6 step 6.

1. :func:`specialise` puts the activation in for σ (derivatives inside plain averages are
   carried out; inside a :class:`~derive.DerivativeContraction` they are kept for step 3).
2. :class:`CompiledForm` replaces every *atom* of a specialised recursion — an average
   ⟨h⟩_K, a tensor component such as G1[α1, α1], a contraction Σ_β T_β ⟨∂_β f⟩ — by a
   symbol and lambdifies the rest once.  ``predict`` uses the generated modules of
   :mod:`derive.emit.numpy_module` instead, except for the full V of N ≥ 3 inputs (components with
   three or four distinct samples), which only this evaluator computes; it is also the
   second evaluator (same derived forms, other numerics) the generated modules are tested
   against.
3. :meth:`CompiledForm.evaluate` computes each atom as an array over a list of components
   (rows of sample numbers for the slots α1, α2, …) and calls the compiled function:

   * averages are evaluated per *coincidence pattern* of their samples (α1 = α2 merges two
     slots into one variable), in batches through :func:`derive.gaussian_expectation`
     (closed form; for ReLU-type σ exact orthant moments; else kink-aware quadrature with an
     error bound); averages symmetric in
     their slots are evaluated once per multiset of samples; a product of one-variable
     factors is evaluated once per *canonical* form (samples sorted, factors permuted along),
     and for a rank-4 step a first pass over the layer's recursions only records which
     products of three or four samples are needed, so that each set of samples is integrated
     once for all of them (:func:`~derive.activations.gaussian.product_expectations`);
   * a contraction Σ_β T_β Π_k ⟨∂_{β∈B_k} f_k⟩ runs β over the *distinct* samples of the
     f_k (the derivatives vanish elsewhere, docs/conventions.md §6 step 4) with ∂_β the derivative by the
     sample variable ζ_β.  For smooth σ the derivatives are taken symbolically.  For a σ
     with kinks (ReLU: σ'' is a Dirac delta) the derivative-free form is used instead,
     Gaussian integration by parts on the marginal of those samples,
     ⟨∂_{b1}∂_{b2}F⟩ = ⟨F (y_{b1} y_{b2} − P_{b1b2})⟩ and its Hermite analogues for any number
     of derivatives (up to eight at order 2), with P = K_S⁻¹ and y = P z
     (docs/conventions.md §4: "the derivative-free form is the one to evaluate for non-smooth
     σ"); the tensor may be a product of components (G1 G1, V V at order 2).

:func:`iterate_mlp` runs the recursions through a network: K, Θ (and G1, V at order 1; G2, V1,
U at order 2) of every layer, K/G1/Θ/G2 on the N(N+1)/2 unique pairs, the others on one
component per orbit of their index symmetries.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import combinations_with_replacement, permutations

import numpy as np
import sympy as sp
from sympy.core.sorting import default_sort_key

from ..activations.catalogue import Activation
from ..activations.gaussian import (FACTOR_VARIABLE, gaussian_expectation,
                                    one_variable_factors, product_expectations,
                                    product_integrand)
from ..algebra.symbols import GROUPS, DerivativeContraction, GaussianAverage, RandomVar
from ..architectures.mlp import MLP
from ..base.errors import CovarianceError, DeriveError
from ..derivation.derivation import TARGETS as _PLANNED
from ..derivation.derivation import order_for
from ..derivation.layerstep import cached_layer_step, closed_layer_step
from ..derivation.quantities import ALL_QUANTITIES, NNLO_QUANTITIES, QUANTITIES, quantity
from ..derivation.specialise import specialise

__all__ = ["CompiledForm", "iterate_mlp", "TARGETS"]

#: the quantities a layer step derives, in evaluation order (the planner's table)
TARGETS = tuple(_PLANNED)
#: the merged variables of an average after coinciding samples are identified
_Z = sp.symbols("z1:9")


# ---------------------------------------------------------------------------------------------
# component bookkeeping
# ---------------------------------------------------------------------------------------------

def _slots_of(f: sp.Expr, alphas: tuple) -> list[int]:
    """Positions (in ``alphas``) of the sample slots of the layer variables in ``f``."""
    found = {r.indices[0] for r in f.atoms(RandomVar)}
    bad = [x for x in found if x not in alphas]
    if bad:
        raise DeriveError(f"{f} uses sample indices {bad} that are not slots {alphas}")
    return sorted(alphas.index(x) for x in found)


def _patterns(C: np.ndarray) -> np.ndarray:
    """For each row, the label of each column = the first column holding the same sample."""
    M, s = C.shape
    lab = np.tile(np.arange(s), (M, 1))
    for i in range(s):
        for j in range(i):
            hit = (C[:, i] == C[:, j]) & (lab[:, i] == i)
            lab[hit, i] = lab[hit, j]
    return lab


@lru_cache(maxsize=16384)
def _merged(fs: tuple, slot_vars: tuple, pattern: tuple) -> tuple:
    """The functions with coinciding slots identified: slot variable → z_{rank of its label}
    (cached: every layer asks again)."""
    distinct = sorted(set(pattern))
    rep = {v: _Z[distinct.index(pattern[k])] for k, v in enumerate(slot_vars)}
    return tuple(f.xreplace(rep) for f in fs)


#: the variable of a one-variable factor in a canonical product (:func:`_factor_form`)
_X = FACTOR_VARIABLE


@lru_cache(maxsize=4096)
def _factor_form(h: sp.Expr):
    """h = coef Π_j g_j(z_{cols[j] + 1}) over the variables it depends on, as
    (coef, cols, (g_1(x), …)) with numeric constants pulled out of the factors; None when h is
    not such a product (or depends on one variable or none: nothing to share)."""
    present = sorted((k for k, z in enumerate(_Z) if z in h.free_symbols))
    if len(present) < 2 or h.free_symbols - {_Z[k] for k in present}:
        return None
    per = one_variable_factors(h, [_Z[k] for k in present])
    if per is None:
        return None
    coef, factors = 1.0, []
    for k, g in zip(present, per):
        c, rest = g.as_coeff_Mul()
        if not c.is_Number or rest.free_symbols != {_Z[k]}:
            return None
        coef *= float(c)
        factors.append(rest.xreplace({_Z[k]: _X}))
    return coef, tuple(present), tuple(factors)


@lru_cache(maxsize=8192)
def _diff(F: sp.Expr, mi: tuple) -> sp.Expr:
    """∂F / ∂z_{mi[0]} ∂z_{mi[1]} … (asked again by the second pass over a layer)."""
    return sp.diff(F, *(_Z[i] for i in mi))


def _kernel_batch(K: np.ndarray, S: np.ndarray) -> np.ndarray:
    return K[S[:, :, None], S[:, None, :]]


def _row_keys(rows: np.ndarray, base: int) -> np.ndarray:
    """One integer per row of sample indices (each < ``base``): Σ_j rows[:, j] base^j."""
    if float(base) ** rows.shape[1] >= 2.0 ** 62:
        raise DeriveError(f"{base} samples are too many for averages over {rows.shape[1]} of "
                          "them at once")
    return rows.astype(np.int64) @ (base ** np.arange(rows.shape[1], dtype=np.int64))


def _unique_rows(rows: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(rows, axis=0, return_inverse=True) for rows of integers in [0, base): the
    distinct rows in the same (lexicographic) order, and each row's place among them — through
    one integer per row (the first column most significant) instead of sorting the rows as
    records, which is many times slower."""
    rows = np.asarray(rows)
    if rows.shape[0] == 0:
        return rows.reshape(0, rows.shape[1]), np.zeros(0, dtype=np.int64)
    keys = _row_keys(rows[:, ::-1], base)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return rows[first], inverse.reshape(-1)


class _Store:
    """Values under integer keys (:func:`_row_keys` of sorted sample rows): sorted key and
    value arrays, looked up and extended a batch at a time."""

    def __init__(self):
        self.keys = np.zeros(0, dtype=np.int64)
        self.values = np.zeros(0)

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, found) for ``keys``; values are 0 where not found."""
        if not len(self.keys):
            return np.zeros(len(keys)), np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[at] == keys
        return np.where(found, self.values[at], 0.0), found

    def put(self, keys: np.ndarray, values: np.ndarray) -> None:
        keys = np.concatenate([self.keys, np.asarray(keys, dtype=np.int64)])
        values = np.concatenate([self.values, np.asarray(values, dtype=float)])
        keys, first = np.unique(keys, return_index=True)
        self.keys, self.values = keys, values[first]


class _Evaluator:
    """Evaluates averages and contractions over batches of components, with a cache shared
    by the recursions of one layer (K and Θ both need ⟨σσ⟩, …)."""

    def __init__(self, K: np.ndarray, tensors: dict, kinked: bool, tol: float | None = None,
                 workers: int = 1, shared: dict | None = None):
        self.K = K
        #: the components grouped by coinciding samples (:meth:`_by_pattern`), and their
        #: samples sorted (:meth:`_canonical`): in ``shared``, which the layers of one run share
        shared = {} if shared is None else shared
        self.groups = shared.setdefault("groups", {})
        self.canon = shared.setdefault("canonical", {})
        #: processes for the shared products of :meth:`prefetch`
        self.workers = workers
        self.tensors = tensors
        self.kinked = kinked
        self.tol = tol
        self.cache: dict = {}
        #: canonical products of one-variable factors: factor ids → their values on sorted
        #: sample rows (a :class:`_Store`)
        self.products: dict = {}
        self._factors: list = []
        self._factor_ids: dict = {}
        #: while True (the first of two passes over a layer's recursions), products of
        #: one-variable factors not yet known are only recorded in ``pending`` (and read as 0),
        #: for :meth:`prefetch` to compute together
        self.collecting = False
        self.pending: dict = {}
        #: detail(message) before each batch of averages (progress), or None
        self.detail = None
        #: the largest estimated error of an average, relative to max(1, |average|)
        self.error = 0.0

    def average(self, h: sp.Expr, S: np.ndarray) -> np.ndarray:
        """⟨h(z1…zm)⟩ over the covariances K[S_b, S_b] of the rows of ``S`` (M × m)."""
        if S.shape[0] == 0:
            return np.zeros(0)
        form = _factor_form(h)
        if form is not None:
            return self._product_average(*form, S)
        uniq, inv = _unique_rows(S, self.K.shape[0])
        key = (h, uniq.tobytes(), uniq.shape)
        if key not in self.cache:
            self.cache[key] = self._expectation(h, uniq)
        return self.cache[key][inv.reshape(-1)]

    def _expectation(self, h: sp.Expr, S: np.ndarray) -> np.ndarray:
        """⟨h⟩ over K[S_b, S_b] for the rows of S (no caching), tracking the largest error."""
        if self.detail is not None:
            self.detail(f"{S.shape[1]}-D averages over {len(S)} kernels")
        try:
            res = gaussian_expectation(h, _kernel_batch(self.K, S), tol=self.tol)
        except CovarianceError as err:
            raise DeriveError(f"the kernel restricted to samples {S[0].tolist()} … is not "
                              f"a covariance: {err}") from None
        if len(res.value):
            rel = res.error / np.maximum(1.0, np.abs(res.value))
            self.error = max(self.error, float(rel.max()))
        return np.asarray(res.value)

    def _product_average(self, coef: float, cols: tuple, factors: tuple,
                         S: np.ndarray) -> np.ndarray:
        """coef ⟨Π_j g_j(z_{cols[j]})⟩ for a product of one-variable factors, computed once per
        *canonical* form: the (sample, factor) pairs of a row sorted by sample, so that
        ⟨σ'(z_a) σ(z_b)⟩ and ⟨σ(z_b) σ'(z_a)⟩ — the same integral with its variables in
        another order, which the recursions ask for again and again under the permutations
        of their sample slots — share one value (and one quadrature).  Values are cached per
        canonical factor sequence and sorted sample row."""
        ids = [self._factor_id(g) for g in factors]
        out = np.empty(S.shape[0])
        for perm, mask, uniq, urows, inv in self._canonical(S, cols):
            pat = tuple(ids[j] for j in perm)
            store = self.products.setdefault(pat, _Store())
            vals, found = store.get(uniq)
            if found.all():
                out[mask] = vals[inv]
                continue
            missing = urows[~found]
            if self.collecting:
                self.pending.setdefault(pat, []).append(missing)
                out[mask] = 0.0
                continue
            new = self._expectation(product_integrand(self._factors, pat, _Z), missing)
            store.put(uniq[~found], new)
            vals[~found] = new
            out[mask] = vals[inv]
        return coef * out

    def _canonical(self, S: np.ndarray, cols: tuple) -> list:
        """The rows of ``S`` (distinct samples) at the columns ``cols`` sorted by sample, grouped
        by the order that sorts them: per group (that order, the rows' mask, the distinct
        sorted rows' keys, those rows, each row's place among them).  The same for every
        product over these columns: made once per (S, cols) and kept in ``self.canon`` (the
        two passes and the layers read the same arrays S from :meth:`_by_pattern`)."""
        key = (id(S), cols)
        if key in self.canon and self.canon[key][0] is S:
            return self.canon[key][1]
        sub = np.ascontiguousarray(S[:, list(cols)], dtype=np.int64)
        order = np.argsort(sub, axis=1, kind="stable")
        rows = np.take_along_axis(sub, order, axis=1)
        codes, first, which = np.unique(_row_keys(order, len(cols)), return_index=True,
                                        return_inverse=True)
        which = which.reshape(-1)
        keys = _row_keys(rows, self.K.shape[0])
        parts = []
        for k in range(len(codes)):
            mask = which == k
            uniq, at, inv = np.unique(keys[mask], return_index=True, return_inverse=True)
            parts.append((tuple(order[first[k]].tolist()), mask, uniq, rows[mask][at],
                          inv.reshape(-1)))
        self.canon[key] = (S, parts)      # S kept: its id cannot then name another array
        return parts

    def prefetch(self) -> None:
        """Compute the products recorded while ``collecting`` in two or more variables
        together: per set of samples one grid, each factor's values on it once, every product
        the recursions need on those samples from them
        (:func:`~derive.activations.gaussian.product_expectations`).  What that does not
        compute to the tolerance is left to :meth:`average` (product by product)."""
        pending, self.pending = self.pending, {}
        base = self.K.shape[0]
        by_size: dict = {}
        for pat, parts in pending.items():
            if len(pat) >= 2:
                by_size.setdefault(len(pat), []).append(
                    (pat, _unique_rows(np.concatenate(parts), base)[0]))
        for d, items in sorted(by_size.items()):
            need: dict = {}  # sample set → (its row, the products it needs)
            for i, (_, rows) in enumerate(items):
                for r, key in zip(rows, _row_keys(rows, base).tolist()):
                    need.setdefault(key, (r, []))[1].append(i)
            groups: dict = {}
            for r, wanted in need.values():
                groups.setdefault(tuple(wanted), []).append(r)
            if self.detail is not None:
                self.detail(f"{d}-D averages: {len(items)} products of σ and its derivatives "
                            f"on {len(need)} sample sets")
            for wanted, rs in groups.items():
                S = np.array(rs)
                products = [items[i][0] for i in wanted]
                value, error, ok = product_expectations(self._factors, products,
                                                        _kernel_batch(self.K, S), tol=self.tol,
                                                        workers=self.workers)
                keys = _row_keys(S, base)
                for j, pat in enumerate(products):
                    hit = np.nonzero(ok[:, j])[0]
                    if hit.size:
                        self.products.setdefault(pat, _Store()).put(keys[hit], value[hit, j])
                        rel = error[hit, j] / np.maximum(1.0, np.abs(value[hit, j]))
                        self.error = max(self.error, float(rel.max()))

    def _factor_id(self, g: sp.Expr) -> int:
        """A number for the one-variable factor g(x) (the order of factors in a canonical
        form; first seen, first numbered)."""
        if g not in self._factor_ids:
            self._factor_ids[g] = len(self._factors)
            self._factors.append(g)
        return self._factor_ids[g]

    # -- plain averages -------------------------------------------------------------------

    def tensor(self, label: str) -> np.ndarray:
        """The previous layer's values of the tensor ``label``."""
        if label not in self.tensors:
            raise DeriveError(f"no values for tensor {label} (have {sorted(self.tensors)})")
        return self.tensors[label]

    def _by_pattern(self, fs, alphas: tuple, C: np.ndarray, symmetric: bool = False):
        """Group the components by which of their samples coincide: yields (rows, the functions
        with coinciding slots merged into z1 … zm, the m distinct samples of those rows).
        With ``symmetric`` (fs[0] invariant under permuting its slots) the samples are sorted
        first, so an average is computed once per multiset of samples.  The grouping depends
        on the components and the slots only: made once per (C, slots, sorted) and kept in
        ``self.groups``."""
        slots = tuple(sorted({p for f in fs for p in _slots_of(f, alphas)}))
        slot_vars = tuple(next(r for f in fs for r in f.atoms(RandomVar)
                               if r.indices[0] == alphas[p]) for p in slots)
        sort = bool(symmetric and _symmetric(fs[0], slot_vars))
        key = (id(C), slots, sort)
        if key not in self.groups or self.groups[key][0] is not C:
            Cs = C[:, list(slots)]
            if sort:
                Cs = np.sort(Cs, axis=1)
            labels = _patterns(Cs)
            pats, which = _unique_rows(labels, max(labels.shape[1], 1))
            parts = []
            for k, pat in enumerate(pats):
                rows = which == k
                pat = tuple(pat.tolist())
                parts.append((rows, pat, Cs[rows][:, sorted(set(pat))]))
            # C itself kept with its groups: its id cannot then name another array
            self.groups[key] = (C, parts)
        for rows, pat, S in self.groups[key][1]:
            yield rows, _merged(tuple(fs), slot_vars, pat), S

    # -- plain averages -------------------------------------------------------------------

    def gaussian_average(self, node: GaussianAverage, alphas: tuple, C: np.ndarray) -> np.ndarray:
        out = np.empty(C.shape[0])
        for rows, (h,), S in self._by_pattern([node.function], alphas, C, symmetric=True):
            out[rows] = self.average(h, S)
        return out

    # -- contractions -----------------------------------------------------------------------

    def contraction(self, node: DerivativeContraction, alphas: tuple, C: np.ndarray) -> np.ndarray:
        # the tensor, or a product of tensors (G1 G1, V V at order 2), factor by factor
        factors = node.tensor.args if isinstance(node.tensor, sp.Mul) else (node.tensor,)
        dummies = [b for g in node.groups for b in g]
        k = len(dummies)
        letters = "ijklmnopqrstuvwx"  # the summed indices' axes (b: the rows')
        out = np.empty(C.shape[0])
        for rows, merged, S in self._by_pattern(node.functions, alphas, C):
            M, m = S.shape
            if self.collecting:  # only the averages are wanted (recorded)
                for F, grp in zip(merged, node.groups):
                    self._derivatives(F, len(grp), S, m)
                continue
            # T at the distinct samples: T_S[b, j1 … jk] = T[…, S_b j1, …] over the summed
            # indices (axes in the order of the dummies), free indices at the rows' samples
            TS = np.ones((M,) + (1,) * k)
            for fac in factors:
                gather = []
                for t in fac.indices:
                    if t in dummies:
                        j = dummies.index(t)
                        gather.append(S.reshape((M,) + (1,) * j + (m,) + (1,) * (k - j - 1)))
                    else:
                        gather.append(C[rows, alphas.index(t)].reshape((M,) + (1,) * k))
                TS = TS * np.asarray(self.tensor(str(fac.base))[tuple(gather)], dtype=float)
            subs = ["b" + letters[:k]]
            ops = [np.broadcast_to(TS, (M,) + (m,) * k)]
            for F, grp in zip(merged, node.groups):
                ops.append(self._derivatives(F, len(grp), S, m))
                subs.append("b" + "".join(letters[dummies.index(d)] for d in grp))
            out[rows] = np.einsum(",".join(subs) + "->b", *ops)
        return out

    def _derivatives(self, F: sp.Expr, r: int, S: np.ndarray, m: int) -> np.ndarray:
        """D[b, i1 … ir] = ⟨∂_{i1} … ∂_{ir} F⟩ over K[S_b, S_b] (zero where F does not depend on
        z_i), by differentiation for smooth σ, by integration by parts for kinked σ."""
        D = np.zeros((S.shape[0],) + (m,) * r)
        vars_ = sorted((k for k in range(m) if _Z[k] in F.free_symbols))
        if not vars_:
            return D
        if self.kinked:
            block = self._hermite(F, r, S, vars_)
            D[np.ix_(np.arange(S.shape[0]), *([vars_] * r))] = block
            return D
        for mi in combinations_with_replacement(vars_, r):
            d = _diff(F, mi)
            if d == 0:
                continue
            val = self.average(d, S) if d.free_symbols else np.full(S.shape[0], float(d))
            for perm in set(permutations(mi)):
                D[(slice(None),) + perm] = val
        return D

    def _moments(self, F: sp.Expr, d: int, S: np.ndarray, vars_: list[int]) -> np.ndarray:
        """M[b, c1 … cd] = ⟨F z_{c1} … z_{cd}⟩ over the variables ``vars_`` (local numbering)."""
        v = len(vars_)
        M = np.zeros((S.shape[0],) + (v,) * d)
        for mi in combinations_with_replacement(range(v), d):
            val = self.average(F * sp.Mul(*(_Z[vars_[i]] for i in mi)), S)
            for perm in set(permutations(mi)):
                M[(slice(None),) + perm] = val
        return M

    def _hermite(self, F: sp.Expr, r: int, S: np.ndarray, vars_: list[int]) -> np.ndarray:
        """D[b, i1 … ir] = ⟨∂_{i1} … ∂_{ir} F⟩ over the variables ``vars_`` (local numbering)
        without differentiating F: Gaussian integration by parts, ⟨∂_I F⟩ = ⟨F h_I(y)⟩ with
        y = P z, P the inverse of the variables' kernel, and the Hermite polynomials h_∅ = 1,
        h_{I+j} = y_j h_I − ∂_j h_I (∂_j y_k = P_kj); each monomial y_A of h_I is the rotated
        moment (P^{⊗|A|} ⟨F z^{⊗|A|}⟩)_A.  Any number of derivatives and of variables (σ with
        kinks: up to eight at order 2)."""
        Ks = _kernel_batch(self.K, S[:, vars_])
        sign, logdet = np.linalg.slogdet(Ks)
        scale = np.prod(np.diagonal(Ks, axis1=1, axis2=2), axis=1)
        if np.any(sign <= 0) or np.any(np.exp(logdet) <= 1e-12 * scale):
            b = int(np.nonzero((sign <= 0) | (np.exp(logdet) <= 1e-12 * scale))[0][0])
            raise DeriveError(
                f"the kernel of samples {S[b, vars_].tolist()} is singular; the derivative-free "
                "form used for an activation with kinks needs distinct, linearly independent "
                "inputs (remove duplicated or parallel inputs)")
        P = np.linalg.inv(Ks)
        M, v = S.shape[0], len(vars_)
        rotated: dict = {}

        def Y(d: int) -> np.ndarray:  # Y_d[b, k1 … kd] = Σ_c Π_t P[b, k_t, c_t] ⟨F z_{c1} … z_{cd}⟩
            if d not in rotated:
                T = self._moments(F, d, S, vars_)
                for axis in range(1, d + 1):
                    T = np.moveaxis(T, axis, -1)
                    shape = T.shape
                    T = (T.reshape(M, -1, v) @ P.transpose(0, 2, 1)).reshape(shape)
                    T = np.moveaxis(T, -1, axis)
                rotated[d] = T
            return rotated[d]

        hermite: dict = {(): {(): np.ones(M)}}

        def h(I: tuple) -> dict:  # monomial (sorted indices of y) → its coefficient per row
            if I not in hermite:
                out: dict = {}
                for A, c in h(I[:-1]).items():
                    j = I[-1]
                    key = tuple(sorted(A + (j,)))
                    out[key] = out.get(key, 0.0) + c
                    for pos, a in enumerate(A):  # − ∂_j y_A = − Σ_a P_aj y_{A∖a}
                        key = A[:pos] + A[pos + 1:]
                        out[key] = out.get(key, 0.0) - c * P[:, a, j]
                hermite[I] = out
            return hermite[I]

        D = np.zeros((M,) + (v,) * r)
        for I in combinations_with_replacement(range(v), r):
            val = sum(c * Y(len(A))[(slice(None),) + A] for A, c in h(I).items())
            for perm in set(permutations(I)):
                D[(slice(None),) + perm] = val
        return D


@lru_cache(maxsize=4096)
def _symmetric(f: sp.Expr, slot_vars: tuple) -> bool:
    """Whether f is invariant under every permutation of its slot variables (asked by every
    layer and both passes over it: cached)."""
    if len(slot_vars) < 2:
        return True
    for perm in permutations(slot_vars):
        if f.xreplace(dict(zip(slot_vars, perm))) != f:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# compiled recursions
# ---------------------------------------------------------------------------------------------

class CompiledForm:
    """A specialised recursion with its atoms (averages, tensor components, contractions)
    replaced by symbols and the remainder lambdified once; see the module docstring."""

    def __init__(self, expr: sp.Expr, alphas: tuple, scalars: tuple):
        self.expr = expr
        self.alphas = tuple(alphas)
        self.scalars = tuple(scalars)
        atoms = set()
        walk = sp.preorder_traversal(expr)
        for node in walk:
            if isinstance(node, (GaussianAverage, DerivativeContraction)):
                atoms.add(node)
                walk.skip()
            elif isinstance(node, sp.Indexed):
                atoms.add(node)
                walk.skip()
        self.atoms = sorted(atoms, key=default_sort_key)
        #: the labels of the previous layer's tensors the recursion reads
        self.tensors = frozenset(str(t.base) for a in self.atoms
                                 if not isinstance(a, GaussianAverage)
                                 for t in (a.tensor.atoms(sp.Indexed)
                                           if isinstance(a, DerivativeContraction) else (a,)))
        self.symbols = sp.symbols(f"atom0:{len(self.atoms)}")
        body = expr.xreplace(dict(zip(self.atoms, self.symbols)))
        leftover = body.free_symbols - set(self.symbols) - set(self.scalars)
        if leftover:
            raise DeriveError(f"the recursion {expr} has unbound symbols {sorted(map(str, leftover))}")
        self.fn = sp.lambdify(self.scalars + self.symbols, body, modules="numpy")

    def evaluate(self, C: np.ndarray, scalar_values: tuple, ev: _Evaluator,
                 tick=None) -> np.ndarray:
        """Values at the components ``C`` (M × number of slots, 0-based sample numbers);
        ``tick(k, n)`` is called before the k-th of the n atoms."""
        args = []
        for k, atom in enumerate(self.atoms):
            if tick is not None:
                tick(k + 1, len(self.atoms))
            if ev.collecting and not isinstance(atom, (GaussianAverage, DerivativeContraction)):
                continue
            if isinstance(atom, GaussianAverage):
                args.append(ev.gaussian_average(atom, self.alphas, C))
            elif isinstance(atom, DerivativeContraction):
                args.append(ev.contraction(atom, self.alphas, C))
            else:
                pos = [self.alphas.index(x) for x in atom.indices]
                args.append(ev.tensor(str(atom.base))[tuple(C[:, p] for p in pos)])
        if ev.collecting:  # the first of two passes: the averages are recorded, no value yet
            return np.zeros(C.shape[0])
        out = self.fn(*scalar_values, *args)
        return np.broadcast_to(np.asarray(out, dtype=float), (C.shape[0],)).copy()


@lru_cache(maxsize=256)
def _compiled(act: Activation, contracted: bool, equation, order: int, name: str) -> CompiledForm:
    step = cached_layer_step(equation, order, frozenset([name]))
    source = step.contracted if contracted else step.recursions
    return CompiledForm(specialise(source[name], act), step.alphas, step.scalars)


def compiled_forms(act: Activation, contracted: bool, equation=None, order: int = 1,
                   names=None) -> dict:
    """The recursions of the layer step of ``equation`` (the MLP's by default) at ``order``,
    of the quantities ``names`` and those they read (default: all), specialised to ``act`` and
    compiled (each once per process): the collapsed component forms, or (``contracted``) the
    forms with the sample sums kept.  Each takes ``step.scalars`` (C_b, C_W, λ_b, λ_W, the
    equation's own scalars, n_ℓ, n_{ℓ−1}) then its atoms."""
    names = [q.name for q in QUANTITIES + NNLO_QUANTITIES if q.order <= order] \
        if names is None else names
    step = closed_layer_step(equation, order, names)
    return {name: _compiled(act, contracted, equation, order, name) for name in step.recursions}


def _pairs(N: int) -> np.ndarray:
    p, q = np.triu_indices(N)
    return np.stack([p, q], axis=1)


def _vertex_orbits(N: int) -> np.ndarray:
    """One component (α1 ≤ α2, α3 ≤ α4, (α1α2) ≤ (α3α4)) per orbit of V's pair symmetries."""
    P = _pairs(N)
    i, j = np.triu_indices(len(P))
    return np.concatenate([P[i], P[j]], axis=1)


def _fill_sym2(N: int, C: np.ndarray, v: np.ndarray) -> np.ndarray:
    A = np.empty((N, N))
    A[C[:, 0], C[:, 1]] = v
    A[C[:, 1], C[:, 0]] = v
    return A


#: a SymmetricTensor of at most this many dense components finds its stored ones through a
#: table from code to place (4 bytes a component) instead of a binary search
_SLOT_TABLE_MAX = 2 ** 22

#: how much of a quantity with more than two sample indices a run needs: its diagonal (the
#: expansion estimate), the components with at most two distinct samples (they close on
#: themselves and feed the rank-2 quantities on pairs), those with at most two distinct
#: samples outside the first ``n_train`` (the training inputs: what the trained network's
#: O(1/n) dynamics read, derive.numeric.training_nlo; they close on themselves too, and contain
#: the pairs), or all of them
LEVELS = ("diagonal", "pairs", "training", "full")


def _columns(C) -> list:
    """The index columns of components: C (…, rank), or already a list of rank arrays."""
    if isinstance(C, list):
        return C
    return [C[..., k].astype(np.int64, copy=False) for k in range(C.shape[-1])]


def _codes(C, N: int) -> np.ndarray:
    """Each component's number in base N (its place in the dense array, C order)."""
    c = _columns(C)
    code = c[0]
    for col in c[1:]:
        code = code * N + col
    return code


def _pair_codes(C, N: int) -> np.ndarray:
    """The smallest code of the eight images of each component under V's pair symmetries
    (the same as the minimum of :func:`_codes` over the group, without the eight copies):
    each pair sorted, then the smaller pair first."""
    c = _columns(C)
    p = np.minimum(c[0], c[1]) * N + np.maximum(c[0], c[1])
    q = np.minimum(c[2], c[3]) * N + np.maximum(c[2], c[3])
    return np.minimum(p, q) * (N * N) + np.maximum(p, q)


def outside_training(C: np.ndarray, n_train: int) -> np.ndarray:
    """How many distinct samples of each component (rows of C) are not among the first
    ``n_train`` (the training inputs)."""
    C = np.sort(np.asarray(C), axis=-1)
    new = np.concatenate([np.ones(C.shape[:-1] + (1,), bool), C[..., 1:] != C[..., :-1]], -1)
    return np.sum(new & (C >= n_train), axis=-1)


def orbits(N: int, symmetry: str, level: str, n_train: int | None = None) -> np.ndarray:
    """One component per orbit of the index group ``symmetry`` (docs/conventions.md §3; its
    rank is that of the group's permutations: four, or six for U), among the components of
    ``level`` (:data:`LEVELS`; "training" needs ``n_train``): rows of 0-based sample
    numbers."""
    perms = GROUPS[symmetry]
    rank = len(perms[0])
    if level == "diagonal":
        return np.repeat(np.arange(N)[:, None], rank, axis=1)
    if level == "full" and symmetry == "pairs":
        return _vertex_orbits(N)
    if level in ("full", "training"):
        C = np.indices((N,) * rank).reshape(rank, -1).T
        if level == "training":
            C = C[outside_training(C, n_train) <= 2]
    else:
        P = _pairs(N)
        bits = np.indices((2,) * rank).reshape(rank, -1).T                 # 2^rank patterns
        C = np.where(bits[None, :, :] == 0, P[:, None, 0:1], P[:, None, 1:2]).reshape(-1, rank)
    canon = np.min(np.stack([_codes(C[:, list(p)], N) for p in perms]), axis=0)
    _, first = np.unique(canon, return_index=True)
    return C[np.sort(first)]


class SymmetricTensor:
    """A quantity of four (or six: U) sample indices stored once per orbit of its index group
    (for V, whose group is the eight pair symmetries, about N⁴/8 numbers instead of N⁴),
    indexing like the dense (N, N, N, N) array: integers, slices, Ellipsis and integer arrays
    (broadcast together, as numpy's advanced indexing; integer arrays mixed with slices are
    read from :meth:`dense`).
    ``np.asarray(t)`` and :meth:`dense` give the dense array; a component outside the computed
    orbits (a run that only needed V on pairs or its diagonal) is an error, NaN in ``dense``.

    >>> import numpy as np
    >>> C = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 0, 1]])
    >>> t = SymmetricTensor(2, "pairs", C, [1.0, 2.0, 3.0, 4.0])
    >>> t.shape, float(t[1, 0, 0, 0]), t[0, 0, :, 1].tolist()
    ((2, 2, 2, 2), 2.0, [2.0, 3.0])
    """

    def __init__(self, N: int, symmetry: str, C: np.ndarray, values):
        self.N = int(N)
        self.symmetry = symmetry
        self._perms = [list(p) for p in GROUPS[symmetry]]
        self.ndim = len(self._perms[0])
        C = np.asarray(C, dtype=np.int64).reshape(-1, self.ndim)
        canon = self._canonical(C)
        self.codes, first = np.unique(canon, return_index=True)
        self.values = np.asarray(values, dtype=float).reshape(-1)[first]
        self._slots = None  # code → place, built on first lookup (see _positions)

    def _canonical(self, C: np.ndarray) -> np.ndarray:
        if self.symmetry == "pairs":
            return _pair_codes(C, self.N)
        c = _columns(C)
        return np.min(np.stack([_codes([c[k] for k in p], self.N) for p in self._perms]), axis=0)

    @property
    def shape(self) -> tuple:
        return (self.N,) * self.ndim

    dtype = np.dtype(float)

    def __len__(self) -> int:
        return self.N

    @property
    def nbytes(self) -> int:
        """Bytes held (codes and values), against 8 N⁴ for the dense array."""
        return int(self.codes.nbytes + self.values.nbytes)

    def _positions(self, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The places of canonical codes among the stored ones, and whether each is stored; for
        N⁴ ≤ _SLOT_TABLE_MAX a table from code to place (built on first use) replaces the
        binary search."""
        if self.N ** self.ndim <= _SLOT_TABLE_MAX:
            if self._slots is None:
                self._slots = np.full(self.N ** self.ndim, -1, dtype=np.int32)
                self._slots[self.codes] = np.arange(len(self.codes), dtype=np.int32)
            pos = self._slots[code]
            return pos, pos >= 0
        pos = np.minimum(np.searchsorted(self.codes, code), len(self.codes) - 1)
        return pos, self.codes[pos] == code

    def _lookup(self, C: np.ndarray) -> np.ndarray:
        code = self._canonical(C)
        pos, found = self._positions(code)
        if not np.all(found):
            raise DeriveError(f"a component of a {self.ndim}-index quantity that was not "
                              "computed was asked for (only its diagonal or its components on pairs were "
                              "needed by this run; ask for the quantity as a target)")
        return self.values[pos]

    def _normalised(self, idx) -> tuple:
        if not isinstance(idx, tuple):
            idx = (idx,)
        if sum(1 for x in idx if x is Ellipsis) > 1:
            raise DeriveError("an index can only have a single ellipsis ('...')")
        if any(x is Ellipsis for x in idx):
            k = next(n for n, x in enumerate(idx) if x is Ellipsis)
            idx = idx[:k] + (slice(None),) * (self.ndim - len(idx) + 1) + idx[k + 1:]
        if len(idx) > self.ndim:
            raise DeriveError(f"too many indices for a {self.ndim}-index quantity: {len(idx)}")
        return idx + (slice(None),) * (self.ndim - len(idx))

    def __getitem__(self, idx):
        idx = self._normalised(idx)
        arrays = [not isinstance(x, (slice, int, np.integer)) for x in idx]
        if any(arrays) and not all(arrays):  # numpy's mixed indexing rules: on the dense array
            return self.dense()[idx]
        N = self.N
        if all(arrays):  # numpy advanced indexing: broadcast the index arrays
            try:
                parts = [np.asarray(x) for x in idx]
                if any(p.dtype.kind not in "iu" for p in parts):
                    raise IndexError
                parts = np.broadcast_arrays(*parts)
            except (IndexError, ValueError):
                raise DeriveError(f"indices of a {self.ndim}-index quantity must be integers, "
                                  f"slices or integer arrays of one shape; got {idx!r:.80}") from None
            cols = []
            for part in parts:
                part = part.astype(np.int64, copy=False)
                if np.any((part < -N) | (part >= N)):
                    raise DeriveError(f"index out of range for {N} inputs")
                cols.append(np.where(part < 0, part + N, part) if np.any(part < 0) else part)
            return self._lookup(cols)
        axes, keep = [], []
        for x in idx:  # integers and slices: a block, integer axes dropped
            if isinstance(x, slice):
                axes.append(np.arange(N)[x])
                keep.append(True)
            else:
                if not -N <= int(x) < N:
                    raise DeriveError(f"index {int(x)} out of range for {N} inputs")
                axes.append(np.array([int(x) % N]))
                keep.append(False)
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        out = self._lookup(grid)
        shape = tuple(len(a) for a, k in zip(axes, keep) if k)
        return out.reshape(shape) if shape else float(out.reshape(-1)[0])

    def dense(self) -> np.ndarray:
        """The (N, …, N) array (NaN at components not computed)."""
        N, r = self.N, self.ndim
        out = np.empty((N,) * r)
        C = np.indices((N,) * (r - 1)).reshape(r - 1, -1).T
        for a in range(N):  # one slab at a time: the codes of all components at once are 8× larger
            full = np.concatenate([np.full((len(C), 1), a), C], axis=1)
            code = self._canonical(full)
            pos, found = self._positions(code)
            out[a] = np.where(found, self.values[pos], np.nan).reshape((N,) * (r - 1))
        return out

    def __array__(self, dtype=None, copy=None):
        return self.dense() if dtype is None else self.dense().astype(dtype)

    def __repr__(self) -> str:
        return (f"SymmetricTensor(N={self.N}, symmetry={self.symmetry!r}, "
                f"{len(self.values)} stored components)")


def _plan_levels(forms: dict, targets: tuple, top: str = "full") -> dict:
    """Every quantity the targets need (through the recursions' reads), with, for those of
    more than two sample indices, the level of components needed (:data:`LEVELS`; the
    targets' own is ``top``); V's diagonal is always kept when V is derived (the estimate of
    the expansion parameter)."""
    need = {t: top for t in targets}
    if "V" in forms:
        need.setdefault("V", "diagonal")
    changed = True
    while changed:
        changed = False
        for name in list(need):
            if name not in forms:
                continue
            want = need[name] if quantity(name).rank > 2 else "pairs"
            for dep in forms[name].tensors:
                old = need.get(dep)
                new = want if old is None else max(old, want, key=LEVELS.index)
                if quantity(dep).rank == 2:
                    new = "full"
                if old != new:
                    need[dep] = new
                    changed = True
    return need


def _ticker(ev: _Evaluator, detail, where: str):
    """tick(k, n) before the k-th of n terms: names the term in ``detail``'s messages."""
    def tick(k, n):
        ev.detail = lambda msg: detail(f"{where}, term {k}/{n}: {msg}")
    return tick


def iterate_mlp(spec: MLP, X, order: int = 1, targets=None, progress=None,
                derivative_free: bool | None = None, tol: float | None = None,
                detail=None, dense: bool = True, training_inputs: int | None = None,
                workers: int = 1) -> dict:
    """The declared quantities (K, Θ, G1, V, H1, A, B, D, F; at ``order=2`` also G2, V1, U) of
    every layer of ``spec`` on inputs ``X`` (N × n_0) from the derived layer step.  Returns
    ``{name: {ℓ: array}}``: rank-2 quantities (N, N), rank-4 ones (N, N, N, N) and U
    (N,)*6 when among ``targets``; quantities only needed by the targets' recursions are
    computed where needed (on their components with at most two distinct samples, or their
    diagonal) and returned as :class:`SymmetricTensor`.  Components are computed once per
    orbit of each quantity's declared symmetry.  ``progress(ℓ, L)`` is called after each layer, ``detail(message)``
    before each average of a rank-4 quantity's step (minutes per layer for many inputs).
    ``derivative_free`` (default: when σ has kinks) evaluates the sample sums by Gaussian
    integration by parts instead of derivatives of σ; ``tol`` is passed to
    :func:`derive.gaussian_expectation` (default: by dimension).  ``res["error"]`` is the
    largest estimated error of an average, relative to max(1, |average|).  With ``dense=False``
    the rank-4 targets are returned as :class:`SymmetricTensor` too (one number per orbit of
    their index group, indexing like the dense array) instead of N⁴ arrays.
    ``training_inputs`` (the first that many inputs are a training set): the rank-4 targets
    only on their components with at most two distinct samples outside it — what
    derive.train(order=1) reads — NaN elsewhere in the dense arrays (level "training" of
    :data:`LEVELS`).  ``workers``: processes for the three- and four-sample averages (the same
    values whatever their number)."""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or not np.all(np.isfinite(X)):
        raise DeriveError(f"X must be a finite array of shape (N, n_0), got shape {X.shape}")
    targets = ("K", "Theta", "G1", "V") if targets is None else tuple(targets)
    N, n0 = X.shape
    act = spec.activation
    if derivative_free is None:
        derivative_free = bool(act.kinks)
    # the layer step at the highest order the architecture closes at (at least the default);
    # without its O(1/n) closure (a skip term) there is no V, and no expansion estimate from it
    order_for(spec, order)  # beyond what the architecture closes at: refused, saying why
    top = max(order, spec.max_order)
    # K always: every average is over it (the recursions read it through their averages)
    wanted = ["K"] + [t for t in targets if quantity(t).order <= top]
    if top >= 1:
        wanted.append("V")  # its diagonal: the estimate of the expansion parameter
    forms = compiled_forms(act, bool(derivative_free), spec.equation, top, wanted)
    missing = [t for t in targets if t not in forms]
    if missing:
        raise DeriveError(f"{', '.join(missing)} not derived for the {spec.equation.description}")
    level = "full" if training_inputs is None or N - training_inputs <= 2 else "training"
    need = _plan_levels(forms, tuple(t for t in targets if quantity(t).order <= order), level)
    for t in targets:  # a 1/n correction at order 0 is zero (G1, H1)
        if quantity(t).rank == 2:
            need.setdefault(t, "full")
    need.setdefault("K", "full")
    G0 = X @ X.T / n0
    comps, res = {}, {}
    for name in [q.name for q in ALL_QUANTITIES if q.name in need]:
        q = quantity(name)
        if q.rank == 2:
            comps[name] = _pairs(N)
            first = {"K": spec.C_b(1) + spec.C_W(1) * G0,
                     "Theta": spec.lambda_b(1) + spec.lambda_W(1) * G0}.get(name, np.zeros((N, N)))
        else:  # every 1/n statistic vanishes in layer 1, a Gaussian layer
            comps[name] = orbits(N, q.symmetry, need[name], training_inputs)
            first = (np.zeros((N,) * q.rank) if need[name] in ("training", "full") and dense
                     else SymmetricTensor(N, q.symmetry, comps[name], np.zeros(len(comps[name]))))
        res[name] = {1: first}
    _check_kernel(res["K"][1], 1)
    widths = [n0, *spec.widths]
    error = 0.0
    shared: dict = {}       # the components' groupings (_Evaluator), the same every layer
    for l in range(1, spec.depth):
        scalars = (spec.C_b(l + 1), spec.C_W(l + 1), spec.lambda_b(l + 1), spec.lambda_W(l + 1),
                   *spec.scalar_values(l + 1),
                   widths[l], widths[l - 1])
        tensors = {name: res[name][l] for name in res}
        ev = _Evaluator(res["K"][l], tensors, kinked=bool(derivative_free), tol=tol,
                        workers=workers, shared=shared)
        todo = [name for name in res
                if not (quantity(name).order > order and quantity(name).rank == 2)]
        if N >= 3 and any(quantity(name).rank > 2 for name in todo):
            # first pass: record the averages of products the rank-4 steps need, then compute
            # them together (one grid per set of samples); the second pass reads them
            ev.collecting = True
            for name in todo:
                forms[name].evaluate(comps[name], scalars, ev)
            ev.collecting = False
            if detail is not None:
                ev.detail = lambda msg, l=l: detail(f"layer {l + 1}/{spec.depth}: {msg}")
            ev.prefetch()
            ev.detail = None
        for name in res:
            q, C = quantity(name), comps[name]
            if name not in todo:  # a 1/n correction not asked: zero (G1 at order 0)
                res[name][l + 1] = res[name][1]
                continue
            where = f"layer {l + 1}/{spec.depth}: {name} on {len(C)} components"
            v = forms[name].evaluate(C, scalars, ev, _ticker(ev, detail, where)
                                     if detail is not None and q.rank > 2 else None)
            ev.detail = None
            if q.rank == 2:
                res[name][l + 1] = _fill_sym2(N, C, v)
            else:
                t = SymmetricTensor(N, q.symmetry, C, v)
                res[name][l + 1] = t.dense() if need[name] in ("training", "full") and dense else t
        _check_kernel(res["K"][l + 1], l + 1)
        error = max(error, ev.error)
        if progress is not None:
            progress(l + 1, spec.depth)
    res["error"] = error
    return res


class _DiagonalVertex:
    """The components V_{(αα)(αα)} only (indexing anything else is an error)."""

    def __init__(self, diag: np.ndarray):
        self.diag = np.asarray(diag, dtype=float)

    def __getitem__(self, idx):
        idx = np.broadcast_arrays(*idx)
        if any(np.any(i != idx[0]) for i in idx[1:]):
            raise DeriveError("only the diagonal of V was computed; ask for target 'V'")
        return self.diag[idx[0]]


def _check_kernel(K: np.ndarray, layer: int) -> None:
    d = np.diagonal(K)
    if not np.all(np.isfinite(K)) or np.any(d <= 0):
        raise DeriveError(f"the kernel becomes singular at layer {layer} (a variance ≤ 0 or not "
                          f"finite: diag K = {d}); check C_b, C_W and the inputs")

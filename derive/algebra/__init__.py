"""Stage 2, algebra: the symbolic Gaussian engine — indices, fields and inert sums
(``symbols``), the integer enumerations (``pairings``), Wick contraction and neuron-sum counting
(``contractions``), cumulants, nearly-Gaussian perturbation theory (``nearly_gaussian``), graded
series (``graded``) and the record of the rules applied (``trace``)."""

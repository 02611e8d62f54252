"""FLOP and byte conventions shared by the tracer and the analytic library.

Written down once so that measured and predicted numbers count the same things:

* A multiply-add is 2 FLOPs. A GEMM ``[M, K] x [K, N]`` costs ``2*M*N*K`` tensor-core FLOPs; a bias add fused in
  ``addmm`` is not counted (as in ``torch.utils.flop_counter``).
* Attention counts both matmuls (``Q K^T`` and ``P V``), ``4 * B * H * L * S * D`` tensor-core FLOPs (with
  ``D_v`` for the second one); causal masking is not discounted.
* Convolution: ``2 * (output elements) * (C_in / groups) * prod(kernel)`` tensor-core FLOPs.
* CUDA-core FLOPs are *estimates* per output element (per input element for reductions), one constant per op
  family below. Transcendentals (exp, erf, rsqrt, ...) count 1 like any arithmetic op: the point is a consistent
  order of magnitude, not an instruction count.
* Bytes read are the sizes of the tensor inputs an op reads; bytes written the sizes of its outputs. Views and
  aliases (``view``, ``transpose``, ``expand``, ``slice``, ...) move no bytes. In-place ops write their output once.
"""

from __future__ import annotations

from typing import Final

# CUDA-core FLOPs per output element, by op family (estimates; the tracer flags them as not exact).
ELEMENTWISE_FLOPS: Final = 1.0
"""add, sub, mul, div, neg, pow, rsqrt, sqrt, exp, where, clamp, comparisons, casts that compute nothing count 0."""

SIGMOID_FLOPS: Final = 4.0
"""sigmoid(x) = 1 / (1 + exp(-x)): neg, exp, add, div."""

SILU_FLOPS: Final = 5.0
"""silu(x) = x * sigmoid(x)."""

GELU_FLOPS: Final = 8.0
"""GELU, erf or tanh form: about 8 operations per element."""

RELU_FLOPS: Final = 1.0

TANH_FLOPS: Final = 4.0

SOFTMAX_FLOPS: Final = 5.0
"""softmax / log_softmax per element: max, subtract, exp, sum, divide."""

LAYER_NORM_FLOPS: Final = 8.0
"""layer/group norm per element: mean, subtract, square, variance sum, rsqrt-scale, affine multiply and add."""

REDUCTION_FLOPS: Final = 1.0
"""sum / mean / amax / var ... per *input* element."""

ATTENTION_SOFTMAX_FLOPS: Final = SOFTMAX_FLOPS + 1.0
"""Inside fused attention, per score element: the scale multiply plus the softmax."""

ATTENTION_MASK_FLOPS: Final = 1.0
"""Inside fused attention with an explicit additive mask, per score element."""


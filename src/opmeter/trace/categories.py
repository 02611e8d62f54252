"""Operator categories: one declarative table from aten op names to a category string.

Every op the tracer sees gets exactly one category. Ops no rule matches land in :data:`UNCLASSIFIED` and are
reported by name (``Trace.unclassified()``), never dropped. Rules match the op *packet* name (``mm`` for
``aten.mm.default``); in-place variants (``add_``) fall back to their out-of-place name (``add``). Names of other
namespaces are written ``namespace::name`` and may be globs (``flash_attn::*``).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Final

GEMM: Final = "gemm"
ATTENTION: Final = "attention"
CONVOLUTION: Final = "convolution"
NORMALIZATION: Final = "normalization"
ACTIVATION: Final = "activation"
ELEMENTWISE: Final = "elementwise"
REDUCTION: Final = "reduction"
"""Reductions and softmax."""
EMBEDDING: Final = "embedding"
"""Embedding lookups and gathers."""
DATA_MOVEMENT: Final = "data_movement"
"""Views (0 bytes), copies, casts, concatenation, padding, tensor creation, scalar reads."""
MOE_ROUTING: Final = "moe_routing"
"""top-k, sort, scatter, index, nonzero... the ops of expert routing (also used elsewhere)."""
RNG_SAMPLING: Final = "rng_sampling"
OTHER: Final = "other"
"""Known ops that fit no family (interpolation, search...)."""
UNCLASSIFIED: Final = "unclassified"
"""No rule matched: listed by name in ``Trace.unclassified()``."""

COMPUTE: Final = frozenset({GEMM, ATTENTION, CONVOLUTION})
"""Categories whose ops must have a FLOP formula: one without is reported as *uncounted*, never as zero."""

CATEGORIES: Final = (
    GEMM,
    ATTENTION,
    CONVOLUTION,
    NORMALIZATION,
    ACTIVATION,
    ELEMENTWISE,
    REDUCTION,
    EMBEDDING,
    DATA_MOVEMENT,
    MOE_ROUTING,
    RNG_SAMPLING,
    OTHER,
    UNCLASSIFIED,
)

# The declarative table. Keys: category; values: aten packet names (no namespace), or "ns::name" / globs.
CATEGORY_TABLE: Final[dict[str, tuple[str, ...]]] = {
    GEMM: (
        "mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "mv", "addmv", "dot", "vdot", "outer", "ger",
        "addr", "einsum", "_scaled_mm", "_int_mm", "_weight_int4pack_mm", "_weight_int8pack_mm", "_addmm_activation",
        "_grouped_mm", "_scaled_grouped_mm", "_scaled_grouped_mm_v2", "_scaled_mm_v2", "_weight_int4pack_mm_for_cpu",
        "_weight_int4pack_mm_with_scales_and_zeros", "_dyn_quant_matmul_4bit",
        "transformers::grouped_mm_fallback", "transformers::grouped_mm_fallback_backward",
    ),
    ATTENTION: (
        "scaled_dot_product_attention", "_scaled_dot_product_attention_math",
        "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable", "_flash_attention_forward",
        "_efficient_attention_forward", "_cudnn_attention_forward",
        "_scaled_dot_product_flash_attention_backward", "_scaled_dot_product_flash_attention_for_cpu_backward",
        "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention_backward",
        "_scaled_dot_product_fused_attention_overrideable_backward", "_flash_attention_backward",
        "_efficient_attention_backward", "_cudnn_attention_backward",
        "flash_attn::*", "flashattn::*", "flash_attn_2_cuda::*", "flash_attn_3::*", "xformers::*", "xformers_flash::*",
    ),
    CONVOLUTION: (
        "convolution", "_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
        "conv_transpose3d", "cudnn_convolution", "cudnn_convolution_transpose", "_slow_conv2d_forward",
        "convolution_overrideable", "mkldnn_convolution", "_conv_depthwise2d", "slow_conv3d_forward",
        "slow_conv_dilated2d", "slow_conv_dilated3d", "slow_conv_transpose2d", "slow_conv_transpose3d",
        "miopen_convolution", "_nnpack_spatial_convolution", "convolution_backward", "_convolution_mode",
    ),
    NORMALIZATION: (
        "layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "batch_norm", "native_batch_norm",
        "_native_batch_norm_legit", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
        "cudnn_batch_norm", "miopen_batch_norm", "instance_norm", "rms_norm", "_fused_rms_norm", "local_response_norm",
        "native_layer_norm_backward", "native_group_norm_backward", "native_batch_norm_backward",
        "_fused_rms_norm_backward", "normalize",
    ),
    ACTIVATION: (
        "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid", "leaky_relu",
        "elu", "selu", "celu", "mish", "softplus", "softshrink", "hardshrink", "glu", "prelu", "_prelu_kernel",
        "rrelu", "threshold", "log_sigmoid_forward", "log_sigmoid", "gelu_backward", "silu_backward",
        "sigmoid_backward", "tanh_backward", "threshold_backward", "quick_gelu",
    ),
    ELEMENTWISE: (
        "add", "sub", "rsub", "mul", "div", "true_divide", "floor_divide", "neg", "pow", "rsqrt", "sqrt", "exp",
        "exp2", "log", "log2", "log10", "log1p", "expm1", "sin", "cos", "tan", "sinh", "cosh", "asin", "acos", "atan",
        "atan2", "arctan2", "abs", "sign", "sgn", "reciprocal", "where", "clamp", "clamp_min", "clamp_max", "clip",
        "minimum", "maximum", "fmin", "fmax", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or",
        "logical_not", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not",
        "bitwise_left_shift", "bitwise_right_shift", "addcmul", "addcdiv", "lerp", "masked_fill", "floor", "ceil",
        "round", "trunc", "frac", "fmod", "remainder", "erf", "erfc", "erfinv", "square", "nan_to_num", "isnan",
        "isinf", "isfinite", "isneginf", "isposinf", "copysign", "hypot", "xlogy", "triu", "tril", "heaviside",
        "sinc", "logit", "polar", "angle", "conj_physical", "real", "imag", "_foreach_add", "_foreach_mul",
        "_foreach_div", "_foreach_sub", "_foreach_addcmul", "_foreach_addcdiv", "_foreach_lerp", "_foreach_sqrt",
        "_foreach_neg", "isclose",
    ),
    REDUCTION: (
        "sum", "mean", "prod", "amax", "amin", "max", "min", "aminmax", "argmax", "argmin", "var", "std", "var_mean",
        "std_mean", "norm", "linalg_vector_norm", "frobenius_norm", "logsumexp", "softmax", "_softmax", "log_softmax",
        "_log_softmax", "_safe_softmax", "_softmax_backward_data", "_log_softmax_backward_data", "any", "all",
        "cumsum", "cumprod", "cummax", "cummin", "logcumsumexp", "count_nonzero", "nansum", "nanmean", "median",
        "nanmedian", "mode", "kthvalue", "allclose", "equal", "_foreach_norm", "dist", "cdist", "_cdist_forward",
    ),
    EMBEDDING: (
        "embedding", "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only", "gather", "index_select",
        "take", "take_along_dim", "embedding_dense_backward", "_unsafe_index", "_unsafe_masked_index",
    ),
    DATA_MOVEMENT: (
        "view", "_unsafe_view", "reshape", "_reshape_alias", "view_as", "transpose", "t", "permute", "expand",
        "expand_as", "squeeze", "unsqueeze", "slice", "select", "narrow", "as_strided", "split", "split_with_sizes",
        "chunk", "tensor_split", "unbind", "unfold", "alias", "detach", "view_as_real", "view_as_complex",
        "diagonal", "movedim", "moveaxis", "flatten", "unflatten", "contiguous", "clone", "copy", "_copy_from",
        "_copy_from_and_resize", "_to_copy", "to", "cat", "concat", "concatenate", "stack", "hstack", "vstack",
        "pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d", "replication_pad1d",
        "replication_pad2d", "replication_pad3d", "repeat", "repeat_interleave", "roll", "flip", "tile",
        "slice_scatter", "select_scatter", "diagonal_scatter", "as_strided_scatter", "fill", "zero", "zeros",
        "zeros_like", "ones", "ones_like", "full", "full_like", "empty", "empty_like", "empty_strided",
        "empty_permuted", "new_empty", "new_empty_strided", "new_zeros", "new_ones", "new_full", "arange", "linspace",
        "logspace", "scalar_tensor", "lift_fresh", "lift_fresh_copy", "lift", "_local_scalar_dense", "item",
        "set", "resize", "resize_as", "_reshape_copy", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
        "im2col", "col2im", "eye", "tensor", "_pin_memory", "_to_dense", "view_copy",
        "expand_copy", "permute_copy", "transpose_copy", "t_copy", "unsqueeze_copy", "squeeze_copy", "slice_copy",
        "select_copy", "split_copy", "unbind_copy", "alias_copy", "detach_copy", "_assert_async", "_assert_scalar",
        "sym_constrain_range_for_size", "_functional_sym_constrain_range_for_size", "record_stream",
        "_conj", "_neg_view", "resolve_conj", "resolve_neg", "_nested_tensor_from_tensor_list", "masked_select",
        "complex", "_make_dep_token", "_assert_tensor_metadata", "prim::device", "prim::layout", "size", "sym_size",
        "stride", "sym_stride", "numel", "sym_numel", "dim", "storage_offset", "sym_storage_offset", "is_contiguous",
        "sym_is_contiguous", "is_strides_like_format", "is_non_overlapping_and_dense",
    ),
    MOE_ROUTING: (
        "topk", "sort", "argsort", "msort", "scatter", "scatter_add", "scatter_reduce", "index", "index_put",
        "_index_put_impl", "_unsafe_index_put", "_unsafe_masked_index_put_accumulate", "index_add", "index_copy",
        "index_fill", "index_reduce", "masked_scatter", "nonzero",
        "nonzero_static", "argwhere", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "bincount",
        "histc", "one_hot", "searchsorted", "bucketize", "put", "_grouped_topk", "moe_*::*",
    ),
    RNG_SAMPLING: (
        "multinomial", "bernoulli", "rand", "rand_like", "randn", "randn_like", "randint", "randint_like",
        "randperm", "normal", "uniform", "exponential", "geometric", "cauchy", "log_normal", "random",
        "dropout", "native_dropout", "feature_dropout", "alpha_dropout", "_fused_dropout", "poisson",
        "_standard_gamma", "_sample_dirichlet", "binomial",
    ),
    OTHER: (
        "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
        "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
        "_upsample_bilinear2d_aa", "upsample_bicubic2d", "_upsample_bicubic2d_aa", "upsample_trilinear3d",
        "grid_sampler_2d", "grid_sampler_3d", "affine_grid_generator", "isin", "max_pool1d", "max_pool2d",
        "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d",
        "adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool3d",
        "_adaptive_avg_pool3d", "adaptive_max_pool2d", "adaptive_max_pool3d", "mkldnn_rnn_layer", "lstm", "gru",
        "_fft_r2c", "_fft_c2r", "_fft_c2c", "cross_entropy_loss", "nll_loss_forward", "nll_loss2d_forward",
        "mse_loss", "l1_loss", "smooth_l1_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
        "huber_loss", "kl_div",
    ),
}

_EXACT: dict[str, str] = {}
_GLOBS: list[tuple[str, str]] = []
_RULES_VERSION = [0]
"""Bumped by every :func:`register_category`: whatever caches an op's category compares it (its version)."""


def rules_version() -> int:
    """The version of the category rules (it changes whenever a rule is added)."""
    return _RULES_VERSION[0]


def _index_table() -> None:
    _EXACT.clear()
    _GLOBS.clear()
    for category, names in CATEGORY_TABLE.items():
        for name in names:
            if not name:
                continue
            if any(c in name for c in "*?["):
                _GLOBS.append((name, category))
            else:
                _EXACT.setdefault(name, category)


_index_table()


def register_category(pattern: str, category: str) -> None:
    """Add a rule (for a custom op, say) mapping ``pattern`` to ``category``.

    Parameters
    ----------
    pattern
        An aten packet name (``"mm"``), a qualified custom-op name (``"mylib::fused_moe"``), or a glob of either.
    category
        One of :data:`CATEGORIES` except ``unclassified``.

    Tracers entered afterwards see the rule, also for ops an earlier tracer already met.
    """
    from opmeter.errors import OpmeterError

    if category not in CATEGORIES or category == UNCLASSIFIED:
        raise OpmeterError(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES[:-1])}")
    if any(c in pattern for c in "*?["):
        _GLOBS.insert(0, (pattern, category))
    else:
        _EXACT[pattern] = category
    _RULES_VERSION[0] += 1  # compiled OpInfos carry the old category: their cache starts again


def category_of_name(qualified: str) -> str:
    """Category of an op given its qualified packet name (``aten::mm``, ``flash_attn::fwd``).

    Returns :data:`UNCLASSIFIED` when no rule matches.
    """
    ns, _, name = qualified.rpartition("::")
    if ns in ("", "aten"):
        for candidate in (name, name.rstrip("_"), name.lstrip("_").rstrip("_")):
            hit = _EXACT.get(candidate)
            if hit is not None:
                return hit
    else:
        hit = _EXACT.get(qualified)
        if hit is not None:
            return hit
    for pattern, category in _GLOBS:
        if fnmatch.fnmatchcase(qualified, pattern) or (ns == "aten" and fnmatch.fnmatchcase(name, pattern)):
            return category
    return UNCLASSIFIED


def category_of(func: Any) -> str:
    """Category of an ``OpOverload`` (``torch.ops.aten.mm.default``) or ``OpOverloadPacket``."""
    qualified = getattr(func, "_qualified_op_name", None)  # OpOverloadPacket: "aten::add"
    if qualified is None:
        schema = getattr(func, "_schema", None)  # OpOverload: schema name without the overload
        qualified = schema.name if schema is not None else str(func)
    return category_of_name(str(qualified))

"""DeepSeek-V2 decoder of DeepSeek-OCR (``use_mla = False``: LLaMA multi-head attention, MoE MLPs).

Class names, attribute names and the op sequence follow the vendor ``modeling_deepseekv2.py`` (and the transformers
4.46 ``LlamaAttention`` / ``LlamaRotaryEmbedding`` it imports). Shapes in comments use the full-size preset:
hidden 1280, 10 heads x 128, 64 routed experts (top 6), 2 shared experts; ``T = B*S`` tokens.

Shape-only execution (meta or fake tensors) cannot read routing decisions on the host. The MoE then applies the
documented **balanced-deterministic** policy: token ``t`` goes to experts ``(t*k + j) mod E`` for ``j < k``, so every
token keeps exactly ``k`` routed token-expert pairs; the gate still runs (same ops, same shapes), only the host-side
``tokens_per_expert`` comes from the policy, and only experts that receive tokens are called.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr.config import DecoderConfig

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")


def is_shape_only(t: torch.Tensor) -> bool:
    """Whether ``t`` carries no data (meta device or a FakeTensor), so host reads of its values are impossible."""
    if t.device.type == "meta":
        return True
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def balanced_routing_counts(num_tokens: int, top_k: int, num_experts: int) -> np.ndarray:
    """Tokens per expert under the shape-only policy ``token t -> experts (t*k + j) mod E, j < k``."""
    ids = (np.arange(num_tokens)[:, None] * top_k + np.arange(top_k)[None, :]) % num_experts
    return np.bincount(ids.reshape(-1), minlength=num_experts)


class KVCache:
    """Per-layer key/value cache that grows by concatenation (as transformers' ``DynamicCache``)."""

    def __init__(self) -> None:
        self.key_cache: list[torch.Tensor] = []
        self.value_cache: list[torch.Tensor] = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Number of cached positions."""
        return self.key_cache[layer_idx].shape[-2] if len(self.key_cache) > layer_idx else 0

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, H, S, D]`` keys/values of one layer and return the full ones."""
        if len(self.key_cache) <= layer_idx:
            self.key_cache.append(key)
            self.value_cache.append(value)
        else:
            self.key_cache[layer_idx] = torch.cat([self.key_cache[layer_idx], key], dim=-2)
            self.value_cache[layer_idx] = torch.cat([self.value_cache[layer_idx], value], dim=-2)
        return self.key_cache[layer_idx], self.value_cache[layer_idx]


class DeepseekV2RMSNorm(nn.Module):
    """RMSNorm computed in fp32, weight applied in the input dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class LlamaRotaryEmbedding(nn.Module):
    """Default RoPE (transformers 4.46): angles in fp32 as ``inv_freq[B, 64, 1] @ positions[B, 1, S]``."""

    inv_freq: torch.Tensor

    def __init__(self, dim: int, max_position_embeddings: int = 8192, base: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.base = base
        self.max_seq_len_cached = max_position_embeddings
        self.original_max_seq_len = max_position_embeddings
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)
        self.attention_scaling = 1.0

    def compute_inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        """``1 / base^(2i/dim)`` in fp32, ``[dim/2]``."""
        idx = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float()
        return 1.0 / (self.base ** (idx / self.dim))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq_expanded = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)  # [B, 64, 1]
        position_ids_expanded = position_ids[:, None, :].float()  # [B, 1, S]
        device_type = x.device.type if x.device.type in ("cuda", "cpu") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)  # [B, S, 64]
            emb = torch.cat((freqs, freqs), dim=-1)  # [B, S, 128]
            cos = emb.cos()
            sin = emb.sin()
        cos = cos * self.attention_scaling
        sin = sin * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate half the hidden dims: ``cat(-x2, x1)``."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply RoPE to ``q`` and ``k`` (``[B, H, S, D]``)."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Expand ``[B, H_kv, S, D]`` to ``[B, H_kv*n_rep, S, D]`` (no-op when ``n_rep == 1``)."""
    if n_rep == 1:
        return hidden_states
    b, h, s, d = hidden_states.shape
    return hidden_states[:, :, None, :, :].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


class LlamaAttention(nn.Module):
    """Multi-head attention with RoPE and a KV cache.

    ``attn_implementation="eager"`` (the vendor default) computes ``softmax(q kᵀ / √d + mask)`` in fp32 with two
    matmuls; ``"sdpa"`` uses one ``F.scaled_dot_product_attention`` call with the same mask.
    """

    def __init__(self, config: DecoderConfig, layer_idx: int, attn_implementation: str = "eager") -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.attn_implementation = attn_implementation
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.max_position_embeddings = config.max_position_embeddings
        self.rope_theta = config.rope_theta
        self.is_causal = True
        bias = config.attention_bias
        self.q_proj = nn.Linear(self.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=bias)
        self.rotary_emb = LlamaRotaryEmbedding(self.head_dim, config.max_position_embeddings, config.rope_theta)

    def _project(
        self, hidden_states: torch.Tensor, position_ids: torch.Tensor, past_key_value: KVCache | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bsz, q_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary_emb(value_states, position_ids)  # called inside every layer, as the vendor does
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if past_key_value is not None:
            key_states, value_states = past_key_value.update(key_states, value_states, self.layer_idx)
        return query_states, key_states, value_states  # [B, 10, S, 128], [B, 10, S_kv, 128] x2

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_value: KVCache | None = None,
    ) -> torch.Tensor:
        bsz, q_len, _ = hidden_states.size()
        assert position_ids is not None
        query_states, key_states, value_states = self._project(hidden_states, position_ids, past_key_value)
        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)
        causal_mask = attention_mask[:, :, :, : key_states.shape[-2]] if attention_mask is not None else None
        if self.attn_implementation == "sdpa":
            attn_output = F.scaled_dot_product_attention(
                query_states.contiguous(), key_states.contiguous(), value_states.contiguous(), attn_mask=causal_mask
            )
        else:
            attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
            if causal_mask is not None:
                attn_weights = attn_weights + causal_mask
            attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
            attn_output = torch.matmul(attn_weights, value_states)  # [B, 10, S, 128]
        attn_output = attn_output.transpose(1, 2).contiguous().reshape(bsz, q_len, -1)
        return self.o_proj(attn_output)


class LlamaFlashAttention2(LlamaAttention):
    """Attention through ``flash_attn.flash_attn_func`` (CUDA with flash-attn installed); the mask is causal-only."""

    def __init__(self, config: DecoderConfig, layer_idx: int, attn_implementation: str = "flash_attention_2"):
        super().__init__(config, layer_idx, attn_implementation)
        try:
            from flash_attn import flash_attn_func  # type: ignore[import-not-found]
        except ImportError as exc:
            raise OpmeterError(
                "attn_implementation='flash_attention_2' needs the flash-attn package on a CUDA machine; "
                "use 'eager' or 'sdpa'"
            ) from exc
        self._flash_attn_func = flash_attn_func

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_value: KVCache | None = None,
    ) -> torch.Tensor:
        bsz, q_len, _ = hidden_states.size()
        assert position_ids is not None
        query_states, key_states, value_states = self._project(hidden_states, position_ids, past_key_value)
        # flash-attn wants [B, S, H, D]; causal alignment is bottom-right, so decode (q_len 1) sees every key.
        attn_output = self._flash_attn_func(
            query_states.transpose(1, 2), key_states.transpose(1, 2), value_states.transpose(1, 2), 0.0,
            softmax_scale=None, causal=q_len > 1,
        )
        attn_output = attn_output.reshape(bsz, q_len, -1).contiguous()
        return self.o_proj(attn_output)


class DeepseekV2MLP(nn.Module):
    """SiLU-gated MLP: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` with ``act_fn`` an ``nn.SiLU`` module."""

    def __init__(self, config: DecoderConfig, intermediate_size: int | None = None) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.intermediate_size if intermediate_size is None else intermediate_size
        self.gate_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.up_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=False)
        self.down_proj = nn.Linear(self.intermediate_size, self.hidden_size, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class MoEGate(nn.Module):
    """Router: fp32 logits ``F.linear(h.float(), W.float())``, softmax, greedy top-k, no renormalisation."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.routed_scaling_factor = config.routed_scaling_factor
        self.scoring_func = config.scoring_func
        self.topk_method = config.topk_method
        self.norm_topk_prob = config.norm_topk_prob
        self.gating_dim = config.hidden_size
        self.weight = nn.Parameter(torch.empty((self.n_routed_experts, self.gating_dim)))  # [64, 1280]
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, h = hidden_states.shape
        hidden_states = hidden_states.view(-1, h)  # [T, 1280]
        logits = F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32), None)  # [T, 64]
        scores = logits.softmax(dim=-1, dtype=torch.float32)
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)  # [T, 6] each
        if self.top_k > 1 and self.norm_topk_prob:
            denominator = topk_weight.sum(dim=-1, keepdim=True) + 1e-20
            topk_weight = topk_weight / denominator * self.routed_scaling_factor
        else:
            topk_weight = topk_weight * self.routed_scaling_factor
        return topk_idx, topk_weight


class DeepseekV2MoE(nn.Module):
    """Routed experts (only those that receive tokens are called) plus shared experts on every token."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.num_experts_per_tok = config.num_experts_per_tok
        self.ep_size = 1
        self.experts_per_rank = config.n_routed_experts
        self.ep_rank = 0
        expert_size = config.moe_intermediate_size
        self.experts = nn.ModuleList(
            DeepseekV2MLP(config, intermediate_size=expert_size) for _ in range(config.n_routed_experts)
        )
        self.gate = MoEGate(config)
        self.shared_experts = DeepseekV2MLP(config, intermediate_size=expert_size * config.n_shared_experts)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        identity = hidden_states
        orig_shape = hidden_states.shape
        topk_idx, topk_weight = self.gate(hidden_states)
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        y = self.moe_infer(hidden_states, topk_idx, topk_weight).view(*orig_shape)
        return y + self.shared_experts(identity)

    def _host_counts(self, tokens_per_expert: torch.Tensor, topk_ids: torch.Tensor) -> np.ndarray:
        """Tokens per expert on the host: read, as the vendor does; shape-only, the balanced policy."""
        if is_shape_only(tokens_per_expert):
            return balanced_routing_counts(topk_ids.shape[0], topk_ids.shape[1], len(self.experts))
        counts: np.ndarray = tokens_per_expert.cpu().numpy()
        return counts

    @torch.no_grad()
    def moe_infer(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
        """Sort token-expert pairs by expert, run each expert on its contiguous slice, scatter back, weight, sum."""
        cnts = topk_ids.new_zeros((topk_ids.shape[0], len(self.experts)))  # [T, 64]
        cnts.scatter_(1, topk_ids, 1)
        tokens_per_expert_t = cnts.sum(dim=0)
        idxs = topk_ids.view(-1).argsort()  # [T*6]
        sorted_tokens = x[idxs // topk_ids.shape[1]]  # [T*6, 1280]
        tokens_per_expert = self._host_counts(tokens_per_expert_t, topk_ids)
        outputs = []
        start_idx = 0
        for i, num_tokens in enumerate(tokens_per_expert):
            end_idx = start_idx + int(num_tokens)
            if num_tokens == 0:
                continue
            expert = self.experts[i + self.ep_rank * self.experts_per_rank]
            outputs.append(expert(sorted_tokens[start_idx:end_idx]))
            start_idx = end_idx
        outs = torch.cat(outputs, dim=0) if len(outputs) else sorted_tokens.new_empty(0)
        new_x = torch.empty_like(outs)
        new_x[idxs] = outs
        return (
            new_x.view(*topk_ids.shape, -1)
            .type(topk_weight.dtype)
            .mul_(topk_weight.unsqueeze(dim=-1))
            .sum(dim=1)
            .type(new_x.dtype)
        )


def make_attention(config: DecoderConfig, layer_idx: int, attn_implementation: str) -> LlamaAttention:
    """The attention module for a backend: ``LlamaAttention`` (eager/sdpa) or ``LlamaFlashAttention2``."""
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise OpmeterError(f"unknown attn_implementation {attn_implementation!r}; use one of {ATTN_IMPLEMENTATIONS}")
    if attn_implementation == "flash_attention_2":
        return LlamaFlashAttention2(config, layer_idx)
    return LlamaAttention(config, layer_idx, attn_implementation)


class DeepseekV2DecoderLayer(nn.Module):
    """Pre-norm decoder layer: RMSNorm -> attention -> residual; RMSNorm -> dense MLP or MoE -> residual."""

    def __init__(self, config: DecoderConfig, layer_idx: int, attn_implementation: str = "eager") -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = make_attention(config, layer_idx, attn_implementation)
        self.mlp: nn.Module = DeepseekV2MoE(config) if config.is_moe_layer(layer_idx) else DeepseekV2MLP(config)
        self.input_layernorm = DeepseekV2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = DeepseekV2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_value: KVCache | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states = self.self_attn(
            hidden_states, attention_mask=attention_mask, position_ids=position_ids, past_key_value=past_key_value
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        return residual + hidden_states


def causal_mask_4d(
    batch_size: int, q_len: int, past_len: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Additive mask ``[B, 1, q_len, past_len + q_len]``: 0 where allowed, dtype-min above the causal diagonal."""
    min_value = torch.finfo(dtype).min
    if q_len == 1:
        return torch.zeros((batch_size, 1, 1, past_len + 1), dtype=dtype, device=device)
    mask = torch.full((q_len, q_len), min_value, dtype=dtype, device=device).triu(1)
    if past_len > 0:
        mask = torch.cat([torch.zeros((q_len, past_len), dtype=dtype, device=device), mask], dim=-1)
    return mask[None, None, :, :].expand(batch_size, 1, q_len, past_len + q_len)


class DeepseekV2Model(nn.Module):
    """Token embeddings, decoder layers and the final norm (the base class of ``DeepseekOCRModel``)."""

    def __init__(self, config: DecoderConfig, attn_implementation: str = "eager") -> None:
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.attn_implementation = attn_implementation
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DeepseekV2DecoderLayer(config, i, attn_implementation) for i in range(config.num_hidden_layers)
        )
        self.norm = DeepseekV2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def decode(
        self,
        inputs_embeds: torch.Tensor,
        past_key_values: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the decoder stack on ``[B, S, H]`` embeddings; returns the normed hidden states."""
        batch_size, seq_length, _ = inputs_embeds.shape
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(
                past_len, seq_length + past_len, dtype=torch.long, device=inputs_embeds.device
            ).unsqueeze(0)
        attention_mask = None
        if self.attn_implementation != "flash_attention_2":
            attention_mask = causal_mask_4d(batch_size, seq_length, past_len, inputs_embeds.dtype, inputs_embeds.device)
        hidden_states = inputs_embeds
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(
                hidden_states, attention_mask=attention_mask, position_ids=position_ids, past_key_value=past_key_values
            )
        return self.norm(hidden_states)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            assert input_ids is not None
            inputs_embeds = self.embed_tokens(input_ids)
        return self.decode(inputs_embeds, past_key_values, position_ids)

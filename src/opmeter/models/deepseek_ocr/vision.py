"""DeepSeek-OCR vision encoders: SAM ViT-B (``ImageEncoderViT``), the CLIP-L tower (``VitModel``) and the projector.

Class names, attribute names, nesting and the op sequence follow the vendor ``deepencoder`` code one for one, so a
trace of this model and a trace of the vendor model line up module for module. Shapes in comments use the full-size
preset at a 1024 x 1024 view (SAM grid 64, output grid 16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from opmeter.models.deepseek_ocr.config import ClipConfig, ProjectorConfig, SamConfig

# ----------------------------------------------------------------------------------------------------------------
# SAM ViT-B
# ----------------------------------------------------------------------------------------------------------------


class LayerNorm2d(nn.Module):
    """Channel LayerNorm on ``[B, C, H, W]`` written out as the vendor does (mean, var, sqrt, affine)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    """Image to patch embeddings: ``Conv2d(k=16, s=16)`` then permute to ``[B, H, W, C]``."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, 768, 64, 64]
        return x.permute(0, 2, 3, 1)  # [B, 64, 64, 768]


class MLPBlock(nn.Module):
    """``lin1 -> act (GELU module) -> lin2``."""

    def __init__(self, embedding_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative positional embeddings ``[q_size, k_size, C]``, linearly resized when the table length differs."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        dtype = rel_pos.dtype
        rel_pos = rel_pos.to(torch.float32)
        rel_pos_resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear"
        ).to(dtype)
        rel_pos_resized = rel_pos_resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        rel_pos_resized = rel_pos
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos_resized[relative_coords.long()]


def add_decomposed_rel_pos(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decomposed relative-position terms (two einsums), returned as ``[B, q_h*q_w, k_h, 1]`` and ``[..., 1, k_w]``."""
    q_h, q_w = q_size
    k_h, k_w = k_size
    rh = get_rel_pos(q_h, k_h, rel_pos_h)  # [q_h, k_h, C]
    rw = get_rel_pos(q_w, k_w, rel_pos_w)  # [q_w, k_w, C]
    b, _, dim = q.shape
    r_q = q.reshape(b, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    rel_h = rel_h.unsqueeze(-1).reshape(b, q_h * q_w, k_h, 1)
    rel_w = rel_w.unsqueeze(-2).reshape(b, q_h * q_w, 1, k_w)
    return rel_h, rel_w


class Attention(nn.Module):
    """SAM multi-head attention with decomposed relative-position bias, run through SDPA with the bias as mask."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, use_rel_pos: bool, input_size: tuple[int, int]):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape  # windows: [B*25, 14, 14, 768]; global: [B, 64, 64, 768]
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)  # each [B*heads, h*w, 64]
        rel_h = rel_w = None
        if self.use_rel_pos:
            rel_h, rel_w = add_decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        q = q.view(b, self.num_heads, h * w, -1)
        k = k.view(b, self.num_heads, h * w, -1)
        v = v.view(b, self.num_heads, h * w, -1)
        if rel_h is not None and rel_w is not None:
            rel_h = rel_h.view(b, self.num_heads, rel_h.size(1), rel_h.size(2), rel_h.size(3))
            rel_w = rel_w.view(b, self.num_heads, rel_w.size(1), rel_w.size(2), rel_w.size(3))
            attn_bias = (rel_h + rel_w).view(b, self.num_heads, rel_h.size(2), rel_h.size(3) * rel_w.size(4))
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        x = x.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(x)


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split ``[B, H, W, C]`` into non-overlapping windows, zero-padding H and W to a multiple of the window."""
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, dropping the padding."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


class Block(nn.Module):
    """SAM transformer block: windowed (``window_size > 0``) or global attention, then the MLP."""

    def __init__(self, cfg: SamConfig, window_size: int) -> None:
        super().__init__()
        grid = cfg.img_size // cfg.patch_size
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(
            cfg.embed_dim,
            num_heads=cfg.num_heads,
            qkv_bias=cfg.qkv_bias,
            use_rel_pos=cfg.use_rel_pos,
            input_size=(grid, grid) if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.mlp = MLPBlock(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        h, w = x.shape[1], x.shape[2]
        pad_hw = (h, w)
        if self.window_size > 0:
            x, pad_hw = window_partition(x, self.window_size)  # [B*25, 14, 14, 768] at grid 64 (padded to 70)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def get_abs_pos_sam(abs_pos: torch.Tensor, tgt_size: int) -> torch.Tensor:
    """SAM absolute position table ``[1, G, G, C]``, bicubic (antialias) resized to ``tgt_size`` when it differs."""
    dtype = abs_pos.dtype
    src_size = abs_pos.size(1)
    if src_size == tgt_size:
        return abs_pos
    old = abs_pos.permute(0, 3, 1, 2).to(torch.float32)
    new = F.interpolate(old, size=(tgt_size, tgt_size), mode="bicubic", antialias=True, align_corners=False)
    return new.to(dtype).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM ViT-B image encoder with the DeepSeek-OCR neck and the two stride-2 convolutions ``net_2``, ``net_3``."""

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        self.img_size = cfg.img_size
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(cfg, window_size=0 if i in cfg.global_attn_indexes else cfg.window_size) for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )
        self.net_2 = nn.Conv2d(cfg.out_chans, cfg.net_2_chans, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(cfg.net_2_chans, cfg.net_3_chans, kernel_size=3, stride=2, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # [B, 64, 64, 768]
        x = x + get_abs_pos_sam(self.pos_embed, x.size(1))
        for blk in self.blocks:
            x = blk(x)
        x = self.neck(x.permute(0, 3, 1, 2))  # [B, 256, 64, 64]
        x2 = self.net_2(x)  # [B, 512, 32, 32]
        return self.net_3(x2.clone())  # [B, 1024, 16, 16]


# ----------------------------------------------------------------------------------------------------------------
# CLIP-L tower fed with SAM features
# ----------------------------------------------------------------------------------------------------------------


def get_abs_pos(abs_pos: torch.Tensor, tgt_size: int) -> torch.Tensor:
    """CLIP position table ``[L, C]`` (class row first) bicubic-resized to ``tgt_size`` tokens (incl. class token)."""
    dim = abs_pos.size(-1)
    abs_pos_new = abs_pos.squeeze(0)
    cls_token, old_pos_embed = abs_pos_new[:1], abs_pos_new[1:]
    src_size = int(math.sqrt(abs_pos_new.shape[0] - 1))
    tgt = int(math.sqrt(tgt_size))
    dtype = abs_pos.dtype
    if src_size == tgt:
        return abs_pos
    old = old_pos_embed.view(1, src_size, src_size, dim).permute(0, 3, 1, 2).contiguous().to(torch.float32)
    new = F.interpolate(old, size=(tgt, tgt), mode="bicubic", antialias=True, align_corners=False).to(dtype)
    new = new.permute(0, 2, 3, 1).view(tgt * tgt, dim)
    return torch.cat([cls_token, new], dim=0).view(1, tgt * tgt + 1, dim)


class CLIPVisionEmbeddings(nn.Module):
    """Class token + patch embeddings (the SAM features, passed in) + interpolated position embeddings.

    ``patch_embedding`` exists (as in the vendor checkpoint) but is only used when no patch embeddings are passed,
    which DeepSeek-OCR never does.
    """

    def __init__(self, hidden_size: int = 1024, image_size: int = 224, patch_size: int = 14, num_channels: int = 3):
        super().__init__()
        self.embed_dim = hidden_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.class_embedding = nn.Parameter(torch.randn(hidden_size))
        self.patch_embedding = nn.Conv2d(
            num_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=False
        )
        self.num_patches = (image_size // patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Embedding(self.num_positions, hidden_size)
        self.register_buffer("position_ids", torch.arange(self.num_positions).expand((1, -1)))

    def forward(self, pixel_values: torch.Tensor, patch_embeds: torch.Tensor | None) -> torch.Tensor:
        batch_size = pixel_values.shape[0]
        if patch_embeds is None:
            patch_embeds = self.patch_embedding(pixel_values)
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)  # [B, 256, 1024]
        class_embeds = self.class_embedding.expand(batch_size, 1, -1)
        embeddings = torch.cat([class_embeds, patch_embeds], dim=1)  # [B, 257, 1024]
        position_ids: torch.Tensor = self.position_ids  # type: ignore[assignment]
        return embeddings + get_abs_pos(self.position_embedding(position_ids), embeddings.size(1))


class NoTPAttention(nn.Module):
    """CLIP self-attention: fused ``qkv_proj``, SDPA without mask, ``out_proj``."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.n_local_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.qkv_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size * 3, bias=True)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        xqkv = self.qkv_proj(x).view(bsz, seqlen, 3, self.num_heads, self.head_dim)
        xq, xk, xv = torch.split(xqkv, 1, dim=2)
        xq = xq.squeeze(2).permute(0, 2, 1, 3)  # [B, 16, 257, 64]
        xk = xk.squeeze(2).permute(0, 2, 1, 3)
        xv = xv.squeeze(2).permute(0, 2, 1, 3)
        output = F.scaled_dot_product_attention(xq, xk, xv, attn_mask=None)
        output = output.permute(0, 2, 1, 3).reshape(bsz, seqlen, -1)
        return self.out_proj(output)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(1.702 x)`` (a function in the vendor code, not a module)."""
    return x * torch.sigmoid(1.702 * x)


class NoTPFeedForward(nn.Module):
    """CLIP MLP: ``fc1 -> quick_gelu -> fc2``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=True)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class NoTPTransformerBlock(nn.Module):
    """Pre-norm CLIP block.

    Like the vendor code, it calls ``self_attn.forward`` and ``mlp.forward`` directly (not through ``__call__``), so
    module hooks see no separate ``NoTPAttention`` / ``NoTPFeedForward`` calls: their ops belong to this block.
    """

    def __init__(self, cfg: ClipConfig, layer_id: int) -> None:
        super().__init__()
        self.n_heads = cfg.num_heads
        self.dim = cfg.hidden_size
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.self_attn = NoTPAttention(cfg)
        self.mlp = NoTPFeedForward(cfg.hidden_size, cfg.ffn_hidden_size)
        self.layer_id = layer_id
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.self_attn.forward(self.layer_norm1(x))
        h = x + residual
        return h + self.mlp.forward(self.layer_norm2(h))


class NoTPTransformer(nn.Module):
    """The stack of CLIP blocks."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        self.layers = nn.ModuleList(NoTPTransformerBlock(cfg, layer_id + 1) for layer_id in range(cfg.num_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class VitModel(nn.Module):
    """CLIP-L/14 tower: embeddings (class token + SAM features + positions), ``pre_layrnorm``, transformer."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(cfg.hidden_size, cfg.image_size, cfg.patch_size)
        self.transformer = NoTPTransformer(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)

    def forward(self, x: torch.Tensor, patch_embeds: torch.Tensor | None) -> torch.Tensor:
        x = self.embeddings(x, patch_embeds)  # [B, g*g + 1, 1024]
        hidden_states = self.pre_layrnorm(x)
        return self.transformer(hidden_states)


# ----------------------------------------------------------------------------------------------------------------
# Projector
# ----------------------------------------------------------------------------------------------------------------


class MlpProjector(nn.Module):
    """``projector_type == "linear"``: ``layers = Linear(2048, 1280)`` over concat(CLIP, SAM) features."""

    def __init__(self, cfg: ProjectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.projector_type != "linear":
            raise ValueError(f"only the 'linear' projector is implemented, got {cfg.projector_type!r}")
        self.layers = nn.Linear(cfg.input_dim, cfg.n_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

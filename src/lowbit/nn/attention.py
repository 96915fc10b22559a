"""Quantized attention: ``QuantMultiheadAttention`` and transformer layers that never take the fused path.

``nn.MultiheadAttention`` reads ``in_proj_weight`` / ``out_proj.weight`` itself (it never
calls ``out_proj``), and ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` switch
to a fused kernel under ``no_grad`` that reads every weight directly. Either way a
wrapped ``Linear`` is bypassed and the float shadow weights run. So:

- :class:`QuantMultiheadAttention` is an unfused equivalent whose projections are
  modules: ``q_proj``, ``k_proj``, ``v_proj`` (the packed ``in_proj_weight`` split into
  three rows blocks of ``embed_dim``) and ``out_proj``, each a :class:`QuantLinear`
  (weights per output channel, an optional input quantizer). The attention arithmetic
  follows ``F.multi_head_attention_forward`` step for step, so with float weights the
  outputs equal PyTorch's (batch_first, masks, ``need_weights``, dropout, bias_kv,
  add_zero_attn).
- :class:`LowbitTransformerEncoderLayer`, :class:`LowbitTransformerDecoderLayer` and
  :class:`LowbitTransformerEncoder` are the torch classes without the fused / nested
  tensor paths. lowbit swaps them in as *shells*: the same children, which the config
  then quantizes one by one.

The ONNX exporter maps the attention module and the encoder classes op by op
(:mod:`lowbit.targets.onnx_ops_seq`); tracing a decoder layer raises a ValueError naming it.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quantizer import Quantizer
from .act import ActQuant
from .layers import QuantLinear

__all__ = [
    "QuantMultiheadAttention",
    "LowbitTransformerEncoderLayer",
    "LowbitTransformerDecoderLayer",
    "LowbitTransformerEncoder",
    "refuse_trace",
    "shell_of",
    "mha_handler",
    "transformer_handler",
    "out_proj_handler",
]

WeightQuantFactory = Callable[[Tensor], "Quantizer | None"]
ActQuantFactory = Callable[[], "ActQuant | None"]


def refuse_trace(module: nn.Module, x: Any) -> None:
    """Raise a ValueError naming ``module`` when it is being traced by torch.fx (the ONNX exporter)."""
    if isinstance(x, torch.fx.Proxy):
        try:
            name = x.tracer.path_of_module(module)
        except Exception:  # a module outside the traced root has no path
            name = type(module).__name__
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) has no ONNX form in lowbit's exporter "
            "(transformer decoder layers and embedding bags are not exported)"
        )


def _linear(w: Tensor, b: Tensor | None, wq: WeightQuantFactory | None, aq: ActQuantFactory | None) -> QuantLinear:
    lin = QuantLinear(w.shape[1], w.shape[0], b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    lin._init_quant(wq(lin.weight) if wq else None, aq() if aq else None)
    return lin


class QuantMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` computed unfused, with quantized q/k/v and output projections."""

    # read by torch's transformer fast-path checks: a split projection never qualifies
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        q_proj: QuantLinear,
        k_proj: QuantLinear,
        v_proj: QuantLinear,
        out_proj: QuantLinear,
        *,
        dropout: float = 0.0,
        batch_first: bool = False,
        bias_k: Tensor | None = None,
        bias_v: Tensor | None = None,
        add_zero_attn: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim < 1 or num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"embed_dim must be a positive multiple of num_heads, got {embed_dim}, {num_heads}")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.kdim, self.vdim = k_proj.in_features, v_proj.in_features
        self.dropout, self.batch_first, self.add_zero_attn = float(dropout), bool(batch_first), bool(add_zero_attn)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.bias_k = nn.Parameter(bias_k.detach().clone()) if bias_k is not None else None
        self.bias_v = nn.Parameter(bias_v.detach().clone()) if bias_v is not None else None

    @classmethod
    def from_float(
        cls, mod: nn.MultiheadAttention, weight_quant: WeightQuantFactory | None = None, input_quant: ActQuantFactory | None = None
    ) -> "QuantMultiheadAttention":
        """An equivalent of ``mod``; ``weight_quant(w)`` / ``input_quant()`` build each projection's quantizers."""
        if not isinstance(mod, nn.MultiheadAttention):
            raise TypeError(f"mod must be an nn.MultiheadAttention, got {type(mod).__name__}")
        e = mod.embed_dim
        with torch.no_grad():
            if mod._qkv_same_embed_dim:
                wq_, wk_, wv_ = mod.in_proj_weight.detach().chunk(3)
            else:
                wq_, wk_, wv_ = (p.detach() for p in (mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight))
            bq = bk = bv = None
            if mod.in_proj_bias is not None:
                bq, bk, bv = mod.in_proj_bias.detach().chunk(3)
        projs = [_linear(w, b, weight_quant, input_quant) for w, b in ((wq_, bq), (wk_, bk), (wv_, bv))]
        out = mod.out_proj
        out_proj = _linear(out.weight.detach(), out.bias.detach() if out.bias is not None else None, weight_quant, input_quant)
        new = cls(
            e, mod.num_heads, *projs, out_proj, dropout=mod.dropout, batch_first=mod.batch_first,
            bias_k=mod.bias_k, bias_v=mod.bias_v, add_zero_attn=mod.add_zero_attn,
        )
        new.train(mod.training)
        return new.to(device=out.weight.device)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}, dropout={self.dropout}"

    def merge_masks(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, query: Tensor) -> tuple[Tensor | None, int | None]:
        """As ``nn.MultiheadAttention.merge_masks`` (for callers that ask; the forward never needs it)."""
        return nn.MultiheadAttention.merge_masks(self, attn_mask, key_padding_mask, query)  # type: ignore[arg-type]

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention output (and weights when ``need_weights``), as ``nn.MultiheadAttention.forward``."""
        refuse_trace(self, query)
        if query.dim() not in (2, 3):
            raise ValueError(f"query must be 2-D (unbatched) or 3-D, got shape {tuple(query.shape)}")
        is_batched = query.dim() == 3
        if self.batch_first and is_batched:
            # contiguous: torch's linear takes another kernel for a strided 3-D input depending on autograd
            query, key, value = (t.transpose(1, 0).contiguous() for t in (query, key, value))
        if not is_batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt_len, bsz, _ = query.shape
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask, mask_name="key_padding_mask", other_type=F._none_or_dtype(attn_mask),
            other_name="attn_mask", target_type=query.dtype,
        )
        if is_causal and attn_mask is None:
            raise ValueError("is_causal needs attn_mask (a causal mask, e.g. nn.Transformer.generate_square_subsequent_mask)")
        dropout_p = self.dropout if self.training else 0.0
        # scaled_dot_product_attention picks another CPU kernel under no_grad (outputs differ by ~2e-7), so the
        # explicit product runs whenever it can; SDPA only for dropout without weights (torch's random draws)
        sdpa = dropout_p > 0.0 and not need_weights
        if is_causal and key_padding_mask is None and sdpa:
            attn_mask = None  # scaled_dot_product_attention applies the causal mask itself
        else:
            attn_mask = F._canonical_mask(
                mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=query.dtype, check_other=False
            )
            if key_padding_mask is not None:
                is_causal = False
        h, hd = self.num_heads, self.head_dim
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if attn_mask is not None and attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        q = q.view(tgt_len, bsz * h, hd).transpose(0, 1)
        k = k.view(k.shape[0], bsz * h, hd).transpose(0, 1)
        v = v.view(v.shape[0], bsz * h, hd).transpose(0, 1)
        if self.add_zero_attn:
            zeros = torch.zeros((bsz * h, 1, hd), dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        src_len = k.size(1)
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, h, -1, -1).reshape(bsz * h, 1, src_len)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
        weights = None
        if not sdpa:
            q_scaled = q * math.sqrt(1.0 / float(hd))
            if attn_mask is not None:
                w = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
            else:
                w = torch.bmm(q_scaled, k.transpose(-2, -1))
            w = F.softmax(w, dim=-1)
            if dropout_p > 0.0:
                w = F.dropout(w, p=dropout_p)
            out = torch.bmm(w, v).transpose(0, 1).reshape(tgt_len * bsz, self.embed_dim)
            if need_weights:
                weights = w.view(bsz, h, tgt_len, src_len)
                if average_attn_weights:
                    weights = weights.mean(dim=1)
        else:
            if attn_mask is not None:
                if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
                    attn_mask = attn_mask.unsqueeze(0)
                else:
                    attn_mask = attn_mask.view(bsz, h, -1, src_len)
            out = F.scaled_dot_product_attention(
                q.view(bsz, h, tgt_len, hd), k.view(bsz, h, src_len, hd), v.view(bsz, h, src_len, hd),
                attn_mask, dropout_p, is_causal,
            )
            out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, self.embed_dim)
        out = self.out_proj(out).view(tgt_len, bsz, -1)
        if not is_batched:
            out = out.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        elif self.batch_first:
            out = out.transpose(1, 0)
        return out, weights


def shell_of(mod: nn.Module, cls: type) -> nn.Module:
    """A ``cls`` instance with ``mod``'s attributes and the *same* child modules (a class swap, not a copy)."""
    new = cls.__new__(cls)
    new.__dict__.update(mod.__dict__)
    # own containers: later child swaps on the shell must not reach back into ``mod``
    for k in ("_modules", "_parameters", "_buffers"):
        new.__dict__[k] = dict(mod.__dict__[k])
    return new


class LowbitTransformerEncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` that always runs its modules (never the fused kernel)."""

    lowbit_shell = True

    def forward(
        self, src: Tensor, src_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """The layer's unfused forward (the torch code path taken in training)."""
        refuse_trace(self, src)
        src_key_padding_mask = F._canonical_mask(
            mask=src_key_padding_mask, mask_name="src_key_padding_mask", other_type=F._none_or_dtype(src_mask),
            other_name="src_mask", target_type=src.dtype,
        )
        src_mask = F._canonical_mask(
            mask=src_mask, mask_name="src_mask", other_type=None, other_name="", target_type=src.dtype, check_other=False
        )
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x


class LowbitTransformerDecoderLayer(nn.TransformerDecoderLayer):
    """``nn.TransformerDecoderLayer`` whose attention modules lowbit may replace (it has no fused path itself)."""

    lowbit_shell = True

    def forward(self, tgt: Tensor, memory: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """As ``nn.TransformerDecoderLayer.forward``."""
        refuse_trace(self, tgt)
        return super().forward(tgt, memory, *args, **kwargs)


class LowbitTransformerEncoder(nn.TransformerEncoder):
    """``nn.TransformerEncoder`` that never converts to nested tensors (its layers run unfused)."""

    lowbit_shell = True

    def forward(self, src: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """As ``nn.TransformerEncoder.forward``, without the nested-tensor fast path."""
        refuse_trace(self, src)
        self.use_nested_tensor = False
        return super().forward(src, *args, **kwargs)


def mha_handler(mod: nn.Module, wspec: str | None, aspec: str | None) -> nn.Module:
    """Handler: ``nn.MultiheadAttention`` -> :class:`QuantMultiheadAttention` (q/k/v/out projections quantized)."""
    from .handlers import act_quantizer, is_pact_spec, weight_quantizer  # the registry imports this module

    aspec = None if is_pact_spec(aspec) else aspec
    if wspec is None and aspec is None:
        return mod
    if type(mod) is not nn.MultiheadAttention:
        raise ValueError(f"{type(mod).__name__} subclasses nn.MultiheadAttention; lowbit cannot tell what its forward reads")
    return QuantMultiheadAttention.from_float(
        mod,  # type: ignore[arg-type]
        (lambda w: weight_quantizer(wspec, w)) if wspec else None,
        (lambda: act_quantizer(aspec)) if aspec else None,
    )


_SHELLS: dict[type, type] = {
    nn.TransformerEncoderLayer: LowbitTransformerEncoderLayer,
    nn.TransformerDecoderLayer: LowbitTransformerDecoderLayer,
    nn.TransformerEncoder: LowbitTransformerEncoder,
}


def transformer_handler(mod: nn.Module, wspec: str | None, aspec: str | None) -> nn.Module:
    """Handler: torch's transformer layers -> lowbit's unfused classes, the same children (always, whatever the specs:
    a child quantized by a narrower pattern must not be bypassed by the fused kernel)."""
    if isinstance(mod, tuple(_SHELLS.values())):
        return mod
    cls = _SHELLS.get(type(mod))
    if cls is None:
        warnings.warn(
            f"{type(mod).__name__} subclasses a torch transformer layer with its own forward: lowbit keeps it, "
            "and cannot rule out that its forward takes torch's fused path (which bypasses quantized layers)",
            stacklevel=4,
        )
        return mod
    return shell_of(mod, cls)


def out_proj_handler(mod: nn.Module, wspec: str | None, aspec: str | None) -> nn.Module:
    """Handler: a MultiheadAttention's own ``out_proj`` stays float (its parent reads the weight, never calls it)."""
    if wspec is not None or aspec is not None:
        warnings.warn(
            "an nn.MultiheadAttention's out_proj is read by its parent, never called: it is quantized with its "
            "MultiheadAttention (quantize that module), and on its own stays float",
            stacklevel=4,
        )
    return mod

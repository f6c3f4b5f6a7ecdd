"""The Mamba-2 mixer every hybrid family shares: its tensors (with segments) and its parameters.

Checked against transformers' own mixers (`NemotronHMamba2Mixer`, `BambaMixer`,
`GraniteMoeHybridMambaLayer`): the same fused layout and the same gated norm in each.

    in_proj.weight   [z (H·P) | x (H·P) | B (G·N) | C (G·N) | dt (H)]  x  hidden
                     (`projected_states.split([intermediate, conv_dim, num_heads])`, conv_dim = x | B | C)
    conv1d.weight    [x (H·P) | B (G·N) | C (G·N)]  x 1 x K       depthwise (groups = conv_dim)
    dt_bias, A_log, D                                  [H]
    norm.weight      [H·P]   gated RMSNorm over n_groups groups of H·P / G channels
    out_proj.weight  hidden x [H·P]

Heads are cut the same number in each group (the groups of B/C and of the gated norm stay whole).

Falcon-H1 differs in two switches, passed by its family: the gated norm is optional (`mamba_rms_norm`;
without it the scan output is multiplied by silu(z) and there is no `norm.weight`), and `out_proj`'s
bias has its own key (`projectors_bias`, not `mamba_proj_bias`).
"""

from __future__ import annotations

from minitron.models.tensors import FIXED, HIDDEN, MAMBA_HEADS, MAMBA_INNER, TensorSpec, fixed, one


def mamba2_config_fields(cfg: dict, get) -> dict:
    """`Architecture` fields of the mixer from the `mamba_*` config keys (and transformers' defaults) that
    Bamba, Granite 4.0-H and Falcon-H1 share; `get` is `config_getter(cfg)`."""
    return {"n_groups": int(get("mamba_n_groups", 1)), "ssm_state_size": int(get("mamba_d_state", 256)),
            "conv_kernel": int(get("mamba_d_conv", 4)), "use_conv_bias": bool(cfg.get("mamba_conv_bias", True)),
            "use_bias": bool(cfg.get("mamba_proj_bias", False))}


def mamba2_specs(a, m: str, i: int, *, norm: bool = True, out_bias: bool | None = None) -> list[TensorSpec]:
    """The tensors of one Mamba-2 mixer whose parameters live under `m` (e.g. `layers.3.mixer.`).

    `norm`: the mixer has its gated RMSNorm weight; `out_bias`: out_proj has a bias (default: `a.use_bias`)."""
    out_bias = a.use_bias if out_bias is None else out_bias
    h = one(HIDDEN, a.hidden_size)
    inner, heads = a.mamba_intermediate, a.mamba_num_heads
    gn = a.n_groups * a.ssm_state_size
    in_rows = ((MAMBA_INNER, inner), (MAMBA_INNER, inner), (FIXED, gn), (FIXED, gn), (MAMBA_HEADS, heads))
    conv_ch = ((MAMBA_INNER, inner), (FIXED, gn), (FIXED, gn))
    specs = [
        TensorSpec(m + "in_proj.weight", i, (in_rows, h)),
        TensorSpec(m + "conv1d.weight", i, (conv_ch, fixed(1), fixed(a.conv_kernel))),
        TensorSpec(m + "dt_bias", i, (one(MAMBA_HEADS, heads),)),
        TensorSpec(m + "A_log", i, (one(MAMBA_HEADS, heads),)),
        TensorSpec(m + "D", i, (one(MAMBA_HEADS, heads),)),
        TensorSpec(m + "out_proj.weight", i, (h, one(MAMBA_INNER, inner))),
    ]
    if norm:
        specs.append(TensorSpec(m + "norm.weight", i, (one(MAMBA_INNER, inner),)))
    if a.use_conv_bias:
        specs.append(TensorSpec(m + "conv1d.bias", i, (conv_ch,)))
    if a.use_bias:
        specs.append(TensorSpec(m + "in_proj.bias", i, (in_rows,)))
    if out_bias:
        specs.append(TensorSpec(m + "out_proj.bias", i, (h,)))
    return specs


def mamba2_params(a, *, norm: bool = True, out_bias: bool | None = None) -> int:
    """Parameters of one Mamba-2 mixer (its block's norms not included); switches as in `mamba2_specs`."""
    out_bias = a.use_bias if out_bias is None else out_bias
    h, i, nh = a.hidden_size, a.mamba_intermediate, a.mamba_num_heads
    in_proj = h * a.mamba_in_proj_dim + (a.mamba_in_proj_dim if a.use_bias else 0)
    conv = a.mamba_conv_dim * a.conv_kernel + (a.mamba_conv_dim if a.use_conv_bias else 0)
    out_proj = i * h + (h if out_bias else 0)
    return in_proj + conv + 3 * nh + (i if norm else 0) + out_proj  # 3·nh: dt_bias, A_log, D; i: gated norm

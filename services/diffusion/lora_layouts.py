"""LoRA files in the two layouts people exchange, read, told apart and converted both ways.

- kohya / AUTOMATIC1111 (what kohya's sd-scripts write and A1111, ComfyUI and Forge read):
  `lora_unet_<module path, dots as underscores>.lora_down.weight`, `.lora_up.weight` and a
  scalar `.alpha` (the update is up @ down x alpha / rank); text encoders under `lora_te_`
  (SD 1.x/2.x) or `lora_te1_` / `lora_te2_` (SDXL's two), their paths starting `text_model_`.
  SDXL files from kohya's scripts name UNet modules the original (SGM) way (`input_blocks_4_1_`):
  read and told apart here, but not converted (diffusers' own loader maps those).
- diffusers / PEFT: `<part>.<module path>.lora_A.weight` / `.lora_B.weight` (PEFT) or the older
  `.lora.down.weight` / `.lora.up.weight` (`.lora_linear_layer.` for text encoders), parts
  `unet`, `text_encoder`, `text_encoder_2`; no alpha (the update is B @ A at scale 1, as
  diffusers loads a file without adapter metadata). Text encoder paths with or without
  transformers' `text_model.` (CLIPTextModel in transformers 5 has none, CLIPTextModelWithProjection
  has it); written with it, which diffusers' loader strips where the model lacks it.

Every layout becomes one neutral form (LoraWeights: per (part, module) its down, up and alpha),
from which the base architecture is read off the tensor shapes (Signature) and either layout is
written. diffusers -> kohya -> diffusers gives back the same tensors for the same modules, and
kohya -> diffusers -> kohya the same keys and tensors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

KOHYA = "kohya"
DIFFUSERS = "diffusers"
PARTS = ("unet", "text_encoder", "text_encoder_2")
#: a LoRA file read whole into memory: far above any real LoRA (SDXL rank 128 is ~900 MB)
MAX_LORA_BYTES = 2 * 1024**3
#: known architectures by (text encoder widths, UNet cross-attention width)
KNOWN = {"sd1": ((768,), 768), "sd2": ((1024,), 1024), "sdxl": ((768, 1280), 2048)}

_DIFFUSERS_KEY = re.compile(
    r"^(unet|text_encoder|text_encoder_2)\.(.+)\."
    r"(lora_A|lora_B|lora\.down|lora\.up|lora_linear_layer\.down|lora_linear_layer\.up)\.weight$"
)
_KOHYA_KEY = re.compile(
    r"^lora_(unet|te|te1|te2)_([^.]+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_KOHYA_PARTS = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder",
                "te2": "text_encoder_2"}
_DOWN = {"lora_A", "lora.down", "lora_linear_layer.down", "lora_down.weight"}
#: tensor names of kohya-style files that are not plain LoRA (LyCORIS LoHa / LoKr / full diff,
#: LoCon's mid factor, DoRA)
_OTHER_NETWORK = re.compile(r"^lora_[^.]+\.(hada_|lokr_|dora_scale|diff|lora_mid)")
#: diffusers module path pieces that hold underscores (kohya's flattening joins all with "_")
_UNET_WORDS = sorted({
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "proj_in", "proj_out",
    "to_q", "to_k", "to_v", "to_out", "conv_shortcut", "time_emb_proj", "time_embedding",
    "linear_1", "linear_2", "conv_in", "conv_out", "add_embedding", "conv_norm_out",
    "add_k_proj", "add_v_proj", "time_proj",
}, key=len, reverse=True)
_TEXT_WORDS = sorted({"self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "text_projection"},
                     key=len, reverse=True)


class LoraFormatError(ValueError):
    """The file is no LoRA this module reads (the message says what it is instead)."""


@dataclass
class LoraModule:
    down: torch.Tensor  # rank x in (or rank x in x kh x kw for convolutions)
    up: torch.Tensor  # out x rank
    alpha: float | None = None  # None: alpha = rank (scale 1)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclass
class LoraWeights:
    """A LoRA in neutral form: (part, module) -> its factors. Module names are dotted diffusers
    paths (text encoder paths without transformers' `text_model.` prefix), or for SGM-named
    kohya UNet modules the kohya name as it was (`sgm_unet`)."""

    layout: str
    modules: dict[tuple[str, str], LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)
    sgm_unet: bool = False

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p in PARTS if any(part == p for part, _ in self.modules))

    @property
    def rank(self) -> int:
        return max(m.rank for m in self.modules.values())


@dataclass(frozen=True)
class Signature:
    """What the tensor shapes say about the model a LoRA was made for."""

    #: input width of each text encoder the LoRA touches, by part
    text_widths: Mapping[str, int]
    #: width of the UNet's cross-attention input (the text features), when attn2.to_k/to_v
    #: are among its modules
    cross_attention_dim: int | None
    #: channels of the UNet's attention blocks: (diffusers module prefix, width), e.g.
    #: ("down_blocks.1", 640), from the self-attention projections
    block_widths: tuple[tuple[str, int], ...]
    sgm_unet: bool

    def architecture(self) -> str:
        """sd1, sd2 or sdxl when the shapes say so; "" when they match none of them."""
        if "text_encoder_2" in self.text_widths or self.sgm_unet:
            return "sdxl"
        for name, (widths, cross) in KNOWN.items():
            if self.cross_attention_dim is not None and self.cross_attention_dim != cross:
                continue
            te = self.text_widths.get("text_encoder")
            if te is not None and te != widths[0]:
                continue
            if self.cross_attention_dim is None and te is None:
                continue
            return name
        return ""


# ---------------------------------------------------------------- reading


def read_lora(path: str | Path) -> LoraWeights:
    """A LoRA .safetensors file in either layout (LoraFormatError when it is neither)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if p.stat().st_size > MAX_LORA_BYTES:
        raise LoraFormatError(f"{p.stat().st_size} bytes; a LoRA file is at most "
                              f"{MAX_LORA_BYTES}")
    try:
        with safe_open(str(p), "pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, ValueError) as err:
        raise LoraFormatError(f"not a readable .safetensors file: {err}") from err
    return parse(tensors, metadata)


def layout_of(keys: Iterable[str]) -> str:
    """KOHYA or DIFFUSERS by the keys (LoraFormatError for anything else)."""
    keys = list(keys)
    if not keys:
        raise LoraFormatError("the file holds no tensors")
    other = next((k for k in keys if _OTHER_NETWORK.match(k)), None)
    if other is not None:
        raise LoraFormatError(f"{other!r} belongs to a LyCORIS/DoRA network, not a plain LoRA")
    if all(_KOHYA_KEY.match(k) for k in keys):
        return KOHYA
    if all(_DIFFUSERS_KEY.match(k) for k in keys):
        return DIFFUSERS
    stray = next(k for k in keys if not (_KOHYA_KEY.match(k) or _DIFFUSERS_KEY.match(k)))
    raise LoraFormatError(
        f"{stray!r} is not a LoRA key of the kohya/A1111 layout (lora_unet_*, lora_te*_* with "
        ".lora_down/.lora_up/.alpha) or the diffusers/PEFT one (unet./text_encoder.* with "
        ".lora_A/.lora_B)")


def parse(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
          ) -> LoraWeights:
    """A state dict in either layout as LoraWeights."""
    layout = layout_of(tensors)
    pieces: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    sgm = False
    for key, value in tensors.items():
        if layout == KOHYA:
            m = _KOHYA_KEY.match(key)
            assert m is not None
            part = _KOHYA_PARTS[m.group(1)]
            name, kind = m.group(2), m.group(3)
            if part == "unet" and _is_sgm(name):
                sgm = True
            else:
                name = kohya_to_module(part, name)
            slot = "alpha" if kind == "alpha" else "down" if kind in _DOWN else "up"
        else:
            m = _DIFFUSERS_KEY.match(key)
            assert m is not None
            part, name = m.group(1), m.group(2)
            if part != "unet":
                name = name.removeprefix("text_model.")
            slot = "down" if m.group(3) in _DOWN else "up"
        pieces.setdefault((part, name), {})[slot] = value
    modules = {}
    for (part, name), got in pieces.items():
        if "down" not in got or "up" not in got:
            missing = "down" if "down" not in got else "up"
            raise LoraFormatError(f"{part} module {name!r} has no {missing} weight")
        down, up = got["down"], got["up"]
        if down.shape[0] != up.shape[1]:
            raise LoraFormatError(f"{part} module {name!r}: down has rank {down.shape[0]}, "
                                  f"up {up.shape[1]}")
        alpha = got.get("alpha")
        modules[(part, name)] = LoraModule(down, up, None if alpha is None else float(alpha))
    return LoraWeights(layout, modules, dict(metadata or {}), sgm)


def _is_sgm(kohya_name: str) -> bool:
    return kohya_name.startswith(("input_blocks_", "middle_block_", "output_blocks_"))


def _split(flat: str, words: list[str]) -> str:
    """A kohya-flattened module path back to dots: known underscore words kept whole, every
    other underscore a dot."""
    out, i = [], 0
    while i < len(flat):
        word = next((w for w in words if flat.startswith(w, i)
                     and (i + len(w) == len(flat) or flat[i + len(w)] == "_")), None)
        if word is None:
            end = flat.find("_", i)
            word = flat[i:] if end < 0 else flat[i:end]
        out.append(word)
        i += len(word) + 1
    return ".".join(out)


def kohya_to_module(part: str, kohya_name: str) -> str:
    """`down_blocks_1_attentions_0_proj_in` -> `down_blocks.1.attentions.0.proj_in`;
    a text encoder's `text_model_encoder_layers_0_mlp_fc1` -> `encoder.layers.0.mlp.fc1`."""
    if part == "unet":
        return _split(kohya_name, _UNET_WORDS)
    return _split(kohya_name.removeprefix("text_model_"), _TEXT_WORDS)


def module_to_kohya(part: str, module: str, sdxl: bool) -> str:
    """The kohya key stem of a diffusers module path (see kohya_to_module)."""
    if part == "unet":
        return "lora_unet_" + module.replace(".", "_")
    prefix = {"text_encoder": "lora_te1_" if sdxl else "lora_te_",
              "text_encoder_2": "lora_te2_"}[part]
    return prefix + "text_model_" + module.removeprefix("text_model.").replace(".", "_")


# ---------------------------------------------------------------- writing


def to_kohya(weights: LoraWeights, *, sdxl: bool | None = None) -> dict[str, torch.Tensor]:
    """The kohya/A1111 state dict: same factors, alpha written (rank where it was implicit,
    which is the scale diffusers gives a file without one). `sdxl` picks `lora_te1_` over
    `lora_te_` (default: when the LoRA touches a second text encoder)."""
    if weights.sgm_unet:
        raise LoraFormatError("an SGM-named SDXL LoRA is already in the kohya layout")
    if sdxl is None:
        sdxl = "text_encoder_2" in weights.parts
    out: dict[str, torch.Tensor] = {}
    for (part, module), m in weights.modules.items():
        stem = module_to_kohya(part, module, sdxl)
        out[f"{stem}.lora_down.weight"] = m.down.contiguous()
        out[f"{stem}.lora_up.weight"] = m.up.contiguous()
        alpha = float(m.rank) if m.alpha is None else m.alpha
        out[f"{stem}.alpha"] = torch.tensor(alpha, dtype=m.down.dtype)
    return out


def to_diffusers(weights: LoraWeights) -> dict[str, torch.Tensor]:
    """The diffusers/PEFT state dict (`<part>.<module>.lora_A/lora_B.weight`, text encoder
    modules under `text_model.`); an alpha other than the rank is folded into lora_B, since the
    layout has no place for it."""
    if weights.sgm_unet:
        raise LoraFormatError("SGM-named UNet modules (input_blocks_*) are not converted here")
    out: dict[str, torch.Tensor] = {}
    for (part, module), m in weights.modules.items():
        up = m.up if m.alpha is None or m.alpha == m.rank else (m.up * m.scale).to(m.up.dtype)
        path = module if part == "unet" else f"text_model.{module}"
        out[f"{part}.{path}.lora_A.weight"] = m.down.contiguous()
        out[f"{part}.{path}.lora_B.weight"] = up.contiguous()
    return out


def write_kohya(diffusers_file: str | Path, out: str | Path, *, sdxl: bool | None = None,
                metadata: Mapping[str, str] | None = None) -> Path:
    """Write the kohya/A1111 layout of a diffusers LoRA file (the trainer's export)."""
    from safetensors.torch import save_file

    weights = read_lora(diffusers_file)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", **(metadata or {})}
    save_file(to_kohya(weights, sdxl=sdxl), str(out), metadata=meta)
    return out


# ---------------------------------------------------------------- what it was made for


def signature(weights: LoraWeights) -> Signature:
    text_widths: dict[str, int] = {}
    cross = None
    blocks: dict[str, int] = {}
    for (part, module), m in weights.modules.items():
        width = int(m.down.shape[1])
        if part != "unet":
            if module.endswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                text_widths[part] = width
            continue
        if weights.sgm_unet:
            if module.endswith(("attn2_to_k", "attn2_to_v")):
                cross = width
            continue
        if module.endswith(("attn2.to_k", "attn2.to_v")):
            cross = width
        hit = re.match(r"^((?:down_blocks|up_blocks)\.\d+|mid_block)\..*\.attn1\.to_[qkv]$",
                       module)
        if hit:
            blocks[hit.group(1)] = width
    return Signature(text_widths, cross, tuple(sorted(blocks.items())), weights.sgm_unet)


def base_signature(unet_config: Mapping[str, object],
                   text_widths: Mapping[str, int]) -> Signature:
    """The Signature a model's own LoRAs would have, from its configs."""
    channels = [int(c) for c in unet_config.get("block_out_channels", ())]  # type: ignore[attr-defined]
    blocks = {f"down_blocks.{i}": c for i, c in enumerate(channels)}
    blocks.update({f"up_blocks.{i}": c for i, c in enumerate(reversed(channels))})
    if channels:
        blocks["mid_block"] = channels[-1]
    cross = unet_config.get("cross_attention_dim")
    return Signature(dict(text_widths), int(cross) if isinstance(cross, int) else None,
                     tuple(sorted(blocks.items())),
                     unet_config.get("addition_embed_type") == "text_time")


def mismatch(lora: Signature, base: Signature) -> str:
    """Why a LoRA cannot apply to a model ("" when it can, as far as shapes tell)."""
    if lora.sgm_unet and not base.sgm_unet:
        return "the LoRA is for SDXL (SGM-named UNet modules), the model is not"
    for part, width in lora.text_widths.items():
        have = base.text_widths.get(part)
        if have is None:
            return f"the LoRA adapts {part}, which the model lacks"
        if have != width:
            return f"the LoRA's {part} layers take {width} features, the model's {have}"
    if (lora.cross_attention_dim is not None and base.cross_attention_dim is not None
            and lora.cross_attention_dim != base.cross_attention_dim):
        return (f"the LoRA's cross-attention takes {lora.cross_attention_dim} features, the "
                f"model's {base.cross_attention_dim}")
    widths = dict(base.block_widths)
    for block, width in lora.block_widths:
        if block not in widths:
            return f"the LoRA adapts {block}, which the model's UNet lacks"
        if widths[block] != width:
            return f"the LoRA's {block} layers take {width} channels, the model's {widths[block]}"
    return ""


def trigger_words(metadata: Mapping[str, str], limit: int = 3) -> str:
    """Trigger words a kohya file names: ModelSpec's `modelspec.trigger_phrase`, else the most
    frequent tags of its training captions (`ss_tag_frequency`); "" when it names none."""
    phrase = metadata.get("modelspec.trigger_phrase", "").strip()
    if phrase:
        return phrase
    try:
        freq = json.loads(metadata.get("ss_tag_frequency", "") or "{}")
    except ValueError:
        return ""
    counts: dict[str, int] = {}
    if isinstance(freq, dict):
        for tags in freq.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(n, int) and str(tag).strip():
                        counts[str(tag).strip()] = counts.get(str(tag).strip(), 0) + n
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return ", ".join(tag for tag, _ in top)

"""LyCORIS networks in the kohya/A1111 naming: LoHa, LoKr and full differences, as materialised updates.

For one layer a file holds, after its `lora_unet_...` / `lora_te_...` module name:
- LoHa: `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b` (+ `hada_t1`, `hada_t2` for Tucker convolutions).
  dW = (w1_a @ w1_b) * (w2_a @ w2_b), elementwise; with Tucker factors each product is
  einsum("i j k l, j r, i p -> p r k l", t, w_b, w_a). Scale alpha / rank, rank = w1_b.shape[0].
- LoKr: `lokr_w1` or `lokr_w1_a` @ `lokr_w1_b`; `lokr_w2` or `lokr_w2_a` @ `lokr_w2_b` (or the Tucker form
  with `lokr_t2`). dW = kron(w1, w2) (w1 gets two trailing unit dimensions when w2 is 4-d). Scale alpha / rank
  only when a factor is low-rank (rank = lokr_w2_b.shape[0], else lokr_w1_b.shape[0]), else 1.
- full: `diff` (dW itself) and optional `diff_b` (added to the bias). Scale 1.
Each dW is reshaped to the layer's weight shape. `alpha` is optional (scale 1 without it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha")
FULL = ("diff", "diff_b", "alpha")  # alpha is read by no loader for full networks: accepted and unused, as A1111

# kohya-style key suffixes of networks that are recognised but not read (the first match names the format)
REFUSED = {"dora_scale": "DoRA (dora_scale)", "on_input": "LyCORIS IA3", "weight": "LyCORIS IA3",
           "a1.weight": "LyCORIS GLoRA", "a2.weight": "LyCORIS GLoRA", "b1.weight": "LyCORIS GLoRA",
           "b2.weight": "LyCORIS GLoRA", "w_norm": "LyCORIS norm", "b_norm": "LyCORIS norm",
           "oft_blocks": "LyCORIS OFT/BOFT", "oft_diag": "LyCORIS OFT/BOFT",
           "lora_mid.weight": "LoCon with Tucker (lora_mid)"}


def kind_of(suffixes) -> str | None:
    """'LoHa', 'LoKr', 'full' or None from the suffixes a module's keys carry."""
    if any(s.startswith("hada_") for s in suffixes):
        return "LoHa"
    if any(s.startswith("lokr_") for s in suffixes):
        return "LoKr"
    if "diff" in suffixes or "diff_b" in suffixes:
        return "full"
    return None


def allowed(kind: str) -> tuple:
    return {"LoHa": LOHA, "LoKr": LOKR, "full": FULL}[kind]


def missing(kind: str, tensors: dict) -> list[str]:
    """The tensors a module of this kind still needs (empty when complete)."""
    if kind == "LoHa":
        return [k for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b") if k not in tensors]
    if kind == "LoKr":
        need = []
        for i in ("1", "2"):
            if f"lokr_w{i}" not in tensors:
                need += [k for k in (f"lokr_w{i}_a", f"lokr_w{i}_b") if k not in tensors]
        return need
    return [] if "diff" in tensors else ["diff"]


@dataclass
class LycorisWeights:
    """The factors one LyCORIS layer holds in a file ({suffix: tensor}); `delta()` builds the update."""
    kind: str  # "LoHa" | "LoKr" | "full"
    tensors: dict
    alpha: float | None = None

    @property
    def rank(self) -> int | None:
        t = self.tensors
        if self.kind == "LoHa":
            return t["hada_w1_b"].shape[0]
        if self.kind == "LoKr":
            for i in ("2", "1"):  # w2's rank when both factors are low-rank
                if f"lokr_w{i}" not in t and f"lokr_w{i}_b" in t:
                    return t[f"lokr_w{i}_b"].shape[0]
        return None

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None or self.rank is None else self.alpha / self.rank

    def delta(self, device=None) -> torch.Tensor:
        """dW in float32 times the scale, not yet reshaped to the layer (LoHa / LoKr give it flattened)."""
        t = {k: v.to(device=device, dtype=torch.float32) for k, v in self.tensors.items() if k != "alpha"}
        if self.kind == "LoHa":
            d = _product(t, "hada_w1_a", "hada_w1_b", "hada_t1").flatten(1) * \
                _product(t, "hada_w2_a", "hada_w2_b", "hada_t2").flatten(1)
        elif self.kind == "LoKr":
            w1 = t["lokr_w1"] if "lokr_w1" in t else _product(t, "lokr_w1_a", "lokr_w1_b", None)
            w2 = t["lokr_w2"] if "lokr_w2" in t else _product(t, "lokr_w2_a", "lokr_w2_b", "lokr_t2")
            if w2.dim() == 4:
                w1 = w1.reshape(*w1.shape[:2], 1, 1)
            d = torch.kron(w1, w2)
        else:
            d = t["diff"]
        return d * self.scale

    def bias(self) -> torch.Tensor | None:
        return self.tensors.get("diff_b")


def _product(t: dict, a: str, b: str, tucker: str | None) -> torch.Tensor:
    """a @ b (both flattened to matrices), or the Tucker form when the core tensor is present."""
    if tucker is not None and tucker in t:  # core (r, r, kh, kw), a (r, out), b (r, in) -> (out, in, kh, kw)
        return torch.einsum("i j k l, j r, i p -> p r k l", t[tucker], t[b].flatten(1), t[a].flatten(1))
    return t[a].flatten(1) @ t[b].flatten(1)


@dataclass
class DeltaWeights:
    """A materialised update for one layer: dW (the layer's weight shape, scale folded in) and a bias delta."""
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    kind: str = "full"
    scale = 1.0

    def delta(self) -> torch.Tensor:
        return self.weight.float()

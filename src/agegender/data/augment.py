"""Batched image augmentation on the model's device.

The data loader hands over whole uint8 batches ``(B, 3, H, W)`` straight from the image
cache; everything else happens here, on the device the model runs on, as a few
whole-batch tensor passes with per-sample random parameters:

1. geometry — random_crop, resized_crop, hflip and rotation are fused into ONE affine
   transform per sample and applied by a single ``F.grid_sample`` (bilinear): one
   resampling pass yields the ``input_size`` crop however many geometric ops are listed;
2. colour — color_jitter (brightness, contrast, saturation), grayscale, gaussian_noise and
   the final mean/std normalisation are all per-sample linear maps of the pixel and its
   luma, so they are folded into ``z = A*x + B*luma(x) + C`` (two fused multiply-adds),
   plus noise, then one clamp to the valid [0, 1] range (expressed in normalised units);
3. downscale — the samples drawn are shrunk to a random fraction of the side (area
   average) and enlarged back (bilinear), one ``F.interpolate`` pair per distinct size;
4. random_erasing — a per-sample rectangle set to 0 (the mean colour), as torchvision.

Random parameters are drawn per sample with a NumPy generator (cheap, device-independent,
reproducible from a seed); only the noise image is drawn with torch on the device.
torchvision.transforms.v2 draws one set of parameters per call (the whole batch would get
the same crop), which is why these ops are written with torch here.

Differences from torchvision's per-image ops, by design: colour jitter applies brightness,
contrast then saturation in a fixed order and clamps once at the end (not after each op);
rotation corners are filled by ``augment.padding_mode`` (reflection by default).

Evaluation (:meth:`Preprocess.eval`) takes the centre ``input_size`` window of the cached
image (Levi & Hassner: the 227 centre of 256), or resizes when the cache is smaller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from agegender.config import AugmentConfig

#: ITU-R 601 luma weights (as torchvision's rgb_to_grayscale).
LUMA = (0.299, 0.587, 0.114)
GEOMETRIC_OPS = frozenset({"random_crop", "resized_crop", "hflip", "rotation"})

Rng = np.random.Generator | int | None


def _rng(rng: Rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:  # follow torch's global seed (L.seed_everything)
        rng = int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng(rng)


class Preprocess:
    """Turns cached uint8 batches into normalised float model input (train and eval).

    ``size`` is the cached image side, ``input_size`` the network input side, ``recipe``
    an :class:`~agegender.config.AugmentConfig` (None: no augmentation). :meth:`train`
    takes a seed or ``numpy.random.Generator`` for reproducible augmentation;
    :meth:`eval` is deterministic. Both return float32 ``(B, 3, input_size, input_size)``.
    """

    def __init__(
        self,
        *,
        size: int,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        recipe: AugmentConfig | None = None,
        channels_last: bool = False,
    ) -> None:
        self.size = int(size)
        self.input_size = int(input_size)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.recipe = recipe if recipe is not None else AugmentConfig(recipe=[])
        self.channels_last = channels_last
        self._ops = {op.op: op for op in self.recipe.recipe}
        self._consts: dict[torch.device, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ helpers
    def _const(self, device: torch.device) -> dict[str, torch.Tensor]:
        c = self._consts.get(device)
        if c is None:
            scale = 1.0 / (255.0 * self.std)
            c = self._consts[device] = {
                "scale": torch.tensor(scale, dtype=torch.float32, device=device).view(1, 3, 1, 1),
                "shift": torch.tensor(
                    -self.mean / self.std, dtype=torch.float32, device=device
                ).view(1, 3, 1, 1),
                "lo": torch.tensor(-self.mean / self.std, dtype=torch.float32, device=device).view(
                    1, 3, 1, 1
                ),
                "hi": torch.tensor(
                    (1 - self.mean) / self.std, dtype=torch.float32, device=device
                ).view(1, 3, 1, 1),
                "luma": torch.tensor(LUMA, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            }
        return c

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    @staticmethod
    def _check(images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got {tuple(images.shape)}")

    # ------------------------------------------------------------------ eval
    def eval(self, images: torch.Tensor) -> torch.Tensor:
        """Centre ``input_size`` crop (or a resize when the cache is smaller), normalised."""
        self._check(images)
        c = self._const(images.device)
        h, w = images.shape[-2:]
        s = self.input_size
        if h >= s and w >= s:
            top, left = (h - s) // 2, (w - s) // 2
            x = images[:, :, top : top + s, left : left + s].float()
        else:
            x = F.interpolate(images.float(), size=(s, s), mode="bilinear", align_corners=False)
            x = x.clamp_(0, 255)
        return self._finish(x.mul_(c["scale"]).add_(c["shift"]))

    # ------------------------------------------------------------------ train
    def geometry(self, n: int, rng: Rng = None) -> np.ndarray:
        """Per-sample affine matrices ``(n, 2, 3)``, output -> input in normalised coords."""
        rng = _rng(rng)
        base = min(1.0, self.input_size / self.size)  # the evaluation window
        w, h = np.full(n, base), np.full(n, base)
        cx, cy = np.zeros(n), np.zeros(n)
        if (op := self._ops.get("resized_crop")) is not None:
            area = rng.uniform(op.scale[0], op.scale[1], n)
            ratio = np.exp(rng.uniform(math.log(op.ratio[0]), math.log(op.ratio[1]), n))
            cw = np.minimum(np.sqrt(area * ratio), 1.0)
            ch = np.minimum(np.sqrt(area / ratio), 1.0)
            use = rng.random(n) < op.p
            w, h = np.where(use, cw, w), np.where(use, ch, h)
            cx = np.where(use, (1 - cw) * rng.uniform(-1, 1, n), cx)
            cy = np.where(use, (1 - ch) * rng.uniform(-1, 1, n), cy)
        elif (op := self._ops.get("random_crop")) is not None:
            s, size = min(self.input_size, self.size), self.size
            # whole-pixel offsets: the window's pixels are sampled exactly
            ox = rng.integers(-op.padding, size - s + op.padding, n, endpoint=True)
            oy = rng.integers(-op.padding, size - s + op.padding, n, endpoint=True)
            use = rng.random(n) < op.p
            cx = np.where(use, (2 * ox + s) / size - 1, cx)
            cy = np.where(use, (2 * oy + s) / size - 1, cy)
        flip = np.ones(n)
        if (op := self._ops.get("hflip")) is not None:
            flip = np.where(rng.random(n) < op.p, -1.0, 1.0)
        angle = np.zeros(n)
        if (op := self._ops.get("rotation")) is not None:
            angle = np.radians(rng.uniform(-op.degrees, op.degrees, n))
            angle = np.where(rng.random(n) < op.p, angle, 0.0)
        cos, sin = np.cos(angle), np.sin(angle)
        theta = np.empty((n, 2, 3), dtype=np.float32)
        theta[:, 0] = np.stack([cos * w * flip, -sin * h, cx], axis=1)
        theta[:, 1] = np.stack([sin * w * flip, cos * h, cy], axis=1)
        return theta

    def _resample(self, images: torch.Tensor, theta: np.ndarray) -> torch.Tensor:
        """One bilinear ``grid_sample`` of the uint8 batch through per-sample affines."""
        n, s, dev = images.shape[0], self.input_size, images.device
        t = torch.from_numpy(theta).to(dev)
        # affine_grid, written as two broadcast multiply-adds (several times faster on CPU)
        base = (torch.arange(s, device=dev, dtype=torch.float32) * 2 + 1) / s - 1
        xs, ys = base.view(1, 1, s), base.view(1, s, 1)
        grid = torch.empty(n, s, s, 2, device=dev)
        for k in range(2):
            a, b, c = (t[:, k, j].view(n, 1, 1) for j in range(3))
            torch.add(a * xs, b * ys + c, out=grid[..., k])
        return F.grid_sample(
            images.float(),
            grid,
            mode="bilinear",
            padding_mode=self.recipe.padding_mode,
            align_corners=False,
        )

    def _colour_params(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
        """Per-sample brightness, contrast, saturation, grayscale, noise std (or None)."""
        names = ("color_jitter", "grayscale", "gaussian_noise")
        jitter, gray, noise = (self._ops.get(k) for k in names)
        if jitter is None and gray is None and noise is None:
            return None
        ones = np.ones(n)

        def factor(amount: float, p: float) -> np.ndarray:
            if amount <= 0:
                return ones
            return np.where(rng.random(n) < p, rng.uniform(1 - amount, 1 + amount, n), 1.0)

        b = c = s = ones
        if jitter is not None:
            b = factor(jitter.brightness, jitter.p)
            c = factor(jitter.contrast, jitter.p)
            s = factor(jitter.saturation, jitter.p)
        u = np.zeros(n) if gray is None else (rng.random(n) < gray.p).astype(float)
        sigma = np.zeros(n)
        if noise is not None and noise.std > 0:
            sigma = np.where(rng.random(n) < noise.p, noise.std, 0.0)
        return {"b": b, "c": c, "s": s, "u": u, "sigma": sigma}

    def train(self, images: torch.Tensor, rng: Rng = None) -> torch.Tensor:
        """Augment a uint8 ``(B, 3, H, W)`` batch -> normalised float ``(B, 3, S, S)``.

        ``rng``: a seed or ``numpy.random.Generator``; None follows torch's global seed.
        """
        self._check(images)
        rng = _rng(rng)
        n, dev = images.shape[0], images.device
        const = self._const(dev)
        if any(name in GEOMETRIC_OPS for name in self._ops):
            x = self._resample(images, self.geometry(n, rng))  # float, 0..255
        else:
            x = self.eval(images).sub_(const["shift"]).div_(const["scale"])  # back to 0..255
        x = self._downscale(x, rng)
        params = self._colour_params(n, rng)
        if params is None:
            z = x.mul_(const["scale"]).add_(const["shift"])
        else:
            z = self._colour(x, params, rng, const)
        z = self._erase(z, rng)
        return self._finish(z)

    def _colour(
        self,
        x: torch.Tensor,
        p: dict[str, np.ndarray],
        rng: np.random.Generator,
        const: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Jitter + grayscale + noise + normalise as ``z = A*x + B*luma + C``, clamped.

        With luma g and its per-image mean m (x in [0, 1]): brightness b, contrast c,
        saturation s give ``y = cbs*x + cb(1-s)*g + b*m*(1-c)``; grayscale with weight u
        gives ``(1-u)*y + u*luma(y)``, and ``luma(y) = cb*g + b*m*(1-c)``.
        """
        n, dev = x.shape[0], x.device

        def col(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a.astype(np.float32)).to(dev).view(n, 1, 1, 1)

        luma = (x * const["luma"]).sum(dim=1, keepdim=True)  # (n, 1, H, W), 0..255
        b, c, s, u = p["b"], p["c"], p["s"], p["u"]
        px = (1 - u) * c * b * s
        pg = (1 - u) * c * b * (1 - s) + u * c * b
        mean_luma = luma.mean(dim=(1, 2, 3)).view(n, 1, 1, 1) / 255.0
        r = col(b * (1 - c)) * mean_luma  # (n, 1, 1, 1), in [0, 1] units
        scale, shift = const["scale"], const["shift"]  # (1, 3, 1, 1): 1/(255 std), -mean/std
        a_x = col(px) * scale  # (n, 3, 1, 1)
        a_g = col(pg) * scale
        offset = r * scale * 255.0 + shift
        z = torch.addcmul(offset, x, a_x)
        z.addcmul_(luma, a_g)
        if p["sigma"].any():
            gen = torch.Generator(device=dev)
            gen.manual_seed(int(rng.integers(0, 2**62)))
            noise = torch.randn(z.shape, generator=gen, device=dev)
            z.addcmul_(noise, col(p["sigma"]) * scale * 255.0)  # sigma in [0, 1] pixel units
        return z.clamp_(min=const["lo"], max=const["hi"])

    def _downscale(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Low resolution: each sample drawn (``p``) loses detail to a random side
        ``scale * S`` (at least 4 px), area-averaged down and bilinear back up."""
        op = self._ops.get("downscale")
        if op is None:
            return x
        n, _, hh, ww = x.shape
        use = rng.random(n) < op.p
        frac = rng.uniform(op.scale[0], op.scale[1], n)
        sides = np.maximum(4, np.round(frac * hh)).astype(int)
        for side in np.unique(sides[use]):
            if side >= hh:
                continue
            idx = torch.from_numpy(np.flatnonzero(use & (sides == side))).to(x.device)
            small_size = (int(side), max(4, round(side * ww / hh)))
            small = F.interpolate(x[idx], size=small_size, mode="area")
            x[idx] = F.interpolate(small, size=(hh, ww), mode="bilinear", align_corners=False)
        return x

    def _erase(self, z: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        op = self._ops.get("random_erasing")
        if op is None:
            return z
        n, _, hh, ww = z.shape
        area = rng.uniform(op.scale[0], op.scale[1], n) * hh * ww
        ratio = np.exp(rng.uniform(math.log(op.ratio[0]), math.log(op.ratio[1]), n))
        eh = np.minimum(np.sqrt(area * ratio), hh)
        ew = np.minimum(np.sqrt(area / ratio), ww)
        top = rng.random(n) * (hh - eh)
        left = rng.random(n) * (ww - ew)
        use = rng.random(n) < op.p
        eh, ew = np.where(use, eh, 0), np.where(use, ew, 0)  # empty rectangle: no erasing
        bounds = torch.from_numpy(np.stack([top, top + eh, left, left + ew], 1).astype(np.float32))
        bounds = bounds.to(z.device)
        ys = torch.arange(hh, device=z.device, dtype=torch.float32).view(1, hh, 1) + 0.5
        xs = torch.arange(ww, device=z.device, dtype=torch.float32).view(1, 1, ww) + 0.5
        t0, t1, l0, l1 = (bounds[:, i].view(n, 1, 1) for i in range(4))
        inside = ((ys >= t0) & (ys < t1)) & ((xs >= l0) & (xs < l1))
        return z.masked_fill_(inside.unsqueeze(1), 0.0)

    __call__ = train

#!/usr/bin/env python3
"""Regenerates testdata/vae/: a tiny random mask VQ-VAE decoder and its PyTorch outputs.

The decoder follows spec §4.2 (codebook lookup to a 4x4 grid, conv1x1+ReLU, two ResBlocks, four
ConvTranspose2d(k4, s2, p1)+ReLU, conv1x1 to one channel) with the vae-oid tensor names. The
channel widths are narrower than vae-oid's (128/128/64/32/16) so the committed file stays near
1 MB; the Rust decoder reads the widths from the weight shapes.

Outputs:
  vae-tiny.safetensors  f32 weights under the documented names
  expected.safetensors  indices i64 [n,16], masks f32 [n,64,64] (raw decoder output, computed
                        in float64 from the f32 weights), and, when Pillow is installed,
                        for the paste checks: boxes i64 [n,4] (x1,y1,x2,y2), the official
                        demo's recipe with Image.BILINEAR and Image.BICUBIC as
                        pasted_{bilinear,bicubic} u8 [n,H,W], and the u8 masks resized to
                        each box before thresholding as resized_{bilinear,bicubic}_{i}.

Needs torch, numpy, safetensors (and optionally pillow); the tests never run it.
"""
import os
import sys

import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file

# `--full-width DIR` writes the same kind of fixture with vae-oid's widths (about 4.5 MB, not
# committed) for PALIGEMMA_VAE_DIR=DIR cargo test ... --test segmentation.
FULL = len(sys.argv) == 3 and sys.argv[1] == "--full-width"
EMBED_DIM = 512 if FULL else 64
HIDDEN = 128 if FULL else 64
UP = [128, 64, 32, 16] if FULL else [32, 16, 8, 4]  # out-widths of decoder.{4,6,8,10}
CODEBOOK_SIZE = 128
SEED = 20240514
PASTE_W, PASTE_H = 96, 80
# (x1, y1, x2, y2): upscaled inside, downscaled inside, cut at the right/bottom border.
BOXES = [(10, 5, 90, 75), (20, 30, 60, 62), (50, 40, 130, 120)]


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 1)
        )

    def forward(self, x):
        return x + self.net(x)


class VQVAE(nn.Module):
    def __init__(self):
        super().__init__()
        # The attribute path reproduces the checkpoint key `_vq_vae._embedding` exactly.
        self._vq_vae = nn.Module()
        self._vq_vae.register_parameter("_embedding", nn.Parameter(torch.empty(CODEBOOK_SIZE, EMBED_DIM)))
        layers = [nn.Conv2d(EMBED_DIM, HIDDEN, 1), nn.ReLU(), ResBlock(HIDDEN), ResBlock(HIDDEN)]
        c = HIDDEN
        for w in UP:
            layers += [nn.ConvTranspose2d(c, w, 4, stride=2, padding=1), nn.ReLU()]
            c = w
        layers.append(nn.Conv2d(c, 1, 1))
        self.decoder = nn.Sequential(*layers)

    def decode(self, indices):
        n = indices.shape[0]
        z = self._vq_vae._embedding[indices.reshape(-1)]  # [n*16, E]
        z = z.reshape(n, 4, 4, -1).permute(0, 3, 1, 2)  # row-major 4x4 grid, NCHW
        return self.decoder(z)[:, 0]


def init(model, g):
    """He-style init so every stage keeps O(1) activations instead of vanishing."""

    def normal(t, std):
        with torch.no_grad():
            t.copy_(torch.randn(t.shape, generator=g) * std)

    normal(model._vq_vae._embedding, 1.0)
    for name, m in model.decoder.named_modules():
        if isinstance(m, nn.ConvTranspose2d):
            # Each output pixel of a k4/s2 transposed conv sees 2x2 input pixels per channel.
            normal(m.weight, (2.0 / (m.in_channels * 4)) ** 0.5)
        elif isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            # The residual branch's last conv is damped so the two skips don't blow up the scale.
            gain = 0.5 if name.endswith("net.4") else 2.0
            normal(m.weight, (gain / fan_in) ** 0.5)
        else:
            continue
        normal(m.bias, 0.1)


def main():
    out_dir = sys.argv[2] if FULL else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testdata", "vae")
    os.makedirs(out_dir, exist_ok=True)
    g = torch.Generator().manual_seed(SEED)
    model = VQVAE()
    init(model, g)
    with torch.no_grad():
        # Centre the output so masks have both foreground and background to paste.
        model.decoder[-1].bias.zero_()
        probe = model.decode(torch.randint(0, CODEBOOK_SIZE, (8, 16), generator=g))
        model.decoder[-1].bias.fill_(-probe.median().item())
    weights = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(weights, os.path.join(out_dir, "vae-tiny.safetensors"))

    indices = torch.randint(0, CODEBOOK_SIZE, (3, 16), generator=g, dtype=torch.int64)
    indices[1] = torch.arange(16) * 8 % CODEBOOK_SIZE
    indices[2, 0], indices[2, 15] = 0, CODEBOOK_SIZE - 1  # both ends of the codebook
    with torch.no_grad():
        masks = model.double().decode(indices).to(torch.float32)
    print("masks: mean %.3f std %.3f min %.3f max %.3f, >0: %.2f" % (
        masks.mean(), masks.std(), masks.min(), masks.max(), (masks > 0).float().mean()))

    expected = {"indices": indices, "masks": masks.contiguous()}
    try:
        from PIL import Image

        for name, method in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
            pasted = []
            for i, (m, (x1, y1, x2, y2)) in enumerate(zip(masks.numpy(), BOXES)):
                # Official demo recipe (spec §4.2); the demo itself uses PIL's default, bicubic.
                u8 = (np.clip(m * 0.5 + 0.5, 0, 1) * 255).astype(np.uint8)
                small = np.asarray(Image.fromarray(u8).resize((x2 - x1, y2 - y1), method))
                expected[f"resized_{name}_{i}"] = torch.from_numpy(small.copy())
                full = np.zeros((max(y2, PASTE_H), max(x2, PASTE_W)), np.uint8)
                full[y1:y2, x1:x2] = np.where(small > 127, 255, 0)
                pasted.append(full[:PASTE_H, :PASTE_W])
            expected[f"pasted_{name}"] = torch.from_numpy(np.stack(pasted))
        expected["boxes"] = torch.tensor(BOXES, dtype=torch.int64)
    except ImportError:
        print("pillow not installed: no paste fixture", file=sys.stderr)
    save_file(expected, os.path.join(out_dir, "expected.safetensors"))
    for f in ("vae-tiny.safetensors", "expected.safetensors"):
        print(f, os.path.getsize(os.path.join(out_dir, f)), "bytes")


if __name__ == "__main__":
    main()

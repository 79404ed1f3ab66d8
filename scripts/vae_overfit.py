"""Can a VAE architecture represent the `shapes` outlines at all? Overfit a few fixed clips.

    python scripts/vae_overfit.py                          # the shipped cpu architecture
    python scripts/vae_overfit.py --widths 32 64 128 128 --steps 1000

Trains on the first N held-out clips of the default config's vocabulary (no KL, no posterior
noise, constant lr, gradients clipped at 1) and prints PSNR, edge F1 and the detector's shape,
colour and motion scores on those same clips every 250 steps. If these reach the detector's
ceiling, a VAE that blurs on fresh clips is under-trained rather than unable to draw them.
"""

import argparse

import torch

from mvdit.build import build_dataset
from mvdit.config import default_train_config
from mvdit.eval.faithfulness import score_clip, summarize
from mvdit.eval.metrics import edge_f1, psnr
from mvdit.models.vae import CausalVideoVAE
from mvdit.stages.train_vae import VAEArchConfig, VAELossConfig, make_vae_loss

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 64])
parser.add_argument("--latent-channels", type=int, default=16)
parser.add_argument("--clips", type=int, default=8)
parser.add_argument("--steps", type=int, default=2000)
parser.add_argument("--lr", type=float, default=3e-4)
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
ds = build_dataset(default_train_config().data.model_copy(update={"seed": 1}), "val")
items = [ds[i] for i in range(args.clips)]
x = torch.stack([it["video"] for it in items])
arch = VAEArchConfig(latent_channels=args.latent_channels, widths=args.widths).build()
vae = CausalVideoVAE(arch)
loss_fn = make_vae_loss(vae, None, VAELossConfig(sample_posterior=False, kl=0.0))
opt = torch.optim.AdamW(vae.parameters(), lr=args.lr)
for step in range(args.steps):
    loss = loss_fn(step, {"video": x}, torch.Generator().manual_seed(step))[0]["model"]
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    opt.step()
    if (step + 1) % 250 == 0:
        with torch.no_grad():
            y = vae.decode(vae.encode(x)).clamp(-1, 1)
        f = summarize([score_clip(v, it["caption"]) for v, it in zip(y, items, strict=True)])
        print(
            f"step {step + 1}: PSNR {psnr(y, x):.2f} dB, edge F1 {edge_f1(y, x):.3f}, "
            f"shape {f['shape']:.2f}, colour {f['colour']:.2f}, motion {f['motion']:.2f}",
            flush=True,
        )

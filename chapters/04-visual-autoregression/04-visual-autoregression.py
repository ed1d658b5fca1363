# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Visual autoregression: tokenizers, next-token versus next-scale, fast image decoding
#
# An image is not a sentence, but chapter 1's chain rule does not care: order the pixels, and
# $p(x) = \prod_i p(x_i \mid x_{<i})$ holds for any order. This chapter follows the road that image
# generation took from there. Pixels one by one are faithful but slow. A *tokenizer* learned by vector
# quantization {cite}`vandenoord2017neural` turns a picture into a short grid of discrete codes, and a GPT
# writes that grid in raster order, as LlamaGen does {cite}`sun2024autoregressive`. Next-scale prediction
# (VAR, {cite}`tian2024visual`) changes the order itself: a whole coarse map first, then finer maps,
# each predicted in one pass. And the raster model can be sped up without retraining by speculative
# Jacobi decoding {cite}`teng2025accelerating` and LANTERN's relaxed acceptance {cite}`jang2025lantern`.
# Everything runs on Fashion-MNIST {cite}`xiao2017fashion`, and every generator is scored the same way.
#
# **You will learn**
# - images as sequences, and what raster order costs: one model call per pixel or token;
# - a VQ-VAE tokenizer: nearest-code lookup, the straight-through gradient, the commitment loss, and
#   how EMA updates and code restarts keep the codebook alive;
# - a class-conditional raster GPT over tokens with classifier-free guidance {cite}`ho2022classifier`;
# - next-scale prediction with a multi-scale residual quantizer and block-causal attention, and what
#   a forward pass costs (a fixed part and a part per token row) and what the work outside the passes
#   adds, which together set its speed-up on each kind of hardware;
# - speculative Jacobi decoding, exact, and LANTERN, which trades fidelity for speed (and how much
#   fidelity, computed exactly);
# - one yardstick for all of them: a classifier's class-consistency accuracy and a Fréchet distance
#   {cite}`heusel2017gans` on its features, beside parameters, likelihoods, steps and images per second.
#
# The checkpoints were trained by `python -m arlib.recipes fashion-vq` (and `fashion-msvq`,
# `fashion-raster`, `fashion-var`, `fashion-var-markov`, `fashion-classifier`) in a bit over an hour on two
# CPU cores (the times are printed below).

# %% [markdown]
# ![Image tokens and two generation orders](../../figures/diagrams/04-visual-autoregression.svg)
#
# *Figure.* A vector-quantized autoencoder turns an image into a grid of tokens (top); an AR model then writes them in raster order, one per step, or scale by scale, a whole map per step (bottom).

# %%
import math
import statistics
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

import arlib
import arlib.checks
from arlib.data import CLASS_NAMES, fashion_mnist
from arlib.env import check_timing
from arlib.text.gpt import KVCache
from arlib.vision.jacobi import jacobi_generate, lantern_neighbors, proximity_set, relaxed_target, sample_raster_sjd
from arlib.vision.image_metrics import frechet_distance
from arlib.vision.generators import next_scale_loss, raster_loss, raster_tokens, sample_next_scale, sample_raster
from arlib.vision.recipes import images_as_float
from arlib.vision.vq import VQVAE, VectorQuantizer, VQConfig

device = arlib.setup(seed=0)
train_images, train_labels = fashion_mnist("train")
test_images, test_labels = fashion_mnist("test")
names = ["fashion-vq", "fashion-msvq", "fashion-raster", "fashion-var", "fashion-var-markov", "fashion-classifier"]
loaded = [arlib.load(name, device) for name in names]  # each checked against its sidecar's sha256
vq, msvq, raster, var, var_markov, classifier = (c.model for c in loaded)
vq_meta, msvq_meta, raster_meta, var_meta, var_markov_meta, classifier_meta = (c.meta for c in loaded)
K = vq.config.num_codes
print(f"device {device}; {len(train_images):,} training and {len(test_images):,} test images of 28x28 pixels")
for name, meta in [("fashion-vq", vq_meta), ("fashion-msvq", msvq_meta), ("fashion-raster", raster_meta),
                   ("fashion-var", var_meta), ("fashion-var-markov", var_markov_meta),
                   ("fashion-classifier", classifier_meta)]:
    print(f"{name:>19}: {meta['parameters']:>9,} parameters, {meta['wall_seconds']:6.0f} s to train, {meta['metrics']}")


def sync():
    """Wait for the accelerator before reading the clock (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def show_grid(images, rows, title=None, row_labels=None, scale=0.9, name=None):
    """Plot images (N, 1, 28, 28) or (N, 28, 28) in a grid of `rows` rows; `name` exports it to figures/."""
    images = images.reshape(len(images), images.shape[-2], images.shape[-1]).cpu()
    cols = math.ceil(len(images) / rows)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * scale, rows * scale), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, image in enumerate(images):
        axes.flat[i].imshow(image, cmap="gray_r", vmin=0, vmax=1)
    if row_labels is not None:
        for r, label in enumerate(row_labels):
            axes[r, 0].text(-4, 14, label, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    if name is not None:
        arlib.export_figure(fig, name)
    plt.show()


# %% [markdown]
# ## 1. Images as sequences, and what raster order costs
#
# The simplest autoregressive image model predicts each pixel from the pixels above and to its left.
# To keep it tiny we halve the resolution (14x14) and keep 4 grey levels, and, as in chapter 1's
# counting models, estimate $p(x_i \mid \text{context})$ by counting, with the context the four
# already-written neighbours: left, up-left, up, up-right. That is $4^4 = 256$ contexts and one count
# table. Sampling walks the 196 pixels in raster order: **196 sequential steps** for a thumbnail, and
# 784 at full resolution; an ImageNet picture of 256x256x3 would need 196,608.

# %%
LEVELS, SIDE = 4, 14


def to_levels(images):
    """uint8 (N, 28, 28) -> (N, 14, 14) grey levels 0..3 (2x2 average, then 4 bins)."""
    small = F.avg_pool2d(images[:, None].float() / 255, 2)[:, 0]
    return (small * LEVELS).clamp(max=LEVELS - 1e-3).long()


def causal_contexts(levels):
    """(N, 14, 14) -> (N, 14, 14) context ids from the left, up-left, up and up-right neighbours (0 outside)."""
    padded = F.pad(levels, (1, 1, 1, 0))  # one column each side, one row on top
    left, up_left = padded[:, 1:, 0:SIDE], padded[:, :-1, 0:SIDE]
    up, up_right = padded[:, :-1, 1:SIDE + 1], padded[:, :-1, 2:SIDE + 2]
    return ((left * LEVELS + up_left) * LEVELS + up) * LEVELS + up_right


train_levels, test_levels = to_levels(train_images), to_levels(test_images)
counts = torch.zeros(LEVELS ** 4, LEVELS)
counts.index_put_((causal_contexts(train_levels).flatten(), train_levels.flatten()),
                  torch.ones(train_levels.numel()), accumulate=True)
pixel_model = (counts + 1) / (counts + 1).sum(1, keepdim=True)  # add-one smoothing: (256 contexts, 4 levels)
marginal = torch.bincount(train_levels.flatten(), minlength=LEVELS).double()
marginal /= marginal.sum()
bits_context = float(-pixel_model[causal_contexts(test_levels).flatten(), test_levels.flatten()].log2().mean())
bits_marginal = float(-marginal[test_levels.flatten()].log2().mean())
assert bits_context < 0.5 * bits_marginal < 0.5 * math.log2(LEVELS)  # the neighbours halve the bits and more
print(f"test bits per pixel: uniform {math.log2(LEVELS):.3f}, one histogram {bits_marginal:.3f}, "
      f"causal neighbours {bits_context:.3f}")


@torch.no_grad()
def sample_pixels(n, generator):
    """n images (n, 14, 14) sampled pixel by pixel in raster order: 196 sequential steps."""
    image = torch.zeros(n, SIDE + 1, SIDE + 2, dtype=torch.long)  # with the zero border
    for r in range(SIDE):
        for c in range(SIDE):
            context = ((image[:, r + 1, c] * LEVELS + image[:, r, c]) * LEVELS + image[:, r, c + 1]) * LEVELS \
                + image[:, r, c + 2]
            image[:, r + 1, c + 1] = torch.multinomial(pixel_model[context], 1, generator=generator)[:, 0]
    return image[:, 1:, 1:SIDE + 1]


start = time.perf_counter()
pixel_samples = sample_pixels(200, torch.Generator().manual_seed(0))
pixel_seconds = time.perf_counter() - start
# the counting model's sample levels, read back as images at 28x28 for the yardstick of section 6
pixel_images = F.interpolate((pixel_samples.float() / (LEVELS - 1))[:, None], scale_factor=2, mode="nearest")
show_grid(pixel_images[:24], 2, "the neighbour-counting model: 196 steps per 14x14 image, and blobs")

# %% [markdown]
# Local context captures texture (the bits per pixel drop from 1.67 to about 0.69) but no shape: the
# samples are blobs. A model that sees far enough to draw a garment must condition on everything above,
# and it still pays one step per pixel. Tokenizers attack the second problem: fewer, richer symbols.

# %% [markdown]
# ## 2. A VQ tokenizer
#
# A VQ-VAE {cite}`vandenoord2017neural` has an encoder $E$, a codebook $e_1, \dots, e_K$ and a decoder
# $D$. Here $E$ maps a 28x28 image to a 7x7 grid of 32-dimensional vectors $z$; each vector is replaced
# by its nearest code,
#
# $$k^* = \arg\min_k \lVert z - e_k \rVert^2, \qquad z_q = e_{k^*}, \tag{1}$$
#
# and $D(z_q)$ reconstructs the image. The image is now **49 tokens** from a vocabulary of $K = 256$.
# The argmin has no gradient, so training copies the decoder's gradient straight through to the
# encoder: $z_q = z + \mathrm{sg}(e_{k^*} - z)$, whose value is the code and whose derivative is the
# identity ($\mathrm{sg}$ stops gradients). The loss is
#
# $$\mathcal{L} = \lVert x - D(z_q) \rVert^2 + \beta\, \lVert z - \mathrm{sg}(e_{k^*}) \rVert^2, \tag{2}$$
#
# reconstruction plus a *commitment* term that keeps the encoder near its codes ($\beta = 0.25$). The
# codes themselves can learn by a codebook loss $\lVert \mathrm{sg}(z) - e_{k^*} \rVert^2$ or, as here,
# as exponential moving averages of the vectors assigned to them. Writing (1) with the straight-through
# estimator is exercise 4.1; here we check `arlib.vision.vq.VectorQuantizer` does what (1) and (2) say.

# %%
quantizer = VectorQuantizer(16, 4).eval()
z = torch.randn(2, 4, 3, 3, requires_grad=True)
z_q, codes, commitment = quantizer(z)
flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
assert torch.equal(codes.flatten(), torch.cdist(flat, quantizer.codebook).argmin(1))  # (1), by brute force
upstream = torch.randn_like(z_q)
(z_q * upstream).sum().backward()
assert torch.allclose(z_q, quantizer.codebook[codes].permute(0, 3, 1, 2), atol=1e-6)  # z + (e - z) rounds
assert torch.equal(z.grad, upstream)
assert abs(commitment.item() - 0.25 * float(((z - z_q) ** 2).mean().detach())) < 1e-6
print("VectorQuantizer: nearest codes as in (1), straight-through gradient, commitment term of (2)")

# %% [markdown]
# **Dead codes.** A code that no encoder output is near never receives an assignment, so neither the
# codebook loss nor an average ever moves it: it is dead, and the tokenizer has a smaller vocabulary
# than it pays for. The classic recipe, codes initialized at random and learned by the codebook loss,
# suffers from it. `arlib.vision.vq` starts the codes on encoder outputs of the first batch, updates them by
# EMA, and moves a code whose running count drops below one assignment per batch onto a random encoder
# output (the remedies neural audio codecs also use). We train both variants of a small VQ-VAE for 150 steps from the same initial network and count
# the codes used on test images.

# %%
class GradientCodebook(torch.nn.Module):
    """The textbook VQ layer: a learned codebook (random init), codebook + commitment losses, no restarts."""

    def __init__(self, num_codes, dim, beta=0.25):
        super().__init__()
        self.codebook = torch.nn.Parameter(torch.randn(num_codes, dim))
        self.beta, self.num_codes, self.restarts = beta, num_codes, 0

    def forward(self, z):
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)
        indices = torch.cdist(flat.detach(), self.codebook.detach()).argmin(1)
        codes = self.codebook[indices].view(B, h, w, D).permute(0, 3, 1, 2)
        loss = F.mse_loss(codes, z.detach()) + self.beta * F.mse_loss(z, codes.detach())
        return z + (codes - z).detach(), indices.view(B, h, w), loss

    def usage(self, indices):
        return VectorQuantizer.usage(self, indices)


def train_tokenizer(model, steps, generator, batch=64):
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x_all = images_as_float(train_images[:20000])
    for _ in range(steps):
        x = x_all[torch.randint(len(x_all), (batch,), generator=generator)]
        recon, _, commit = model(x)
        loss = F.mse_loss(recon, x) + commit
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


x_test = images_as_float(test_images[:2000]).to(device)
usage = {}
for name in ("random codebook, codebook loss", "data init, EMA, restarts"):
    torch.manual_seed(1)
    model = VQVAE(VQConfig(num_codes=256, code_dim=16, width=32))
    if name.startswith("random"):
        model.quantizer = GradientCodebook(256, 16)
    model = train_tokenizer(model, 150, torch.Generator().manual_seed(2))
    with torch.no_grad():
        recon, codes, _ = model(x_test.cpu())
    usage[name] = (*model.quantizer.usage(codes), F.mse_loss(recon, x_test.cpu()).item())
    print(f"{name:>31}: {usage[name][1]:3d} of 256 codes used, perplexity {usage[name][0]:6.1f}, "
          f"test MSE {usage[name][2]:.4f}")
assert usage["data init, EMA, restarts"][1] > 2 * usage["random codebook, codebook loss"][1]

# %% [markdown]
# The committed tokenizer `fashion-vq` uses the same quantizer recipe in a larger network (codes of 32
# dimensions, width 64), trained on all 60,000 images for 3,000 steps. Its reconstructions, its
# code usage, and the error it leaves:

# %%
with torch.no_grad():
    recon, test_codes, _ = vq(x_test)
vq_mse = F.mse_loss(recon, x_test).item()
perplexity, used = vq.quantizer.usage(test_codes)
assert vq_mse < 0.01 and used == K and perplexity > 100
print(f"fashion-vq on 2000 test images: MSE {vq_mse:.4f} (PSNR {10 * math.log10(1 / vq_mse):.1f} dB), "
      f"{used} of {K} codes used, perplexity {perplexity:.0f}; 49 tokens of 8 bits = 392 bits per image")
show_grid(torch.cat([x_test[:12], recon[:12]]).cpu(), 2, "test images (top) and their reconstructions from 49 tokens",
          name="vq-reconstructions")
frequency = torch.bincount(test_codes.flatten(), minlength=K).sort(descending=True).values
plt.figure(figsize=(6, 2.5))
plt.bar(range(K), frequency.cpu().numpy(), width=1.0)
plt.xlabel("code (sorted by frequency)")
plt.ylabel("uses on 2000 test images")
plt.title("the codebook is used broadly: no dead codes")
plt.show()

# %% [markdown]
# ## 3. Raster order over tokens: a class-conditional GPT
#
# LlamaGen {cite}`sun2024autoregressive` writes the token grid row by row with a plain decoder-only
# transformer. Ours is chapter 1's `GPT` (4 layers, width 128) over the sequence
# [class token, 49 grid tokens]. For *classifier-free guidance* {cite}`ho2022classifier` the label is
# replaced by a null class 10 % of the time in training, so the same network gives conditional logits
# $l_c$ and unconditional logits $l_u$; sampling uses
#
# $$l = l_u + w\,(l_c - l_u), \tag{3}$$
#
# $w = 1$ being plain conditional sampling and $w > 1$ pushing samples toward what distinguishes the
# class (LlamaGen's form on logits; Ho and Salimans write the same mixture of noise predictions as
# $(1 + w')\,\epsilon_c - w'\epsilon_u$, that is $w = 1 + w'$). One image takes 49 forward passes (with the KV cache), each over one new token.

# %%
test_tokens = raster_tokens(vq.encode(x_test), test_labels[:2000].to(device), K)
with torch.no_grad():
    raster_nll = raster_loss(raster, test_tokens, K).item()  # nats per token
print(f"raster GPT: test NLL {raster_nll:.3f} nats per token = {raster_nll / math.log(2):.2f} bits per token "
      f"(uniform over codes: {math.log2(K):.0f} bits); {raster_nll * 49 / math.log(2):.0f} bits per image")
assert raster_nll < 0.75 * math.log(K)


@torch.no_grad()
def class_scores(images, labels):
    """(accuracy of the classifier against the requested labels, Fréchet distance to test features)."""
    accuracy = (classifier(images).argmax(-1) == labels).float().mean().item()
    return accuracy, frechet_distance(classifier.features(images), reference_features)


with torch.no_grad():
    reference_features = classifier.features(images_as_float(test_images[2000:3000]).to(device))  # (1000, 64)
    held_out = images_as_float(test_images[3000:3300]).to(device)
    floor = class_scores(held_out, test_labels[3000:3300].to(device))
print(f"300 held-out test images: classifier accuracy {floor[0]:.3f} (a reference), Fréchet distance "
      f"{floor[1]:.2f} (the floor)")

labels_300 = torch.arange(10, device=device).repeat_interleave(30)
gen = torch.Generator(device=device).manual_seed(3)
guidance = {}
for scale in (1.0, 2.0, 4.0):
    grids = sample_raster(raster, labels_300, K, cfg_scale=scale, generator=gen)
    guidance[scale] = class_scores(vq.decode(grids), labels_300)
    print(f"guidance w = {scale}: class-consistency accuracy {guidance[scale][0]:.3f}, "
          f"Fréchet distance {guidance[scale][1]:.2f}")
assert guidance[1.0][0] < guidance[2.0][0] < guidance[4.0][0]  # guidance buys class fidelity
assert guidance[4.0][1] > guidance[2.0][1]  # and too much of it costs variety
raster_grids = sample_raster(raster, torch.arange(10, device=device).repeat_interleave(6), K, cfg_scale=2.0,
                             generator=gen)
show_grid(vq.decode(raster_grids), 10, "raster GPT, cfg 2: six samples per class", name="raster-samples",
          row_labels=CLASS_NAMES)

# %% [markdown]
# Guidance trades diversity for class fidelity: accuracy rises with $w$ (past the classifier's accuracy on
# real images: guided samples are more prototypical than real garments), while the Fréchet distance,
# which also penalizes missing variety, grows again by $w = 4$. We use $w = 2$ from here on.

# %% [markdown]
# ## 4. Next-scale prediction
#
# VAR {cite}`tian2024visual` reorders generation from coarse to fine. Its tokenizer quantizes the
# encoder's 7x7 map $f$ as a sum over scales $s_1 < \dots < s_J$ (here 1, 2, 3, 5, 7), with $Q$ the
# nearest-code lookup (1) applied to every cell of a map:
#
# $$r_0 = f, \qquad k_j = Q\big(\mathrm{down}_{s_j}(r_{j-1})\big), \qquad
# r_j = r_{j-1} - \phi_j\big(\mathrm{up}(e_{k_j})\big), \qquad \hat f = \sum_j \phi_j\big(\mathrm{up}(e_{k_j})\big), \tag{4}$$
#
# with area downsampling to $s_j \times s_j$, bicubic upsampling back to 7x7 and a small convolution
# $\phi_j(u) = u/2 + \mathrm{conv}(u)/2$.
# Map $j$ quantizes what the coarser maps left unexplained (exercise 4.2 writes (4) without $\phi$). An
# image becomes $1 + 4 + 9 + 25 + 49 = 88$ tokens in 5 maps. Decoding the first map alone gives a blob
# (its error is close to the images' variance), the first three a blurry version, all five the image:

# %%
with torch.no_grad():
    maps = msvq.encode(x_test[:6])
    partial = [msvq.decode(maps, upto=j) for j in range(1, 6)]
    mse_by_scale = [F.mse_loss(msvq.decode(msvq.encode(x_test), upto=j), x_test).item() for j in range(1, 6)]
assert all(b < a for a, b in zip(mse_by_scale, mse_by_scale[1:]))
print("multi-scale tokenizer, test MSE after maps 1..j: " + ", ".join(f"{m:.4f}" for m in mse_by_scale))
show_grid(torch.stack(partial, 1).reshape(-1, 1, 28, 28), 6, "decoding maps 1..j, j = 1..5 (left to right)")

# %% [markdown]
# The generator predicts **all tokens of map $j+1$ at once**, from the class and the reconstruction of
# maps $1..j$ downsampled to scale $j+1$. That is a modelling choice, not the chain rule: the tokens of
# one scale are drawn independently of each other given the coarser scales, which is what lets one pass
# produce a whole map. Its attention is *block-causal*: a position sees every position
# of its own and coarser scales. Training is teacher-forced over all 88 positions; sampling takes 5
# forward passes, each over one scale's tokens, with a KV cache.

# %%
with torch.no_grad():
    test_maps = msvq.encode(x_test)
    inputs = msvq.quantizer.next_scale_inputs(test_maps)
    var_nll = next_scale_loss(var, test_labels[:2000].to(device), test_maps, inputs).item()
print(f"next-scale model: test NLL {var_nll:.3f} nats per token over 88 tokens = "
      f"{var_nll * 88 / math.log(2):.0f} bits per image (raster: {raster_nll * 49 / math.log(2):.0f} bits over 49)")
var_maps = sample_next_scale(var, msvq.quantizer, torch.arange(10, device=device).repeat_interleave(6),
                             cfg_scale=2.0, generator=gen)
show_grid(msvq.decode(var_maps), 10, "next-scale model, cfg 2: six samples per class", row_labels=CLASS_NAMES,
          name="next-scale-samples")

# %% [markdown]
# The two bit counts are not comparable as likelihoods of images: the tokenizers differ and both are
# lossy. What is comparable is time. One image at a time (the latency a user sees), raster order needs
# 49 passes and next-scale 5. Both samplers draw a token by inverting the CDF at one uniform
# (`arlib.text.sampling.draw`), and the next-scale sampler hands the reconstruction $\hat f$ it has built
# along the way straight to the decoder (`return_latent=True`), as VAR's does, instead of rebuilding it
# from the maps (the same images, asserted). We count the passes with a hook on each model's first block.

# %%
def seconds_per_image(samplers, n=20):
    """{name: median seconds per image} of each sampler, one image at a time; the samplers take turns,
    so that a machine that speeds up or slows down meanwhile affects them all alike."""
    times = {name: [] for name in samplers}
    for i in range(n):
        label = torch.tensor([i % 10], device=device)
        for name, sample_one in samplers.items():
            sync()
            start = time.perf_counter()
            sample_one(label)
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def raster_image(model):
    """One image from a raster model: 49 passes, then the tokenizer's decoder."""
    return lambda y: vq.decode(sample_raster(model, y, K, cfg_scale=2.0, generator=gen))


def next_scale_image(model):
    """One image from a next-scale model: 5 passes; the sampler's f_hat goes straight to the decoder."""
    return lambda y: msvq.decode_latent(sample_next_scale(model, msvq.quantizer, y, cfg_scale=2.0, generator=gen,
                                                          return_latent=True)[1])


passes_seen = {"raster": 0, "next-scale": 0}


def count_pass(name):
    """A forward hook on a model's first block: one call per forward pass."""
    def hook(*_):
        passes_seen[name] += 1
    return hook


hooks = [raster.h[0].register_forward_hook(count_pass("raster")),
         var.blocks[0].register_forward_hook(count_pass("next-scale"))]
raster_image(raster)(torch.tensor([0], device=device))
next_scale_image(var)(torch.tensor([0], device=device))
for hook in hooks:
    hook.remove()
assert passes_seen == {"raster": 49, "next-scale": 5}
with torch.no_grad():  # decoding the sampler's f_hat gives the images the maps give
    check_maps, check_latent = sample_next_scale(var, msvq.quantizer, labels_300[:20], cfg_scale=2.0, generator=gen,
                                                 return_latent=True)
    assert torch.allclose(msvq.decode_latent(check_latent), msvq.decode(check_maps), atol=1e-5)

one_image = seconds_per_image({"raster": raster_image(raster), "next-scale": next_scale_image(var),
                               "next-scale, Markov": next_scale_image(var_markov)})
raster_seconds, var_seconds = one_image["raster"], one_image["next-scale"]
speedup = raster_seconds / var_seconds
print(f"one image on {device.type} ({torch.get_num_threads()} threads): raster {raster_seconds * 1e3:.1f} ms "
      f"(49 passes), next-scale {var_seconds * 1e3:.1f} ms (5 passes): {speedup:.1f}x faster")
check_timing(speedup >= (3 if device.type == "cpu" else 5),
             "next-scale generation should be at least 3x faster than raster (5x on an accelerator)")

# %% [markdown]
# Why not $49/5 = 9.8$ times? For two reasons: a pass does not cost the same whatever it carries, and an
# image needs work outside the passes (drawing tokens, the tokenizer's steps, decoding) that does not
# shrink 9.8 times. A pass's time is a fixed part $a$ (the same small operations are dispatched, and on
# an accelerator launched, whatever the number of tokens) plus a part $b$ per *token row*, one position
# of one sequence, one row of the matrices the pass multiplies (the arithmetic). With guidance every
# image is two sequences in the batch (its class and the null class), so a raster pass carries 2 token
# rows, and the five next-scale passes carry $2 \times (1, 4, 9, 25, 49)$: 176 in all, against raster's
# $49 \times 2 = 98$. We time each pass alone and fit $t(\text{rows}) = a + b \cdot \text{rows}$ (least
# squares; the fit reproduces the total of the five passes exactly):

# %%
@torch.no_grad()
def raster_pass_seconds(model, repeats=10):
    """Median time of one cached raster pass over 2 rows (a class and the null class), one token each."""
    times = []
    for i in range(repeats):
        cache = model.new_cache(2)
        x = torch.tensor([[K + i % 10], [K + 10]], device=device)  # (2, 1)
        for _ in range(49):
            sync()
            start = time.perf_counter()
            model(x, cache=cache, validate=False)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def next_scale_pass_seconds(model, repeats=20):
    """Median time of each of the 5 cached passes of one guided next-scale image (inputs: random features)."""
    rows = torch.tensor([0, 10], device=device)  # a class and the null class
    times = [[] for _ in model.scales]
    for _ in range(repeats):
        cache = KVCache(model.config, 2, device=device)
        block = None
        for k in range(len(model.scales)):
            sync()
            start = time.perf_counter()
            model.step(rows if k == 0 else None, block, cache)
            sync()
            times[k].append(time.perf_counter() - start)
            if k + 1 < len(model.scales):
                block = torch.randn(2, model.scales[k + 1] ** 2, msvq.config.code_dim, device=device)
    return [statistics.median(t) for t in times]


raster_pass = raster_pass_seconds(raster)
var_passes = next_scale_pass_seconds(var)
pass_rows = [2 * s * s for s in var.scales]  # 2, 8, 18, 50, 98
b_row, a_fixed = (float(c) for c in np.polyfit(pass_rows, var_passes, 1))
print(f"raster pass (2 rows): {raster_pass * 1e3:.3f} ms")
for rows, seconds in zip(pass_rows, var_passes):
    print(f"next-scale pass over {rows:2d} rows: {seconds * 1e3:.3f} ms (fit {(a_fixed + b_row * rows) * 1e3:.3f})")
print(f"fit: a = {a_fixed * 1e3:.3f} ms per pass, b = {b_row * 1e6:.1f} us per token row; the 98-row pass costs "
      f"{var_passes[-1] / var_passes[0]:.1f}x the 2-row pass")
# everything else, by difference: drawing tokens, the tokenizer's steps, decoding
var_rest, raster_rest = var_seconds - sum(var_passes), raster_seconds - 49 * raster_pass
flat = raster_seconds / (len(var.scales) * var_passes[0] + var_rest)  # as if every pass cost a 2-row pass
print(f"passes alone: next-scale's take {49 * raster_pass / sum(var_passes):.1f}x less time than raster's "
      f"({49 * raster_pass / (5 * var_passes[0]):.1f}x if they all cost a 2-row pass)")
if device.type == "cpu":  # an accelerator runs a pass while the host queues the next: see below
    print(f"one next-scale image: passes {sum(var_passes) * 1e3:.1f} ms + everything else {var_rest * 1e3:.1f} ms; "
          f"one raster image: passes {49 * raster_pass * 1e3:.1f} ms + everything else {raster_rest * 1e3:.1f} ms "
          f"({raster_rest / var_rest:.1f}x less for next-scale)")
    check_timing(var_rest > 0 and raster_rest > 0 and raster_rest / var_rest < 49 / 5,
                 "the work outside the passes should shrink less than the number of passes")
print(f"speed-up if every next-scale pass cost a 2-row pass: {flat:.1f}x (measured: {speedup:.1f}x)")
fit_error = max(abs(a_fixed + b_row * r - t) / t for r, t in zip(pass_rows, var_passes))
print(f"the fit is off by at most {fit_error:.0%} on a pass")
check_timing(fit_error < 0.25, f"a + b * rows should describe the passes within 25 %, off by {fit_error:.0%}")
check_timing(abs(var_passes[0] / raster_pass - 1) < 0.35, "a 2-row pass should cost about the same in both models")
if device.type == "cpu":
    check_timing(var_passes[-1] > var_passes[0] and flat > speedup,  # an ordering: the factors vary by machine
                 "on a CPU the wide passes should cost more than narrow ones, and the speed-up fall short of flat")
else:
    check_timing(var_passes[-1] < 1.5 * var_passes[0] and speedup > 0.7 * flat,
                 "on an accelerator a 98-row pass should cost about a 2-row one, and the speed-up approach the flat one")

# %% [markdown]
# Both models have 4 blocks of width 128, so a 2-row pass costs about the same in either (asserted).
# On two CPU cores, where this book is built, $b$ is large: the 98-row pass costs more than a 2-row pass
# (asserted; by how much varies from machine to machine and from run to run: the factor this run
# measured is printed above). Raster order pays $a$ 49 times and $b$ on 98 rows; next-scale pays $a$ 5
# times and $b$ on 176 rows. The 44 saved passes save far more time than next-scale's rows cost, but
# those rows are a large share of next-scale's own, short, time, and so is the work outside the passes,
# which shrinks much less than 9.8 times (asserted). Hence a speed-up short of the "flat" value, the
# speed-up if every pass cost a 2-row pass (asserted; the margin is what the run above printed). The flat value is the regime of an accelerator
# at batch 1, where a pass over 98 rows takes about the time of one over 2, and the fixed costs (the
# launches) are what counts. When the chapter runs on one, the cells above assert that a 98-row pass
# costs about a 2-row one, that the speed-up comes within 30 % of the flat value, and that it is at
# least 5x. They do not split an image's time into passes and everything else there: an accelerator
# runs one pass while the host already queues the next, so a pass timed alone, waiting for the device
# at its end, takes longer than it does inside the sampler, and the difference means nothing.

# %% [markdown]
# ## 5. Faster raster sampling without retraining: speculative Jacobi decoding and LANTERN
#
# *Jacobi iteration* solves a system $x = F(x)$ by guessing all of $x$ and applying $F$ to the guess
# again and again: each sweep updates every component from the previous sweep's values, and the
# components whose inputs have settled stop changing. For raster decoding, $F$ is "one model pass over
# the window": it turns guesses for the next $L$ tokens into distributions for all of them at once.
# *Speculative Jacobi decoding* (SJD, {cite}`teng2025accelerating`) makes that exact. The first guesses
# are uniform random tokens, with $q = 1/K$. One pass over [last decided token, guesses] gives at window
# position $i$ the distribution $p_i$ given the guesses before it. The guesses are verified left to right
# with chapter 2's test: guess $d_i$, drawn from $q_i$, is accepted with probability
# $\min(1, p_i(d_i)/q_i(d_i))$; at the first rejection the token is redrawn from
# $\mathrm{norm}(\max(0, p_i - q_i))$ and the pass ends (exercise 4.3); if the whole window passes, the
# pass's last distribution gives one more token. Every tested $p_i$ conditions only on accepted tokens,
# and chapter 2's theorem holds for *any* proposal $q_i$, as long as it is recorded exactly and drawn
# from with fresh randomness: the output has the model's law whatever the guesses are worth. Their worth
# decides the speed. The positions after a rejection were conditioned on a wrong token, but their $p_i$
# are better guesses than noise: the next guesses are drawn from them, with $q_i = p_i$ (the Jacobi
# update), and the window improves from pass to pass.
#
# Image tokens are a hard case for exact verification: many codes look alike, so $p$ spreads over
# near-synonyms and a guess is rarely *the* token. LANTERN {cite}`jang2025lantern` accepts a guess on
# behalf of its latent neighbours. With $B_k(x)$ the $k$ codes nearest to $x$ in the tokenizer's code
# space, the proximity set $A$ is the longest nearest-first prefix of $B_k(x)$ whose probability, apart
# from $x$'s own, is at most $\delta$ (exercise 4.4); the test uses $\tilde p_x(x) = p(x) + p(A \setminus
# \{x\})$, and after a rejection the replacement avoids $x$ and $A$. For one given guess, $\tilde p_x$ is
# within total variation $\delta$ of $p$. But $\tilde p_x$ depends on the guess, so the law of the decided
# token is *not* $\tilde p$ of anything, and it can be further than $\delta$ from $p$: every neighbour that
# gets guessed collects its neighbourhood's mass again. $\delta = 0$ is SJD.

# %%
neighbors = lantern_neighbors(vq.quantizer.codebook, 32)
members = proximity_set(torch.full((K,), 1 / K, dtype=torch.float64, device=device), 5, neighbors, 0.02)
assert members[0] == 5 and len(members) == 6  # 5 neighbours of mass 1/256 fit in 0.02, not 6
print(f"code 5's nearest codes {neighbors[5, :8].tolist()}...; under a uniform p, delta = 0.02 admits "
      f"{len(members) - 1} neighbours")

# %% [markdown]
# First, exactness. The second token of 3000 SJD runs (window 2, so that the runs mix accepted,
# rejected and Jacobi-updated guesses) against its exact marginal, computed by summing over all 256 first
# tokens:

# %%
prefix = torch.tensor([[K + 7], [K + 10]], device=device)  # class 7 (sneaker), and the null class for w = 2
with torch.no_grad():
    first_logits = raster(prefix)[:, -1, :K].double()
    p_first = (first_logits[1] + 2.0 * (first_logits[0] - first_logits[1])).softmax(-1)  # (K,)
    pairs = torch.cat([prefix.repeat_interleave(K, 0), torch.arange(K, device=device).repeat(2)[:, None]], 1)
    second_logits = raster(pairs)[:, -1, :K].double().view(2, K, K)
    p_second = (second_logits[1] + 2.0 * (second_logits[0] - second_logits[1])).softmax(-1)  # (K, K)
second_marginal = (p_first[:, None] * p_second).sum(0).cpu()
gen_sjd = torch.Generator(device=device).manual_seed(4)
second_tokens = torch.tensor([int(jacobi_generate(raster, prefix, 2, K, window=2, cfg_scale=2.0,
                                                  generator=gen_sjd)[0][1]) for _ in range(3000)])
counts_second = torch.bincount(second_tokens, minlength=K).double()
expected = second_marginal * len(second_tokens)
big = expected >= 5
observed = torch.cat([counts_second[big], counts_second[~big].sum()[None]]) if (~big).any() else counts_second
predicted = torch.cat([expected[big], expected[~big].sum()[None]]) if (~big).any() else expected
p_sjd = stats.chisquare(observed.numpy(), (predicted / predicted.sum() * len(second_tokens)).numpy()).pvalue
assert p_sjd > 1e-3
print(f"second token of 3000 SJD runs vs its exact marginal: chi-square p = {p_sjd:.2f}")

# %% [markdown]
# Then LANTERN's price, exactly. For the first token of an image, whose guess is uniform, the law of
# the decided token is a sum over the $K$ possible guesses: accepted with probability
# $\min(1, \tilde p_x(x)/q(x))$, else replaced from the residual that avoids $x$ and its set. Its total
# variation from $p$, for each class, against the budget $\delta$:

# %%
def lantern_first_token_law(p, q, delta):
    """Exact law (K,) of the token LANTERN decides when the guess x is drawn from q (K,)."""
    law = torch.zeros_like(p)
    for x in torch.nonzero(q > 0).flatten().tolist():
        members = proximity_set(p, x, neighbors, delta)
        tilde = relaxed_target(p, x, members)
        accept = min(1.0, float(tilde[x] / q[x]))
        law[x] += q[x] * accept
        residual = (tilde - q).clamp_min(0)
        residual[members] = 0
        residual = residual if residual.sum() > 0 else tilde
        law += q[x] * (1 - accept) * residual / residual.sum()
    return law


uniform_guess = torch.full((K,), 1 / K, dtype=torch.float64, device=device)
with torch.no_grad():
    class_logits = raster(torch.stack([torch.arange(K, K + 10, device=device),
                                       torch.full((10,), K + 10, device=device)], 1).reshape(-1, 1))
    class_logits = class_logits[:, -1, :K].double().view(10, 2, K)
    class_first = (class_logits[:, 1] + 2.0 * (class_logits[:, 0] - class_logits[:, 1])).softmax(-1)  # (10, K)
tv_by_delta = {}
for delta in (0.0, 0.02, 0.1):
    tv_by_delta[delta] = [0.5 * float((lantern_first_token_law(p, uniform_guess, delta) - p).abs().sum())
                          for p in class_first]
    print(f"delta = {delta}: total variation of the first token's law from p, by class: "
          + ", ".join(f"{tv:.3f}" for tv in tv_by_delta[delta]))
assert max(tv_by_delta[0.0]) < 1e-9  # delta = 0 is SJD: exact
assert max(tv_by_delta[0.02]) > 0.02 and max(tv_by_delta[0.1]) > 0.1  # the budget does not bound the output

# %% [markdown]
# So $\delta$ is a knob, not a guarantee. With uniform guesses, which are far from $p$, the output moves
# by far more than $\delta$: a guess $x$ of small $p(x)$ whose neighbours add up to $1/K$ is now
# accepted every time it is proposed, so every such code gets about $1/K$ of the output, however unlikely
# it is under $p$. LANTERN's paper drafts with a trained drafter, whose guesses are close to $p$; the
# further the guesses from $p$, the larger the drift, and SJD's uniform first guesses are as far as
# guesses get. Now the speed and its effect on samples, 300 images per setting (30 per
# class), one image at a time, a window of 8 guesses, guidance 2, against plain raster sampling of the
# same classes:

# %%
WINDOW = 8
labels_n = labels_300  # 30 per class
jacobi_rows = {}
sync()
start = time.perf_counter()
plain = torch.cat([vq.decode(sample_raster(raster, y[None], K, cfg_scale=2.0, generator=gen)) for y in labels_n])
sync()
plain_rate = len(labels_n) / (time.perf_counter() - start)
jacobi_rows["raster, 1 token per pass"] = (49.0, 1.0, plain_rate, *class_scores(plain, labels_n))
for delta in (0.0, 0.02, 0.1):
    images, passes = [], []
    sync()
    start = time.perf_counter()
    for y in labels_n:
        grid, info = sample_raster_sjd(raster, int(y), K, window=WINDOW, cfg_scale=2.0, neighbors=neighbors,
                                       delta=delta, generator=gen)
        images.append(vq.decode(grid[None]))
        passes.append(info["passes"])
    sync()
    rate = len(labels_n) / (time.perf_counter() - start)
    name = "SJD (delta = 0)" if delta == 0 else f"LANTERN delta = {delta}"
    jacobi_rows[name] = (statistics.fmean(passes), 49 / statistics.fmean(passes), rate,
                         *class_scores(torch.cat(images), labels_n))
print(f"{'sampler':>26} | {'passes/image':>12} | {'tokens/pass':>11} | {'images/s':>8} | {'speed-up':>8} | "
      f"{'accuracy':>8} | {'Frechet':>7}")
for name, (passes, per_pass, rate, accuracy, fd) in jacobi_rows.items():
    print(f"{name:>26} | {passes:12.1f} | {per_pass:11.2f} | {rate:8.1f} | {rate / plain_rate:7.2f}x | "
          f"{accuracy:8.3f} | {fd:7.2f}")
sjd, lantern = jacobi_rows["SJD (delta = 0)"], jacobi_rows["LANTERN delta = 0.1"]
assert sjd[1] > 1.5 and lantern[1] > sjd[1]  # several tokens per pass, and more when relaxed
check_timing(sjd[2] > plain_rate, "SJD should be faster than plain raster sampling")
check_timing(lantern[2] > sjd[2], "LANTERN should be faster than SJD")

# %% [markdown]
# ## 6. Every generator on equal terms
#
# One table: parameters, the model's own likelihood where it has one, forward passes per image, images
# per second one at a time, and the two classifier scores on 300 samples (30 per class, guidance 2),
# against the floor of 300 held-out test images. The Fréchet distance depends on the number of samples,
# so every row uses 300 (section 5's samples for the raster rows), against the same 1000 reference test
# images. The speeds of the raster rows are section 5's (a mean over its 300 images), those of the
# next-scale rows section 4's (a median of 20 images, the samplers taking turns). The counting model is
# unconditional (no accuracy) and is sampled in one batch at 14x14, so its speed is not comparable and
# left out. The likelihood column mixes units on purpose: bits per
# pixel of a 4-level thumbnail, and bits per token of two different lossy tokenizers; none of them is
# a likelihood of the image itself, and they cannot be compared across rows.

# %%
with torch.no_grad():
    floor_n = class_scores(images_as_float(test_images[3000:3300]).to(device), test_labels[3000:3300].to(device))
    floor_other = class_scores(images_as_float(test_images[3300:3600]).to(device), test_labels[3300:3600].to(device))
    pixel_samples = sample_pixels(300, torch.Generator().manual_seed(5))
    pixel_images = F.interpolate((pixel_samples.float() / (LEVELS - 1))[:, None], scale_factor=2, mode="nearest")
    pixel_fd = frechet_distance(classifier.features(pixel_images.to(device)), reference_features)
    var_n = class_scores(msvq.decode(sample_next_scale(var, msvq.quantizer, labels_n, cfg_scale=2.0,
                                                         generator=gen)), labels_n)
    markov_n = class_scores(msvq.decode(sample_next_scale(var_markov, msvq.quantizer, labels_n, cfg_scale=2.0,
                                                            generator=gen)), labels_n)
    markov_nll = next_scale_loss(var_markov, test_labels[:2000].to(device), test_maps, inputs).item()
markov_seconds = one_image["next-scale, Markov"]  # timed in section 4, beside the others
table = [  # name, parameters, likelihood, passes per image, images per second, accuracy, Frechet distance
    ("test images (floor)", None, "", None, None, *floor_n),
    ("pixels, neighbour counts", counts.numel(), f"{bits_context:.2f} bits/pixel", 196, None,
     float("nan"), pixel_fd),
    ("raster GPT", raster_meta["parameters"], f"{raster_nll / math.log(2):.2f} bits/token", 49, plain_rate,
     *jacobi_rows["raster, 1 token per pass"][3:]),
    ("raster + SJD", raster_meta["parameters"], "(same model)", jacobi_rows["SJD (delta = 0)"][0],
     jacobi_rows["SJD (delta = 0)"][2], *jacobi_rows["SJD (delta = 0)"][3:]),
    ("raster + LANTERN 0.1", raster_meta["parameters"], "(same model)", jacobi_rows["LANTERN delta = 0.1"][0],
     jacobi_rows["LANTERN delta = 0.1"][2], *jacobi_rows["LANTERN delta = 0.1"][3:]),
    ("next-scale (VAR)", var_meta["parameters"], f"{var_nll / math.log(2):.2f} bits/token", 5, 1 / var_seconds,
     *var_n),
    ("next-scale, Markov (HMAR)", var_markov_meta["parameters"], f"{markov_nll / math.log(2):.2f} bits/token", 5,
     1 / markov_seconds, *markov_n),
]
print(f"{'generator':>26} | {'parameters':>10} | {'likelihood':>18} | {'passes':>6} | {'images/s':>8} | "
      f"{'accuracy':>8} | {'Frechet':>7}")
for name, params, nll, passes, rate, accuracy, fd in table:
    print(f"{name:>26} | {params if params is not None else '':>10} | {nll:>18} | "
          f"{'' if passes is None else f'{passes:6.1f}':>6} | {'' if rate is None else f'{rate:8.1f}':>8} | "
          f"{'' if math.isnan(accuracy) else f'{accuracy:8.3f}':>8} | {fd:7.2f}")
fd_noise = abs(floor_n[1] - floor_other[1])
print(f"two sets of 300 real test images score {floor_n[1]:.2f} and {floor_other[1]:.2f}: at this sample size the "
      f"Fréchet distance moves by about {fd_noise:.1f} from the draw alone")
assert pixel_fd > 3 * max(jacobi_rows["raster, 1 token per pass"][4], var_n[1])  # blobs are far from garments
assert min(jacobi_rows["raster, 1 token per pass"][3], var_n[0]) > 0.7  # both draw the class asked for
assert jacobi_rows["LANTERN delta = 0.1"][3] < jacobi_rows["SJD (delta = 0)"][3] - 0.1  # LANTERN's price

# %% [markdown]
# What the table says (each claim is asserted in the cell above or below):
# - the counting model's samples are far from garments in the classifier's feature space;
# - both token models draw the requested class more often than the classifier recognizes real test
#   images (guidance makes samples prototypical), and their Fréchet distances are above the floor of
#   real images and of the same order (within a factor of two of each other);
# - next-scale prediction needs 5 passes instead of 49 and is the fastest one-image generator;
# - SJD keeps the raster model's distribution and decides about two tokens per pass (its scores differ
#   from plain sampling's by no more than the draw of the samples moves them, printed above);
# - LANTERN decides more tokens per pass and pays for it: at $\delta = 0.1$ its samples lose much of
#   their class consistency, as section 5's exact computation of the first token's law predicted.

# %%
raster_row, var_row = jacobi_rows["raster, 1 token per pass"], var_n
assert min(raster_row[3], var_row[0]) > floor_n[0] and abs(raster_row[3] - var_row[0]) < 0.1
assert min(raster_row[4], var_row[1]) > floor_n[1] and max(raster_row[4], var_row[1]) < 2 * min(raster_row[4], var_row[1])
sjd_row = jacobi_rows["SJD (delta = 0)"]  # exact: the same law as plain sampling, so the same scores up to the draw
assert abs(sjd_row[3] - raster_row[3]) < 0.05 and abs(sjd_row[4] - raster_row[4]) < 2 * fd_noise + 1
token_rates = {name: rate for name, _, _, _, rate, _, _ in table if rate is not None}
check_timing(max(token_rates, key=token_rates.get).startswith("next-scale"),
             f"a next-scale model should be the fastest one-image generator: {token_rates}")

# %% [markdown]
# ## 7. Where the field goes
#
# **Markovian attention across scales (HMAR, {cite}`kumbong2025hmar`), implemented.** VAR's scale $j+1$
# attends to all coarser scales, but its input, the reconstruction from maps $1..j$, already summarizes
# them. HMAR lets each scale attend only to the previous one (and, here, the class token), which with a
# suited kernel shrinks attention and the KV cache for large images; it also replaces the one-pass
# prediction of a scale by a few masked-generation steps within the scale, which we do not build.
# `fashion-var-markov` is the same network trained with the Markovian mask (`NextScaleModel(markov=True)`).
# Our implementation only masks, so it saves no time; what can be measured is the question HMAR asks:
# does the model lose anything by forgetting the older scales? Its test likelihood is within a few
# percent of VAR's (asserted below).
#
# **Coarse-to-fine tokens.** A codebook of thousands of codes has many near-synonyms, the observation
# behind LANTERN. Clustering the codebook into a few hundred coarse labels and predicting the coarse
# label first, then the fine code within it, makes each prediction easier; this is a line of recent
# work that the book does not build.
#
# **Next-frequency prediction (NFIG, {cite}`huang2025nfig`).** Instead of spatial scales, order the
# tokens by frequency band: low frequencies (global structure) first with few tokens, details later.
#
# **Continuous tokens.** FlowAR {cite}`ren2024flowar` keeps next-scale prediction but replaces the
# codebook by continuous latents, each scale generated by a small flow-matching head; xAR
# {cite}`ren2025beyond` generalizes the unit of prediction (a token, a cell, a scale) and trains with
# noisy contexts. Quantization error, one floor under every row of the table above, disappears (the
# autoencoder's reconstruction error remains).

# %%
assert abs(markov_nll / var_nll - 1) < 0.05
print(f"HMAR-style model: test NLL {markov_nll:.3f} vs VAR {var_nll:.3f} nats per token; "
      f"samples: accuracy {markov_n[0]:.3f} vs {var_n[0]:.3f}, Fréchet {markov_n[1]:.2f} vs {var_n[1]:.2f}")

# %% [markdown]
# ## Exercises
#
# The first two exercises rebuild the tokenizers' quantizers, the last two the verification step of
# speculative Jacobi decoding and LANTERN's relaxation. As before, $p$ is the model's distribution and
# $q$ the one a draft was drawn from. Tensors are float unless they hold token ids, which are
# `torch.long`; each check tries both float32 and float64 inputs.
#
# **Exercise 4.1** (straight-through quantization; easy). Write `vq_straight_through(z, codebook)` for
# a batch of vectors `z` of shape $(N, D)$ (it may require a gradient) and a codebook of shape
# $(K, D)$, one code $e_k$ per row. Return the pair `(z_q, indices)`: `indices` $(N,)$ holds, for each
# row $z_n$, the id of the nearest code, $\arg\min_k \|z_n - e_k\|^2$, and `z_q` $(N, D)$ must equal
# `codebook[indices]` in value while passing gradients to `z` unchanged, as if quantization were the
# identity: write it as `z + (codebook[indices] - z).detach()`. The check compares the ids with a
# brute-force search, including codebooks whose codes have very different lengths, and sends a
# random gradient back through `z_q` to see that `z` receives exactly that gradient. The codebook
# gets no gradient at all through `z_q`: how does the chapter's tokenizer (section 2) move its codes, and
# which term of its loss pulls the encoder towards them?

# %%
def vq_straight_through(z, codebook):
    """(z_q (N, D), indices (N,)): each row of z replaced by its nearest code; gradients pass straight to z."""
    ### BEGIN SOLUTION
    distance = (z.detach()[:, None, :] - codebook[None, :, :]).pow(2).sum(-1)  # (N, K) squared distances
    indices = distance.argmin(dim=1)  # (N,) the nearest code of each row
    z_q = z + (codebook[indices] - z).detach()  # the value of the codes, the gradient of the identity
    return z_q, indices
    ### END SOLUTION


# %%
arlib.checks.straight_through_quantize(vq_straight_through)

# %% [markdown]
# **Exercise 4.2** (multi-scale residual quantization; medium). Write
# `multiscale_quantize(f, codebook, scales)`, the residual quantizer of the next-scale tokenizer
# without its refining convolutions $\phi$. The latent map `f` has shape $(B, D, H, H)$, `codebook`
# $(K, D)$, and `scales` is an increasing tuple of sides that ends at $H$, such as `(1, 2, 3, 5, 7)`.
# Start with `residual = f` and `f_hat` all zeros; for each scale $s$ in turn:
#
# 1. shrink the residual to $s \times s$ with `F.interpolate(..., size=(s, s), mode="area")`, which
#    averages the cells;
# 2. replace each of its $B s^2$ vectors of dimension $D$ by its nearest code, giving a token map of
#    shape $(B, s, s)$;
# 3. look the codes up as a $(B, D, s, s)$ map and grow it back to $H \times H$ with
#    `mode="bicubic"`;
# 4. add that map to `f_hat` and subtract it from `residual`.
#
# Skip both interpolations when $s = H$. Return `(maps, f_hat)`: the list of token maps, coarse to
# fine, and the reconstruction $(B, D, H, H)$. The check replays your token maps against its own
# search, compares `f_hat`, and looks at how much of `f` is left unexplained after the first scale and
# after all of them. With `scales = (H,)` the function is plain vector quantization. What does the
# $1 \times 1$ token map hold, and why does a next-scale model find it the easiest one to predict?

# %%
def multiscale_quantize(f, codebook, scales):
    """(list of token maps (B, s, s), one per scale, f_hat (B, D, H, H)): residual quantization, coarse to fine."""
    ### BEGIN SOLUTION
    B, D, H, _ = f.shape
    residual, f_hat, maps = f, torch.zeros_like(f), []
    for s in scales:
        r = residual if s == H else F.interpolate(residual, size=(s, s), mode="area")  # (B, D, s, s)
        vectors = r.permute(0, 2, 3, 1).reshape(-1, D)  # (B * s * s, D), one vector per cell
        distance = (vectors[:, None, :] - codebook[None, :, :]).pow(2).sum(-1)  # (B * s * s, K)
        indices = distance.argmin(dim=1).view(B, s, s)
        codes = codebook[indices].permute(0, 3, 1, 2)  # (B, D, s, s)
        up = codes if s == H else F.interpolate(codes, size=(H, H), mode="bicubic")
        f_hat, residual = f_hat + up, residual - up  # the finer scales only see what is still missing
        maps.append(indices)
    return maps, f_hat
    ### END SOLUTION


# %%
arlib.checks.residual_quantize(multiscale_quantize)

# %% [markdown]
# **Exercise 4.3** (speculative Jacobi verification; medium). One pass of speculative Jacobi decoding
# gives, for the $L$ positions of the window, the model's distributions `p` $(L, V)$; the drafts
# `drafts` $(L,)$ were drawn from the distributions `q` $(L, V)$. Write
# `verify_window(p, q, drafts, u)` that decides tokens with the uniforms `u` $(L, 2)$ in $[0, 1)$
# instead of calling a random generator, so that the check can replay it. For $i = 0, 1, \dots$ with
# $x$ = `drafts[i]`: accept $x$ when `u[i, 0] * q[i, x] < p[i, x]` (strictly) and move on to $i + 1$;
# at the first rejection, draw a replacement from the residual
# $r = \max(0, p_i - q_i)$ (use $p_i$ itself if $r$ is all zero) by inverting its cumulative sum:
# the replacement is the smallest $j$ with $\sum_{j' \le j} r(j') > u_{i,1} \sum_{j'} r(j')$. Then
# stop. Return the decided tokens, accepted drafts first and then the replacement if there was one, as
# a list of ints or a 1-D `torch.long` tensor; leave out the extra token a fully accepted window would
# get from the next distribution. Besides replaying fixed uniforms, the check draws 2000 windows with
# drafts from `q` and fresh uniforms and tests that the first decided token follows $p_0$. The drafts
# after a rejected one are dropped although the pass computed a distribution for each of them: what
# goes wrong if they are verified too, and what does the decoder do with those distributions instead?

# %%
def verify_window(p, q, drafts, u):
    """The tokens one verification pass decides: the accepted drafts, then a residual draw at the first rejection."""
    ### BEGIN SOLUTION
    decided = []
    for i, x in enumerate(drafts.tolist()):
        if u[i, 0] * q[i, x] < p[i, x]:  # accepted with probability min(1, p(x) / q(x))
            decided.append(x)
            continue
        r = (p[i] - q[i]).clamp_min(0)  # the mass the model wants beyond what the draft offers
        if r.sum() <= 0:
            r = p[i]
        cdf = torch.cumsum(r, 0)
        decided.append(min(int((cdf <= u[i, 1] * cdf[-1]).sum()), len(r) - 1))  # first j with cdf[j] > u * total
        break  # later drafts were conditioned on the token just replaced
    return decided
    ### END SOLUTION


# %%
arlib.checks.sjd_verify(verify_window)

# %% [markdown]
# **Exercise 4.4** (LANTERN's proximity set; easy). Write `proximity(p, x, neighbors, delta)`, where
# `p` $(V,)$ is the model's distribution over the codes, `x` a draft token (an int), `neighbors`
# $(V, k)$ the table of `arlib.vision.jacobi.lantern_neighbors`, whose row `neighbors[x]` lists the $k$ codes
# nearest to $x$ in latent space, nearest first and $x$ itself first of all, and `delta` $\ge 0$ a
# budget. Return the longest prefix of `neighbors[x]` whose probability, not counting $x$'s own, is at
# most `delta` (inclusive), as a 1-D `torch.long` tensor that starts with $x$. Neighbours of
# probability zero cost nothing, so with `delta = 0` the set is $x$ and the zero-probability
# neighbours before the first positive one; with `delta = 1` it is the whole row. The check tries random
# and hand-made rows, including a budget met exactly. The
# relaxed test moves the mass of the set onto $x$: why is the resulting distribution $\tilde p$ within
# total variation `delta` of $p$, and why does that not bound the law of the token LANTERN decides?

# %%
def proximity(p, x, neighbors, delta):
    """LANTERN's A_(k, delta)(x): the longest prefix of neighbors[x] whose mass, x's own left out, is <= delta."""
    ### BEGIN SOLUTION
    row = neighbors[x]  # (k,) nearest first, x itself first
    mass = torch.where(row == x, torch.zeros_like(p[row]), p[row])  # x's own mass is not in the budget
    spent = torch.cumsum(mass, 0)  # never decreases, so the positions within budget form a prefix
    return row[: int((spent <= delta).sum())]
    ### END SOLUTION


# %%
arlib.checks.lantern_proximity(proximity)


# %% [markdown]
# ## Summary
#
# - Any order of the pixels gives a valid chain rule, but raster order costs one model call per
#   pixel; local context alone (counts over four neighbours) learns texture, not shape.
# - A VQ-VAE compresses a 28x28 image into 49 tokens of 8 bits with a straight-through gradient and a
#   commitment loss; starting codes on data, EMA updates and restarts keep the whole codebook in use,
#   where the textbook recipe leaves almost every code dead.
# - A small GPT over those tokens, with classifier-free guidance, draws the requested garment most of
#   the time; guidance trades variety for class fidelity.
# - Next-scale prediction writes 88 tokens in 5 block-causal passes instead of 49 one-token passes, at
#   comparable quality. A pass costs a fixed part plus a part per token row, and an image needs work
#   outside the passes: on two CPU cores the wide passes cost arithmetic and next-scale is at least
#   three times faster per image; on an accelerator at batch 1 a pass costs about the same whatever its
#   width, and the speed-up comes close to the flat value measured from the passes (at least 5x; both
#   asserted when the chapter runs on one).
#   Attending only to the previous scale (HMAR's Markovian attention) costs almost nothing in likelihood.
# - Speculative Jacobi decoding keeps the raster model's distribution (checked on the second token's
#   marginal) and decides about two tokens per pass; LANTERN's relaxed test decides more, and its price
#   is not bounded by $\delta$: computed exactly, with uniform first guesses the first token's law moves
#   by far more than $\delta$.
#
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# ```

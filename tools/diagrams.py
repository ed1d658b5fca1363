"""Draw one diagram of each chapter's main algorithm into ``figures/diagrams/NN-<name>.svg``.

    python tools/diagrams.py                 # (re)draw every diagram into figures/diagrams/
    python tools/diagrams.py --out DIR       # into another folder (the tests compare with the committed files)
    python tools/diagrams.py --png DIR       # also write PNG copies into DIR, to look at them (not committed)

The diagrams are drawn with matplotlib patches, arrows and text only: no data, no network, no randomness.
Every figure has the book's page width (8 x 3.5 inches), the same palette and the same font sizes, and is
drawn on one axes whose units are tenths of an inch (x from 0 to 80, y from 0 to 35), so that a box 10 units
wide is one inch wide on the page. The SVG output is byte-stable: a fixed id salt, glyphs as paths (from the
DejaVu fonts that ship with matplotlib, so no system font is consulted) and no date in the metadata;
tests/test_diagrams.py redraws them and compares the bytes with the committed files.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Polygon, Rectangle

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "figures" / "diagrams"
WIDTH, HEIGHT = 8.0, 3.5  # inches: the book's page width
UNITS = 10  # drawing units per inch

# One palette for every chapter (Okabe and Ito's colour-blind-safe set). The roles stay the same across the
# diagrams: a target model is always blue, a draft orange, an acceptance green, a rejection red.
INK = "#222222"
MUTED = "#7a7a7a"
MODEL = "#0072B2"  # the target model, the network being explained
DRAFT = "#E69F00"  # the draft model and its proposals; audio features
ACCEPT = "#009E73"  # accepted, kept, emitted
REJECT = "#D55E00"  # rejected, residual, error
DATA = "#56B4E9"  # data, inputs, tokens
EXTRA = "#CC79A7"  # a second family: codes, latents, features

# One scale of font sizes (points): panel titles, body text, annotations, dense cell labels.
TITLE, TEXT, SMALL, TINY = 9.5, 8.5, 7.5, 6.5

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": TEXT,
    "mathtext.fontset": "dejavusans",
    "svg.fonttype": "path",  # glyphs as paths: the same picture whatever fonts the reader has
    "svg.hashsalt": "arlib-diagrams",  # fixed ids for clip paths and glyphs: byte-stable output
    "savefig.dpi": 150,
    "savefig.bbox": "standard",  # the page size exactly, whatever style the caller's process has set
    "savefig.facecolor": "white",
}


def tint(color: str, amount: float) -> tuple:
    """``color`` mixed with white: ``amount`` 1 is the colour itself, 0 is white (for fills)."""
    r, g, b = matplotlib.colors.to_rgb(color)
    return (1 - amount * (1 - r), 1 - amount * (1 - g), 1 - amount * (1 - b))


def canvas() -> tuple[Figure, object]:
    """A blank figure of the page's width with one axes in drawing units (tenths of an inch)."""
    fig = Figure(figsize=(WIDTH, HEIGHT))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH * UNITS)
    ax.set_ylim(0, HEIGHT * UNITS)
    ax.set_axis_off()
    return fig, ax


def text(ax, x, y, s, size=TEXT, color=INK, ha="center", va="center", **kw):
    return ax.text(x, y, s, fontsize=size, color=color, ha=ha, va=va, zorder=5, **kw)


def box(ax, x, y, w, h, label="", color=MODEL, fill=0.15, size=TEXT, lw=1.0, ls="-", radius=0.6, **kw):
    """A rounded box with lower-left corner (x, y), a light fill of ``color`` and ``label`` at its centre."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=f"round,pad=0,rounding_size={radius}", linewidth=lw,
                                edgecolor=color, facecolor=tint(color, fill) if fill else "none", linestyle=ls,
                                zorder=kw.pop("zorder", 2)))
    if label:
        text(ax, x + w / 2, y + h / 2, label, size=size, **kw)


def cell(ax, x, y, w, h, label="", color=DATA, fill=0.25, size=SMALL, lw=0.8, edge=None, **kw):
    """A square-cornered cell (a token, a vector entry, a pixel) with an optional label."""
    ax.add_patch(Rectangle((x, y), w, h, linewidth=lw, edgecolor=edge or color,
                           facecolor=tint(color, fill) if fill else "none", zorder=3))
    if label:
        text(ax, x + w / 2, y + h / 2, label, size=size, **kw)


def arrow(ax, start, end, color=INK, lw=1.0, ls="-", rad=0.0, head=6):
    """An arrow from ``start`` to ``end``; ``rad`` bends it (arc3), 0 is straight."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=head, color=color, linewidth=lw,
                                 linestyle=ls, connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0, zorder=4))


def line(ax, xs, ys, color=INK, lw=1.0, ls="-", zorder=1):
    ax.plot(xs, ys, color=color, linewidth=lw, linestyle=ls, zorder=zorder, solid_capstyle="butt")


def panel(ax, x, y, letter, title):
    """A panel's heading, ``(a) title``, with its top-left corner at (x, y)."""
    text(ax, x, y, f"({letter}) {title}", size=TITLE, ha="left", va="top", weight="bold")


def plus(ax, x, y, r=0.9, color=INK):
    """The residual sum: a circled plus of radius ``r``."""
    ax.add_patch(Circle((x, y), r, facecolor="white", edgecolor=color, linewidth=1.0, zorder=4))
    line(ax, [x - r * 0.6, x + r * 0.6], [y, y], color=color, zorder=5)
    line(ax, [x, x], [y - r * 0.6, y + r * 0.6], color=color, zorder=5)


def legend_patch(ax, x, y, color, label):
    """A small filled square and its label, for the few diagrams that need a key."""
    ax.add_patch(Rectangle((x, y - 0.6), 1.2, 1.2, facecolor=tint(color, 0.75), edgecolor=color, lw=0.6, zorder=3))
    text(ax, x + 1.8, y, label, size=SMALL, color=color, ha="left")


# A 12x12 garment (a T-shirt) in pixels, for the data card of chapter 0 and the tokenizer of chapter 4.
SHIRT = ["....####....", "..########..", ".##########.", "############", "###.####.###", "##..####..##",
         "....####....", "....####....", "....####....", "....####....", "....####....", "....####...."]


def pixels(ax, x, y, size, blur=0.0):
    """The garment as grey pixels, ``size`` units wide; ``blur`` > 0 mixes in its 3x3 local mean (a
    reconstruction's softness)."""
    n = len(SHIRT)
    s = size / n
    for r, row in enumerate(SHIRT):
        for c, ch in enumerate(row):
            shade = 0.85 if ch == "#" else 0.04
            if blur:
                near = [SHIRT[i][j] == "#" for i in range(max(0, r - 1), min(n, r + 2))
                        for j in range(max(0, c - 1), min(n, c + 2))]
                shade = (1 - blur) * shade + blur * (0.04 + 0.81 * sum(near) / len(near))
            ax.add_patch(Rectangle((x + c * s, y + (n - 1 - r) * s), s, s, linewidth=0, facecolor=tint(INK, shade),
                                   zorder=3))
    ax.add_patch(Rectangle((x, y), size, size, linewidth=0.6, edgecolor=MUTED, facecolor="none", zorder=4))


def shirt_map(n: int) -> list[float]:
    """The garment averaged onto an n x n map (row-major), each cell the mean of the pixels centred in it."""
    size = len(SHIRT)
    cells = [[0.0, 0] for _ in range(n * n)]
    for r, row in enumerate(SHIRT):
        for c, ch in enumerate(row):
            k = int((r + 0.5) / size * n) * n + int((c + 0.5) / size * n)
            cells[k][0] += ch == "#"
            cells[k][1] += 1
    return [v / max(m, 1) for v, m in cells]


def grid(ax, x, y, size, n, color=EXTRA, fill=0.25, lw=0.6, labels=None, size_text=TINY):
    """An n x n grid of cells, ``size`` units wide; ``fill`` is a number or a function of (row, column)."""
    c = size / n
    for r in range(n):
        for k in range(n):
            label = "" if labels is None else labels[r * n + k]
            cell(ax, x + k * c, y + (n - 1 - r) * c, c, c, label, color=color,
                 fill=fill(r, k) if callable(fill) else fill, size=size_text, lw=lw)


# ---------------------------------------------------------------------------------------------------------
# 00: the book's loop and its data.
# ---------------------------------------------------------------------------------------------------------

def getting_started() -> Figure:
    fig, ax = canvas()
    panel(ax, 0.5, 34.6, "a", "Every chapter runs the same loop")
    steps = [
        ("arlib.setup(seed)", "seeds Python, NumPy\nand torch; picks CUDA,\nMPS or the CPU", MUTED),
        ("real data", "the sources of (b):\nchecksummed, offline,\na fixed held-out split", DATA),
        ("build from scratch", "then check it against\narlib's batched version,\nused for large runs", MODEL),
        ("measure", "held-out NLL,\naccuracy, speed\non this machine", EXTRA),
        ("assert", "measured = theory,\ne.g. $H(p) = 4.8$ bits\n$\\leq \\log_2 V = 6.4$", ACCEPT),
    ]
    w, gap, y0, h = 14.4, 1.5, 21.6, 9.6
    for i, (head, body, color) in enumerate(steps):
        x = 0.8 + i * (w + gap)
        box(ax, x, y0, w, h, color=color, fill=0.13)
        font = {"family": "DejaVu Sans Mono", "size": SMALL + 0.5} if i == 0 else {"size": TEXT}
        text(ax, x + w / 2, y0 + h - 1.7, head, weight="bold", **font)
        text(ax, x + w / 2, y0 + 3.5, body, size=SMALL, linespacing=1.35)
        if i:
            arrow(ax, (x - gap + 0.1, y0 + h / 2), (x - 0.1, y0 + h / 2))
    # The two outcomes of the assert, and the loop that re-runs a chapter.
    xa = 0.8 + 4 * (w + gap)
    text(ax, xa + 2.6, 20.4, "✓ the claim holds", size=SMALL, color=ACCEPT, ha="left")
    text(ax, xa + 2.6, 18.8, "✗ it stops: tests fail", size=SMALL, color=REJECT, ha="left")
    xl, yl = 0.8 + w / 2, 19.4
    line(ax, [xa + 1.6, xa + 1.6, xl], [y0, yl, yl], color=MUTED, lw=0.9, ls="--")
    arrow(ax, (xl, yl), (xl, y0 - 0.05), color=MUTED, lw=0.9, ls="--")
    text(ax, 34.0, 17.6, "make execute CHAPTER=NN re-runs a chapter;  make test re-checks them all",
         size=SMALL, color=MUTED, family="DejaVu Sans Mono")

    panel(ax, 0.5, 15.6, "b", "Three real data sources")
    cards = [
        ("text: Shakespeare's 42 works", "5.1M characters, V = 84 symbols\nlast 10 % of every work held out",
         "chapters 1, 2, 3, 6", DATA),
        ("images: Fashion-MNIST", "70 000 grey 28x28 images\nin 10 balanced classes", "chapter 4", EXTRA),
        ("speech: espeak-ng, 16 kHz", "log-mel: 80 channels, 10 ms frames\ntrain and test voices disjoint",
         "chapter 5", DRAFT),
    ]
    cw, cg = 25.6, 1.1
    for i, (head, body, used, color) in enumerate(cards):
        x = 0.8 + i * (cw + cg)
        box(ax, x, 0.6, cw, 12.0, color=color, fill=0.10)
        text(ax, x + 0.9, 11.2, head, size=TEXT, ha="left", weight="bold")
        text(ax, x + 0.9, 7.6, body, size=SMALL, ha="left", linespacing=1.35)
        text(ax, x + 0.9, 2.0, "used in " + used, size=SMALL, ha="left", color=MUTED)
    # A small picture on each card: a line of the text, a garment, a waveform.
    text(ax, 0.8 + cw - 4.0, 3.9, "To be, or\nnot to be", size=SMALL, family="DejaVu Serif", style="italic",
         linespacing=1.2)
    pixels(ax, 0.8 + 2 * cw + cg - 6.6, 1.5, 5.4)
    xw = 0.8 + 3 * cw + 2 * cg - 7.0
    xs = [xw + i * 0.05 for i in range(130)]
    ys = [4.1 + 2.2 * math.sin(i * 0.9) * math.exp(-((i - 40) / 22) ** 2)
          + 1.6 * math.sin(i * 1.7) * math.exp(-((i - 95) / 15) ** 2) for i in range(130)]
    line(ax, xs, ys, color=DRAFT, lw=0.7, zorder=3)
    return fig


# ---------------------------------------------------------------------------------------------------------
# 01: the chain rule, the causal mask, the GPT.
# ---------------------------------------------------------------------------------------------------------

def ar_factorization() -> Figure:
    fig, ax = canvas()
    panel(ax, 0.5, 34.6, "a", "The chain rule: one conditional per character, in a fixed order")
    text(ax, 1.0, 29.0, r"$p(x_1, \dots, x_T) = \prod_{t=1}^{T}\, p(x_t \mid x_{<t})$", size=TEXT + 1, ha="left")
    chars = ["T", "o", "␣", "b", "e"]
    x, w, gap = 25.5, 8.2, 1.9
    for t in range(len(chars)):
        ctx = "".join(chars[:t])
        factor = f"$p(${chars[t]}$)$" if t == 0 else f"$p(${chars[t]}$\\,|\\,${ctx}$)$"
        box(ax, x, 26.6, w, 4.6, factor, color=MODEL, fill=0.12, size=SMALL)
        text(ax, x + w / 2, 25.5, f"$t = {t + 1}$", size=TINY, color=MUTED)
        if t < len(chars) - 1:
            text(ax, x + w + gap / 2, 28.9, "×", size=TEXT)
        x += w + gap
    text(ax, x - 0.5, 28.9, r"$\times \cdots$", size=TEXT, ha="left")
    text(ax, 1.0, 25.4, "true for every joint law and every order;\na model learns the conditionals of one",
         size=SMALL, ha="left", color=MUTED, linespacing=1.3)

    # (b) the causal mask.
    panel(ax, 0.5, 22.4, "b", "Causal mask $M$")
    n, c, x0, y0 = 5, 2.5, 4.4, 3.2
    for t in range(n):
        for s in range(n):
            seen = s <= t
            cell(ax, x0 + s * c, y0 + (n - 1 - t) * c, c, c, "0" if seen else r"$-\infty$",
                 color=MODEL if seen else MUTED, fill=0.28 if seen else 0.10, size=TINY)
        text(ax, x0 - 0.8, y0 + (n - 1 - t) * c + c / 2, chars[t], size=SMALL)
        text(ax, x0 + t * c + c / 2, y0 + n * c + 0.8, chars[t], size=SMALL)
    text(ax, x0 + n * c / 2, y0 + n * c + 2.4, r"key $s$", size=SMALL, color=MUTED)
    text(ax, x0 - 2.6, y0 + n * c / 2, r"query $t$", size=SMALL, color=MUTED, rotation=90)
    text(ax, x0 + n * c / 2, y0 - 1.5, r"$\mathrm{softmax}(QK^\top/\sqrt{d_h} + M)\,\mathbf{V}$", size=SMALL)

    # (c) the GPT, drawn along its residual stream.
    panel(ax, 20.5, 22.4, "c", "A GPT: pre-LN blocks on a residual stream")
    ys = 8.0  # the residual stream
    box(ax, 21.0, 1.0, 9.0, 3.2, r"tokens $x_{1:T}$", color=DATA, fill=0.25, size=SMALL)
    box(ax, 21.0, 6.0, 9.0, 4.0, "token emb.\n+ position emb.", color=DATA, fill=0.15, size=SMALL,
        linespacing=1.2)
    arrow(ax, (25.5, 4.2), (25.5, 5.95))
    line(ax, [30.0, 62.8], [ys, ys], color=INK, lw=1.6)
    text(ax, 33.8, ys - 1.3, r"$T \times d$", size=TINY, color=MUTED, ha="left")
    # The block: two sub-layers, each LayerNorm -> sub-layer -> added back to the stream.
    box(ax, 33.0, 3.3, 26.6, 16.2, color=MUTED, fill=0, ls="--", lw=0.9, radius=1.0)
    text(ax, 59.6, 20.3, r"$\times\, L$ blocks", size=SMALL, color=MUTED, ha="right")
    for xb, name, sub in ((35.0, "causal\nmulti-head\nattention", "mask $M$, $H$ heads"),
                          (47.5, "MLP", r"width $4d$, GELU")):
        line(ax, [xb + 3.5, xb + 3.5], [ys, 10.0])
        box(ax, xb + 1.5, 10.0, 4.0, 2.0, "LN", color=INK, fill=0.05, size=SMALL)
        arrow(ax, (xb + 3.5, 12.0), (xb + 3.5, 12.9))
        box(ax, xb, 12.9, 7.0, 4.8, name, color=MODEL, fill=0.18, size=SMALL, linespacing=1.15)
        text(ax, xb + 3.5, 18.4, sub, size=TINY, color=MUTED)
        line(ax, [xb + 7.0, xb + 9.6, xb + 9.6], [15.3, 15.3, ys + 0.9])
        arrow(ax, (xb + 9.6, 10.2), (xb + 9.6, ys + 0.95))
        plus(ax, xb + 9.6, ys)
    text(ax, 46.3, 4.6, r"$x \leftarrow x + \mathrm{MHA}(\mathrm{LN}(x))$,  "
         r"$x \leftarrow x + \mathrm{MLP}(\mathrm{LN}(x))$", size=TINY)
    # Output: the final LayerNorm, the tied output map, the next-character distribution.
    box(ax, 61.0, 6.9, 3.6, 2.2, "LN", color=INK, fill=0.05, size=SMALL)
    arrow(ax, (64.6, ys), (66.3, ys))
    box(ax, 66.3, 5.8, 6.2, 4.4, "linear\n$W_E^\\top$ (tied)", color=MODEL, fill=0.18, size=SMALL,
        linespacing=1.2)
    arrow(ax, (72.5, ys), (74.0, ys))
    text(ax, 74.2, ys + 0.7, "logits", size=SMALL, ha="left")
    text(ax, 74.2, ys - 0.8, r"$z_t \in \mathbb{R}^V$", size=SMALL, ha="left")
    arrow(ax, (76.5, 10.0), (76.5, 12.6))
    box(ax, 67.0, 12.6, 12.4, 4.6, "softmax:\n$p(x_{t+1} \\mid x_{\\leq t})$", color=ACCEPT, fill=0.15,
        size=SMALL, linespacing=1.3)
    text(ax, 73.2, 19.2, "all $T$ positions in one pass\n(teacher forcing)", size=TINY, color=MUTED,
         linespacing=1.2)
    return fig


# ---------------------------------------------------------------------------------------------------------
# 02: one step of speculative decoding.
# ---------------------------------------------------------------------------------------------------------

# One small target/draft pair shared by the diagrams of chapters 2 and 3 (the same five characters).
PAIR_TOKENS = [",", "␣", ";", "e", "s"]
PAIR_P = [0.45, 0.30, 0.12, 0.05, 0.08]
PAIR_Q = [0.20, 0.25, 0.05, 0.40, 0.10]


def speculative_decoding() -> Figure:
    fig, ax = canvas()
    panel(ax, 0.5, 34.6, "a", r"One step of speculative decoding, $\gamma = 4$")
    cols = [19.5 + i * 6.4 for i in range(5)]  # left edges of positions i = 1 .. gamma + 1
    cw = 4.6
    rows = {"draft": 27.0, "verify": 11.6, "emit": 4.2}
    for y, color, label in ((rows["draft"] + 1.5, DRAFT, "draft $q$"), (rows["verify"] + 2.3, INK, "verify"),
                            (rows["emit"] + 1.5, ACCEPT, "emitted")):
        text(ax, 0.8, y, label, size=TEXT, ha="left", color=color, weight="bold")
    text(ax, 0.8, rows["verify"] - 0.4, "accept $x_i$ with prob.\n"
         r"$\min\!\left(1,\, p_i(x_i) / q_i(x_i)\right)$", size=SMALL, ha="left", linespacing=1.5)
    text(ax, 0.8, 20.6, "target $p$", size=TEXT, ha="left", color=MODEL, weight="bold")
    for y in (rows["draft"], rows["emit"]):
        cell(ax, 9.0, y, 9.0, 3.0, "…not to␣", color=MUTED, fill=0.15, size=SMALL)
    for i, ch in enumerate(["b", "e", "e", "n"]):
        cell(ax, cols[i], rows["draft"], cw, 3.0, ch, color=DRAFT, fill=0.35, size=TEXT)
        text(ax, cols[i] + cw / 2, 31.4, f"$x_{i + 1} \\sim q_{i + 1}$", size=SMALL)
        if i:
            arrow(ax, (cols[i - 1] + cw / 2 + 0.6, rows["draft"] + 3.0), (cols[i] + cw / 2 - 0.6, rows["draft"] + 3.0),
                  rad=-0.6, color=DRAFT, lw=0.9)
        arrow(ax, (cols[i] + cw / 2, rows["draft"] - 0.1), (cols[i] + cw / 2, 23.7), color=MUTED, lw=0.8)
    text(ax, cols[4] + cw / 2, rows["draft"] + 1.5, "γ steps,\none by one", size=TINY, color=DRAFT,
         linespacing=1.15)
    # The target's single pass over gamma + 1 positions.
    box(ax, 9.0, 17.6, cols[4] + cw - 9.0 + 0.6, 6.0, color=MODEL, fill=0.10)
    text(ax, 13.5, 20.5, "one pass\nover $\\gamma + 1$\npositions", size=SMALL, linespacing=1.2)
    for i in range(5):
        cell(ax, cols[i], 18.5, cw, 3.0, f"$p_{i + 1}$", color=MODEL, fill=0.30, size=SMALL)
        arrow(ax, (cols[i] + cw / 2, 18.4), (cols[i] + cw / 2, rows["verify"] + 3.1), color=MUTED, lw=0.8)
    marks = [("b  ✓", ACCEPT, 0.30), ("e  ✓", ACCEPT, 0.30), ("e  ✗", REJECT, 0.30), ("n", MUTED, 0.08)]
    for i, (label, color, fill) in enumerate(marks):
        cell(ax, cols[i], rows["verify"], cw, 3.0, label, color=color, fill=fill, size=TEXT)
    text(ax, cols[3] + cw / 2, rows["verify"] - 0.9, "discarded", size=TINY, color=MUTED)
    cell(ax, cols[4], rows["verify"], cw, 3.0, "", color=MUTED, fill=0)
    text(ax, cols[4] + cw / 2, rows["verify"] + 1.5, "bonus", size=TINY, color=MUTED)
    text(ax, cols[4] + cw / 2, rows["verify"] - 0.9, "if all pass", size=TINY, color=MUTED)
    # What the step emits: the accepted drafts, then the residual draw.
    for i, (ch, color) in enumerate((("b", ACCEPT), ("e", ACCEPT), (",", REJECT))):
        cell(ax, cols[i], rows["emit"], cw, 3.0, ch, color=color, fill=0.30, size=TEXT)
    arrow(ax, (cols[2] + cw / 2, rows["verify"] - 0.1), (cols[2] + cw / 2, rows["emit"] + 3.1), color=REJECT, lw=0.9)
    text(ax, cols[3] - 0.4, rows["emit"] + 1.5, r"$y_3 \sim \mathrm{norm}(\max(0,\, p_3 - q_3))$", size=SMALL,
         ha="left", color=REJECT)
    text(ax, 0.8, 1.3, r"1 to $\gamma + 1$ tokens per target call; all $\gamma$ accepted: bonus $x_{\gamma+1} \sim "
         r"p_{\gamma+1}$", size=SMALL, ha="left")

    # (b) the rule at one position, on a small vocabulary.
    panel(ax, 56.0, 34.6, "b", "At one position")
    p, q = PAIR_P, PAIR_Q
    slack = [max(0.0, a - b) for a, b in zip(p, q)]
    r = [v / sum(slack) for v in slack]
    beta = sum(min(a, b) for a, b in zip(p, q))
    x0, slot, bw, scale = 58.8, 4.0, 1.45, 14.0
    base1, base2 = 20.5, 8.3
    for k, tok in enumerate(PAIR_TOKENS):
        xk = x0 + k * slot
        ax.add_patch(Rectangle((xk, base1), bw, p[k] * scale, facecolor=tint(MODEL, 0.75), edgecolor=MODEL, lw=0.6,
                               zorder=3))
        ax.add_patch(Rectangle((xk + bw, base1), bw, q[k] * scale, facecolor=tint(DRAFT, 0.75), edgecolor=DRAFT,
                               lw=0.6, zorder=3))
        ax.add_patch(Rectangle((xk + bw / 2, base2), bw, r[k] * scale * 0.55, facecolor=tint(REJECT, 0.75),
                               edgecolor=REJECT, lw=0.6, zorder=3))
        for base in (base1, base2):
            text(ax, xk + bw, base - 1.0, tok, size=SMALL)
    for base in (base1, base2):
        line(ax, [x0 - 0.5, x0 + 5 * slot - 0.6], [base, base], lw=0.8)
    legend_patch(ax, 59.0, 28.9, MODEL, "target $p$")
    legend_patch(ax, 68.0, 28.9, DRAFT, "draft $q$")
    text(ax, 58.4, 31.8, rf"accept rate $\beta = \sum_x \min(p, q) = {beta:.2f}$", size=SMALL, ha="left")
    text(ax, 58.4, 16.7, r"on rejection: $r = \mathrm{norm}(\max(0,\, p - q))$", size=SMALL, color=REJECT,
         ha="left")
    text(ax, 58.4, 3.8, r"$P(y) = \min(p, q)(y) + (1 - \beta)\, r(y) = p(y)$", size=SMALL, ha="left")
    text(ax, 58.4, 1.6, r"$\beta = 1 - \mathrm{TV}(p, q)$: exact, whatever $q$", size=SMALL, ha="left")
    return fig


# ---------------------------------------------------------------------------------------------------------
# 03: SpecTr, verification as optimal transport.
# ---------------------------------------------------------------------------------------------------------

def spectr() -> Figure:
    fig, ax = canvas()
    # (a) The maximal coupling of q and p (chapter 3, eq. 2), computed for the pair of chapter 2's diagram.
    panel(ax, 0.5, 34.6, "a", "A maximal coupling")
    p, q, n = PAIR_P, PAIR_Q, len(PAIR_P)
    shared = [min(a, b) for a, b in zip(p, q)]
    tv = 1.0 - sum(shared)
    plan = [[shared[x] if x == y else max(0.0, q[x] - p[x]) * max(0.0, p[y] - q[y]) / tv for y in range(n)]
            for x in range(n)]
    c, gx, gy, bar = 2.7, 7.0, 9.6, 11.0
    for x in range(n):
        for y in range(n):
            m = plan[x][y]
            shown = m >= 0.005
            cell(ax, gx + y * c, gy + (n - 1 - x) * c, c, c, f"{m:.2f}".lstrip("0") if shown else "",
                 color=(ACCEPT if x == y else REJECT) if shown else MUTED,
                 fill=min(0.85, 0.12 + 2.2 * m) if shown else 0.0, size=TINY, edge=MUTED, lw=0.5)
        yr = gy + (n - 1 - x) * c
        ax.add_patch(Rectangle((gx - 0.5 - q[x] * bar, yr + 0.5), q[x] * bar, c - 1.0, facecolor=tint(DRAFT, 0.75),
                               edgecolor=DRAFT, lw=0.6))
        text(ax, gx + n * c + 0.8, yr + c / 2, PAIR_TOKENS[x], size=SMALL)
    for y in range(n):
        xc = gx + y * c
        ax.add_patch(Rectangle((xc + 0.5, gy + n * c + 0.5), c - 1.0, p[y] * bar, facecolor=tint(MODEL, 0.75),
                               edgecolor=MODEL, lw=0.6))
        text(ax, xc + c / 2, gy - 0.9, PAIR_TOKENS[y], size=SMALL)
    text(ax, 0.8, gy + n * c + 2.4, "draft\n$X \\sim q$", size=SMALL, color=DRAFT, ha="left", linespacing=1.2)
    text(ax, gx + n * c + 0.4, gy + n * c + 3.4, "target\n$Y \\sim p$", size=SMALL, color=MODEL, ha="left",
         linespacing=1.2)
    text(ax, 0.8, 5.6, r"$\pi(x, y)$: diagonal = accepted," "\n"
         rf"$\sum_x \pi(x, x) = 1 - \mathrm{{TV}}(p, q) = {1 - tv:.2f}$", size=SMALL, ha="left", linespacing=1.5)
    text(ax, 0.8, 1.5, "off it: $q$'s excess moved\nonto what $p$ lacks", size=SMALL, ha="left", color=REJECT,
         linespacing=1.2)

    # (b) K-SEQ at one position.
    panel(ax, 25.0, 34.6, "b", "K-SEQ: $k$ i.i.d. drafts")
    text(ax, 25.5, 30.6, r"in order, accept $X_i$ with prob. $\min(1,\; p(X_i)\, /\, \rho^* q(X_i))$",
         size=SMALL, ha="left")
    for i, y in enumerate([24.6, 19.6, 14.6]):
        cell(ax, 25.6, y, 4.6, 2.8, f"$X_{i + 1}$", color=DRAFT, fill=0.35, size=SMALL)
        arrow(ax, (30.3, y + 1.4), (32.4, y + 1.4), lw=0.9)
        box(ax, 32.5, y, 6.0, 2.8, f"test $X_{i + 1}$", color=INK, fill=0.05, size=SMALL, radius=0.4)
        arrow(ax, (38.6, y + 1.4), (43.9, y + 1.4), color=ACCEPT, lw=0.9)
        text(ax, 41.2, y + 2.2, "pass", size=TINY, color=ACCEPT)
        arrow(ax, (35.5, y - 0.05), (35.5, y - 2.15 if i < 2 else y - 2.4), color=REJECT, lw=0.9)
        text(ax, 35.9, y - 1.1, "fail", size=TINY, color=REJECT, ha="left")
    box(ax, 44.0, 14.6, 8.0, 12.8, "emit the\nfirst draft\nthat passes", color=ACCEPT, fill=0.15, size=SMALL,
        linespacing=1.3)
    box(ax, 25.6, 8.9, 26.4, 3.2, r"all $k$ fail: $y \sim \mathrm{norm}(\max(0,\, p - \rho^* q))$", color=REJECT,
        fill=0.15, size=SMALL)

    # (c) SpecTr decoding: k draft sequences, one batched target pass, K-SEQ at each depth of the tree.
    panel(ax, 54.0, 34.6, "c", "SpecTr: $k$ sequences, one pass")
    rows = [["b", "e", "d"], ["b", "u", "t"], ["t", "h", "e"]]
    # At each depth a draft is picked by K-SEQ (ok), examined but not picked so that its row dies (out),
    # rejected as the only live draft (no), or never examined because its row died earlier (skip).
    status = [["ok", "ok", "no"], ["ok", "out", "skip"], ["out", "skip", "skip"]]
    look = {"ok": (ACCEPT, 0.35), "no": (REJECT, 0.35), "out": (MUTED, 0.12), "skip": (DRAFT, 0.08)}
    x0, cw, ch = 62.2, 3.4, 2.6
    box(ax, 54.6, 14.3, 24.8, 16.3, color=MODEL, fill=0.07)
    text(ax, 67.0, 29.3, r"target scores $k(\gamma + 1)$ positions", size=TINY, color=MODEL)
    cell(ax, 55.2, 20.4, 5.2, 2.6, "prefix", color=MUTED, fill=0.15, size=TINY)
    for r, row in enumerate(rows):
        y = 24.4 - r * 4.025
        arrow(ax, (60.5, 21.7), (x0 - 0.1, y + ch / 2), color=MUTED, lw=0.7)
        for d, token in enumerate(row):
            color, fill = look[status[r][d]]
            cell(ax, x0 + d * (cw + 0.9), y, cw, ch, token, color=color, fill=fill, size=SMALL)
            if d:
                arrow(ax, (x0 + d * (cw + 0.9) - 0.9, y + ch / 2), (x0 + d * (cw + 0.9), y + ch / 2), color=MUTED,
                      lw=0.6, head=4)
    for d in range(3):
        text(ax, x0 + d * (cw + 0.9) + cw / 2, 15.2, f"depth {d + 1}", size=TINY, color=MUTED)
    text(ax, 55.0, 12.2, "K-SEQ at each depth, over the rows still alive:", size=TINY, ha="left")
    text(ax, 55.0, 10.4, r"$\{$b, b, t$\}$ → b,  $\{$e, u$\}$ → e,  $\{$d$\}$ → ✗: residual ␣", size=TINY,
         ha="left")
    text(ax, 55.0, 8.6, "emits  b e ␣;  all depths pass: a bonus token", size=TINY, ha="left", color=ACCEPT)

    text(ax, 25.5, 5.4, r"best acceptance of any verifier of $k$ drafts (an LP over $V^k$ tuples):  "
         r"$\alpha^*_k = \min_S\; p(S) + 1 - q(S)^k$", size=SMALL, ha="left")
    text(ax, 25.5, 3.2, r"$\rho^*$: the smallest $\rho \geq 1$ with $1 - (1 - \beta(\rho))^k \leq \rho\,\beta(\rho)$,"
         r"  $\beta(\rho) = \sum_x \min(q(x),\, p(x)/\rho)$", size=SMALL, ha="left")
    text(ax, 25.5, 1.0, r"K-SEQ accepts $1 - (1 - \beta(\rho^*))^k \;\geq\; (1 - (1 - 1/k)^k)\, \alpha^*_k$,"
         r"  in $O(V \log V)$ per position", size=SMALL, ha="left")
    return fig


# ---------------------------------------------------------------------------------------------------------
# 04: the VQ tokenizer, raster order and next-scale prediction.
# ---------------------------------------------------------------------------------------------------------

def trapezoid(ax, x, y, w, h, label, narrowing: bool, color=MODEL):
    """An encoder (narrowing to the right) or a decoder (widening) drawn as a trapezoid."""
    inset = h * 0.22
    left, right = (0.0, inset) if narrowing else (inset, 0.0)
    ax.add_patch(Polygon([(x, y + left), (x + w, y + right), (x + w, y + h - right), (x, y + h - left)],
                         closed=True, facecolor=tint(color, 0.18), edgecolor=color, linewidth=1.0, zorder=2))
    text(ax, x + w / 2, y + h / 2, label, size=TEXT)


def visual_autoregression() -> Figure:
    fig, ax = canvas()
    panel(ax, 0.5, 34.6, "a", "A VQ tokenizer: 28x28 image → 7x7 = 49 tokens, K = 256 codes")
    yb = 21.6
    pixels(ax, 1.0, yb, 8.4)
    text(ax, 5.2, yb - 1.0, "image $x$", size=SMALL)
    arrow(ax, (9.6, yb + 4.2), (11.0, yb + 4.2))
    trapezoid(ax, 11.1, yb - 0.4, 6.6, 9.2, "$E$", narrowing=True)
    arrow(ax, (17.8, yb + 4.2), (19.2, yb + 4.2))
    for k in range(3):  # the encoder's 7x7 map of 32-dimensional vectors, drawn with depth
        grid(ax, 19.3 + 0.6 * (2 - k), yb + 0.6 * (2 - k) - 0.4, 7.0, 7, color=MODEL, fill=0.12 + 0.06 * k, lw=0.4)
    text(ax, 23.8, yb - 1.0, r"$z$: 7x7x32", size=SMALL)
    arrow(ax, (27.5, yb + 4.2), (29.7, yb + 4.2))
    box(ax, 29.8, yb + 1.1, 13.0, 6.2, "nearest code\n$k^* = \\arg\\min_k \\Vert z - e_k \\Vert^2$",
        color=EXTRA, fill=0.12, size=SMALL, linespacing=1.4)
    for k, lab in enumerate(["$e_1$", "$e_2$", "$e_3$", "…", "$e_K$"]):  # the codebook
        cell(ax, 31.4 + k * 2.1, yb - 2.2, 1.9, 2.2, lab, color=EXTRA, fill=0.30 if lab != "…" else 0,
             lw=0.5 if lab != "…" else 0, size=TINY)
    text(ax, 36.3, yb - 3.2, "codebook", size=TINY, color=EXTRA)
    arrow(ax, (36.3, yb + 0.05), (36.3, yb + 1.05), color=EXTRA, lw=0.8)
    arrow(ax, (42.9, yb + 4.2), (44.6, yb + 4.2))
    tokens = shirt_map(7)
    grid(ax, 44.7, yb + 0.2, 8.0, 7, color=EXTRA, fill=lambda r, k: 0.08 + 0.6 * tokens[r * 7 + k], lw=0.4)
    text(ax, 48.7, yb - 1.0, "49 token ids $k^*$", size=SMALL, color=EXTRA)
    arrow(ax, (52.8, yb + 4.2), (55.1, yb + 4.2))
    text(ax, 54.0, yb + 5.2, "$e_{k^*}$", size=SMALL)
    trapezoid(ax, 55.2, yb - 0.4, 6.6, 9.2, "$D$", narrowing=False)
    arrow(ax, (61.9, yb + 4.2), (63.3, yb + 4.2))
    pixels(ax, 63.4, yb, 8.4, blur=0.5)
    text(ax, 67.6, yb - 1.0, r"$\hat x = D(z_q)$", size=SMALL)
    text(ax, 79.5, yb - 2.6, r"training: $z_q = z + \mathrm{sg}(e_{k^*} - z)$ passes gradients straight through",
         size=TINY, ha="right", color=MUTED)

    # (b) raster order: one token per pass.
    panel(ax, 0.5, 16.8, "b", "Next token, raster order")
    decided = 17
    grid(ax, 1.2, 1.0, 12.6, 7, color=EXTRA,
         fill=lambda r, k: 0.30 if r * 7 + k < decided else (0.6 if r * 7 + k == decided else 0.0),
         labels=[str(v) for v in range(1, 50)], lw=0.4, size_text=TINY)
    c = 12.6 / 7
    for r in range(7):
        yr = 1.0 + (6 - r) * c + c / 2
        line(ax, [1.2 + c / 2, 1.2 + 6.5 * c], [yr, yr], color=DATA, lw=0.6, zorder=4)
        if r < 6:
            line(ax, [1.2 + 6.5 * c, 1.2 + c / 2], [yr, yr - c], color=DATA, lw=0.6, ls=":", zorder=4)
    text(ax, 15.0, 12.4, r"$p(k_i \mid k_{<i}, c)$", size=SMALL, ha="left")
    text(ax, 15.0, 9.6, "49 passes,\none token each\n(KV cache)", size=SMALL, ha="left", linespacing=1.3)
    text(ax, 15.0, 4.2, "class token $c$\nfirst; guidance\n$l = l_u + w(l_c - l_u)$", size=TINY, ha="left",
         color=MUTED, linespacing=1.3)

    # (c) next-scale prediction: whole maps, coarse to fine.
    panel(ax, 29.5, 16.8, "c", "Next scale (VAR): one pass per map")
    size, x = 7.0, 30.2
    scales = [1, 2, 3, 5, 7]
    for j, sj in enumerate(scales):
        shades = shirt_map(sj)
        grid(ax, x, 4.0, size, sj, color=EXTRA, fill=lambda r, k, sh=shades, n=sj: 0.08 + 0.6 * sh[r * n + k],
             lw=0.5)
        text(ax, x + size / 2, 2.8, f"{sj}x{sj}", size=SMALL)
        text(ax, x + size / 2, 12.0, f"pass {j + 1}", size=TINY, color=MUTED)
        if j < len(scales) - 1:
            arrow(ax, (x + size + 0.2, 7.5), (x + size + 2.3, 7.5), lw=0.9)
        x += size + 2.5
    text(ax, 30.0, 0.9, r"map $j$: all $s_j^2$ tokens at once, given $c$ and maps $< j$ (block-causal)", size=SMALL,
         ha="left")
    text(ax, 78.8, 14.2, r"$1 + 4 + 9 + 25 + 49 = 88$ tokens in 5 passes", size=SMALL, ha="right")
    return fig


# ---------------------------------------------------------------------------------------------------------
# 05: CTC, Paraformer and the autoregressive decoder on one shared encoder.
# ---------------------------------------------------------------------------------------------------------

def speech_recognition() -> Figure:
    fig, ax = canvas()
    text(ax, 0.5, 34.6, "One shared encoder, three ways to write the transcript \"two six\"", size=TITLE, ha="left",
         va="top", weight="bold")
    # The shared front end, on the left, feeding three decoders.
    box(ax, 0.8, 13.0, 6.4, 11.0, "log-mel\nframes\n$80 \\times T$", color=DRAFT, fill=0.15, size=SMALL,
        linespacing=1.3)
    arrow(ax, (7.3, 18.5), (8.8, 18.5))
    box(ax, 8.9, 4.0, 7.8, 27.0, "encoder\n\nconv ÷2\n+ 6\ntransformer\nlayers\n\n$h_{1:T'}$", color=MODEL,
        fill=0.15, size=SMALL, linespacing=1.3)
    ys = {"ctc": 25.4, "cif": 13.8, "aed": 3.0}
    for y in ys.values():
        arrow(ax, (16.8, y + 2.0), (18.3, y + 2.0))
    frames = ["t", "t", "∅", "w", "∅", "∅", "o", "o", "␣", "s", "i", "i", "∅", "x"]
    fw, x0 = 2.3, 18.4

    # CTC: one label per frame, then collapse.
    y = ys["ctc"]
    text(ax, x0, y + 5.6, "CTC: label every frame, then collapse", size=TEXT, ha="left", weight="bold")
    for t, lab in enumerate(frames):
        blank = lab == "∅"
        cell(ax, x0 + t * fw, y + 0.6, fw, 2.8, lab, color=MUTED if blank else DATA, fill=0.10 if blank else 0.35,
             size=SMALL, lw=0.6)
    text(ax, x0 + len(frames) * fw / 2, y - 0.5, r"one symbol per frame: a path $\pi$ of probability "
         r"$y_1(\pi_1) \cdots y_T(\pi_T)$", size=TINY, color=MUTED)
    arrow(ax, (x0 + 14 * fw + 0.3, y + 2.0), (53.2, y + 2.0))
    text(ax, 52.0, y + 3.1, r"$\mathcal{B}$", size=SMALL)
    box(ax, 53.3, y + 0.6, 8.0, 2.8, "two six", color=ACCEPT, fill=0.20, size=SMALL)
    text(ax, 62.5, y + 3.2, r"$\mathcal{B}$: merge repeats, drop ∅", size=TINY, ha="left")
    text(ax, 62.5, y + 1.6, r"$p(l \mid x)$: sum over all $\pi \in \mathcal{B}^{-1}(l)$", size=TINY, ha="left")
    text(ax, 62.5, y - 0.1, "frames independent given $x$", size=TINY, ha="left", color=MUTED)

    # Paraformer: CIF weights, accumulated, fire one acoustic embedding per word; one parallel decoder pass.
    y = ys["cif"]
    text(ax, x0, y + 8.9, "Paraformer: integrate-and-fire, then one parallel pass", size=TEXT, ha="left",
         weight="bold")
    alpha = [0.05, 0.20, 0.30, 0.25, 0.15, 0.10, 0.10, 0.05, 0.10, 0.30, 0.30, 0.25, 0.10, 0.05]
    scale, total = 9.0, 0.0
    colors = (DATA, EXTRA, MUTED)  # the frames' weight going to word 1, word 2, and the unfired tail
    for t, a in enumerate(alpha):
        # A frame whose weight crosses an integer is split: the part that completes a word, the rest to the next.
        lo, hi = total, total + a
        edges = [lo] + [float(k) for k in range(math.floor(lo) + 1, math.ceil(hi)) if lo < k < hi] + [hi]
        base = y + 0.6
        for e0, e1 in zip(edges, edges[1:]):
            token = min(int(e0 + 1e-9), 2)
            h = (e1 - e0) * scale
            ax.add_patch(Rectangle((x0 + t * fw + 0.35, base), fw - 0.7, h, facecolor=tint(colors[token], 0.7),
                                   edgecolor=colors[token], lw=0.5, zorder=3))
            base += h
        total = hi
        if math.floor(hi) > math.floor(lo) and math.floor(hi) <= 2:
            text(ax, x0 + t * fw + fw / 2, y + 0.6 + a * scale + 0.9, "fire", size=TINY, color=REJECT)
    line(ax, [x0, x0 + 14 * fw], [y + 0.6, y + 0.6], lw=0.8)
    text(ax, x0 + 14 * fw / 2, y - 0.5, r"a weight $\alpha_t$ per frame; a word fires when $c_t = \alpha_1 + \dots + "
         r"\alpha_t$ crosses 1, 2, …", size=TINY, color=MUTED)
    arrow(ax, (x0 + 14 * fw + 0.3, y + 2.6), (53.2, y + 2.6))
    for j, (name, color) in enumerate((("$e_1$", DATA), ("$e_2$", EXTRA))):
        cell(ax, 53.3 + j * 3.0, y + 1.2, 2.6, 2.8, name, color=color, fill=0.35, size=SMALL)
    arrow(ax, (59.2, y + 2.6), (60.6, y + 2.6))
    box(ax, 60.7, y + 0.6, 8.0, 4.0, "decoder\none pass", color=MODEL, fill=0.15, size=SMALL, linespacing=1.2)
    arrow(ax, (68.8, y + 2.6), (70.2, y + 2.6))
    box(ax, 70.3, y + 1.2, 8.8, 2.8, "two  six", color=ACCEPT, fill=0.20, size=SMALL)
    text(ax, 53.3, y + 6.4, r"$e_j = \sum_t w_{tj} h_t$,  $N = \lfloor \sum_t \alpha_t + 0.45 \rfloor$ words",
         size=TINY, ha="left")

    # The autoregressive attention decoder: one call per token.
    y = ys["aed"]
    text(ax, x0, y + 7.4, "Autoregressive decoder: one call per character", size=TEXT, ha="left", weight="bold")
    bx = x0
    for u, (given, out) in enumerate(zip(["<s>", "t", "w", "o", "…", "x"], ["t", "w", "o", "␣", "…", "</s>"])):
        if given == "…":
            text(ax, bx + 2.0, y + 2.0, "…", size=TEXT)
            bx += 4.2
            continue
        cell(ax, bx, y + 0.6, 3.2, 2.8, given, color=DATA if u else MUTED, fill=0.3 if u else 0.12, size=TINY)
        arrow(ax, (bx + 3.3, y + 2.0), (bx + 4.2, y + 2.0), lw=0.8)
        box(ax, bx + 4.3, y + 0.3, 3.8, 3.4, "dec", color=MODEL, fill=0.15, size=TINY, radius=0.4)
        text(ax, bx + 6.2, y + 4.7, out, size=TINY)
        arrow(ax, (bx + 6.2, y + 3.8), (bx + 6.2, y + 4.05), lw=0.6, head=3)
        bx += 9.2
    text(ax, 70.0, y + 3.2, "$U + 1$ sequential\ncalls, each attends\nto $h$ (KV cache)", size=TINY, ha="left",
         linespacing=1.3)
    text(ax, 79.5, y + 7.4, r"$\hat y_u = \arg\max_c\, p(c \mid \hat y_{<u}, h)$", size=SMALL, ha="right")
    return fig


# ---------------------------------------------------------------------------------------------------------
# 06: a TopK sparse autoencoder on the residual stream, and superposition.
# ---------------------------------------------------------------------------------------------------------

def column(ax, x, y_mid, values, w=1.6, h=0.9, color=EXTRA, empty_zero=False):
    """A vector drawn as a column of cells centred on ``y_mid``: positive entries in ``color``, negative in
    grey, their shade growing with the magnitude; exact zeros left white when ``empty_zero``."""
    top = y_mid + len(values) * h / 2
    for i, v in enumerate(values):
        if empty_zero and v == 0:
            cell(ax, x, top - (i + 1) * h, w, h, "", color=MUTED, fill=0, lw=0.5)
        else:
            cell(ax, x, top - (i + 1) * h, w, h, "", color=color if v >= 0 else MUTED,
                 fill=0.10 + 0.65 * min(1.0, abs(v)), lw=0.5, edge=MUTED if v < 0 else color)


def sparse_autoencoders() -> Figure:
    fig, ax = canvas()
    panel(ax, 0.5, 34.6, "a", "A TopK sparse autoencoder on the GPT's residual stream")
    # The GPT, cut where the residual stream enters block 3.
    yg = 27.2
    box(ax, 0.8, yg, 11.5, 3.2, "embed, blocks 0-2", color=MODEL, fill=0.15, size=SMALL)
    line(ax, [12.4, 24.0], [yg + 1.6, yg + 1.6], lw=1.4)
    ax.add_patch(Circle((15.5, yg + 1.6), 0.45, facecolor=INK, edgecolor=INK, zorder=4))
    text(ax, 15.5, yg + 3.0, "$x$", size=SMALL)
    line(ax, [24.0, 27.4], [yg + 1.6, yg + 1.6], lw=1.4)
    box(ax, 27.5, yg, 13.0, 3.2, "blocks 3-5, LN, head", color=MODEL, fill=0.15, size=SMALL)
    arrow(ax, (40.6, yg + 1.6), (42.2, yg + 1.6))
    text(ax, 42.5, yg + 1.6, "next-char.\nloss", size=SMALL, ha="left", linespacing=1.2)
    # The SAE below: x -> pre-activations -> TopK -> sparse code f -> reconstruction x_hat.
    ym = 13.6
    n_in, n_lat = 8, 16
    xv = [0.6, -0.3, 0.9, 0.2, -0.7, 0.4, -0.2, 0.8]
    zv = [0.3 * math.sin(1.9 * j + 0.4) + 0.25 * math.cos(0.7 * j) for j in range(n_lat)]
    zv[3], zv[9], zv[13] = 0.95, 0.8, 0.7  # the k largest
    top = sorted(range(n_lat), key=lambda j: -zv[j])[:3]
    fv = [zv[j] if j in top else 0.0 for j in range(n_lat)]
    xh = [0.55, -0.25, 0.85, 0.25, -0.6, 0.4, -0.15, 0.75]
    cols = {"x": 3.0, "z": 15.0, "f": 27.0, "xh": 39.0}
    column(ax, cols["x"], ym, xv, color=MODEL)
    column(ax, cols["z"], ym, zv, color=EXTRA)
    column(ax, cols["f"], ym, fv, color=EXTRA, empty_zero=True)
    column(ax, cols["xh"], ym, xh, color=MODEL)
    line(ax, [15.5, 15.5, cols["x"] + 0.8], [yg + 1.2, 23.4, 23.4], lw=0.9)
    arrow(ax, (cols["x"] + 0.8, 23.4), (cols["x"] + 0.8, ym + n_in * 0.45 + 0.1), lw=0.9)
    arrow(ax, (cols["xh"] + 0.8, ym + n_in * 0.45 + 0.1), (cols["xh"] + 0.8, yg - 0.1), lw=0.9, ls="--", color=ACCEPT)
    text(ax, cols["xh"] - 0.2, 23.4, r"splice: $\hat x$ replaces $x$", size=TINY, color=ACCEPT, ha="right")
    for a, b, label in (("x", "z", "$W_{\\mathrm{enc}}$"), ("z", "f", "TopK"), ("f", "xh", "$W_{\\mathrm{dec}}$")):
        arrow(ax, (cols[a] + 2.0, ym), (cols[b] - 0.4, ym), lw=1.0)
        text(ax, (cols[a] + cols[b]) / 2 + 0.8, ym + 1.1, label, size=SMALL)
    text(ax, cols["x"] + 0.8, 4.9, "$x$\n$d = 256$", size=SMALL, linespacing=1.2)
    text(ax, cols["z"] + 0.8, 4.0, "pre-activations\n$M = 1024$", size=SMALL, linespacing=1.2)
    text(ax, cols["f"] + 0.8, 4.0, "sparse code $f$\n$k = 32$ nonzero", size=SMALL, linespacing=1.2)
    text(ax, cols["xh"] + 0.8, 4.9, "$\\hat x$\n$d = 256$", size=SMALL, linespacing=1.2)
    text(ax, 0.8, 1.0, r"$f = \mathrm{TopK}((x - b_{\mathrm{dec}}) W_{\mathrm{enc}} + b_{\mathrm{enc}})$,  "
         r"$\hat x = f\, W_{\mathrm{dec}} + b_{\mathrm{dec}}$,  loss $\Vert x - \hat x \Vert^2$ + AuxK",
         size=SMALL, ha="left")

    # (b) superposition in the toy model, drawn in m = 2 dimensions.
    panel(ax, 53.0, 34.6, "b", "Superposition, toy model")
    text(ax, 66.3, 30.2, r"$h = Wx$,   $x' = \mathrm{ReLU}(W^\top W x + b)$", size=SMALL)
    cases = [("dense, $p = 1$", "$m$ kept, $D_i = 1$", [0, 90], [MODEL, MODEL]),
             ("sparse", "antipodal, $D_i = 1/2$", [0, 180, 90, 270], [MODEL, MODEL, EXTRA, EXTRA]),
             ("sparser", "pentagon, $D_i = 2/5$", [90 + 72 * i for i in range(5)], [ACCEPT] * 5)]
    for i, (head, foot, angles, colors) in enumerate(cases):
        cx, cy, rad = 57.0 + i * 9.3, 19.5, 3.0
        ax.add_patch(Circle((cx, cy), rad + 0.6, facecolor="none", edgecolor=tint(MUTED, 0.5), lw=0.6, ls=":"))
        line(ax, [cx - rad - 0.6, cx + rad + 0.6], [cy, cy], color=tint(MUTED, 0.4), lw=0.5)
        line(ax, [cx, cx], [cy - rad - 0.6, cy + rad + 0.6], color=tint(MUTED, 0.4), lw=0.5)
        for angle, color in zip(angles, colors):
            a = math.radians(angle)
            arrow(ax, (cx, cy), (cx + rad * math.cos(a), cy + rad * math.sin(a)), color=color, lw=1.2)
        text(ax, cx, 26.2, head, size=SMALL)
        text(ax, cx, 13.4, foot, size=TINY)
    text(ax, 66.3, 9.4, "$m = 2$ dims; arrows: the columns $W_i$,\nwhere feature $i$ lives. Sparser features\n"
         "share the dims: $D_1 + \\dots + D_n \\leq m$", size=SMALL, linespacing=1.35)
    text(ax, 66.3, 3.0, "a ReLU clips the interference, which\nonly hurts when two features are on at once",
         size=TINY, color=MUTED, linespacing=1.3)
    return fig


# ---------------------------------------------------------------------------------------------------------
# 07: the KV cache under pressure: paged blocks, eviction, compression.
# ---------------------------------------------------------------------------------------------------------

def kv_block(ax, x, y, tokens, w, h, fill=0.30, lw=0.6):
    """A KV block of four slots holding ``tokens``; the slots left empty are outlined in red (unused memory)."""
    for s in range(4):
        if s < len(tokens):
            cell(ax, x + s * w, y, w, h, tokens[s], color=DATA, fill=fill, lw=lw, size=SMALL)
        else:
            cell(ax, x + s * w, y, w, h, "", color=REJECT, fill=0, edge=tint(REJECT, 0.55), lw=0.6)


def kv_cache() -> Figure:
    fig, ax = canvas()
    panel(ax, 0.5, 34.6, "a", "PagedAttention, 4 tokens a block")
    # Two samples of the prompt "To be, o": they share its two blocks, then each writes blocks of its own.
    requests = {"A": (["To␣b", "e,␣o", "r␣no", "t"], [3, 5, 0, 2], 29.4, INK),
                "B": (["To␣b", "e,␣o", "f␣th", "em"], [3, 5, 7, 9], 15.6, MUTED)}
    others = {1: "other request", 4: "free", 6: "other request", 8: "free"}
    cw, bh, pitch = 1.6, 1.8, 2.3  # a slot's width, a block's height, the distance between blocks
    xl, xt, xp, ytop = 2.0, 9.3, 22.0, 26.2  # logical blocks, block tables, the pool and its top block
    pool = {}  # physical block -> (tokens, the requests that map it)
    for name, (blocks, table, y0, color) in requests.items():
        text(ax, xl - 1.2, y0 + 1.2, f"request {name}", size=SMALL, ha="left", weight="bold")
        text(ax, xt + 1.1, y0 + 0.8, "block\ntable", size=TINY, color=MUTED, linespacing=1.1)
        for j, (tokens, phys) in enumerate(zip(blocks, table)):
            y = y0 - (j + 1) * pitch
            text(ax, xl - 0.6, y + bh / 2, str(j), size=TINY, color=MUTED)
            kv_block(ax, xl, y, tokens, cw, bh)
            cell(ax, xt, y, 2.2, bh, str(phys), color=INK, fill=0.04, lw=0.6, size=SMALL)
            arrow(ax, (xt + 2.3, y + bh / 2), (xp - 1.5, ytop - phys * pitch + bh / 2), color=color, lw=0.7, head=4)
            pool[phys] = (tokens, pool.get(phys, ("", ""))[1] + name)
    text(ax, xp + 2 * cw, ytop + 3.3, "physical blocks", size=SMALL, weight="bold")
    text(ax, xp + 2 * cw, ytop + 2.2, "one pool for all requests", size=TINY, color=MUTED)
    for phys in range(10):
        y = ytop - phys * pitch
        text(ax, xp - 0.8, y + bh / 2, str(phys), size=TINY, color=MUTED)
        if phys in others:
            busy = others[phys] != "free"
            ax.add_patch(Rectangle((xp, y), 4 * cw, bh, linewidth=0.6, edgecolor=MUTED, zorder=3,
                                   facecolor=tint(MUTED, 0.15) if busy else "none", linestyle="-" if busy else ":"))
            text(ax, xp + 2 * cw, y + bh / 2, others[phys], size=TINY, color=MUTED)
            continue
        tokens, owners = pool[phys]
        shared = len(owners) > 1
        kv_block(ax, xp, y, tokens, cw, bh, fill=0.45 if shared else 0.30, lw=1.2 if shared else 0.6)
        text(ax, xp + 4 * cw + 0.5, y + bh / 2, "A, B: ref 2" if shared else f"{owners}: ref 1", size=TINY,
             ha="left", color=INK if shared else MUTED, weight="bold" if shared else "normal")
    text(ax, 0.8, 3.4, "internal fragmentation (red): only in each request's last block", size=TINY, ha="left",
         color=REJECT)
    text(ax, 0.8, 1.7, "ref 2: A and B share it; a write would first copy it (copy-on-write)", size=TINY, ha="left")

    # (b) which cached positions each eviction policy keeps, at the same position t.
    panel(ax, 37.0, 34.6, "b", "Evicting positions: what stays cached")
    n, w, c, x0 = 20, 6, 1.3, 51.2
    recent = set(range(n - w, n))
    rows = [("full cache", "all $t$ positions", set(range(n))),
            ("sliding window", "the last $w$", recent),
            ("attention sinks", "the first 4 + the last $w$", set(range(4)) | recent),
            ("heavy hitters (H2O)", "most attended + the last $w$", {0, 4, 7, 11} | recent)]
    text(ax, x0 + c / 2, 31.0, "1", size=TINY, color=MUTED)
    text(ax, x0 + (n - 0.5) * c, 31.0, "$t$", size=TINY, color=MUTED)
    text(ax, x0 + n * c / 2 - 2.0, 31.0, "kept", size=TINY, color=ACCEPT, ha="right")
    text(ax, x0 + n * c / 2 - 1.4, 31.0, "evicted", size=TINY, color=REJECT, ha="left")
    text(ax, x0 + n * c + 0.6, 31.0, "size", size=TINY, color=MUTED, ha="left")
    for i, (name, rule, kept) in enumerate(rows):
        y = 28.0 - i * 3.2
        text(ax, 37.6, y + 1.45, name, size=SMALL, ha="left")
        text(ax, 37.6, y + 0.2, rule, size=TINY, ha="left", color=MUTED)
        for k in range(n):
            on = k in kept
            cell(ax, x0 + k * c, y, c, 1.8, "", color=ACCEPT if on else REJECT, fill=0.45 if on else 0.06,
                 edge=None if on else tint(REJECT, 0.4), lw=0.5)
        text(ax, x0 + n * c + 0.6, y + 0.9, str(len(kept)), size=TINY, ha="left", color=MUTED)

    # (c) compressing what stays: GEAR's three parts, KIVI's quantization groups.
    panel(ax, 37.0, 16.4, "c", "Compressing what stays")
    text(ax, 37.6, 13.4, r"GEAR:  $D \approx \mathrm{quant}(D - S) + L + S$", size=SMALL, ha="left")
    m, g, yg = 6, 0.75, 7.2  # 6x6 matrices (tokens x channels) of cells g units wide, bottom at yg
    size, ym = m * g, yg + m * g / 2
    dv = [[0.5 + 0.4 * math.sin(1.3 * r + 2.1 * k) for k in range(m)] for r in range(m)]
    spikes = {(1, 4), (4, 1), (3, 3)}  # the outliers, kept exactly in S
    xs = {"D": 38.0, "Q": 44.3, "L": 50.6, "S": 58.3}
    grid(ax, xs["D"], yg, size, m, color=DATA, fill=lambda r, k: 0.95 if (r, k) in spikes else 0.1 + 0.5 * dv[r][k],
         lw=0.4)
    grid(ax, xs["Q"], yg, size, m, color=EXTRA, fill=lambda r, k: 0.1 + 0.2 * round(2.5 * dv[r][k]), lw=0.4)
    for k in range(m):  # L = A B: a tall thin factor times a short wide one (rank 1 here)
        cell(ax, xs["L"], yg + k * g, g, g, "", color=REJECT, fill=0.15 + 0.08 * k, lw=0.4)
        cell(ax, xs["L"] + 1.4 + k * g, ym - g / 2, g, g, "", color=REJECT, fill=0.55 - 0.07 * k, lw=0.4)
    grid(ax, xs["S"], yg, size, m, color=DATA, fill=lambda r, k: 0.95 if (r, k) in spikes else 0, lw=0.4)
    for x, sign in ((xs["Q"] - 0.9, "≈"), (xs["L"] - 0.9, "+"), (xs["S"] - 0.9, "+")):
        text(ax, x, ym, sign, size=TEXT)
    labels = {"D": ("$D$: K or V", INK), "Q": ("low-bit", EXTRA), "L": ("$L$: low rank", REJECT),
              "S": ("$S$: sparse", INK)}
    for key, (label, color) in labels.items():
        text(ax, xs[key] + size / 2 + (0.7 if key == "L" else 0), yg - 1.0, label, size=TINY, color=color)
    text(ax, 64.2, ym, "quant: 2 to 4-bit codes\n$L$: the quantization\nerror, low rank\n$S$: a few outliers,"
         "\nkept exactly", size=TINY, ha="left", color=MUTED, linespacing=1.25)
    # KIVI: a quantization group runs along the tokens for keys (per channel), along the channels for values.
    text(ax, 37.6, 2.2, "KIVI (2 bits):", size=SMALL, ha="left")
    kivi = (("keys:\nper-channel groups", True), ("values:\nper-token groups", False))
    for j, (name, per_channel) in enumerate(kivi):
        xk, gc, nt, nc, yk = 46.0 + j * 17.0, 0.7, 4, 6, 0.8
        for r in range(nt):
            for k in range(nc):
                shade = 0.2 + 0.1 * ((r + 2 * k) % 3) + (0.4 if per_channel and k == 2 else 0)
                cell(ax, xk + k * gc, yk + (nt - 1 - r) * gc, gc, gc, "", color=EXTRA, fill=shade, lw=0.4)
        for q in range(nc if per_channel else nt):  # one outline per quantization group
            gx, gy = (xk + q * gc, yk) if per_channel else (xk, yk + q * gc)
            gw, gh = (gc, nt * gc) if per_channel else (nc * gc, gc)
            ax.add_patch(Rectangle((gx + 0.07, gy + 0.07), gw - 0.14, gh - 0.14, linewidth=0.7, edgecolor=INK,
                                   facecolor="none", zorder=4))
        text(ax, xk + nc * gc + 0.6, yk + nt * gc / 2, name, size=TINY, ha="left", linespacing=1.2)
    return fig


# ---------------------------------------------------------------------------------------------------------
# Registry and output.
# ---------------------------------------------------------------------------------------------------------

DIAGRAMS: dict[str, Callable[[], Figure]] = {
    "00-getting-started": getting_started,
    "01-ar-factorization": ar_factorization,
    "02-speculative-decoding": speculative_decoding,
    "03-spectr": spectr,
    "04-visual-autoregression": visual_autoregression,
    "05-speech-decoders": speech_recognition,
    "06-sparse-autoencoder": sparse_autoencoders,
    "07-kv-cache": kv_cache,
}


def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a byte-stable SVG (no date, no creator, the fixed id salt of STYLE)."""
    with matplotlib.rc_context(STYLE):
        fig.savefig(path, format="svg", metadata={"Date": None, "Creator": None})


def draw_all(out: str | os.PathLike = OUT, png: str | os.PathLike | None = None) -> list[Path]:
    """Draw every diagram into the folder ``out`` as ``NN-<name>.svg`` and return the paths written.

    Stale diagrams (``NN-*.svg`` files in ``out`` that no drawing function makes any more) are removed, so the
    folder holds exactly the current set. ``png``, if given, is a folder that receives a PNG copy of each, to
    look at (keep it out of the repository).
    """
    if not isinstance(out, (str, os.PathLike)):
        raise ValueError(f"out: expected a folder path, got {type(out).__name__}")
    if png is not None and not isinstance(png, (str, os.PathLike)):
        raise ValueError(f"png: expected a folder path or None, got {type(png).__name__}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in DIAGRAMS.items():
        with matplotlib.rc_context(STYLE):
            fig = draw()
        path = folder / f"{name}.svg"
        save(fig, path)
        written.append(path)
        if png is not None:
            Path(png).mkdir(parents=True, exist_ok=True)
            with matplotlib.rc_context(STYLE):
                fig.savefig(Path(png) / f"{name}.png", format="png", metadata={"Software": None})
    for stale in folder.glob("*.svg"):
        if re.fullmatch(r"\d\d-[a-z0-9-]+\.svg", stale.name) and stale not in written:
            stale.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(OUT), help="folder for the SVGs (default: figures/diagrams)")
    parser.add_argument("--png", default=None, help="also write PNG copies into this folder (not committed)")
    args = parser.parse_args(argv)
    for path in draw_all(args.out, args.png):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Draw each chapter's diagram of its main algorithm into figures/diagrams/ (SVG, byte-stable).

    python tools/diagrams.py            # redraw every diagram
    python tools/diagrams.py --out DIR  # draw into another folder (tests compare with the committed files)

Each diagram is drawn with matplotlib patches and text only, in one style (palette, font sizes), on a
100 x 44 canvas of 8 x 3.5 inches. Re-running gives identical bytes (fixed SVG id salt, no date).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "figures" / "diagrams"

# one palette for the book: data, model, draft, target, accept, reject, neutral
C = {"data": "#dbe9f6", "model": "#fde2c8", "draft": "#e3f1d9", "target": "#fde2c8", "accept": "#c7e9c0",
     "reject": "#f8c9c4", "neutral": "#eeeeee", "edge": "#333333", "note": "#555555"}
W, H = 100, 44
RC = {"svg.hashsalt": "arlib-diagrams", "svg.fonttype": "path", "font.family": "DejaVu Sans", "font.size": 9}


def canvas(title: str):
    fig = plt.figure(figsize=(8, 3.5))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, W)
    ax.set_ylim(0, H)
    ax.axis("off")
    ax.text(1.5, H - 2.5, title, fontsize=11, fontweight="bold", va="top")
    return fig, ax


def box(ax, x, y, w, h, text, color="neutral", size=8.5, bold=False):
    """A rounded box with centred text; (x, y) is the lower-left corner."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.25,rounding_size=0.8",
                                fc=C[color], ec=C["edge"], lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size,
            fontweight="bold" if bold else "normal")


def arrow(ax, start, end, text=None, offset=(0, 1.2), size=7.5, style="-|>", color=None, rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=9, lw=0.9,
                                 color=color or C["edge"], connectionstyle=f"arc3,rad={rad}"))
    if text:
        mx, my = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        ax.text(mx, my, text, ha="center", va="bottom", fontsize=size, color=C["note"])


def note(ax, x, y, text, size=7.5, ha="left"):
    ax.text(x, y, text, fontsize=size, color=C["note"], ha=ha, va="center")


# --------------------------------------------------------------------------------------------- diagrams


def getting_started():
    fig, ax = canvas("How every chapter works")
    steps = [("real data\n(checksummed,\noffline)", "data"), ("a method built\nfrom scratch\n(arlib)", "model"),
             ("a measurement\n(NLL, speed,\naccuracy)", "neutral"), ("an assert:\nmeasurement\nvs theory", "accept"),
             ("the text says\nwhat was\nmeasured", "neutral")]
    for i, (text, color) in enumerate(steps):
        x = 2 + i * 20
        box(ax, x, 14, 15, 16, text, color)
        if i:
            arrow(ax, (x - 4.6, 22), (x - 0.4, 22))
    note(ax, 50, 7, "a claim the measurement contradicts changes the text, never the assert", ha="center")
    return fig


def ar_factorization():
    fig, ax = canvas(r"Chapter 1: $p(x_1, \ldots, x_T) = \prod_{t} \, p(x_t \mid x_{<t})$, computed by a GPT")
    for i, t in enumerate(["H", "a", "m", "."]):  # the chain of conditionals
        box(ax, 2 + i * 10, 27, 7, 6, t, "data", size=10)
        ax.text(5.5 + i * 10, 24, rf"$p(x_{i + 1} \mid x_{{<{i + 1}}})$", ha="center", fontsize=8)
        if i:
            arrow(ax, (9.6 + (i - 1) * 10, 30), (11.6 + (i - 1) * 10, 30))
    # the causal mask
    ax.text(20, 19, "causal mask: position t sees s <= t", ha="center", fontsize=8)
    for r in range(4):
        for c in range(4):
            ax.add_patch(Rectangle((12 + c * 4, 2 + (3 - r) * 4), 4, 4, fc=C["accept"] if c <= r else "white",
                                   ec=C["edge"], lw=0.5))
    # the GPT stack, bottom to top
    x0 = 50
    box(ax, x0, 2, 44, 5, "token + position embeddings", "data")
    box(ax, x0, 10, 44, 17, "", "model")
    ax.text(x0 + 1.5, 25.2, r"$\times L$ blocks", fontsize=8, fontweight="bold", va="center")
    box(ax, x0 + 3, 11.5, 17, 5, "LN -> causal\nattention", "neutral", size=7.5)
    box(ax, x0 + 24, 11.5, 17, 5, "LN -> MLP\n(4d, GELU)", "neutral", size=7.5)
    note(ax, x0 + 22, 20, r"$x \leftarrow x + \mathrm{Attn}(\mathrm{LN}(x))$,  "
         r"$x \leftarrow x + \mathrm{MLP}(\mathrm{LN}(x))$", ha="center")
    box(ax, x0, 30, 44, 5, r"LN -> logits (tied to the embeddings) -> softmax", "data")
    arrow(ax, (x0 + 22, 7.3), (x0 + 22, 9.7))
    arrow(ax, (x0 + 22, 27.3), (x0 + 22, 29.7))
    arrow(ax, (x0 + 20.4, 14), (x0 + 23.6, 14))
    note(ax, 20, 37, "one forward pass scores all T conditionals (teacher forcing)", ha="center")
    return fig


def speculative_decoding():
    fig, ax = canvas(r"Chapter 2: one round of speculative sampling ($\gamma = 4$)")
    note(ax, 2, 36, "1. the draft q proposes, one token at a time")
    for i in range(4):
        box(ax, 4 + i * 11, 27, 9, 6, rf"$\tilde x_{i + 1} \sim q$", "draft")
        if i:
            arrow(ax, (13.4 + (i - 1) * 11, 30), (14.6 + (i - 1) * 11, 30))
    note(ax, 4, 10.5, r"2. the target p scores all $\gamma + 1$ positions in one pass")
    box(ax, 4, 13, 53, 6, r"$p(\cdot \mid x_{<t}),\ p(\cdot \mid x_{<t}, \tilde x_1),\ \ldots,\ "
        r"p(\cdot \mid x_{<t}, \tilde x_{1..\gamma})$", "target")
    for i in range(4):
        arrow(ax, (8.5 + i * 11, 26.6), (8.5 + i * 11, 19.4))
    note(ax, 62, 36, "3. left to right, accept each draft")
    box(ax, 63, 27, 34, 6, r"with probability $\min(1,\ p(\tilde x)/q(\tilde x))$", "accept")
    box(ax, 63, 16, 34, 7.5, "at the first rejection: resample from\n"
        r"$\mathrm{norm}(\max(0,\ p - q))$ and stop", "reject")
    box(ax, 63, 5, 34, 7.5, "all accepted: a bonus token\n"
        r"from $p(\cdot \mid x_{<t}, \tilde x_{1..\gamma})$", "accept")
    arrow(ax, (57.4, 16), (62.6, 30), rad=-0.2)
    arrow(ax, (80, 26.6), (80, 23.9), "reject", offset=(4, -1.5))
    note(ax, 4, 4.5, "output: 1 to gamma + 1 tokens per target call,\n"
         "distributed exactly as sampling from p alone")
    return fig


def spectr():
    fig, ax = canvas("Chapter 3: SpecTr, k drafts and an optimal-transport selection")
    for j in range(3):
        y = 27 - j * 8
        box(ax, 3, y, 12, 6, f"draft {j + 1}", "draft")
        for i in range(3):
            box(ax, 18 + i * 7, y, 6, 6, rf"$\tilde x^{{({j + 1})}}_{i + 1}$", "draft", size=7.5)
    note(ax, 3, 36, r"k i.i.d. draft sequences from q (here k = 3, $\gamma$ = 3)")
    box(ax, 45, 13, 22, 20, "one target pass\nscores every\ndraft's positions\n(a batch of k)", "target")
    arrow(ax, (39.4, 23), (44.6, 23))
    box(ax, 72, 22, 26, 11, "draft selection: a coupling\n" r"of $q^{\otimes k}$ with p that keeps" "\n"
        "a draft with high probability\n(k-sequential selection)", "accept", size=7.5)
    box(ax, 72, 8, 26, 10, "no draft survives:\nsample from a residual\n"
        r"$p_{\mathrm{res}}$, as in chapter 2", "reject", size=7.5)
    arrow(ax, (67.4, 27), (71.6, 27))
    arrow(ax, (85, 21.6), (85, 18.4), "none", offset=(3.5, -1.5))
    note(ax, 3, 6, "the acceptance probability is bounded by the optimal transport value;\n"
         "the output still follows p exactly")
    return fig


def visual_ar():
    fig, ax = canvas("Chapter 4: an image tokenizer, then two orders of generation")
    box(ax, 2, 26, 10, 8, "image\n28 x 28", "data")
    box(ax, 15, 26, 11, 8, "encoder", "model")
    box(ax, 29, 26, 14, 8, "nearest code\n(codebook K)", "neutral")
    box(ax, 46, 26, 11, 8, "7 x 7\ntokens", "data")
    box(ax, 60, 26, 11, 8, "decoder", "model")
    box(ax, 74, 26, 10, 8, "image", "data")
    for a, b in ((12.4, 14.6), (26.4, 28.6), (43.4, 45.6), (57.4, 59.6), (71.4, 73.6)):
        arrow(ax, (a, 30), (b, 30))
    note(ax, 2, 20, "raster order: one token per step, 49 steps")
    for r in range(3):
        for c in range(4):
            ax.add_patch(Rectangle((4 + c * 4, 4 + (2 - r) * 4), 4, 4, fc=C["data"], ec=C["edge"], lw=0.5))
    arrow(ax, (5, 14), (19, 14), style="-|>")
    arrow(ax, (5, 10), (19, 10), style="-|>")
    note(ax, 40, 20, "next-scale order: a whole token map per step, coarse to fine")
    x = 40
    for n in (1, 2, 3, 4):
        s = 10 / n
        for r in range(n):
            for c in range(n):
                ax.add_patch(Rectangle((x + c * s, 5 + r * s), s, s, fc=C["accept"], ec=C["edge"], lw=0.5))
        if n < 4:
            arrow(ax, (x + 10.6, 10), (x + 13.4, 10))
        x += 14
    return fig


def speech():
    fig, ax = canvas("Chapter 5: three decoders on one acoustic encoder")
    box(ax, 2, 16, 11, 10, "log-mel\nframes", "data")
    box(ax, 16, 16, 12, 10, "encoder\n(frames\n-> states)", "model")
    arrow(ax, (13.4, 21), (15.6, 21))
    rows = [(28.5, "CTC: a label or blank per frame", "_ _ h h _ i i _  ->  collapse  ->  \"hi\"", "accept"),
            (17.5, "Paraformer: CIF integrates weights, fires a token at 1",
             "one parallel pass of the decoder over all fired tokens", "draft"),
            (6.5, "attention decoder: one token at a time",
             "y_u ~ p(y_u | y_<u, x): one decoder call per character", "reject")]
    for y, title, body, color in rows:
        box(ax, 34, y, 63, 8.5, "", color)
        ax.text(36, y + 6.0, title, fontsize=8.5, fontweight="bold", va="center")
        ax.text(36, y + 2.4, body, fontsize=8, va="center")
        arrow(ax, (28.4, 21), (33.6, y + 4.5))
    note(ax, 2, 4, "non-autoregressive\n(fast) above,\nautoregressive below", size=7)
    return fig


def sparse_autoencoders():
    fig, ax = canvas("Chapter 6: a TopK sparse autoencoder on the residual stream")
    box(ax, 2, 18, 13, 10, "residual\nstream h\n(d = 256)", "data")
    box(ax, 19, 18, 14, 10, r"encoder" + "\n" + r"$W_e^\top (h - b_d) + b_e$", "model")
    box(ax, 37, 18, 12, 10, "TopK:\nkeep the k\nlargest", "neutral")
    box(ax, 53, 18, 16, 10, "sparse code z\n(M = 1024 latents,\nk = 32 active)", "accept")
    box(ax, 73, 18, 12, 10, "decoder\n" + r"$W_d z + b_d$", "model")
    box(ax, 88, 18, 10, 10, r"$\hat h$", "data", size=10)
    for a, b in ((15.4, 18.6), (33.4, 36.6), (49.4, 52.6), (69.4, 72.6), (85.4, 87.6)):
        arrow(ax, (a, 23), (b, 23))
    note(ax, 50, 12, r"trained to minimize $\|h - \hat h\|^2$ (+ an auxiliary loss that revives dead latents)",
         ha="center")
    note(ax, 50, 6, "superposition: more features than dimensions, each a direction; "
         "the SAE's decoder rows recover them", ha="center")
    return fig


DIAGRAMS = {
    "00-getting-started": getting_started,
    "01-ar-factorization": ar_factorization,
    "02-speculative-decoding": speculative_decoding,
    "03-spectr": spectr,
    "04-visual-autoregression": visual_ar,
    "05-speech-decoders": speech,
    "06-sparse-autoencoder": sparse_autoencoders,
}


def draw_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(RC):
        for name, draw in DIAGRAMS.items():
            fig = draw()
            path = out / f"{name}.svg"
            fig.savefig(path, metadata={"Date": None, "Creator": None})
            plt.close(fig)
            paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--png", action="store_true", help="also write PNG previews (not committed)")
    args = parser.parse_args(argv)
    for path in draw_all(args.out):
        print(path)
    if args.png:
        with matplotlib.rc_context(RC):
            for name, draw in DIAGRAMS.items():
                fig = draw()
                fig.savefig(args.out / f"{name}.png", dpi=110)
                plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())

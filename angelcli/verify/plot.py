"""`--plot FILE.png`: a layers x experts heatmap of expert load relative to the mean load.

With matplotlib installed the figure has axes, ticks and a colour bar. matplotlib is not a dependency of
angel (it is large and only this flag needs it), so without it the heatmap is written as a plain PNG by
the standard library: one coloured cell per (layer, expert), rows in layer order, experts left to right.
Both use the same scale: 0 (dead expert, darkest) .. 2 x mean load or more (brightest), 1.0 = balanced.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from angelcli.fsutil import atomic_path

VMAX = 2.0  # load / mean at which the colour saturates
# Anchor colours of matplotlib's viridis at 0, 0.25, 0.5, 0.75, 1.
_VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def relative_load(layers: list[dict]) -> list[list[float]]:
    """Rows per MoE layer of expert_load / mean_load (0 where the layer saw no tokens)."""
    return [[x / s["mean_load"] if s["mean_load"] else 0.0 for x in s["expert_load"]] for s in layers]


def colour(v: float) -> tuple[int, int, int]:
    t = min(max(v / VMAX, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return tuple(round(a[c] + (b[c] - a[c]) * f) for c in range(3))


def png_bytes(grid: list[list[float]], cell_w: int, cell_h: int) -> bytes:
    """RGB PNG (8-bit, no interlace) of `grid` with each value drawn as a cell_w x cell_h block."""
    rows = []
    for values in grid:
        line = b"".join(bytes(colour(v)) * cell_w for v in values)
        rows += [b"\x00" + line] * cell_h  # filter type 0 per scanline
    width, height = len(grid[0]) * cell_w, len(grid) * cell_h

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
            + chunk(b"IEND", b""))


def load_heatmap(layers: list[dict], path: str | Path, title: str = "expert load / mean") -> str:
    """Write the heatmap; returns "matplotlib" or "png" (which writer was used)."""
    grid = relative_load(layers)
    path = Path(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        experts = len(grid[0])
        cell_w = max(1, min(16, 1024 // experts))
        cell_h = max(2, min(24, 512 // len(grid)))
        with atomic_path(path) as tmp:
            tmp.write_bytes(png_bytes(grid, cell_w, cell_h))
        return "png"
    fig, ax = plt.subplots(figsize=(max(6.0, len(grid[0]) / 16), max(3.0, len(grid) / 3)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=VMAX, interpolation="nearest")
    ax.set_yticks(range(len(layers)), [str(s["layer"]) for s in layers])
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="load / mean")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "matplotlib"

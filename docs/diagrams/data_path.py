"""Renders docs/data-path.png, the data path of one parmap, with matplotlib.

    python docs/diagrams/data_path.py      # writes docs/data-path.png
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data-path.png")

CALLER = "#dbeafe"
SHM = "#fef3c7"
WORKER = "#dcfce7"
EDGE = "#334155"


def box(ax, x, y, w, h, title, lines=(), color="white", fs=10):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec=EDGE, lw=1.2))
    ax.text(x + w / 2, y + h - 0.17, title, ha="center", va="top",
            fontsize=fs, weight="bold", color="#0f172a")
    for i, line in enumerate(lines):
        ax.text(x + w / 2, y + h - 0.48 - 0.24 * i, line, ha="center",
                va="top", fontsize=fs - 1.5, color="#1e293b")


def arrow(ax, x0, y0, x1, y1, label=None, dy=0.12, rad=0.0, dx=0.0):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>",
                                 mutation_scale=14, lw=1.4, color=EDGE,
                                 connectionstyle="arc3,rad={}".format(rad)))
    if label:
        ax.text((x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy, label, ha="center",
                va="bottom", fontsize=8, color="#475569", style="italic")


def main():
    fig, ax = plt.subplots(figsize=(12, 6.6), dpi=110)
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 6.6)
    ax.axis("off")
    ax.text(6, 6.4, "parmapper: the path of the items and the results",
            ha="center", va="top", fontsize=14, weight="bold")

    # Regions
    ax.add_patch(FancyBboxPatch((0.2, 0.35), 3.6, 5.4, boxstyle="round,pad=0.02",
                                fc="#f8fafc", ec="#94a3b8", lw=1, ls="--"))
    ax.text(2.0, 5.83, "your process (the caller)", ha="center", fontsize=10, va="bottom",
            color="#475569")
    ax.add_patch(FancyBboxPatch((4.15, 0.35), 3.3, 5.4, boxstyle="round,pad=0.02",
                                fc="#fffbeb", ec="#d97706", lw=1, ls="--"))
    ax.text(5.8, 5.83, "shared memory (mmap before fork)", ha="center",
            fontsize=10, va="bottom", color="#92400e")
    ax.add_patch(FancyBboxPatch((7.8, 0.35), 4.0, 5.4, boxstyle="round,pad=0.02",
                                fc="#f0fdf4", ec="#16a34a", lw=1, ls="--"))
    ax.text(9.8, 5.83, "N forked workers x Nt threads", ha="center",
            fontsize=10, va="bottom", color="#166534")

    # Caller side
    box(ax, 0.45, 4.15, 3.1, 1.4, "1. your input (seq)",
        ["read lazily, a bounded window ahead",
         "chunksize items -> one task", "pickled (protocol 5)"], CALLER)
    box(ax, 0.45, 2.35, 3.1, 1.45, "2. dispatch  (C engine)",
        ["task -> the live slot with", "the fewest tasks in flight;",
         "never blocks on a full ring"], CALLER)
    box(ax, 0.45, 0.55, 3.1, 1.45, "5. delivery  (C engine)",
        ["ordered: read the slot holding", "the next index; unordered: any",
         "-> unpickle -> progress -> you"], CALLER)

    # Rings
    box(ax, 4.4, 3.55, 2.8, 1.75, "task rings",
        ["one per slot, parent -> worker", "lock-free SPSC, 8-byte frames",
         "futex bell only when idle"], SHM)
    box(ax, 4.4, 0.95, 2.8, 1.75, "result rings",
        ["one per slot, worker -> parent", "results wait here (bounded):",
         "backpressure, no reorder buffer"], SHM)

    # Workers
    box(ax, 8.05, 2.35, 3.5, 2.9, "3-4. worker thread (slot)",
        ["fun inherited by fork: never pickled",
         "(lambdas, closures, notebook cells)",
         "unpickle items -> star/kwstar table",
         "-> fun(*args, **kwargs)",
         "exceptions caught per item",
         "(seq_index, traceback)",
         "pickle results -> result ring"], WORKER)
    box(ax, 8.05, 0.55, 3.5, 1.45, "watched by the caller",
        ["waitpid whenever it would sleep:", "a dead worker -> WorkerDiedError",
         "naming its items (or a retry)"], WORKER)

    arrow(ax, 2.0, 4.15, 2.0, 3.8)
    arrow(ax, 3.55, 3.2, 4.4, 4.2, "task bytes")
    arrow(ax, 7.2, 4.45, 8.05, 4.45)
    ax.text(7.62, 4.3, "spin, or\nfutex wake", ha="center", va="top",
            fontsize=8, color="#475569", style="italic")
    arrow(ax, 8.05, 2.9, 7.2, 1.9)
    ax.text(7.62, 2.1, "result\nbytes", ha="center", va="top", fontsize=8,
            color="#475569", style="italic")
    arrow(ax, 4.4, 1.7, 3.55, 1.35, "results")

    ax.text(6, 0.12, "With executor= (dask, MPI, a process pool) steps 2-4 are "
            "the executor's: chunks are submitted with bounded look-ahead and "
            "fun travels the executor's way (cloudpickle for dask).",
            ha="center", fontsize=8.5, color="#475569")
    fig.savefig(OUT, bbox_inches="tight", facecolor="white")
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()

"""Sliding-window inference throughput: cohortscale against MONAI's ``sliding_window_inference``.

Both blend the same network's patch outputs with a Gaussian importance map (σ = 0.125 of the patch), with
the same patch size, overlap and patches per call, on the same volumes, in the same process, best of
``--repeats`` after one warm-up. Reported: seconds per volume, voxels per second (of the volume the
network sees), the ratio MONAI / ours (> 1: ours is faster), and the largest difference between the two
outputs (they differ only where the patch layouts do).

Run: ``.venv/bin/python benchmarks/segmentation_inference.py [--threads N] [--repeats N]`` (MONAI from the
``bench`` extra; without it only our rows are written).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from cohortscale.models.inference import IMPORTANCE_SIGMA_SCALE, sliding_window_inference
from cohortscale.models.unet import UNet3D, UNetConfig, count_parameters
from common import write_results

#: The network of the default model's architecture (weights do not change the time).
NETWORK = UNetConfig(in_channels=2, n_classes=14, depth=4, base_width=16, residual=True)
PATCH = (32, 32, 48)
OVERLAP = 0.5
BATCH = 4
#: Volumes the network sees: the demo-scale fused grid, and a grid twice as fine in-plane.
VOLUMES = {"demo-scale fused grid 94×44×56": (94, 44, 56), "2× finer in-plane 94×88×112": (94, 88, 112)}


def best_time(run, repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeats`` calls after a warm-up, and the last output."""
    output = run()
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        output = run()
        best = min(best, time.perf_counter() - start)
    return best, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = UNet3D(NETWORK).eval()
    try:
        from monai import __version__ as monai_version
        from monai.inferers import sliding_window_inference as monai_inference
    except ImportError:
        monai_inference, monai_version = None, None
    rows = []
    for name, shape in VOLUMES.items():
        image = torch.randn(NETWORK.in_channels, *shape, generator=torch.Generator().manual_seed(1))
        voxels = int(np.prod(shape))
        ours_s, ours = best_time(
            lambda image=image: sliding_window_inference(
                image, network, PATCH, overlap=OVERLAP, batch_size=BATCH
            ),
            args.repeats,
        )
        row = {
            "volume": name,
            "patch": "×".join(map(str, PATCH)),
            "overlap": OVERLAP,
            "batch": BATCH,
            "threads": args.threads,
            "ours_s": round(ours_s, 3),
            "ours_voxels_per_s": round(voxels / ours_s),
            "monai_s": None,
            "monai_over_ours": None,
            "max_abs_difference": None,
        }
        if monai_inference is not None:

            def monai_run(image=image):
                with torch.inference_mode():
                    return monai_inference(
                        image[None], PATCH, BATCH, network, overlap=OVERLAP, mode="gaussian",
                        sigma_scale=IMPORTANCE_SIGMA_SCALE,
                    )[0]  # fmt: skip

            monai_s, theirs = best_time(monai_run, args.repeats)
            row.update(
                monai_s=round(monai_s, 3),
                monai_over_ours=round(monai_s / ours_s, 2),
                max_abs_difference=float((theirs - ours).abs().max()),
            )
        rows.append(row)
        print(row, flush=True)
    notes = "\n\n".join(
        [
            f"Network: UNet3D {NETWORK.to_dict()} ({count_parameters(network):,} parameters), random weights "
            "(the time does not depend on them), eval mode, float32 on the CPU. Input: 2 channels of "
            "standard normal noise.",
            f"Both: patch {PATCH}, overlap {OVERLAP}, {BATCH} patches per network call, Gaussian importance "
            f"σ = {IMPORTANCE_SIGMA_SCALE} of the patch; MONAI {monai_version or '(not installed)'} "
            "`sliding_window_inference(mode='gaussian')`. Best of "
            f"{args.repeats} after one warm-up, torch threads = {args.threads}, torch {torch.__version__}.",
            "max_abs_difference: largest difference between the two blended outputs (logits); the patch "
            "layouts differ (ours spreads the patches evenly between the ends, MONAI steps by "
            "patch·(1 − overlap) and aligns the last one), so the blends differ slightly near patch borders.",
            "GPU: none in this run.",
        ]
    )
    write_results("segmentation_inference", rows, notes)


if __name__ == "__main__":
    main()

"""Contact sheet of synthetic identities: ``python -m pftray.data.preview OUT.png [--resolution 64]``.

Row ``i`` shows identity ``client-i``: its reference frame, then every ``stride``-th frame of one clip
(mouth motion, head pose, blinks), the last one with its mouth box outlined in white.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from pftray.data.synthetic import reference_frame, render_clip, sample_identity


def preview_grid(
    *, num_identities: int = 6, num_frames: int = 40, stride: int = 5, resolution: int = 64, seed: int = 0
) -> np.ndarray:
    """uint8 ``[num_identities * R, (2 + num_frames // stride) * R, 3]`` grid of rendered frames."""
    if stride < 1 or num_frames < stride:
        raise ValueError(f"need 1 <= stride <= num_frames, got stride={stride}, num_frames={num_frames}")
    rows = []
    for i in range(num_identities):
        identity = sample_identity(seed, i)
        clip = render_clip(identity, num_frames=num_frames, resolution=resolution, seed=[seed, i])
        picks = list(range(0, num_frames, stride))
        boxed = clip.frames[picks[-1]].copy()
        y0, y1, x0, x1 = clip.mouth_box[picks[-1]]
        boxed[[y0, y1 - 1], x0:x1] = 255
        boxed[y0:y1, [x0, x1 - 1]] = 255
        rows.append(
            np.concatenate([reference_frame(identity, resolution), *clip.frames[picks], boxed], axis=1)
        )
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--identities", type=int, default=6)
    parser.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscaling for viewing")
    args = parser.parse_args(argv)
    grid = preview_grid(num_identities=args.identities, resolution=args.resolution)
    image = Image.fromarray(grid)
    image = image.resize((grid.shape[1] * args.scale, grid.shape[0] * args.scale), Image.Resampling.NEAREST)
    image.save(args.out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Self-blended pseudo-fakes (monitor/training/sbi.py) of real corpus frames, as one PNG grid
to look at: per row the real face crop, the pseudo-fake's crop, its blend mask and the
difference (x4), with the parameters drawn printed beside.

    .venv/bin/python bench/sbi_samples.py --out sbi.png [--seed 0] [--rows 6]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from expose.monitor.features.face_id import sample_faces
from expose.monitor.training.sbi import face_crop, rng, self_blend

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CLIPS = ["real/trump/speech_01.mp4", "real/macron/speech_01.mp4", "real/ocasio_cortez/hdtf_000.mp4",
         "real/ebs_professor/docu4_clip.mp4", "real/vox_00010/clip_01.mp4", "real/mead_m030/M030_sad_3_001.mp4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("sbi.png"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--face-model", type=Path, default=SHARED / "models/face_landmarker.task")
    args = ap.parse_args()
    tiles = []
    for i in range(args.rows):
        path = SHARED / "corpus" / CLIPS[i % len(CLIPS)]
        faces, _ = sample_faces(path, args.face_model, 1 + i // len(CLIPS), stride=17)
        face = faces[-1]
        fake = self_blend(face.image, face.landmarks, rng(args.seed + i))
        real_c = face_crop(face.image, face.landmarks, args.size)
        fake_c = face_crop(fake.image, face.landmarks, args.size)
        mask_rgb = (np.repeat(fake.mask[..., None], 3, axis=2) * 255).astype(np.uint8)
        mask_c = face_crop(mask_rgb, face.landmarks, args.size)
        diff = np.clip(np.abs(fake_c.astype(np.int16) - real_c.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
        tiles.append(np.concatenate([real_c, fake_c, mask_c, diff], axis=1))
        print(f"{path.relative_to(SHARED / 'corpus')}: {fake.params}")
    cv2.imwrite(str(args.out), cv2.cvtColor(np.concatenate(tiles, axis=0), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

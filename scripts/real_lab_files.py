"""Small lab-layout data files from the real faces in ../shared/real, for trying the commands on real models.

`python scripts/real_lab_files.py DIR [--count N]` writes DIR/cl/valid.h5, cl/test.h5 (clean faces with their
identities), bd/bd_valid.h5 and bd/bd_test.h5 (faces wearing the sunglasses trigger, labelled 0): N augmented
copies (shifts, flips, brightness, noise) of the 5 faces of each kind, exactly the tests' `lab_files`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch_badnet.data.real_faces import write_lab_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--count", type=int, default=200, help="images per file (default 200, as the tests)")
    args = parser.parse_args()
    for key, path in write_lab_files(args.out, args.count).items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()

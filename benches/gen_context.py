#!/usr/bin/env python3
"""Generates seeded, reproducible benchmark inputs for benches/*.sh: a source tree of many small
text files, binary assets, and "random-ish" layer data (half random, half compressible)."""

import argparse
import os
import random

WORDS = (
    "int static const return struct void char unsigned size_t buffer length index count "
    "value result error handle config layer image digest manifest blob registry push pull"
).split()


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as out:
        out.write(data)


def source_file(rng, index):
    lines = [f"/* generated file {index} */", "#include <stdio.h>", ""]
    for function in range(rng.randint(2, 12)):
        lines.append(f"static int f{index}_{function}(int x) {{")
        for _ in range(rng.randint(2, 10)):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
            lines.append(f"    x += {rng.randint(0, 9999)}; /* {words} */")
        lines.append("    return x;")
        lines.append("}")
    return ("\n".join(lines) + "\n").encode()


def generate_source(root, files, seed):
    """`files` small text files (mostly .c, some .h and .md) in a three-level tree."""
    rng = random.Random(seed)
    per_dir = 10
    for index in range(files):
        directory = index // per_dir
        path = os.path.join(
            root,
            f"module{directory // 100:02d}",
            f"pkg{(directory // 10) % 10}",
            f"unit{directory % 10}",
        )
        suffix = rng.choices([".c", ".h", ".md"], weights=[7, 2, 1])[0]
        write(os.path.join(path, f"file{index:05d}{suffix}"), source_file(rng, index))


def randomish(rng, size):
    """`size` bytes alternating random 4 KiB blocks with repetitive text blocks, so gzip has
    real work to do and roughly halves the size."""
    chunks = []
    total = 0
    block = 4096
    while total < size:
        if rng.random() < 0.5:
            chunk = rng.randbytes(block)
        else:
            line = " ".join(rng.choice(WORDS) for _ in range(12)).encode() + b"\n"
            chunk = (line * (block // len(line) + 1))[:block]
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)[:size]


def generate_assets(root, megabytes, files, seed):
    """`files` binary assets totalling `megabytes` MiB: random (incompressible) data."""
    rng = random.Random(seed)
    size = megabytes * 1024 * 1024 // files
    for index in range(files):
        write(os.path.join(root, f"asset{index:02d}.bin"), rng.randbytes(size))


def generate_layer(root, megabytes, files, seed):
    """`files` random-ish files totalling `megabytes` MiB."""
    rng = random.Random(seed)
    size = megabytes * 1024 * 1024 // files
    for index in range(files):
        write(os.path.join(root, f"data{index:03d}.bin"), randomish(rng, size))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    source = commands.add_parser("source")
    source.add_argument("dir")
    source.add_argument("--files", type=int, default=5000)
    source.add_argument("--seed", type=int, default=1)
    assets = commands.add_parser("assets")
    assets.add_argument("dir")
    assets.add_argument("--mb", type=int, default=40)
    assets.add_argument("--files", type=int, default=20)
    assets.add_argument("--seed", type=int, default=2)
    layer = commands.add_parser("layer")
    layer.add_argument("dir")
    layer.add_argument("--mb", type=int, required=True)
    layer.add_argument("--files", type=int, default=8)
    layer.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    if args.command == "source":
        generate_source(args.dir, args.files, args.seed)
    elif args.command == "assets":
        generate_assets(args.dir, args.mb, args.files, args.seed)
    else:
        generate_layer(args.dir, args.mb, args.files, args.seed)


if __name__ == "__main__":
    main()

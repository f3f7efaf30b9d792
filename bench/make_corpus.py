"""Write a synthetic JSONL corpus of a given size for bench/data_prep.py.

Documents are runs of random lines of the built-in Shakespeare corpus (so the text, its
alphabet and its word lengths are real), with metadata `genre` and `author_group`, and
with what a real crawl holds: 1% exact copies (case and spacing changed), 2% near
copies (a twentieth of the lines replaced), and a few bad lines (not JSON, no text field).

    python bench/make_corpus.py /tmp/corpus_1g --gigabytes 1
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from lightning_llm.data.shakespeare import read_shakespeare

GENRES = ["comedy", "tragedy", "history", "poem"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    lines = [line for doc in read_shakespeare(["gutenberg", "folio"]) for line in doc.text.splitlines()
             if len(line.strip()) > 10]
    args.out.mkdir(parents=True, exist_ok=True)
    budget = int(args.gigabytes * 1e9)
    per_file = budget // args.files
    written, recent = 0, []
    for f in range(args.files):
        size = 0
        with open(args.out / f"part-{f:03d}.jsonl", "w") as out:
            while size < per_file:
                roll = rng.random()
                if roll < 0.01 and recent:
                    text = "  ".join(rng.choice(recent).upper().split(" "))  # a copy up to case and spacing
                elif roll < 0.03 and recent:
                    copy = rng.choice(recent).split("\n")
                    for i in rng.sample(range(len(copy)), len(copy) // 20):
                        copy[i] = rng.choice(lines)
                    text = "\n".join(copy)
                else:
                    text = "\n".join(rng.choices(lines, k=rng.randint(40, 200)))
                    recent = (recent + [text])[-1000:]
                record = {"text": text, "genre": rng.choice(GENRES), "author_group": f"a{rng.randrange(20000)}"}
                row = json.dumps(record) + "\n"
                if roll > 0.9995:
                    row = row[: len(row) // 2] + "\n"  # a truncated line: not JSON
                elif 0.999 < roll <= 0.9995:
                    row = json.dumps({"body": text}) + "\n"  # no text field
                out.write(row)
                size += len(row)
        written += size
        print(f"{args.out}/part-{f:03d}.jsonl: {size / 1e6:.0f} MB", flush=True)
    print(f"wrote {written / 1e9:.2f} GB")


if __name__ == "__main__":
    main()

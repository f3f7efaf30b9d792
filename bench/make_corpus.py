"""Write synthetic corpora for bench/data_prep.py and the tests.

`--kind jsonl` (default): a JSONL corpus of a given size.

Documents are runs of random lines of the built-in Shakespeare corpus (so the text, its
alphabet and its word lengths are real), with metadata `genre` and `author_group`, and
with what a real crawl holds: 1% exact copies (case and spacing changed), 2% near
copies (a twentieth of the lines replaced), and a few bad lines (not JSON, no text field).

    python bench/make_corpus.py /tmp/corpus_1g --gigabytes 1

`--kind template`: a folder of text files as an uncurated folder holds them (`write_template_corpus`):
each file has its own header and its own text, and most of it is one of two long licence bodies,
wrapped at the file's own width; a tenth of the files are revisions of an earlier file (a new
header, a few words of each paragraph changed). Words are drawn from a made-up vocabulary, so
two texts share a word 13-gram only where the generator copied one.

    python bench/make_corpus.py /tmp/template --kind template --files 2000
"""

from __future__ import annotations

import argparse
import json
import random
import textwrap
from pathlib import Path

from lightning_llm.data.shakespeare import read_shakespeare

GENRES = ["comedy", "tragedy", "history", "poem"]


def write_template_corpus(out: Path, files: int = 400, seed: int = 0) -> dict:
    """`files` text files under `out` (see the module's docstring); returns what went in:
    characters of headers, own text and licence, and the revisions (file -> file it revises)."""
    rng = random.Random(seed)
    vocabulary = sorted({"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                         for _ in range(8000)})

    def sentence_words(n: int) -> list[str]:
        return [rng.choice(vocabulary) for _ in range(n)]

    def paragraph(n: int) -> str:
        words = sentence_words(n)
        return " ".join(w.capitalize() if i % 12 == 0 else w + ("." if i % 12 == 11 else "")
                        for i, w in enumerate(words)) + "."

    licences = [[paragraph(rng.randint(60, 110)) for _ in range(6)] for _ in range(2)]
    out.mkdir(parents=True, exist_ok=True)
    made = {"headers": 0, "own": 0, "licence": 0, "revisions": {}}
    own_texts: list[list[str]] = []
    for f in range(files):
        if f >= 10 and rng.random() < 0.1:  # a revision of an earlier file: a few words changed per paragraph
            original = rng.randrange(len(own_texts))
            own = []
            for para in own_texts[original]:
                words = para.split(" ")
                for i in rng.sample(range(len(words)), max(1, len(words) // 25)):
                    words[i] = rng.choice(vocabulary)
                own.append(" ".join(words))
            made["revisions"][f"file{f:05d}.txt"] = f"file{original:05d}.txt"
        else:
            own = [paragraph(rng.randint(40, 100)) for _ in range(rng.randint(2, 5))]
        own_texts.append(own)
        width = rng.randint(50, 100)  # each file wraps at its own width
        header = [f"{' '.join(sentence_words(rng.randint(3, 7))).title()}", f"Author: {rng.choice(vocabulary).title()} "
                  f"{rng.choice(vocabulary).title()}", f"Version {rng.randint(0, 9)}.{rng.randint(0, 99)}, "
                  f"{rng.randint(1990, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"]
        licence = licences[0 if rng.random() < 0.7 else 1]
        body = [textwrap.fill(p, width) for p in own]
        legal = [textwrap.fill(p, width) for p in licence]
        text = "\n".join(header) + "\n\n" + "\n\n".join(body + legal) + "\n"
        (out / f"file{f:05d}.txt").write_text(text)
        made["headers"] += sum(len(h) + 1 for h in header)
        made["own"] += sum(len(b) + 2 for b in body)
        made["licence"] += sum(len(p) + 2 for p in legal)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kind", choices=["jsonl", "template"], default="jsonl")
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=None, help="jsonl: 8 files; template: 400 files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.kind == "template":
        made = write_template_corpus(args.out, args.files or 400, args.seed)
        total = made["headers"] + made["own"] + made["licence"]
        print(f"wrote {args.files or 400} files, {total / 1e6:.1f} MB: licence {100 * made['licence'] / total:.0f}%, "
              f"own text {100 * made['own'] / total:.0f}%, headers {100 * made['headers'] / total:.0f}%; "
              f"{len(made['revisions'])} revisions")
        return
    args.files = args.files or 8

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

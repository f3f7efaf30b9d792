"""The data card: `report.json` (everything, for code) and `report.md` + `lengths.png` (for people),
written beside the shards."""

from __future__ import annotations

from pathlib import Path

from lightning_llm.artifacts import markdown_table, pyplot, save_figure, write_json, write_text


def write_report(out: Path, report: dict, lengths: dict[str, list[int]]) -> None:
    write_json(out / "report.json", report)
    plot_lengths(lengths, out / "lengths.png")
    write_text(out / "report.md", markdown(report))


def plot_lengths(lengths: dict[str, list[int]], path: Path) -> None:
    import numpy as np

    every = [n for values in lengths.values() for n in values]
    low = max(min(every), 1)
    bins = np.geomspace(low, max(max(every), 2 * low), 40)
    fig, ax = pyplot().subplots(figsize=(7, 3.5))
    for split, values in lengths.items():
        if values:
            ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{split} ({len(values)})")
    ax.set_xscale("log")
    ax.set_xlabel("document length (characters)")
    ax.set_ylabel("documents")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def table(header: list[str], rows: list[list]) -> str:
    return markdown_table(header, rows) + "\n"  # the card's sections are joined without blank lines


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def markdown(r: dict) -> str:
    data = r["config"]["data"]
    out = [f"# Data card: {r['name']}\n",
           f"Prepared by the lightning-llm corpus pipeline (version {r['pipeline_version']}) in "
           f"{r['seconds']['wall']['total']:.1f} s. Shards: `train.bin`, `val.bin`, `test.bin`; index: "
           "`documents.jsonl`; everything below in machine form: `report.json`.\n"]

    sources = {data["name"]: data, **data["mix"]}
    out.append("## Sources\n")
    out.append(table(["source", "kind", "documents read", "MB", "train weight"],
                     [[name, sources[name]["source"], f"{s['documents']:,}", f"{s['bytes'] / 1e6:.2f}",
                       sources[name]["weight"]] for name, s in r["read"]["sources"].items()]))
    skipped = r["read"]["skipped"]
    if skipped:
        out.append("\nSkipped input (never fatal):\n\n")
        out.append(table(["kind", "count", "where (first ones)"],
                         [[k, v["count"], "; ".join(v["examples"][:5])] for k, v in skipped.items()]))
    cut = r["read"].get("long_documents", {})
    if cut.get("documents"):
        out.append(f"\n{cut['documents']:,} document(s) longer than `data.max_document_chars` "
                   f"({cut['max_document_chars']:,} characters) were cut into {cut['pieces']:,} pieces at line breaks "
                   "or spaces, each a document of its own (`<id>#part<k>`), kept in one split: "
                   + ", ".join(cut["examples"][:5]) + "\n")
    if r["read"]["renamed_ids"]:
        out.append(f"\nRepeated ids renamed with a #n suffix: {', '.join(r['read']['renamed_ids'][:5])}\n")

    c = r["clean"]
    out.append("\n## Cleaning and deduplication\n\nTransforms, in order (a document can be changed by several):\n\n")
    out.append(table(["step", "documents changed", "characters removed"],
                     [[k, f"{v['documents']:,}", f"{v['chars_removed']:,}"] for k, v in c["changed"].items()]))
    out.append("\nDropped documents:\n\n")
    rows = [[k, f"{v['count']:,}", ", ".join(f"{e['id']} ({e.get('value', e.get('of'))})" for e in v["examples"][:3])]
            for k, v in c["dropped"].items()]
    out.append(table(["reason", "documents", "examples (value or duplicate of)"], rows or [["none", 0, ""]]))
    out.append(f"\nKept: **{c['kept']:,}** documents.\n")

    spans = c.get("repeated_lines")
    if spans:
        which = " and ".join(k for k in ("lines", "paragraphs") if spans[k])
        out.append(f"\n### Repeated lines and paragraphs\n\nThe {which} (lowercased, whitespace normalised, at least "
                   f"{spans['min_line_chars']} characters) that an earlier document held were cut out, the first "
                   f"occurrence kept: **{spans['lines_removed']:,}** lines and **{spans['paragraphs_removed']:,}** "
                   f"paragraphs, {spans['chars_removed']:,} characters, from {spans['documents_changed']:,} documents "
                   f"({spans['hashes_held']:,} hashes held, at most {spans['max_hashes']:,}"
                   + (f"; {spans['hashes_refused']:,} refused past the cap" if spans["hashes_refused"] else "") + ").\n\n")
        if spans["examples"]:
            out.append(table(["document", "characters cut", "first cut line"],
                             [[e["id"], f"{e['chars_removed']:,}", f"`{e['first']}`"] for e in spans["examples"][:8]]))
    decon = c.get("decontaminated")
    if decon:
        out.append(f"\n### Decontamination\n\nLines holding a word {decon['ngram']}-gram of the evaluation files were "
                   f"cut out before the split: **{decon['lines_removed']:,}** lines, {decon['chars_removed']:,} "
                   f"characters, from {decon['documents_changed']:,} documents ({decon['documents_dropped']:,} left "
                   f"too short and dropped); {decon['ngrams_matched']:,} n-grams matched.\n\n")
        out.append(table(["evaluation file", "n-grams", "texts too short to check"],
                         [[f["file"], f"{f['ngrams']:,}", f["texts_too_short"]] for f in decon["files"]]))
        if decon["examples"]:
            out.append("\n" + table(["document", "characters cut", "n-grams matched", "evaluation file"],
                                    [[e["id"], f"{e['chars_removed']:,}", e["ngrams"], e["eval_file"]]
                                     for e in decon["examples"][:8]]))

    near = r.get("near_duplicates")
    if near:
        cfg = near["config"]
        action = ("kept, and each cluster is one group of the split, so it never straddles splits"
                  if cfg["action"] == "group" else "reduced to their first document")
        out.append(f"\n### Near-duplicate clusters\n\nMinHash LSH (datasketch, {cfg['num_perm']} permutations) over "
                   f"{cfg['unit']} {cfg['ngram']}-gram shingles; two documents match at an estimated Jaccard "
                   f"similarity of {cfg['threshold']} or more. Matches are {action}. "
                   f"**{near['clusters']}** clusters hold {near['documents_in_clusters']} documents; "
                   f"{near['straddling_splits']} straddle splits.\n\n")
        out.append(table(["documents", "split", "max Jaccard (estimated)"],
                         [[", ".join(x["documents"][:6]) + (" ..." if len(x["documents"]) > 6 else ""),
                           "/".join(x["splits"]), x["max_jaccard"]] for x in near["largest"]]))

    contained = r.get("containment")
    if contained:
        out.append(f"\n### Containment groups\n\nDocuments sharing at least {pct(contained['threshold'])} of their "
                   f"word {contained['ngram']}-grams (of the one with fewer; hashes sampled at "
                   f"{contained['sample_rate']:.4g}; n-grams held by more than {contained['template_docs']} documents "
                   f"count as template, not kinship) are one group of the split: **{contained['pairs']:,}** pairs, "
                   f"{contained['groups']:,} groups of {contained['documents_in_groups']:,} documents.\n\n")
        if contained["strongest"]:
            out.append(table(["document", "shares with", "share"],
                             [[x["a"], x["b"], pct(x["share"])] for x in contained["strongest"][:8]]))

    s = r["split"]
    total_chars = sum(v["chars"] for v in s["splits"].values())
    out.append(f"\n## Splits\n\nGrouped by `{s['group_by']}` and near-duplicate clusters ({s['groups']:,} groups), "
               f"stratified by `{s['stratify_by']}`, seed {data['split']['seed']}.\n\n")
    out.append(table(["split", "documents", "groups", "characters", "share"],
                     [[k, f"{v['documents']:,}", f"{v['groups']:,}", f"{v['chars']:,}",
                       pct(v["chars"] / max(total_chars, 1))] for k, v in s["splits"].items()]))
    if s["stratify_by"]:
        strata = sorted({k for v in s["splits"].values() for k in v.get("chars_by_stratum", {})})
        rows = []
        for stratum in strata:
            chars = {k: v["chars_by_stratum"].get(stratum, 0) for k, v in s["splits"].items()}
            whole = sum(chars.values())
            rows.append([stratum, *(f"{chars[k]:,} ({pct(chars[k] / max(whole, 1))})" for k in s["splits"])])
        out.append(f"\nCharacters per `{s['stratify_by']}` (and that stratum's share in each split):\n\n")
        out.append(table(["stratum", *s["splits"]], rows))

    leak = r.get("leakage")
    if leak:
        sampled = "" if leak["sample_rate"] == 1 else f", hashes sampled at {leak['sample_rate']:.4g}"
        out.append(f"\n## Leakage check\n\nShare of held-out word {leak['ngram']}-grams (lowercased runs of letters "
                   f"and digits{sampled}) that also occur in train.\n\n")
        header = ["split", "n-grams", "in train", "share (this split)"]
        if "ungrouped" in leak:
            header.append("share if split document by document")
        rows = []
        for split in ("val", "test"):
            g = leak["grouped"][split]
            row = [split, f"{g['ngrams']:,}", f"{g['in_train']:,}", pct(g["share"])]
            if "ungrouped" in leak:
                row.append(pct(leak["ungrouped"][split]["share"]))
            rows.append(row)
        out.append(table(header, rows))
        worst = sorted(((w["share"], w["id"], split) for split in ("val", "test")
                        for w in leak["grouped"][split]["worst"] if w["share"] > 0), reverse=True)
        if worst:
            out.append("\nHeld-out documents that share most with train: "
                       + ", ".join(f"{i} ({split}, {pct(share)})" for share, i, split in worst[:5]) + ".\n")
        gate = leak.get("gate")
        if gate:
            out.append(f"\nLeakage gate (`data.split.max_leakage` = {pct(gate['max_leakage'])}): "
                       + ("passed.\n" if gate["passed"] else f"**over it** ({gate['on_leak']}): {gate['message']}\n"))

    t = r["tokenizer"]
    # pipeline.build names a tokenizer it was given (a base model's, for fine-tuning and updates) "given (...)"
    how = ("given, not trained on this data: an existing tokenizer (a base model's, for fine-tuning and updates), "
           "used as it is to encode every split"
           if str(t["kind"]).startswith("given") else "trained on the train split only")
    out.append(f"\n## Tokenizer\n\n`{t['kind']}`, {t['vocab_size']:,} tokens, {how}. "
               f"Special tokens: {', '.join(f'`{k}` = {v}' for k, v in t['special_tokens'].items())}; each document "
               "ends with `<|endoftext|>`.\n\n")
    out.append(table(["split", "documents", "tokens", "bytes", "bytes/token", "vocabulary used", "unknown rate"],
                     [[k, f"{v['documents']:,}", f"{v['tokens']:,}", f"{v['bytes']:,}", v["bytes_per_token"],
                       pct(v["vocab_used"]), pct(v["unknown_rate"])] for k, v in t["splits"].items()]))
    left_out = t["splits"]["train"]["left_out_by_weight"]
    if left_out:
        out.append(f"\n{left_out} train documents were left out by a source weight below 1.\n")

    out.append("\n## Document lengths\n\n![document lengths](lengths.png)\n")
    out.append("\n## Time\n\nWall seconds per stage, and worker CPU seconds per step with MB/s of raw text "
               "(per core):\n\n")
    rows = [[k, v, ""] for k, v in r["seconds"]["wall"].items()]
    rows += [[f"{k} (CPU)", v, r["throughput_mb_s"].get(k, "")] for k, v in r["seconds"]["worker_cpu"].items()]
    rows.append(["end to end", r["seconds"]["wall"]["total"], r["throughput_mb_s"]["end_to_end"]])
    out.append(table(["step", "seconds", "MB/s"], rows))
    return "".join(out)

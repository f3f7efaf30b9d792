"""llm index: a BM25 index of a folder's passages, for `llm serve ... rag.index=<name>`."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from lightning_llm.config import check_name, to_dataclass
from lightning_llm.stages.common import stage


@stage("index")
def main(cfg: DictConfig) -> dict:
    from lightning_llm.rag import IndexSettings, build_index

    name = check_name(cfg.name, "name")
    settings = to_dataclass(IndexSettings, OmegaConf.masked_copy(cfg, ["extensions", "text_field", "chunk", "clean",
                                                                        "retriever"]), "index")
    result = build_index(docs=str(cfg.docs), name=name, output_root=cfg.paths.output_root, settings=settings,
                         force=bool(cfg.force), progress=bool(cfg.progress))
    meta = result.meta
    for path in result.outside:
        print(f"refused (outside {meta['root']}): {path}")
    if result.reused:
        print(f"index {name}: unchanged ({meta['files']} files, fingerprint {meta['fingerprint']}): reusing "
              f"{result.path} ({meta['passages']:,} passages, built {meta['created']}; force=true rebuilds)")
        return meta
    result.skipped.warn()
    skipped = sum(result.skipped.count.values())
    chunk = meta["settings"]["chunk"]
    print(f"index {name}: {meta['files']} files -> {meta['passages']:,} passages ({chunk['words']} words, "
          f"{chunk['overlap']} overlap; {meta['terms']:,} terms) in {meta['build_seconds']:.1f} s, "
          f"{meta['bytes'] / 1e6:.1f} MB at {result.path}" + (f"; {skipped} skipped" if skipped else ""))
    return meta

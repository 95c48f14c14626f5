"""Semantic IDs: item text -> vectors -> RQ-KMeans codes (+ dedup) -> SID table, trie, descriptors.

Public API:
    SIDConfig                         settings of the SID stage
    prepare(dataset, cfg, out_dir)    -> (SIDTable, Tokenizer, stats); cached in out_dir
    load(out_dir)                     -> (SIDTable, Tokenizer)
    build_sids(dataset, cfg, out_dir) -> (SIDTable, stats)     (no tokenizer)
    load_sids(out_dir)                -> SIDTable
    SIDTable, SIDTrie
The tokens' spelling (`code_token`, `parse_token`) and the `Tokenizer` live one layer down, in
minisapo.tokenizer.
"""

from minisapo.sid.build import SIDConfig, build_sids, load, load_sids, prepare
from minisapo.sid.table import SIDTable, dedup_codes, prefix_key
from minisapo.sid.trie import SIDTrie

__all__ = ["SIDConfig", "prepare", "load", "build_sids", "load_sids", "SIDTable", "SIDTrie", "prefix_key",
           "dedup_codes"]

"""Semantic IDs: item text -> vectors -> RQ-KMeans codes (+ dedup) -> SID table, trie, descriptors.

Public API:
    SIDConfig                         settings of the SID stage
    prepare(dataset, cfg, out_dir)    -> (SIDTable, Tokenizer, stats); cached in out_dir
    load(out_dir)                     -> (SIDTable, Tokenizer)
    build_sids(dataset, cfg, out_dir) -> (SIDTable, stats)     (contract name; no tokenizer)
    load_sids(out_dir)                -> SIDTable
    SIDTable, SIDTrie, Tokenizer
"""

from minisapo.sid.build import SIDConfig, build_sids, load, load_sids, prepare
from minisapo.sid.table import SIDTable, code_token, dedup_codes, parse_token, prefix_key
from minisapo.sid.trie import SIDTrie
from minisapo.tokenizer import Tokenizer

__all__ = ["SIDConfig", "prepare", "load", "build_sids", "load_sids", "SIDTable", "SIDTrie", "Tokenizer",
           "code_token", "parse_token", "prefix_key", "dedup_codes"]

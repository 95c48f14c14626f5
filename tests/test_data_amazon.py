"""Amazon 2014 / 2018 / 2023 readers on the fixtures in data/samples (numbers counted by hand).

Every fixture holds the same 16 good reviews + 2 malformed lines (4 and 14):
    A1: B001 d10, B002 d20, B003 d20 (a tie: file order), B004 d30, B006 d40
    A2: B001 d15, B002 d25, B002 d30 (duplicate, dropped), B003 d9, B006 d40
    A3: B002 d5, B001 d12, B003 d13, B006 d13 (a tie)
    A4: B004 d50, B005 d51                      (d = day of January 2014; d40 = Feb 9)
With --kcore=2: B005 (1 review) goes, then A4 (1 left), then B004 (1 left): 3 users,
4 items (B001 B002 B003 B006), 12 interactions. B006 has no metadata (no usable text).
"""

import gzip
import shutil
from pathlib import Path

import pytest

from minisapo.data import DataConfig, load, prepare
from minisapo.data.amazon import category_of, clean_text, detect_release

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
FILES = {"2014": ("amazon2014", "reviews_Toy_5.json", "meta_Toy.json"),
         "2018": ("amazon2018", "Toy_5.json", "meta_Toy.json"),
         "2023": ("amazon2023", "Toy.jsonl", "meta_Toy.jsonl")}
BAD_META = {"2014": [4], "2018": [4, 7], "2023": [3]}


def reviews(release):
    folder, r, _ = FILES[release]
    return str(SAMPLES / folder / r)


@pytest.mark.parametrize("release", ["2014", "2018", "2023"])
def test_release_by_hand(release, tmp_path, capsys):
    prepare(DataConfig(source="amazon", reviews=reviews(release), kcore=2, name="toy"), tmp_path)
    out = capsys.readouterr().out
    assert f"amazon {release} release" in out
    assert "skipped 2 malformed line(s)" in out and "(lines 4, 14)" in out
    assert "no usable text" in out and "B006" in out
    ds = load(tmp_path, "toy")
    info = ds.info
    assert info["release"] == release
    assert (info["num_users"], info["num_items"], info["num_interactions"]) == (3, 4, 12)
    assert info["counts"] == {"read": 16, "after_dedupe": 15, "after_kcore": 12}
    assert info["bad_review_lines"] == 2 and info["bad_meta_line_numbers"] == BAD_META[release]
    assert info["items_without_text"] == 1
    assert ds.user_ids == ["A1", "A2", "A3"] and ds.item_ids == ["B001", "B002", "B003", "B006"]
    assert ds.sequences == [[0, 1, 2, 3], [2, 0, 1, 3], [1, 0, 2, 3]]  # ties keep file order
    assert info["splits"] == {"train": 3, "valid": 3, "test": 3}
    assert ds.splits["test"][0].history == (0, 1, 2) and ds.splits["test"][0].target == 3
    # cleaned text: entities decoded, markup gone, missing title -> id, duplicate meta ignored
    assert ds.item_titles == ["Wooden Train & Tracks", "B002", "Kid's Kite", "B006"]
    assert ds.item_text[2] == "Kid's Kite SkyCo Toys & Games, Outdoor"
    assert "<" not in " ".join(ds.item_text) and "&amp;" not in " ".join(ds.item_text)
    t0 = 1388534400 + 9 * 86400  # A1's first review, Jan 10
    assert ds.timestamps[0][0] == (t0 + 0.123 if release == "2023" else t0)  # 2023: ms -> s
    rows = (tmp_path / "processed/toy/toy.inter").read_text().splitlines()
    assert rows[1].split("\t")[:2] == ["A1", "B001"] and len(rows) == 13


def test_temporal_split_by_hand(tmp_path):
    prepare(DataConfig(source="amazon", reviews=reviews("2014"), kcore=2, split="temporal", name="t"), tmp_path)
    sp = load(tmp_path, "t").splits
    # 9 samples by target time: A3 d12, A3 d13, A3 d13, A2 d15, A1 d20, A1 d20, A2 d25 | A1 d40 | A2 d40
    assert [len(sp[k]) for k in ("train", "valid", "test")] == [7, 1, 1]
    assert sp["valid"][0].user == 0 and sp["test"][0].user == 1
    assert sp["train"][0][:3] == (2, (1,), 0) and sp["train"][0].pos == 1


def test_window_and_description(tmp_path):
    # start=Jan 10 drops A3-B002 (d5) and A2-B003 (d9); the k-core then drops B005, A4, B004
    prepare(DataConfig(source="amazon", reviews=reviews("2018"), kcore=2, start="2014-01-10", name="w",
                       with_description=True), tmp_path)
    ds = load(tmp_path, "w")
    assert ds.info["counts"] == {"read": 16, "after_window": 14, "after_dedupe": 13, "after_kcore": 10}
    assert [len(s) for s in ds.sequences] == [4, 3, 3]
    assert ds.item_text[0].endswith("A fun train set. 100% wood")
    with pytest.raises(ValueError, match="time window .* removed all.*2014-01-05 .. 2014-02-20"):
        prepare(DataConfig(source="amazon", reviews=reviews("2018"), start="2020-01-01", name="w2"), tmp_path)


def test_gzipped_files(tmp_path):
    for f in ("reviews_Toy_5.json", "meta_Toy.json"):
        with open(SAMPLES / "amazon2014" / f, "rb") as src, gzip.open(tmp_path / f"{f}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    prepare(DataConfig(source="amazon", reviews=str(tmp_path / "reviews_Toy_5.json.gz"), kcore=2), tmp_path)
    ds = load(tmp_path, "Toy")  # the name defaults to the category
    assert ds.info["release"] == "2014" and ds.num_items == 4 and ds.item_titles[0] == "Wooden Train & Tracks"


def test_strict_mode_names_file_and_line(tmp_path):
    with pytest.raises(ValueError, match=r"reviews_Toy_5.json:4: malformed review"):
        prepare(DataConfig(source="amazon", reviews=reviews("2014"), kcore=2, strict=True), tmp_path)
    # the 2023 reviews fixture is fine up to line 4 too; its meta breaks at line 3
    good = tmp_path / "Toy.jsonl"
    good.write_text("".join(l for n, l in enumerate(open(reviews("2023")), 1) if n not in (4, 14)))
    shutil.copy(SAMPLES / "amazon2023" / "meta_Toy.jsonl", tmp_path)
    with pytest.raises(ValueError, match=r"meta_Toy.jsonl:3: malformed metadata"):
        prepare(DataConfig(source="amazon", reviews=str(good), kcore=2, strict=True), tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="reviews_<Cat>_5.json.gz"):
        prepare(DataConfig(source="amazon", reviews=str(tmp_path / "nope.json.gz")), tmp_path)
    with pytest.raises(ValueError, match="needs --reviews"):
        prepare(DataConfig(source="amazon"), tmp_path)
    shutil.copy(reviews("2014"), tmp_path)  # no meta next to it
    with pytest.raises(FileNotFoundError, match="meta_Toy.json.gz or .*meta_Toy.json, or pass --meta"):
        prepare(DataConfig(source="amazon", reviews=str(tmp_path / "reviews_Toy_5.json")), tmp_path)
    with pytest.raises(FileNotFoundError, match="metadata file .*missing.json not found"):
        prepare(DataConfig(source="amazon", reviews=reviews("2014"), meta=str(tmp_path / "missing.json")), tmp_path)


def test_empty_after_kcore_says_what_to_lower(tmp_path):
    with pytest.raises(ValueError, match=r"5-core filter removed all 15 interactions: lower --kcore"):
        prepare(DataConfig(source="amazon", reviews=reviews("2014")), tmp_path)


def test_no_valid_reviews(tmp_path):
    (tmp_path / "reviews_X_5.json").write_text("garbage\n{\"asin\": 1}\n")
    (tmp_path / "meta_X.json").write_text("")
    with pytest.raises(ValueError, match="no valid reviews"):
        prepare(DataConfig(source="amazon", reviews=str(tmp_path / "reviews_X_5.json")), tmp_path)


def test_helpers():
    assert clean_text("Tom &amp;amp; <b>Jerry</b>\n ") == "Tom & Jerry"
    assert clean_text(None) == ""
    assert category_of("x/reviews_Beauty_5.json.gz") == "Beauty"
    assert category_of("All_Beauty.jsonl") == "All_Beauty" and category_of("Books_5.json") == "Books"
    assert detect_release(Path("Beauty.json.gz"), '{"reviewerID": "A", "verified": true}') == "2018"
    assert detect_release(Path("x.json"), '{"user_id": "A", "parent_asin": "B"}') == "2023"

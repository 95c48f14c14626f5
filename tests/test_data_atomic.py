"""--source=atomic: any RecBole atomic dataset, incl. RecBole's MovieLens-100k when installed."""

import importlib.util
from pathlib import Path

import pytest

from minisapo.data import DataConfig, load, prepare
from minisapo.data.atomic import read_atomic


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")


def test_atomic_round_trip(tmp_path, capsys):
    src = tmp_path / "mini"
    src.mkdir()
    write(src / "mini.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
          + [f"u{u}\ti{i}\t4\t{10 * u + i}" for u in range(3) for i in range(3)]
          + ["u9\ti1\t5", "u9\ti2\t5\tnot-a-time"])  # two bad lines (3 and 4 from the end)
    write(src / "mini.item", ["item_id:token\tmovie_title:token_seq\tyear:token\tclass:token_seq",
                              "i0\tToy Story\t1995\tAnimation Comedy", "i1\tHeat\t1995\tAction"])
    prepare(DataConfig(source="atomic", path=str(src), kcore=2), tmp_path)
    out = capsys.readouterr().out
    assert "skipped 2 malformed line(s)" in out and "lines 11, 12" in out
    ds = load(tmp_path, "mini")
    assert (ds.num_users, ds.num_items, ds.info["num_interactions"]) == (3, 3, 9)
    assert ds.item_titles == ["Toy Story", "Heat", "i2"]  # i2 has no .item row -> its id
    assert ds.item_text[0] == "Toy Story 1995 Animation Comedy"
    assert ds.sequences[0] == [0, 1, 2] and ds.info["source"] == "atomic"
    # a processed minisapo dataset is itself an atomic dataset
    prepare(DataConfig(source="atomic", path=str(tmp_path / "processed" / "mini"), name="again", kcore=0), tmp_path)
    again = load(tmp_path, "again")
    assert again.sequences == ds.sequences and again.item_titles == ds.item_titles
    with pytest.raises(ValueError, match=r"mini.inter:11: 3 columns"):
        prepare(DataConfig(source="atomic", path=str(src), strict=True, name="s"), tmp_path)


def test_atomic_errors(tmp_path):
    with pytest.raises(ValueError, match="needs --path"):
        prepare(DataConfig(source="atomic"), tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare(DataConfig(source="atomic", path=str(tmp_path / "nope")), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.inter"):
        prepare(DataConfig(source="atomic", path=str(tmp_path / "empty")), tmp_path)
    write(tmp_path / "h.inter", ["user_id\titem_id", "1\t2"])
    with pytest.raises(ValueError, match="name:type"):
        read_atomic(tmp_path / "h.inter")


def test_movielens_100k(tmp_path):
    spec = importlib.util.find_spec("recbole")
    if spec is None:
        pytest.skip("recbole not installed (pip install --no-deps recbole==1.2.1 ships ml-100k)")
    ml = Path(spec.origin).parent / "dataset_example" / "ml-100k"
    if not (ml / "ml-100k.inter").exists():
        pytest.skip("recbole's ml-100k example files are absent")
    prepare(DataConfig(source="atomic", path=str(ml)), tmp_path)
    ds = load(tmp_path, "ml-100k")
    assert ds.num_users == 943 and ds.num_items == 1349 and ds.info["num_interactions"] == 99287
    assert ds.item_titles[ds.item_ids.index("1")] == "Toy Story"
    assert len(ds.splits["test"]) == 943

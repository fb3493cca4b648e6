from __future__ import annotations

import polars as pl
import pytest

from models.data.class_splits import split_base_new


def test_five_classes_give_three_base_two_new():
    split = split_base_new(["a", "b", "c", "d", "e"])
    assert split.base_labels == (0, 1, 2)
    assert split.new_labels == (3, 4)
    assert split.base_relabel == {0: 0, 1: 1, 2: 2}
    assert split.new_relabel == {3: 0, 4: 1}
    assert split.base_classnames == ("a", "b", "c")
    assert split.new_classnames == ("d", "e")


def test_six_classes_split_in_half_and_restrict_relabels():
    split = split_base_new(["a", "b", "c", "d", "e", "f"])
    assert (split.base_labels, split.new_labels) == ((0, 1, 2), (3, 4, 5))
    records = pl.DataFrame({"relative_path": [f"{label}.png" for label in range(6)], "label": list(range(6))})
    new_records = split.restrict(records, "new")
    assert new_records.get_column("relative_path").to_list() == ["3.png", "4.png", "5.png"]
    assert new_records.get_column("label").to_list() == [0, 1, 2]
    assert split.restrict(records, "base").get_column("label").to_list() == [0, 1, 2]


def test_fewer_than_two_classes_is_refused():
    with pytest.raises(ValueError, match="at least 2 classes"):
        split_base_new(["only"])

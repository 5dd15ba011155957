"""Message wording every command shares (errors.py): counts and class-id ranges."""
import pytest

from ffcv_dp4tl.errors import class_ids, count


@pytest.mark.parametrize("n,noun,text", [(1, "class", "1 class"), (6, "class", "6 classes"),
                                         (0, "shard", "0 shards"), (1, "shard", "1 shard"),
                                         (2, "epoch", "2 epochs"), (2, "index", "2 indexes")])
def test_a_count_takes_its_nouns_number(n, noun, text):
    assert count(n, noun) == text
    assert count(3, "batch", plural="batches") == "3 batches"
    assert count(1, "batch", plural="batches") == "1 batch"


@pytest.mark.parametrize("n,text", [(0, "no class ids"), (1, "id 0"), (2, "ids 0-1"),
                                    (1000, "ids 0-999")])
def test_class_ids_never_say_ids_0_0(n, text):
    assert class_ids(n) == text

"""SST-2 loading on a synthetic tarball/TSV generated here (checksum, layout, errors), the vocabulary, and the
real shared tarball where it is present."""

import os
import tarfile

import pytest
import torch

from trojanbench.data.cifar10 import default_data_root
from trojanbench.data.sst2 import build_vocab, load_sst2, read_sst2, synthetic_sentences, write_synthetic_tarball
from trojanbench.errors import UserError


def test_tarball_is_verified_and_loaded(tmp_path):
    write_synthetic_tarball(tmp_path, n_train=50, n_dev=20)
    ds = load_sst2(tmp_path)
    assert len(ds.train) == 50 and len(ds.dev) == 20 and ds.num_classes == 2
    assert set(ds.y_train.tolist()) == {0, 1}
    sentences, labels = synthetic_sentences(20, seed=1)  # the dev split keeps its order
    assert [" ".join(s) for s in ds.dev] == sentences and ds.y_dev.tolist() == labels
    # the tarball path itself works too, and the training split is shuffled and cut reproducibly
    again = load_sst2(tmp_path / "sst2.tar.gz", n_train=10, split_seed=3)
    assert again.train == load_sst2(tmp_path, n_train=10, split_seed=3).train
    assert again.train != load_sst2(tmp_path, n_train=10, split_seed=4).train
    assert all(s in ds.train for s in again.train)


def test_checksum_is_enforced(tmp_path):
    write_synthetic_tarball(tmp_path, n_train=10, n_dev=5)
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  sst2.tar.gz\n")
    with pytest.raises(UserError, match="corrupt"):
        load_sst2(tmp_path)
    (tmp_path / "SHA256SUMS").unlink()
    with pytest.raises(UserError, match="no checksum"):
        load_sst2(tmp_path)


def test_plain_tsv_folder_and_bad_files(tmp_path):
    (tmp_path / "train.tsv").write_text("label\tsentence\n1\ta fine film\n0\ta dull film\n")
    (tmp_path / "dev.tsv").write_text("label\tcontent\n1\tgreat\n")
    ds = load_sst2(tmp_path)
    assert sorted(map(tuple, ds.train)) == [("a", "dull", "film"), ("a", "fine", "film")] and ds.dev == [["great"]]
    (tmp_path / "dev.tsv").write_text("label\tcontent\n7\tgreat\n")
    with pytest.raises(UserError, match="line 2"):
        read_sst2(tmp_path)
    (tmp_path / "dev.tsv").write_text("no header\n")
    with pytest.raises(UserError, match="header"):
        read_sst2(tmp_path)


def test_missing_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist.*TROJANBENCH_DATA_ROOT"):
        load_sst2(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no SST-2"):
        load_sst2(tmp_path)
    # a tarball without the two splits
    with tarfile.open(tmp_path / "sst2.tar.gz", "w:gz"):
        pass
    import hashlib

    digest = hashlib.sha256((tmp_path / "sst2.tar.gz").read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  sst2.tar.gz\n")
    with pytest.raises(UserError, match="no SST-2"):
        load_sst2(tmp_path)


def test_env_var_names_the_data_root(tmp_path, monkeypatch):
    write_synthetic_tarball(tmp_path, n_train=12, n_dev=4)
    monkeypatch.setenv("TROJANBENCH_DATA_ROOT", str(tmp_path))
    assert len(load_sst2().train) == 12


def test_vocab_from_train_with_extras():
    train = [["a", "b", "a"], ["c", "a", "b"]]
    vocab = build_vocab(train, size=2, extra=("cf", "a"))
    assert vocab.words == ["<pad>", "<unk>", "a", "b", "cf"]
    ids = vocab.encode([["a", "zzz", "cf"], ["b"] * 9], max_len=4)
    assert ids.tolist() == [[2, 1, 4, 0], [3, 3, 3, 3]] and ids.dtype == torch.long


@pytest.mark.slow
def test_real_shared_tarball_when_present():
    root = default_data_root()
    if not (root / "sst2.tar.gz").is_file():
        if os.environ.get("CI"):  # CI always has ../shared/data: a missing tarball there is a failure
            pytest.fail(f"the shared SST-2 tarball is not at {root}")
        pytest.skip(f"the shared SST-2 tarball is not at {root} on this machine")
    from trojanbench.data.cifar10 import expected_sha256

    assert expected_sha256(root / "sst2.tar.gz") == "a3177d8206c4b35d8057eea67290ca8edc5d531d2a60f1d32820ab9e45938f57"
    splits = read_sst2(root)
    assert len(splits["train"][0]) == 67349 and len(splits["dev"][0]) == 872
    assert sum(splits["dev"][1]) == 444

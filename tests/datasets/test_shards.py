"""Pretraining streams from webdataset tar shards: writing, splitting, resuming, bad input, mixing.

The tiny world's 12 training images are written as shards of 5 (sizes 5, 5, 2): uneven
shard sizes and a shard count that no world size of 2 divides.
"""
import json
import logging
import tarfile
from pathlib import Path

import pytest
import torch
from webdataset import TarWriter

from albef_plugin.config.loader import ConfigError
from albef_plugin.datasets import ImageTextCollate, PretrainDataset
from albef_plugin.datasets.shard_builders import ShardsPretrainBuilder
from albef_plugin.datasets.shards import ShardError, count_samples_from_stats
from albef_plugin.datasets.streams import SampleStream, ShardSource
from albef_plugin.datasets.synthetic.shards import shard_pattern, write_world_shards
from albef_plugin.processors import ImageEvalProcessor, ImageTrainProcessor
from albef_plugin.trainers.stream_data import build_stream_batches, mix_training_datasets

NUM_IMAGES = 12


@pytest.fixture(scope="module")
def shards(tiny_world, tmp_path_factory):
    return [str(p) for p in write_world_shards(tiny_world, 5, out=tmp_path_factory.mktemp("s") / "shards")]


def make_stream(shard_list, transform=None, samples_per_epoch=NUM_IMAGES, **kwargs):
    transform = transform or ImageEvalProcessor(image_size=16)
    return SampleStream([ShardSource(shard_list, transform, samples_per_epoch, **kwargs)])


def make_batches(stream, text_processor, rank=0, world_size=1, num_workers=0, batch_size=2):
    return build_stream_batches(stream, ImageTextCollate(text_processor), batch_size=batch_size, seed=7,
                                rank=rank, world_size=world_size, num_workers=num_workers, pin_memory=False)


def test_world_shards_hold_every_image_in_img2dataset_layout(tiny_world, shards):
    assert [Path(s).name for s in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
        meta = json.load(tar.extractfile("000000.json"))
    assert sorted(names[:3]) == ["000000.jpg", "000000.json", "000000.txt"] and len(names) == 15
    pretrain = json.loads((tiny_world / "pretrain.json").read_text())
    assert meta["captions"] == pretrain[0]["caption"] and meta["url"] == pretrain[0]["image"]
    assert count_samples_from_stats(shards) == NUM_IMAGES
    mtime = Path(shards[0]).stat().st_mtime_ns
    assert write_world_shards(tiny_world, 5, out=Path(shards[0]).parent) == [Path(s) for s in shards]
    assert Path(shards[0]).stat().st_mtime_ns == mtime                    # reused, not rewritten
    assert shard_pattern(Path(shards[0]).parent, 3).endswith("{00000..00002}.tar")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_get_equal_batches_and_one_pass_reads_every_sample_once(shards, text_processor, world_size):
    per_rank = [make_batches(make_stream(shards), text_processor, rank, world_size) for rank in range(world_size)]
    assert {b.iterations_per_epoch for b in per_rank} == {NUM_IMAGES // (2 * world_size)}
    for batches in per_rank:  # three epochs: no rank runs dry (the stream never ends)
        drawn = [batches.next() for _ in range(3 * batches.iterations_per_epoch)]
        assert all(batch["image"].shape[0] == 2 for _, batch, _ in drawn)
        assert batches.epoch == 3
    # The first pass over the shards (global positions 0..2) across all ranks: every image once.
    first_pass = []
    for rank in range(world_size):
        stream = make_stream(shards, open_shards=1)
        stream.configure(rank, world_size, 0, seed=7)
        for item in stream:
            _, state = item["_stream"]
            if state["lanes"][0][0] * world_size + rank >= len(shards):
                break
            first_pass.append(item["image_id"])
    assert sorted(first_pass) == list(range(NUM_IMAGES))


def test_an_epoch_shorter_than_one_global_batch_is_a_config_error(shards, text_processor):
    with pytest.raises(ConfigError, match="samples_per_epoch=12 .* less than one global batch"):
        make_batches(make_stream(shards), text_processor, rank=0, world_size=2, batch_size=8)


def test_workers_alternate_and_resume_continues_exactly(shards, text_processor):
    """2 workers: batches come from both slots in turn; stopping after an odd number of batches
    and resuming gives the same next batches (ids and augmented pixels) as never stopping."""
    def train_stream():
        return make_stream(shards, ImageTrainProcessor(image_size=16, scale=(0.5, 1.0)))

    full = make_batches(train_stream(), text_processor, num_workers=2)
    expected = [full.next()[1] for _ in range(7)]
    assert set(full.slot_states) == {0, 1}
    full.close()
    first = make_batches(train_stream(), text_processor, num_workers=2)
    for _ in range(3):
        first.next()
    saved = first.rank_state()
    first.close()
    resumed = make_batches(train_stream(), text_processor, num_workers=2)
    resumed.load_stream_state([saved])
    got = [resumed.next()[1] for _ in range(4)]
    resumed.close()
    for want, have in zip(expected[3:], got):
        assert torch.equal(want["image_id"], have["image_id"])
        assert torch.equal(want["image"], have["image"])
        assert torch.equal(want["input_ids"], have["input_ids"])


def test_a_worker_reads_several_shards_at_once_and_still_covers_each_sample(shards):
    stream = make_stream(shards, open_shards=3, shuffle_shards=False)
    stream.configure(0, 1, 0, seed=3)
    items = [item for item, _ in zip(stream, range(40))]
    assert len({item["image_id"] // 5 for item in items[:4]}) >= 2      # shard of image i: i // 5
    # Unshuffled, one slot: the k-th shard opened is shards[k % 3]. Shards before the earliest
    # open lane were read completely, open lanes partly: each image's count lies in between.
    state = items[-1]["_stream"][1]
    open_ks = [k for k, _ in state["lanes"]]
    done = [k % 3 for k in range(min(open_ks)) if k not in open_ks]
    opened = [k % 3 for k in open_ks] + [k % 3 for k in range(min(open_ks), max(open_ks)) if k not in open_ks]
    counts = [sum(item["image_id"] == i for item in items) for i in range(NUM_IMAGES)]
    for image, count in enumerate(counts):
        assert done.count(image // 5) <= count <= done.count(image // 5) + opened.count(image // 5), image
    single = make_stream(shards, open_shards=1, shuffle_shards=False)
    single.configure(0, 1, 0, seed=3)
    assert [item["image_id"] for item, _ in zip(single, range(4))] == [0, 1, 2, 3]


def test_resume_with_other_worker_count_repeats_but_never_skips(shards, text_processor, caplog):
    first = make_batches(make_stream(shards), text_processor)
    seen = [i for _ in range(4) for i in first.next()[1]["image_id"].tolist()]   # 8 of 12
    resumed = make_batches(make_stream(shards), text_processor, num_workers=2)
    with caplog.at_level(logging.WARNING):
        resumed.load_stream_state([first.rank_state()])
    assert "some samples are read again, none is skipped" in caplog.text
    # each new slot opens 4 of the shard positions from the earliest unfinished one on, 6 of
    # which hold every shard: 40 samples per slot read them all, whatever the lane draws
    after = [i for _ in range(40) for i in resumed.next()[1]["image_id"].tolist()]
    resumed.close()
    assert set(range(NUM_IMAGES)) - set(seen) <= set(after)


def _write_bad_shards(folder: Path, good_shard: str):
    """A file that is not a tar, and a shard whose middle sample's JPEG does not decode."""
    not_a_tar = folder / "not_a_tar.tar"
    not_a_tar.write_bytes(b"this is not a tar archive" * 40)
    broken = folder / "broken_sample.tar"
    with tarfile.open(good_shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    with TarWriter(str(broken)) as writer:
        for key in ("000000", "000001", "000002"):
            jpg = b"\xff\xd8\xff not a JPEG" if key == "000001" else members[f"{key}.jpg"]
            writer.write({"__key__": key, "jpg": jpg, "txt": members[f"{key}.txt"]})
    return str(not_a_tar), str(broken)


def test_non_tar_shard_and_corrupt_sample_are_skipped_and_counted(shards, tmp_path, text_processor, caplog):
    not_a_tar, broken = _write_bad_shards(tmp_path, shards[0])
    stream = make_stream([not_a_tar, broken, shards[2]], shuffle_shards=False, samples_per_epoch=4,
                         open_shards=1)
    stream.configure(0, 1, 0, seed=0)
    with caplog.at_level(logging.WARNING):
        items = [item for item, _ in zip(stream, range(4))]
    # 000000, 000002 of the broken shard (folder 0 of 2), 000010, 000011 of the last (folder 1)
    assert [item["image_id"] for item in items] == [0 * 2, 2 * 2, 10 * 2 + 1, 11 * 2 + 1]
    assert [item["num_skipped"] for item in items] == [1, 1, 0, 0]
    assert "not_a_tar.tar" in caplog.text and "'000001'" in caplog.text

    strict = make_stream([not_a_tar, shards[2]], shuffle_shards=False, on_unreadable="error")
    strict.configure(0, 1, 0, seed=0)
    with pytest.raises(ShardError, match="not_a_tar.tar"):
        next(iter(strict))

    hopeless = make_stream([not_a_tar], shuffle_shards=False)
    hopeless.configure(0, 1, 0, seed=0)
    with pytest.raises(ShardError, match="shard list is probably wrong"):
        next(iter(hopeless))


@pytest.mark.parametrize("shards_value, message", [
    ([], "albef_pretrain_shards.shards is empty"),
    (["missing/{000..003}.tar"], "missing/000.tar' \\(from pattern 'missing/{000..003}.tar'\\) does not exist"),
    (["nothing/*.tar"], "pattern 'nothing/\\*.tar' matches no file"),
])
def test_empty_or_unmatched_shard_list_is_a_clean_config_error(tmp_path, shards_value, message):
    builder = ShardsPretrainBuilder(ShardsPretrainBuilder.make_config(
        {"data_dir": str(tmp_path), "shards": shards_value, "samples_per_epoch": 10}))
    with pytest.raises(ConfigError, match=message):
        builder.build("train")


def test_builder_reads_globbed_shards_and_counts_samples_from_stats(shards):
    folder = Path(shards[0]).parent
    builder = ShardsPretrainBuilder(ShardsPretrainBuilder.make_config(
        {"data_dir": str(folder.parent), "shards": [f"{folder.name}/*.tar"], "image_size": 16}))
    stream = builder.build("train")
    assert isinstance(stream, SampleStream) and len(stream) == NUM_IMAGES
    assert stream.sources[0].shards == shards


def test_mixing_with_a_json_dataset_follows_the_weights(shards, tiny_world):
    transform = ImageEvalProcessor(image_size=16)
    json_set = PretrainDataset([tiny_world / "pretrain.json"], str(tiny_world), transform)
    mixed = mix_training_datasets([make_stream(shards, transform), json_set], ["shards", "json"], [3.0, 1.0])
    assert mixed.samples_per_epoch == 2 * NUM_IMAGES
    mixed.configure(0, 1, 0, seed=1)
    sources = [item["image_id"] % 2 for item, _ in zip(mixed, range(300))]  # id * 2 + source index
    assert sum(s == 0 for s in sources) / len(sources) == pytest.approx(0.75, abs=0.06)
    assert mix_training_datasets([json_set], ["json"], [None]) is None  # map-style alone: concatenated
    # no weights: by size (12 shard samples per epoch, 6 JSON entries): 2 to 1
    half = PretrainDataset([tiny_world / "pretrain.json"], str(tiny_world), transform)
    half.image_paths = half.image_paths[:6]
    by_size = mix_training_datasets([make_stream(shards, transform), half], ["shards", "json"], [None, None])
    assert by_size.weights == [12.0, 6.0] and by_size.samples_per_epoch == 18
    with pytest.raises(ConfigError, match="dataset_config.json.weight is null"):
        mix_training_datasets([make_stream(shards, transform), json_set], ["shards", "json"], [2.0, None])


def test_synthetic_command_line_writes_shards(tmp_path):
    from albef_plugin.datasets.synthetic.__main__ import main

    assert main(["--out", str(tmp_path / "w"), "--num-train", "7", "--num-val", "1", "--num-test", "1",
                 "--shards", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "w" / "shards-3").glob("*.tar")) == \
        ["00000.tar", "00001.tar", "00002.tar"]
    assert count_samples_from_stats(sorted(str(p) for p in (tmp_path / "w" / "shards-3").glob("*.tar"))) == 7


def test_paper_14m_shards_config_keeps_the_official_data_pipeline(monkeypatch):
    from albef_plugin.config import build_config

    monkeypatch.setenv("ALBEF_DATA_DIR", "/datasets/albef")
    cfg = build_config(["config=projects/albef/configs/pretrain/albef_14m_shards.yaml"])
    assert cfg.datasets == "albef_pretrain_shards,albef_pretrain_json"
    shards, json_part = cfg.dataset_config.albef_pretrain_shards, cfg.dataset_config.albef_pretrain_json
    assert list(json_part.annotations.train) == ["json_pretrain/coco.json", "json_pretrain/vg.json"]
    assert shards.data_dir == "/datasets/albef" and len(shards.shards) == 3
    assert shards.weight is None and json_part.weight is None                   # mixed by size
    for part in (shards, json_part):
        assert part.image_size == cfg.model_config.albef_pretrain.image_encoder.image_size == 256
        assert (part.processors.text.params.max_length, part.processors.text.params.add_sep) == (25, False)
        assert list(part.processors.train_image.params.scale) == [0.2, 1.0]


def test_numeric_keys_of_different_img2dataset_folders_get_different_ids():
    from albef_plugin.datasets.shards import image_id_of

    ids = {image_id_of("000000123", f"{folder}/00000.tar", i, 3) for i, folder in enumerate("abc")}
    assert len(ids) == 3 and image_id_of("000000123", "a/00000.tar") == 123
    assert image_id_of("x_1", "a/0.tar") != image_id_of("x_1", "b/0.tar")

import pytest

from albef_plugin.datasets.annotations import (PRETRAIN_FIELDS, RE_EVAL_FIELDS, RE_TRAIN_FIELDS,
                                               AnnotationError, load_annotations, resolve_image_path)


def test_files_are_concatenated_in_order(write_json):
    a = write_json("a.json", [{"image": "x.jpg", "caption": "one"}])
    b = write_json("b.json", [{"image": "y.jpg", "caption": ["two", "three"]}])
    entries = load_annotations([a, b], PRETRAIN_FIELDS)
    assert [e["image"] for e in entries] == ["x.jpg", "y.jpg"]


def test_missing_field_names_file_index_and_field(write_json):
    path = write_json("bad.json", [{"image": "x.jpg", "caption": "ok"}, {"image": "y.jpg"}])
    with pytest.raises(AnnotationError, match=r"bad\.json: entry 1 has no field 'caption'"):
        load_annotations([path], PRETRAIN_FIELDS)


@pytest.mark.parametrize("entry, field", [
    ({"image": 3, "caption": "c"}, "image"),
    ({"image": "x.jpg", "caption": []}, "caption"),
    ({"image": "x.jpg", "caption": ["ok", 5]}, "caption"),
])
def test_wrong_type_names_file_index_and_field(write_json, entry, field):
    path = write_json("typed.json", [{"image": "a.jpg", "caption": "fine"}, entry])
    with pytest.raises(AnnotationError, match=rf"typed\.json: entry 1 field '{field}'"):
        load_annotations([path], PRETRAIN_FIELDS)


def test_format_specific_fields(write_json):
    re_train = write_json("re_train.json", [{"image": "a.jpg", "caption": "c"}])
    with pytest.raises(AnnotationError, match="entry 0 has no field 'image_id'"):
        load_annotations([re_train], RE_TRAIN_FIELDS)
    re_eval = write_json("re_eval.json", [{"image": "a.jpg", "caption": "not a list"}])
    with pytest.raises(AnnotationError, match="non-empty list of caption strings"):
        load_annotations([re_eval], RE_EVAL_FIELDS)


def test_file_level_problems(write_json, tmp_path):
    with pytest.raises(AnnotationError, match="does not exist"):
        load_annotations([tmp_path / "nope.json"], PRETRAIN_FIELDS)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(AnnotationError, match="broken.json: not valid JSON"):
        load_annotations([broken], PRETRAIN_FIELDS)
    with pytest.raises(AnnotationError, match="top level must be a JSON list"):
        load_annotations([write_json("dict.json", {"image": "a"})], PRETRAIN_FIELDS)
    with pytest.raises(AnnotationError, match="No annotation files"):
        load_annotations([], PRETRAIN_FIELDS)


def test_image_paths_absolute_or_joined_to_root():
    assert resolve_image_path("/abs/x.jpg", "/root") == "/abs/x.jpg"
    assert resolve_image_path("rel/x.jpg", "/root") == "/root/rel/x.jpg"


@pytest.mark.parametrize("caption", ["", "   ", "?!...", ["fine", " - "]])
def test_captions_empty_after_cleaning_name_file_and_index(write_json, caption):
    path = write_json("empty.json", [{"image": "a.jpg", "caption": "fine"},
                                     {"image": "b.jpg", "caption": caption}])
    with pytest.raises(AnnotationError, match=r"empty\.json: entry 1 field 'caption'.*empty"):
        load_annotations([path], PRETRAIN_FIELDS)


def test_an_empty_image_path_is_refused(write_json):
    path = write_json("noimage.json", [{"image": " ", "caption": "fine"}])
    with pytest.raises(AnnotationError, match=r"noimage\.json: entry 0 field 'image'"):
        load_annotations([path], PRETRAIN_FIELDS)


def test_latin1_file_is_named(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"image": "a.jpg", "caption": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"latin1\.json: not UTF-8 text.*iconv"):
        load_annotations([path], PRETRAIN_FIELDS)


def test_a_fifo_is_not_opened_as_an_image(tmp_path):
    """Opening a FIFO would block forever: only regular files are read."""
    import os

    from albef_plugin.datasets.images import UnreadableImageError, check_image_files, read_rgb

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableImageError, match="pipe.jpg: is not a regular file"):
        read_rgb(str(fifo))
    with pytest.raises(UnreadableImageError, match="1 of 1 test images are unreadable"):
        check_image_files([str(fifo)], "test images")


def test_evaluation_images_are_checked_when_the_dataset_is_built(write_json, image_dir,
                                                                 eval_transform, text_processor):
    from albef_plugin.datasets import RetrievalEvalDataset
    from albef_plugin.datasets.images import UnreadableImageError

    (image_dir / "img1.jpg").write_bytes(b"not an image")
    rows = [{"image": f"img{i}.jpg", "caption": [f"c {i}"]} for i in range(3)]
    rows.append({"image": "gone.jpg", "caption": ["c"]})
    with pytest.raises(UnreadableImageError) as info:
        RetrievalEvalDataset([write_json("re_test.json", rows)], str(image_dir), eval_transform,
                             text_processor)
    message = str(info.value)
    assert "2 of 4 evaluation images of" in message and "re_test.json" in message
    assert "img1.jpg is not a readable image" in message and "gone.jpg does not exist" in message

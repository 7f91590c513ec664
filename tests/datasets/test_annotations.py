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

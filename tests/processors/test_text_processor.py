import hashlib
import pickle
import time

import pytest
import torch

from albef_plugin.processors import PACKAGED_VOCAB, TextProcessor, build_processor, pre_caption, pre_question
from albef_plugin.processors.text import TokenizerLoadError
from albef_plugin.registry import registry


@pytest.fixture(scope="module")
def proc() -> TextProcessor:
    return TextProcessor()


# ------------------------------------------------------------------ pre_caption
@pytest.mark.parametrize("raw, expected", [
    ("A Dog.", "a dog"),                                             # lower-case, '.' deleted
    ("hello, world! 'quoted' \"x\" (y) *z* #t: u; v~ w?", "hello world quoted x y z t u v w"),
    ("black-and-white/grey", "black and white grey"),                # - and / become spaces
    ("a <person> rides", "a person rides"),
    ("  two   spaces\t\tand tabs \n", "two spaces and tabs"),        # runs collapse, ends strip
    ("it's", "its"),
])
def test_pre_caption_rules(raw, expected):
    assert pre_caption(raw) == expected


def test_pre_caption_truncates_to_max_words_and_is_idempotent():
    caption = " ".join(f"w{i}" for i in range(40))
    out = pre_caption(caption, max_words=30)
    assert out.split(" ") == [f"w{i}" for i in range(30)]
    assert pre_caption(out, 30) == out
    assert pre_caption("a b c", max_words=2) == "a b"


def test_pre_question_does_not_collapse_whitespace():
    assert pre_question("What is  it?") == "what is  it"
    assert pre_question("Is the cat black-and-white?", 3) == "is the cat"


def test_pre_caption_rejects_non_strings():
    with pytest.raises(TypeError, match="expects a str"):
        pre_caption(["a list"])  # type: ignore[arg-type]


# -------------------------------------------------------------------- tokenizer
def test_packaged_vocab_is_bert_base_uncased(proc):
    assert hashlib.md5(PACKAGED_VOCAB.read_bytes()).hexdigest() == "64800d5d8528ce344256daf115d4965e"
    assert (PACKAGED_VOCAB.parent / "NOTICE").is_file()
    assert proc.vocab_size == 30522
    assert (proc.pad_token_id, proc.cls_token_id, proc.sep_token_id, proc.mask_token_id) == (0, 101, 102, 103)


def test_official_form_has_cls_and_no_sep(proc):
    out = proc(["A red circle.", "two blue squares at the top"])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == mask.shape
    assert (ids[:, 0] == proc.cls_token_id).all()
    assert not (ids == proc.sep_token_id).any()
    tokens = proc.convert_ids_to_tokens(ids[0][mask[0].bool()].tolist())
    assert tokens == ["[CLS]", "a", "red", "circle"]
    # padding to the longest: row 0 is shorter and padded with [PAD], mask 0 there
    assert ids.shape[1] == mask[1].sum()
    assert (ids[0][mask[0] == 0] == proc.pad_token_id).all() and mask[0].sum() == 4


def test_hf_form_ends_with_sep():
    proc = TextProcessor(add_sep=True)
    out = proc(["a red circle", "a much longer caption about a blue square"])
    for row, mask in zip(out["input_ids"], out["attention_mask"]):
        real = row[mask.bool()]
        assert real[0] == proc.cls_token_id and real[-1] == proc.sep_token_id
        assert (real == proc.sep_token_id).sum() == 1


@pytest.mark.parametrize("add_sep", [False, True])
def test_truncation_to_max_length_keeps_special_tokens(add_sep):
    proc = TextProcessor(max_length=6, add_sep=add_sep)
    out = proc(["one two three four five six seven eight nine ten"])
    ids = out["input_ids"][0].tolist()
    assert len(ids) == 6 and ids[0] == proc.cls_token_id
    assert (ids[-1] == proc.sep_token_id) == add_sep
    words = proc.convert_ids_to_tokens(ids[1:6 - int(add_sep)])
    assert words == ["one", "two", "three", "four", "five"][:5 - int(add_sep)]


def test_pre_caption_can_be_disabled():
    raw = TextProcessor(apply_pre_caption=False)
    cleaned = TextProcessor()
    # "-" survives without pre_caption and becomes its own WordPiece token
    assert raw.clean("Blue-Green") == "Blue-Green" and cleaned.clean("Blue-Green") == "blue green"
    assert raw(["a-b"])["input_ids"].shape[1] == 4 and cleaned(["a-b"])["input_ids"].shape[1] == 3


def test_vocab_folder_is_accepted(tmp_path):
    (tmp_path / "vocab.txt").write_bytes(PACKAGED_VOCAB.read_bytes())
    proc = TextProcessor(vocab=str(tmp_path))
    assert proc.vocab_size == 30522
    assert proc(["a dog"])["input_ids"].tolist() == [[101, 1037, 3899]]


def test_saved_tokenizer_json_folder_is_accepted(tmp_path, proc):
    proc.tokenizer.save(str(tmp_path / "tokenizer.json"))
    clone = TextProcessor(vocab=str(tmp_path))
    assert torch.equal(clone(["Two Crosses!"])["input_ids"], proc(["Two Crosses!"])["input_ids"])


def test_token_ids_match_hugging_face_bert_tokenizer(proc):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizer(vocab=str(PACKAGED_VOCAB))  # `vocab_file=` would be ignored
    texts = ["A man rides a horse-drawn carriage", "Café naïve résumé", "unaffable xylophonist",
             "日本 tokyo", "numbers 123 and 4.5"]
    for text in texts:
        ours = proc.tokenizer.encode(text, add_special_tokens=False).ids
        assert ours == hf(text, add_special_tokens=False)["input_ids"], text
    assert proc.decode(proc(["unaffable xylophonist"])["input_ids"][0]) == "unaffable xylophonist"


def test_tiny_vocabulary_is_an_error_naming_the_path(tmp_path):
    tiny = tmp_path / "tiny_vocab.txt"
    tiny.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog"]) + "\n")
    with pytest.raises(TokenizerLoadError, match="tiny_vocab.txt.*only 7 tokens"):
        TextProcessor(vocab=str(tiny))


def test_missing_vocab_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(TokenizerLoadError, match="nowhere.txt.*does not exist"):
        TextProcessor(vocab=str(tmp_path / "nowhere.txt"))


def test_bad_arguments_are_rejected(proc):
    with pytest.raises(ValueError, match="max_length=1"):
        TextProcessor(max_length=1)
    with pytest.raises(ValueError, match="empty list"):
        proc([])
    with pytest.raises(TypeError, match="text 1 is a int"):
        proc(["ok", 3])  # type: ignore[list-item]


def test_registered_and_built_from_spec():
    assert registry.get_processor_class("bert_text") is TextProcessor
    proc = build_processor({"type": "bert_text", "params": {"max_length": 12, "add_sep": True}})
    assert isinstance(proc, TextProcessor) and proc.max_length == 12 and proc.add_sep
    with pytest.raises(ValueError, match=r"my\.text\.params\.max_lenght.*Did you mean 'max_length'"):
        build_processor({"type": "bert_text", "params": {"max_lenght": 12}}, where="my.text")


def test_picklable_for_spawned_workers(proc):
    clone = pickle.loads(pickle.dumps(proc))
    assert torch.equal(clone(["a red circle"])["input_ids"], proc(["a red circle"])["input_ids"])


def test_batch_of_64_tokenises_in_milliseconds(proc):
    captions = [f"a large red circle and a small blue square number {i}" for i in range(64)]
    start = time.perf_counter()
    first = proc(captions)
    uncached = time.perf_counter() - start
    start = time.perf_counter()
    second = proc(captions)
    cached = time.perf_counter() - start
    assert torch.equal(first["input_ids"], second["input_ids"])
    # measured ~3 ms uncached and ~1 ms cached on one core; loose bounds for loaded machines
    assert uncached < 0.25 and cached < 0.1, (uncached, cached)

"""itm_eval / retrieval_ranks: hand-built score matrices with known ranks, and parity
with a direct transcription of the official per-row loop on random matrices."""
import numpy as np
import pytest
import torch

from albef_plugin.metrics.retrieval import itm_eval, recall_at_k, retrieval_ranks

KEYS = ["txt_r1", "txt_r5", "txt_r10", "txt_r_mean",
        "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean"]


def five_captions_per_image(num_images: int):
    img2txt = [list(range(5 * i, 5 * i + 5)) for i in range(num_images)]
    txt2img = [t // 5 for t in range(5 * num_images)]
    return img2txt, txt2img


def reference_itm_eval(scores_i2t: np.ndarray, scores_t2i: np.ndarray, img2txt, txt2img):
    """The official algorithm: sort each row, look up the GT positions (slow, loops)."""
    def recalls(ranks):
        return [100.0 * np.mean(ranks < k) for k in (1, 5, 10)]

    text_ranks = np.zeros(len(scores_i2t))
    for index, row in enumerate(scores_i2t):
        order = np.argsort(row)[::-1]
        text_ranks[index] = min(np.where(order == t)[0][0] for t in img2txt[index])
    image_ranks = np.zeros(len(scores_t2i))
    for index, row in enumerate(scores_t2i):
        order = np.argsort(row)[::-1]
        image_ranks[index] = np.where(order == txt2img[index])[0][0]
    tr, ir = recalls(text_ranks), recalls(image_ranks)
    return {"txt_r1": tr[0], "txt_r5": tr[1], "txt_r10": tr[2], "txt_r_mean": np.mean(tr),
            "img_r1": ir[0], "img_r5": ir[1], "img_r10": ir[2], "img_r_mean": np.mean(ir),
            "r_mean": (np.mean(tr) + np.mean(ir)) / 2}


def test_perfect_scores_give_100_everywhere():
    img2txt, txt2img = five_captions_per_image(4)
    gt = torch.zeros(4, 20)
    for i, texts in enumerate(img2txt):
        gt[i, texts] = 1.0
    result = itm_eval(gt, gt.t(), img2txt, txt2img)
    assert list(result) == KEYS
    assert all(value == 100.0 for value in result.values())
    assert all(type(value) is float for value in result.values())


def test_reversed_scores_put_ground_truth_last():
    # 12 images with one caption each; the GT has the lowest score of its row,
    # so every rank is 11 >= 10 and all recalls are 0
    n = 12
    scores = torch.ones(n, n) - torch.eye(n) * 2
    result = itm_eval(scores, scores.t(), [[i] for i in range(n)], list(range(n)))
    assert all(value == 0.0 for value in result.values())
    ranks = retrieval_ranks(scores, [[i] for i in range(n)])
    assert ranks.tolist() == [n - 1] * n


def test_known_ranks_give_known_recalls():
    # one caption per image; GT rank of image i is placed at position i (0..9) in row i
    n = 10
    scores = torch.zeros(n, n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        # descending order: `i` negatives above the GT, the rest below
        for position, j in enumerate(others):
            scores[i, j] = float(n - position) if position < i else -float(position)
        scores[i, i] = 0.5
    ranks = retrieval_ranks(scores, [[i] for i in range(n)])
    assert ranks.tolist() == list(range(n))
    assert recall_at_k(ranks) == {1: 10.0, 5: 50.0, 10: 100.0}


def test_best_of_several_captions_counts_for_text_retrieval():
    # image 0 owns captions 2 and 5; caption 5 is ranked first, caption 2 last
    scores_i2t = torch.tensor([[0.3, 0.4, 0.0, 0.2, 0.1, 0.9]])
    ranks = retrieval_ranks(scores_i2t, [[2, 5]])
    assert ranks.tolist() == [0]
    # only the worse caption is a GT: 5 negatives score higher
    assert retrieval_ranks(scores_i2t, [[2]]).tolist() == [5]


def test_ties_rank_the_ground_truth_after_tied_negatives():
    # a constant score matrix must not look like a perfect model
    scores = torch.zeros(3, 6)
    img2txt = [[0, 1], [2, 3], [4, 5]]
    assert retrieval_ranks(scores, img2txt).tolist() == [4, 4, 4]
    # ties among the GT captions themselves do not push the best one down
    scores = torch.tensor([[1.0, 1.0, 0.0, 0.5]])
    assert retrieval_ranks(scores, [[0, 1]]).tolist() == [0]
    # one negative tied with the best GT, one above it
    scores = torch.tensor([[0.7, 0.5, 0.5, 0.1]])
    assert retrieval_ranks(scores, [[2]]).tolist() == [2]


def test_image_without_captions_is_a_miss():
    scores = torch.rand(2, 3)
    ranks = retrieval_ranks(scores, [[0, 1, 2], []])
    assert ranks[1].item() == 3 and ranks[0].item() == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_official_loop_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    num_images = 37
    img2txt, txt2img = five_captions_per_image(num_images)
    scores_i2t = rng.standard_normal((num_images, 5 * num_images)).astype(np.float32)
    # make some queries easy so that recalls are neither all 0 nor all 100
    for i, texts in enumerate(img2txt[::3]):
        scores_i2t[3 * i, texts] += 2.5
    scores_t2i = rng.standard_normal((5 * num_images, num_images)).astype(np.float32)
    scores_t2i[np.arange(0, 5 * num_images, 2), np.array(txt2img)[::2]] += 2.5

    expected = reference_itm_eval(scores_i2t, scores_t2i, img2txt, txt2img)
    got = itm_eval(scores_i2t, scores_t2i, img2txt, txt2img)  # numpy input accepted
    assert got.keys() == expected.keys()
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
    assert 0.0 < got["r_mean"] < 100.0


def test_large_matrix_is_chunked_consistently(monkeypatch):
    import albef_plugin.metrics.retrieval as retrieval

    scores = torch.randn(50, 40)
    positives = [[i % 40, (i * 7) % 40] for i in range(50)]
    full = retrieval_ranks(scores, positives)
    monkeypatch.setattr(retrieval, "_ROW_CHUNK_ELEMENTS", 64)  # 1 row per chunk
    assert torch.equal(retrieval_ranks(scores, positives), full)


def test_bad_inputs_raise_clear_errors():
    img2txt, txt2img = five_captions_per_image(2)
    scores = torch.rand(2, 10)
    with pytest.raises(ValueError, match="scores_t2i must be"):
        itm_eval(scores, scores, img2txt, txt2img)
    with pytest.raises(ValueError, match="ground-truth lists"):
        itm_eval(scores, scores.t(), img2txt[:1], txt2img)
    with pytest.raises(ValueError, match="outside"):
        itm_eval(scores, scores.t(), [[0], [10]], txt2img)
    nan_scores = scores.clone()
    nan_scores[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        itm_eval(nan_scores, scores.t(), img2txt, txt2img)


def test_format_recall_table_has_one_row_per_ranking():
    from albef_plugin.metrics.retrieval import format_recall_table

    results = {f"test/ds/{ranking}_{side}_r{k}": float(k) for ranking in ("itc", "itm")
               for side in ("txt", "img") for k in (1, 5, 10)}
    results["test/ds/itc_r_mean"] = 3.0
    lines = format_recall_table(results).splitlines()
    assert lines[0].split("|")[1].strip() == "TR@1"
    assert [line.split("|")[0].strip() for line in lines[2:]] == ["test/ds/itc", "test/ds/itm"]
    assert lines[2].split("|")[3].strip() == "10.00"  # TR@10
    assert format_recall_table({"loss": 1.0}) == ""

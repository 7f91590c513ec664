"""RetrievalEvaluator on a tiny fake model and dataset: keys, ranges, ITM re-ranking."""
import pytest
import torch
import albef_plugin.metrics.itm_rerank as itm_rerank
from albef_plugin.metrics import EvalContext, RetrievalEvaluator, itm_eval
from albef_plugin.metrics.itm_rerank import (NOT_RERANKED_SCORE, center_on_candidate_means,
                                             rows_of_rank)
from albef_plugin.registry import registry

from retrieval_fakes import TINY_ALBEF_OVERRIDES, TinyITMModel, TinyRetrievalSet, full_itm_matrix

PREFIXED_KEYS = {f"{stage}_{key}" for stage in ("itc", "itm") for key in
                 ("txt_r1", "txt_r5", "txt_r10", "txt_r_mean",
                  "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean")}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyITMModel()


@pytest.fixture
def dataset():
    return TinyRetrievalSet(num_images=6, captions_per_image=2)


# image batches of 4 in the main process, as the trainer's context would give them
CPU = EvalContext(device="cpu", batch_size=4, num_workers=0)


def make_evaluator(**params):
    # the metric's params, as an evaluation.metrics entry gives them
    return registry.get_metric_class("retrieval")({"text_batch_size": 5, **params})


def test_keys_ranges_and_model_mode_restored(model, dataset):
    model.train()
    metrics = make_evaluator(k_test=3).evaluate(model, dataset, CPU)
    assert set(metrics) == PREFIXED_KEYS
    assert all(type(v) is float and 0.0 <= v <= 100.0 for v in metrics.values())
    assert model.training, "evaluate() must restore the model's train mode"


def test_config_from_params_with_checks():
    config = RetrievalEvaluator({"k_test": 7, "itm_rerank": False}).config
    assert (config.k_test, config.itm_rerank, config.text_batch_size) == (7, False, 256)
    assert RetrievalEvaluator(RetrievalEvaluator.Config(k_test=9)).config.k_test == 9
    assert RetrievalEvaluator({"k_test": 7}, k_test=5).config.k_test == 5  # keywords win
    with pytest.raises(ValueError, match="unknown parameter.*k_tset"):
        RetrievalEvaluator({"k_tset": 3})
    with pytest.raises(ValueError, match="k_test=0 must be >= 1"):
        RetrievalEvaluator({"k_test": 0})


def test_itc_only_when_rerank_disabled(model, dataset):
    metrics = make_evaluator(itm_rerank=False).evaluate(model, dataset, CPU)
    assert set(metrics) == {k for k in PREFIXED_KEYS if k.startswith("itc_")}
    assert model.itm_calls == []


def test_itc_metrics_match_itm_eval_on_the_similarity_matrix(model, dataset):
    evaluator = make_evaluator(itm_rerank=False)
    scores = evaluator.compute_scores(model, dataset, CPU)
    assert scores.itc_i2t.shape == (6, 12) and scores.itc_i2t.abs().max() <= 1.0 + 1e-5
    expected = itm_eval(scores.itc_i2t, scores.itc_i2t.t(), dataset.img2txt, dataset.txt2img)
    metrics = evaluator.evaluate(model, dataset, CPU)
    assert metrics == {f"itc_{k}": v for k, v in expected.items()}


def test_rerank_with_k_at_least_n_equals_full_itm_ranking(model, dataset):
    truth = full_itm_matrix(model, dataset)
    # k_test larger than both candidate counts is clamped (12 texts, 6 images)
    evaluator = make_evaluator(k_test=1000)
    scores = evaluator.compute_scores(model, dataset, CPU)
    torch.testing.assert_close(scores.itm_i2t, truth, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.itm_t2i, truth.t(), atol=1e-5, rtol=1e-5)
    metrics = evaluator.evaluate(model, dataset, CPU)
    expected = itm_eval(truth, truth.t(), dataset.img2txt, dataset.txt2img)
    assert {k: metrics[f"itm_{k}"] for k in expected} == pytest.approx(expected)


def test_non_top_k_entries_are_excluded(model, dataset):
    truth = full_itm_matrix(model, dataset)
    k = 3
    scores = make_evaluator(k_test=k).compute_scores(model, dataset, CPU)
    for itm, itc, full in ((scores.itm_i2t, scores.itc_i2t, truth),
                           (scores.itm_t2i, scores.itc_i2t.t(), truth.t())):
        top = itc.topk(k, dim=1).indices
        in_top = torch.zeros_like(itm, dtype=torch.bool).scatter_(1, top, True)
        assert torch.all(itm[~in_top] == NOT_RERANKED_SCORE)
        torch.testing.assert_close(itm[in_top], full[in_top], atol=1e-5, rtol=1e-5)


def test_rerank_batches_several_queries_per_fusion_call(model, dataset):
    make_evaluator(k_test=3, itm_pairs_per_call=9).evaluate(model, dataset, CPU)
    # 6 images x 3 texts in calls of 3 images (9 pairs), then 12 texts x 3 images
    assert model.itm_calls == [9, 9] + [9] * 4


def test_text_padding_does_not_change_scores(model, dataset):
    one_batch = make_evaluator(k_test=4, text_batch_size=100).compute_scores(model, dataset, CPU)
    many_batches = make_evaluator(k_test=4, text_batch_size=3).compute_scores(model, dataset, CPU)
    torch.testing.assert_close(one_batch.itm_i2t, many_batches.itm_i2t)
    torch.testing.assert_close(one_batch.itm_t2i, many_batches.itm_t2i)


def test_itm_plus_itc_adds_the_similarity(model, dataset):
    plain = make_evaluator(k_test=3).compute_scores(model, dataset, CPU)
    lavis = make_evaluator(k_test=3, itm_plus_itc=True).compute_scores(model, dataset, CPU)
    reranked = plain.itm_i2t != NOT_RERANKED_SCORE
    torch.testing.assert_close(lavis.itm_i2t[reranked],
                               plain.itm_i2t[reranked] + plain.itc_i2t[reranked])


def test_log_odds_score_is_match_minus_no_match_logit(model, dataset):
    truth = full_itm_matrix(model, dataset)   # the match logit of every pair
    no_match = full_itm_matrix(model, dataset, column=0)
    scores = make_evaluator(k_test=1000, itm_score="log_odds").compute_scores(model, dataset, CPU)
    torch.testing.assert_close(scores.itm_i2t, truth - no_match, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.itm_t2i, (truth - no_match).t(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="itm_score='prob' is not one of logit, log_odds"):
        make_evaluator(itm_score="prob")


def test_centering_subtracts_each_candidates_mean_score_as_a_query():
    # two images, three captions, k = 2: scores_i2t rows are images, scores_t2i rows captions
    x = NOT_RERANKED_SCORE
    i2t = torch.tensor([[2.0, 1.0, x], [x, 3.0, 5.0]])
    t2i = torch.tensor([[4.0, x], [1.0, 3.0], [x, 0.0]])
    centered_i2t, centered_t2i = center_on_candidate_means(i2t, t2i)
    # caption means over their own top images: 4, 2, 0; image means over their captions: 1.5, 4
    assert centered_i2t.tolist() == [[-2.0, -1.0, x], [x, 1.0, 5.0]]
    assert centered_t2i.tolist() == [[2.5, x], [-0.5, -1.0], [x, -4.0]]
    # image 0 now prefers caption 1 (its ITC-top caption 0 scores high with every image)
    assert centered_i2t[0, :2].argmax() == 1 and i2t[0].argmax() == 0


def test_itm_center_candidates_option_centers_the_reranked_scores(model, dataset):
    plain = make_evaluator(k_test=3).compute_scores(model, dataset, CPU)
    centered = make_evaluator(k_test=3, itm_center_candidates=True).compute_scores(model, dataset, CPU)
    expected_i2t, expected_t2i = center_on_candidate_means(plain.itm_i2t, plain.itm_t2i)
    torch.testing.assert_close(centered.itm_i2t, expected_i2t)
    torch.testing.assert_close(centered.itm_t2i, expected_t2i)
    assert not torch.equal(centered.itm_i2t, plain.itm_i2t)


def test_rows_split_across_ranks_sum_to_the_single_process_result(model, dataset, monkeypatch):
    single = make_evaluator(k_test=3).compute_scores(model, dataset, CPU)
    world_size, partial = 4, []
    for rank in range(world_size):
        monkeypatch.setattr(itm_rerank, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(itm_rerank, "get_world_size", lambda: world_size)
        partial.append(make_evaluator(k_test=3).compute_scores(model, dataset, CPU))
    torch.testing.assert_close(sum(p.itm_i2t for p in partial), single.itm_i2t)
    torch.testing.assert_close(sum(p.itm_t2i for p in partial), single.itm_t2i)


@pytest.mark.parametrize("num_rows,world_size", [(0, 2), (5, 1), (5, 2), (5, 8), (25000, 3)])
def test_rows_of_rank_cover_every_row_once(num_rows, world_size):
    covered = []
    for rank in range(world_size):
        start, end = rows_of_rank(num_rows, rank, world_size)
        covered.extend(range(start, end))
    assert covered == list(range(num_rows))


def test_bad_dataset_is_named_in_the_error(model, dataset):
    with pytest.raises(TypeError, match="lacks texts"):
        make_evaluator().evaluate(model, torch.utils.data.TensorDataset(torch.zeros(2)), CPU)
    dataset.txt2img = dataset.txt2img[:-1]
    with pytest.raises(ValueError, match="txt2img has 11 entries"):
        make_evaluator().evaluate(model, dataset, CPU)


def test_bf16_autocast_runs_and_keeps_float32_scores(model, dataset):
    scores = make_evaluator(k_test=2).compute_scores(model, dataset, CPU, precision="bf16")
    assert scores.itc_i2t.dtype == torch.float32 and scores.itm_i2t.dtype == torch.float32
    with pytest.raises(ValueError, match="precision='fp8'"):
        make_evaluator().evaluate(model, dataset, EvalContext(num_workers=0, precision="fp8"))


def test_tiny_albef_pretrain_end_to_end():
    """The real model through the registry: ITM re-ranking with k >= N is the full ranking."""
    from albef_plugin.models import build_model

    model = build_model("albef_pretrain", TINY_ALBEF_OVERRIDES)
    dataset = TinyRetrievalSet(num_images=5, captions_per_image=2, image_size=32)
    queue_before = model.image_queue.clone()
    model.train()

    evaluator = make_evaluator(k_test=64, itm_pairs_per_call=16)
    metrics = evaluator.evaluate(model, dataset, CPU)
    assert set(metrics) == PREFIXED_KEYS
    assert all(0.0 <= v <= 100.0 for v in metrics.values())
    assert model.training and torch.equal(model.image_queue, queue_before)
    assert set(evaluator.timings) >= {"encode_s", "itm_rerank_s", "total_s"}

    truth = full_itm_matrix(model, dataset)
    scores = evaluator.compute_scores(model, dataset, CPU)
    torch.testing.assert_close(scores.itm_i2t, truth, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores.itm_t2i, truth.t(), atol=1e-4, rtol=1e-4)

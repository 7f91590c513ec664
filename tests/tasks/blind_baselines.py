"""Image-blind baselines for the labelled tasks: what the text alone (or nothing) predicts.

- majority: the most frequent training label, scored on the evaluation split;
- text-only: a logistic regression on the sentence's word unigrams and bigrams, trained on
  the training split (full batch, to convergence), scored on the evaluation split.

A demo that learns its task must beat the better of the two by a clear margin: otherwise its
labels could be guessed without looking at the image.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F


def _features(sentence: str) -> List[str]:
    words = sentence.lower().split()
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def majority_accuracy(train_labels: Sequence[int], eval_labels: Sequence[int]) -> float:
    majority = Counter(train_labels).most_common(1)[0][0]
    return sum(label == majority for label in eval_labels) / len(eval_labels)


def text_only_accuracy(train: Sequence[Tuple[str, int]], evaluation: Sequence[Tuple[str, int]],
                       steps: int = 300, seed: int = 0) -> float:
    """Accuracy on ``evaluation`` of a unigram+bigram logistic regression fit on ``train``."""
    vocab: Dict[str, int] = {}
    for sentence, _ in train:
        for feature in _features(sentence):
            vocab.setdefault(feature, len(vocab))

    def encode(rows: Sequence[Tuple[str, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        x = torch.zeros(len(rows), len(vocab) + 1)  # + bias column
        x[:, -1] = 1.0
        for i, (sentence, _) in enumerate(rows):
            for feature in _features(sentence):
                if feature in vocab:
                    x[i, vocab[feature]] = 1.0
        return x, torch.tensor([label for _, label in rows])

    x_train, y_train = encode(train)
    x_eval, y_eval = encode(evaluation)
    classes = int(max(y_train.max(), y_eval.max())) + 1
    torch.manual_seed(seed)
    weight = torch.zeros(x_train.shape[1], classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x_train @ weight, y_train) + 1e-4 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((x_eval @ weight).argmax(1) == y_eval).float().mean())

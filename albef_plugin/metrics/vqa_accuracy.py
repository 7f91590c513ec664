"""The standard VQA accuracy and its answer normalisation, written from the documented rules of
the VQA evaluation (visualqa.org, "Evaluation"):

Normalisation of an answer (prediction and ground truth alike):
  1. newlines and tabs become spaces; leading / trailing spaces are stripped; lower case;
  2. punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is removed (deleted when it
     touches a space or the text has a digit-comma-digit group such as ``1,000``, else
     replaced by a space, so ``black/white`` -> ``black white``); a period is removed unless
     it is a decimal point (``2.5`` stays);
  3. number words become digits (``two`` -> ``2``, ``none`` -> ``0``), the articles ``a``,
     ``an``, ``the`` are dropped, and contractions missing their apostrophe are restored
     (``dont`` -> ``don't``).

Accuracy of a predicted answer given the N annotators' answers: for each annotator, the
fraction ``min(1, #other annotators who gave the prediction / 3)``; averaged over the N
annotators (with 10 annotators: the average over the 10 subsets of 9). With a single
annotation there are no "others": the prediction scores 1 if it equals that answer.

The official evaluation script normalises only when the annotators disagree; here both sides
are always normalised (the documented rule), which differs only for a prediction that
matches a unanimous ground truth up to punctuation, articles or number words.
"""
from __future__ import annotations

import re
from typing import Sequence

__all__ = ["normalize_answer", "vqa_accuracy"]

_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!"]
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_NON_DECIMAL_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# contraction written without its apostrophe -> the contraction
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "id": "i'd", "ill": "i'll",
    "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd", "itll": "it'll",
    "lets": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "oclock": "o'clock",
    "oughtnt": "oughtn't", "shant": "shan't", "shed": "she'd", "shes": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "somebodys": "somebody's",
    "someones": "someone's", "thats": "that's", "thered": "there'd", "theres": "there's",
    "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed": "we'd", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


def _strip_punctuation(text: str) -> str:
    has_number_group = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or has_number_group:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _NON_DECIMAL_PERIOD.sub("", out)


def normalize_answer(answer: str) -> str:
    """The normalised form two answers are compared in (see the module docstring)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _strip_punctuation(text)
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, ground_truth: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one predicted answer against its annotators' answers."""
    if not ground_truth:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    predicted = normalize_answer(prediction)
    matches = [normalize_answer(answer) == predicted for answer in ground_truth]
    if len(matches) == 1:
        return float(matches[0])
    total = sum(matches)
    # leave annotator i out: the others who match are total - matches[i]
    return sum(min(1.0, (total - own) / 3.0) for own in matches) / len(matches)

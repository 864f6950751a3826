"""Caption metrics: BLEU-1..4, ROUGE-L, CIDEr-D, in pure Python, matching COCO-caption numbers.

What the numbers match: the MS-COCO caption evaluation code (`pycocoevalcap` 1.2, the same
scorers `aac-metrics` ports for DCASE audio captioning), checked in the unit tests against
values that `tests/fixtures/make_caption_metric_refs.py` computed with pycocoevalcap on the
same captions:

- Tokenisation: `ptb_tokenize` reimplements what pycocoevalcap's `PTBTokenizer` does
  (Stanford CoreNLP 3.4.1 `PTBTokenizer -preserveLines -lowerCase`, then dropping the
  punctuation tokens of its PUNCTUATIONS list) for ordinary captions: lower-casing,
  splitting off punctuation, contractions (`is n't`, `dog 's`), `$`/`%`, brackets
  (kept, as upstream, as the lower-cased tokens `-lrb-` ...). Exotic abbreviations may
  tokenise differently from CoreNLP's lexer; the tests check typical captions exactly.
- BLEU-n: corpus-level BLEU with the "closest" reference length, upstream's smoothing
  constants (1e-15 / 1e-9) and its brevity penalty (`bleu_scorer.py`).
- ROUGE-L: LCS F-measure with beta 1.2 from the best precision and the best recall over
  the references, averaged over clips (`rouge.py`).
- CIDEr-D: n = 1..4, tf-idf with document frequencies from the evaluated references,
  Gaussian length penalty sigma 6, clipped hypothesis counts, averaged over references
  and n-gram orders, times 10 (`cider_scorer.py`). As upstream (and aac-metrics), the
  "length" in the penalty is the number of bigrams (words - 1), kept for comparability.

Not computed (never reported as numbers):

- METEOR: METEOR 1.5 needs its Java jar and its paraphrase/synonym tables; a faithful
  Python port does not exist here, and NLTK's `meteor_score` gives different values.
- SPICE, and so SPIDEr = (CIDEr-D + SPICE) / 2, the paper's captioning metric: SPICE 1.0
  runs on Java with Stanford CoreNLP 3.6.0 and its models jar, which neither PyPI
  (pycocoevalcap ships SPICE without them and downloads them at first use) nor Debian
  provides, and nothing may be downloaded at run time.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Mapping, Sequence

NGRAM_ORDER = 4  # BLEU-4 and CIDEr-D use 1- to 4-grams
CIDER_SIGMA = 6.0  # CIDEr-D Gaussian length-penalty width
ROUGE_BETA = 1.2  # recall weight of ROUGE-L
# pycocoevalcap's PUNCTUATIONS, lower-cased bracket escapes excluded: upstream compares
# them in upper case after `-lowerCase`, so `-lrb-` and friends survive there too.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"])
UNAVAILABLE = {
    "METEOR": "needs the METEOR 1.5 Java jar and paraphrase tables; no faithful pure-Python implementation",
    "SPICE": "needs Java + Stanford CoreNLP 3.6.0 models, which are on neither PyPI nor Debian",
    "SPIDEr": "is (CIDEr-D + SPICE) / 2 and SPICE is unavailable",
}

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_ABBREVIATIONS = frozenset("mr mrs ms dr st jr sr vs etc jan feb mar apr jun jul aug sep sept oct nov dec".split())
_CONTRACTION = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPLIT = re.compile(r"""(\.\.\.|--|[!?]+|[,;:](?!\d)|[()\[\]{}"`$%&*~@=+]|'(?![a-z]))""")


def _split_word(word: str) -> list[str]:
    """Split one whitespace-free chunk (already free of separable punctuation) PTB-style."""
    tokens: list[str] = []
    if word.startswith("'") and len(word) > 1 and not _CONTRACTION.match(word):
        tokens.append("`")  # an opening single quote
        word = word[1:]
    trailing = []
    if word.endswith(".") and len(word) > 1:
        stem = word[:-1]
        is_abbreviation = stem in _ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)+[a-z]", stem)
        if not is_abbreviation:
            word, trailing = stem, ["."]
    match = _CONTRACTION.match(word)
    tokens.extend([match.group(1), match.group(2)] if match else [word])
    return [t for t in tokens if t] + trailing


def ptb_tokenize(caption: str) -> str:
    """Lower-case and tokenise one caption as COCO-caption's PTB tokenizer, dropping punctuation."""
    text = caption.lower().replace("\u2014", " -- ").replace("\u2013", " -- ").replace("\u2026", " ... ")
    text = re.sub(r"(?<=[a-z])n't\b", " n't", text)
    tokens: list[str] = []
    for chunk in _SPLIT.split(text):
        if not chunk or chunk.isspace():
            continue
        if _SPLIT.fullmatch(chunk):
            tokens.append(_BRACKETS.get(chunk, chunk))
            continue
        for word in chunk.split():
            tokens.extend(_split_word(word))
    return " ".join(t for t in tokens if t not in PUNCTUATIONS and t != '"')


def _ngrams(words: Sequence[str], n_max: int = NGRAM_ORDER) -> Counter:
    return Counter(tuple(words[i:i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1))


def compute_bleu(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Corpus BLEU-1..4 on tokenised captions (pycocoevalcap `Bleu(4)`, option "closest")."""
    tiny, small = 1e-15, 1e-9  # upstream's smoothing: 0 matches -> ~0, never a division by zero
    correct, guess = [0] * NGRAM_ORDER, [0] * NGRAM_ORDER
    test_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        words = cand.split()
        max_ref = Counter()
        for ref in refs:
            max_ref |= _ngrams(ref.split())  # | keeps the maximum count per n-gram
        for gram, count in _ngrams(words).items():
            correct[len(gram) - 1] += min(count, max_ref[gram])
        for k in range(NGRAM_ORDER):
            guess[k] += max(0, len(words) - k)
        test_len += len(words)
        ref_len += min((abs(len(r.split()) - len(words)), len(r.split())) for r in refs)[1]
    scores, product = [], 1.0
    for k in range(NGRAM_ORDER):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    return [s * penalty for s in scores]


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def compute_rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """ROUGE-L per clip (pycocoevalcap `Rouge`: tokens split on single spaces, as upstream)."""
    scores = []
    for cand, refs in zip(candidates, references):
        cand_tokens = cand.split(" ")
        lcs = [(_lcs_length(r.split(" "), cand_tokens), len(r.split(" "))) for r in refs]
        precision = max(m / len(cand_tokens) for m, _ in lcs)
        recall = max(m / n for m, n in lcs)
        if precision and recall:
            scores.append((1 + ROUGE_BETA ** 2) * precision * recall / (recall + ROUGE_BETA ** 2 * precision))
        else:
            scores.append(0.0)
    return scores


def _tfidf(counts: Counter, doc_freq: Counter, log_num_docs: float) -> tuple[list[dict], list[float], int]:
    vec: list[dict] = [{} for _ in range(NGRAM_ORDER)]
    norm = [0.0] * NGRAM_ORDER
    for gram, tf in counts.items():
        n = len(gram) - 1
        vec[n][gram] = tf * (log_num_docs - math.log(max(1.0, doc_freq[gram])))
        norm[n] += vec[n][gram] ** 2
    length = sum(tf for gram, tf in counts.items() if len(gram) == 2)  # upstream counts bigrams here
    return vec, [math.sqrt(v) for v in norm], length


def compute_cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """CIDEr-D per clip (pycocoevalcap `Cider`, which is CIDEr-D: sigma 6, clipping, x10)."""
    ref_counts = [[_ngrams(r.split()) for r in refs] for refs in references]
    doc_freq = Counter(gram for refs in ref_counts for gram in set().union(*refs))
    log_num_docs = math.log(len(references))
    scores = []
    for cand, refs in zip(candidates, ref_counts):
        vec, norm, length = _tfidf(_ngrams(cand.split()), doc_freq, log_num_docs)
        total = [0.0] * NGRAM_ORDER
        for ref in refs:
            vec_ref, norm_ref, length_ref = _tfidf(ref, doc_freq, log_num_docs)
            penalty = math.exp(-((length - length_ref) ** 2) / (2 * CIDER_SIGMA ** 2))
            for n in range(NGRAM_ORDER):
                value = sum(min(w, vec_ref[n].get(g, 0.0)) * vec_ref[n].get(g, 0.0) for g, w in vec[n].items())
                if norm[n] != 0 and norm_ref[n] != 0:
                    value /= norm[n] * norm_ref[n]
                total[n] += value * penalty
        scores.append(10.0 * sum(total) / NGRAM_ORDER / len(refs))
    return scores


def compute_caption_metrics(candidates: Sequence[str], references: Sequence[Sequence[str]],
                            tokenize: bool = True) -> dict[str, float]:
    """Corpus scores of one candidate caption per clip against its references.

    Args:
        candidates: N generated captions.
        references: N lists of reference captions (at least one each).
        tokenize: apply `ptb_tokenize` first (False: inputs are already tokenised).

    Returns:
        {"BLEU_1".."BLEU_4", "ROUGE_L", "CIDEr-D"}; METEOR, SPICE and SPIDEr are absent
        (see `UNAVAILABLE` for why).
    """
    if len(candidates) != len(references) or not candidates:
        raise ValueError(f"expected one candidate per reference list (N >= 1); got {len(candidates)} "
                         f"candidates and {len(references)} reference lists")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every clip needs at least one reference caption; found an empty list")
    if tokenize:
        candidates = [ptb_tokenize(c) for c in candidates]
        references = [[ptb_tokenize(r) for r in refs] for refs in references]
    bleu = compute_bleu(candidates, references)
    result = {f"BLEU_{k + 1}": bleu[k] for k in range(NGRAM_ORDER)}
    result["ROUGE_L"] = _mean(compute_rouge_l(candidates, references))
    result["CIDEr-D"] = _mean(compute_cider_d(candidates, references))
    return result


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def unavailable_metrics() -> Mapping[str, str]:
    """Metrics this module does not compute, with the reason for each."""
    return dict(UNAVAILABLE)

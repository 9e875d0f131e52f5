import random

import pytest

from include.data.dedup import ExactDeduplicator, NearDuplicateIndex, lsh_bands, normalize_for_dedup

BASE = ("how do i configure karpenter to provision gpu nodes for distributed training jobs on amazon eks "
        "with efa networking enabled and spot capacity disabled for the production pool")


def test_exact_duplicates_ignore_case_punctuation_and_spacing():
    d = ExactDeduplicator()
    assert not d.is_duplicate(normalize_for_dedup("What is EKS?  Managed Kubernetes."))
    assert d.is_duplicate(normalize_for_dedup("what is eks managed kubernetes"))
    assert not d.is_duplicate(normalize_for_dedup("What is EKS? Managed Kubernetes on AWS."))


def test_near_duplicates_are_caught_and_distinct_texts_kept():
    idx = NearDuplicateIndex(threshold=0.8)
    near = BASE.replace("disabled", "turned off")  # one word changed out of 30
    other = "mlflow aliases let a registry point champion and challenger at model versions without copying"
    assert idx.add_batch([BASE, near, other]) == [False, True, False]
    assert idx.add_batch([BASE]) == [True]  # across batches too


def test_false_positive_rate_on_unrelated_texts_is_negligible():
    rng = random.Random(7)
    words = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(3000)]
    flags = NearDuplicateIndex(threshold=0.85).add_batch(texts)
    assert sum(flags) == 0


def test_threshold_changes_what_counts_as_near():
    far = BASE.replace("configure", "set up")  # trigram Jaccard ~0.76
    strict, loose = NearDuplicateIndex(threshold=0.95), NearDuplicateIndex(threshold=0.5)
    assert strict.add_batch([BASE, far]) == [False, False]
    assert loose.add_batch([BASE, far]) == [False, True]


def test_short_texts_hash_whole():
    idx = NearDuplicateIndex()
    assert idx.add_batch(["a", "a b", "a b", "b"]) == [False, False, True, False]


def test_band_parameters_come_from_the_threshold():
    b, r = lsh_bands(0.85, 128)
    assert b * r <= 128 and b > 1 and r > 1
    with pytest.raises(ValueError):
        NearDuplicateIndex(threshold=0)

"""benchmarks/seed_search.py: the seed search of issue #24 finds a small seed by the smoothness of S(x'),
through whichever derivation the key used, and the fast derivation finds nothing on a KDF key."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from avpcli.key import TEST_SEED_KDF
from avpcli.scramble import PER_IMAGE_SCHEME
from benchmarks import seed_search

SIZE, SEED, SEEDS = 48, 3, range(0, 8)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return seed_search.load_photo(seed_search.ASTRONAUT, SIZE)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_seed_ranges_parse_and_bad_ones_are_refused():
    assert seed_search.seed_range("0-1999") == range(0, 2000)
    assert seed_search.seed_range("7") == range(7, 8)
    for bad in ("5-2", "a-b", "-3", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_search.seed_range(bad)


def test_smoothness_tells_a_photo_from_noise_and_blocks_correlate_with_themselves(photo):
    noise = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert seed_search.smoothness(photo[None]) * 3 < seed_search.smoothness(noise)
    assert seed_search.block_correlation(photo, photo) == pytest.approx(1.0)
    assert abs(seed_search.block_correlation(photo, noise[0])) < 0.3


def _search(photo, kdf, derive):
    ciphertext, key = seed_search.make_ciphertext(photo, SEED, kdf, iterations=2, steps=1)
    assert key.metadata.get("seed_kdf") == (None if kdf is None else kdf.name)
    assert key.scramble.scheme == PER_IMAGE_SCHEME
    return ciphertext, seed_search.search(ciphertext, SEEDS, derive, PER_IMAGE_SCHEME)


def test_the_fast_derivation_gives_a_key_without_kdf_away(photo):
    ciphertext, result = _search(photo, None, seed_search.fast_secret)
    assert result.guesses == result.planned == len(SEEDS) and result.best == SEED
    assert result.margin(SEED) > 1.5  # every wrong seed's S(x') is far rougher
    assert not torch.equal(ciphertext, photo[None])


def test_a_kdf_key_is_found_only_through_the_kdf(photo):
    ciphertext, through_kdf = _search(photo, TEST_SEED_KDF, seed_search.kdf_secret(TEST_SEED_KDF))
    assert through_kdf.best == SEED and through_kdf.margin(SEED) > 1.5
    fast = seed_search.search(ciphertext, SEEDS, seed_search.fast_secret, PER_IMAGE_SCHEME)
    assert fast.scores[SEED] > 1.5 * through_kdf.scores[SEED]  # seed 3's fast secret is just another wrong one


def test_the_budget_stops_the_search_and_the_rate_counts_what_was_tried():
    ciphertext = torch.rand(1, 3, SIZE, SIZE)
    result = seed_search.search(ciphertext, range(1000), seed_search.fast_secret, PER_IMAGE_SCHEME,
                                budget_seconds=0.0)
    assert result.planned == 1000 and result.guesses == 1 and 0 < result.rate < float("inf")


def test_the_benchmark_reports_every_derivation(capsys):
    args = seed_search.build_parser().parse_args(
        ["--seeds", "0-5", "--kdf-seeds", "2-4", "--seed", "3", "--size", "32", "--iterations", "1", "--json",
         "--image", str(seed_search.ASTRONAUT)])
    args.kdf = TEST_SEED_KDF  # the full cost is pinned in tests/test_key.py; here it would only cost time
    rows = seed_search.run(args)
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == rows and [row["derivation"] for row in rows] == [
        "old (sha256)", f"kdf ({TEST_SEED_KDF.name})", "fast-on-kdf"]
    old, kdf, shortcut = rows
    assert old["found"] and kdf["found"] and (old["guesses"], kdf["guesses"]) == (6, 3)
    assert old["block_correlation_of_best"] > 0.8 and kdf["block_correlation_of_best"] > 0.8
    assert kdf["seconds_for_full_range"] == pytest.approx(6 / kdf["guesses_per_second"], rel=0.05, abs=0.1)
    assert shortcut["block_correlation_of_best"] < 0.5

"""The attack engine on tiny seeded models: it optimizes, stays in range, is per-sample and deterministic."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from avpcli.engine import (
    AttackSettings,
    autocast_dtype_for,
    default_autocast_dtype,
    StopCriteria,
    attack_settings,
    decrypt_batch,
    encrypt_batch,
    measure_images,
    prepare_models,
    quantize,
    variance_consistency,
)
from avpcli.engine.loop import _initial_images, _StepDecay
from avpcli.engine.objective import Objective
from avpcli.errors import UsageError
from avpcli.metrics import bandpass_correlation, edge_correlation, lowpass_correlation
from avpcli.targets import load_target


def near_identity_key() -> nn.Module:
    """A small conv key that starts close to the identity, so the reconstruction term is learnable."""
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(0.05)
        conv.weight[:, :, 1, 1] += torch.eye(3)
        conv.bias.zero_()
    return nn.Sequential(conv, nn.Hardtanh(0, 1))


def originals(count: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    smooth = torch.rand(count, 3, 8, 8, generator=generator)
    return nn.functional.interpolate(smooth, size=(32, 32), mode="bilinear", align_corners=False)


FAST = AttackSettings(iterations=60, key_weight=1.0, stop=None)


@pytest.fixture(scope="module")
def embedding_target():
    return load_target("tiny-embedding")


def test_total_loss_falls_and_output_stays_on_the_8bit_grid(embedding_target):
    images = originals()
    key = near_identity_key()
    seeds = [1, 2, 3]
    short = encrypt_batch(images, embedding_target, key, dataclasses.replace(FAST, iterations=2), "embedding", seeds)
    long = encrypt_batch(images, embedding_target, key, FAST, "embedding", seeds)
    for before, after in zip(short.metrics, long.metrics):
        assert after.feature_distance < before.feature_distance
    encrypted = long.encrypted
    assert encrypted.min() >= 0 and encrypted.max() <= 1
    assert torch.equal(encrypted, quantize(encrypted)), "ciphertexts must be exactly representable in 8 bits"


def test_an_image_result_does_not_depend_on_its_batch_mates(embedding_target):
    images = originals(3)
    key = near_identity_key()
    settings = dataclasses.replace(FAST, iterations=30)
    together = encrypt_batch(images, embedding_target, key, settings, "embedding", [7, 8, 9])
    alone = encrypt_batch(images[1:2], embedding_target, key, settings, "embedding", [8])
    # Up to one 8-bit level, for float rounding differences between batch sizes.
    assert (together.encrypted[1] - alone.encrypted[0]).abs().max() <= 1 / 255 + 1e-6
    assert together.metrics[1].feature_distance == pytest.approx(alone.metrics[0].feature_distance, abs=1e-3)


def test_same_seed_same_ciphertext_other_seed_other_ciphertext(embedding_target):
    key = near_identity_key()
    first = encrypt_batch(originals(1), embedding_target, key, FAST, "embedding", [5])
    again = encrypt_batch(originals(1), embedding_target, key, FAST, "embedding", [5])
    other = encrypt_batch(originals(1), embedding_target, key, FAST, "embedding", [6])
    assert torch.equal(first.encrypted, again.encrypted)
    assert not torch.equal(first.encrypted, other.encrypted)


def test_early_stopping_stops_each_image_when_it_meets_the_bars(embedding_target):
    lenient = StopCriteria(max_feature_distance=0.5, max_ssim_encrypted=0.5, min_ssim_decrypted=-1.0)
    settings = AttackSettings(iterations=400, key_weight=1.0, stop=lenient, check_every=5)
    result = encrypt_batch(originals(), embedding_target, near_identity_key(), settings, "embedding", [1, 2, 3])
    for metrics in result.metrics:
        assert metrics.met_targets
        assert metrics.iterations < 400
        assert metrics.iterations % 5 == 0


def test_early_checks_stop_an_image_on_the_first_state_that_meets_the_bars(embedding_target):
    # The trajectory does not depend on when images are checked, so a run that checks every step
    # tells the first state that meets every bar; early checks must find it (or one at most a step
    # later: the float hint misses a state whose 8-bit rounding alone passes) with a cadence of 50.
    lenient = StopCriteria(max_feature_distance=0.02, max_ssim_encrypted=0.5, min_ssim_decrypted=-1.0)
    every_step = AttackSettings(iterations=400, key_weight=1.0, stop=lenient, check_every=1)
    hinted = dataclasses.replace(every_step, check_every=50, early_checks=True)
    cadence_only = dataclasses.replace(every_step, check_every=50)
    images, key, seeds = originals(), near_identity_key(), [1, 2, 3]
    first = encrypt_batch(images, embedding_target, key, every_step, "embedding", seeds)
    early = encrypt_batch(images, embedding_target, key, hinted, "embedding", seeds)
    late = encrypt_batch(images, embedding_target, key, cadence_only, "embedding", seeds)
    for exact, found, periodic in zip(first.metrics, early.metrics, late.metrics):
        assert found.met_targets and exact.met_targets
        assert exact.iterations <= found.iterations <= exact.iterations + 1 < periodic.iterations
        assert periodic.iterations % 50 == 0
    same = [index for index, (exact, found) in enumerate(zip(first.metrics, early.metrics))
            if exact.iterations == found.iterations]
    assert same, "on these images the float hint and the 8-bit check agree at least once"
    assert torch.equal(early.encrypted[same], first.encrypted[same])


def test_early_checks_are_the_tuned_face_recipes_only():
    assert attack_settings("embedding").early_checks
    assert not attack_settings("embedding", "research").early_checks
    assert not attack_settings("classifier").early_checks  # they cost CIFAR-10 mean SSIM_d (settings.py)


def test_unreachable_bars_run_every_iteration_and_say_so(embedding_target):
    impossible = StopCriteria(max_feature_distance=0.0, max_ssim_encrypted=-1.0, min_ssim_decrypted=2.0)
    settings = AttackSettings(iterations=20, stop=impossible, check_every=5, repair_steps=0)
    result = encrypt_batch(originals(1), embedding_target, near_identity_key(), settings, "embedding", [1])
    assert result.metrics[0].iterations == 20
    assert not result.metrics[0].met_targets


def test_an_image_that_never_meets_ssim_d_ends_on_its_best_checked_state(embedding_target):
    # Every bar but SSIM_d is easy: the result must be the checked 8-bit state with the highest
    # SSIM_d, not the last one. The trajectory does not depend on the stop bars, so runs without
    # them, cut at each check, show every state that was checked.
    images, key = originals(2), near_identity_key()
    out_of_reach = StopCriteria(max_feature_distance=0.5, max_ssim_encrypted=1.0, min_ssim_decrypted=2.0)
    settings = AttackSettings(iterations=40, key_weight=1.0, stop=out_of_reach, check_every=5, repair_steps=0)
    result = encrypt_batch(images, embedding_target, key, settings, "embedding", [1, 2])
    checked = [encrypt_batch(images, embedding_target, key, dataclasses.replace(settings, iterations=steps, stop=None),
                             "embedding", [1, 2]) for steps in range(5, 41, 5)]
    for index, metrics in enumerate(result.metrics):
        assert not metrics.met_targets and metrics.iterations == 40
        seen = [run.metrics[index].ssim_decrypted for run in checked
                if run.metrics[index].feature_distance <= out_of_reach.max_feature_distance]
        assert seen, "the feature bar is easy: some checked state must meet it"
        assert metrics.ssim_decrypted == pytest.approx(max(seen), abs=1e-6)


def test_autocast_runs_the_forwards_in_bf16_on_cpu_and_measures_in_full_precision(embedding_target):
    seen = []

    class Recorder(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            seen.append(torch.is_autocast_enabled("cpu"))
            return self.inner(images)

    settings = dataclasses.replace(FAST, iterations=4, autocast_dtype=torch.bfloat16,
                                   stop=StopCriteria(max_feature_distance=0.0), check_every=2, repair_steps=0)
    result = encrypt_batch(originals(1), Recorder(embedding_target), near_identity_key(), settings, "embedding", [1])
    assert True in seen, "the optimization forwards must run under CPU autocast"
    assert False in seen, "the 8-bit checks must run in full precision"
    assert torch.equal(result.encrypted, quantize(result.encrypted))


def test_step_shrinks_after_patience_rises_of_each_images_own_loss():
    decay = _StepDecay(2, step_size=1.0, decay=0.5, patience=2, device="cpu")
    both = torch.tensor([0, 1])
    for losses in ([5.0, 5.0], [6.0, 4.0], [7.0, 3.0]):  # image 0 rises twice, image 1 falls
        decay.update(both, torch.tensor(losses))
    assert decay.step.tolist() == [0.5, 1.0]
    assert decay.rises.tolist() == [0, 0]
    decay.update(torch.tensor([1]), torch.tensor([9.0]))  # only the active image is touched
    assert decay.rises.tolist() == [0, 1]


def test_precision_names_map_to_autocast_dtypes():
    assert autocast_dtype_for("auto", "cpu") == default_autocast_dtype("cpu")
    assert autocast_dtype_for("auto", "cuda") is torch.bfloat16
    assert autocast_dtype_for("bf16", "cpu") is torch.bfloat16
    assert autocast_dtype_for("fp16", "cuda") is torch.float16
    assert autocast_dtype_for("fp32", "cuda") is None
    with pytest.raises(ValueError, match="precision is one of"):
        autocast_dtype_for("half", "cpu")


def test_classifier_target_keeps_the_top1_class():
    target = load_target("tiny-classifier")
    settings = AttackSettings(iterations=80, key_weight=1.0, classifier_scale=1.0, stop=None)
    result = encrypt_batch(originals(), target, near_identity_key(), settings, "classifier", [1, 2, 3])
    assert all(metrics.same_class for metrics in result.metrics)


def test_original_initialization_and_distance_smoothness_run(embedding_target):
    settings = dataclasses.replace(FAST, iterations=10, initialization="original", smoothness="distance")
    result = encrypt_batch(originals(1), embedding_target, near_identity_key(), settings, "embedding")
    assert result.encrypted.shape == (1, 3, 32, 32)


def test_noise_initialization_needs_one_seed_per_image(embedding_target):
    with pytest.raises(ValueError):
        encrypt_batch(originals(2), embedding_target, near_identity_key(), FAST, "embedding", [1])


def test_models_are_left_in_eval_mode_and_frozen(embedding_target):
    key = near_identity_key().train()
    encrypt_batch(originals(1), embedding_target, key, dataclasses.replace(FAST, iterations=2), "embedding", [1])
    assert not key.training and not embedding_target.training


def test_decryption_is_deterministic_even_for_a_key_left_in_train_mode():
    key = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Dropout(0.5), nn.Sigmoid()).train()
    images = originals(2)
    first, second = decrypt_batch(images, key), decrypt_batch(images, key)
    assert torch.equal(first, second)
    assert torch.equal(first, quantize(first))


def test_variance_consistency_of_a_constant_image_is_zero_and_of_a_split_image_is_not():
    constant = torch.full((1, 3, 16, 16), 0.3)
    split = constant.clone()
    split[..., :8] = 0.9
    assert variance_consistency(constant, 4).item() == pytest.approx(0.0, abs=1e-9)
    assert variance_consistency(split, 4).item() > 1.0
    # Per sample: a batch's values are the values of its images on their own.
    both = variance_consistency(torch.cat([constant, split]), 4)
    assert both[1].item() == pytest.approx(variance_consistency(split, 4).item())


def test_measure_images_agrees_with_the_engine_on_its_own_ciphertexts(embedding_target):
    key = near_identity_key()
    images = originals(2)
    result = encrypt_batch(images, embedding_target, key, FAST, "embedding", [1, 2])
    measured = measure_images(images, result.encrypted, embedding_target, key, "embedding")
    for mine, theirs in zip(measured, result.metrics):
        assert mine["feature_distance"] == pytest.approx(theirs.feature_distance, abs=1e-5)
        assert mine["ssim_decrypted"] == pytest.approx(theirs.ssim_decrypted, abs=1e-5)


def test_images_that_finished_keep_their_checks_figures_without_a_second_measurement(embedding_target, monkeypatch):
    # Every image meets these bars early: its figures are those its stopping check measured, which
    # measure_images repeats on the ciphertext; the engine runs no measurement after the loop.
    lenient = StopCriteria(max_feature_distance=0.5, max_ssim_encrypted=0.5, min_ssim_decrypted=-1.0)
    settings = AttackSettings(iterations=400, key_weight=1.0, stop=lenient, check_every=5)
    key, images = near_identity_key(), originals()
    sizes: list[int] = []
    measure = Objective.measure
    monkeypatch.setattr(Objective, "measure", lambda self, encrypted8, *rest: sizes.append(encrypted8.shape[0])
                        or measure(self, encrypted8, *rest))
    result = encrypt_batch(images, embedding_target, key, settings, "embedding", [1, 2, 3])
    assert all(metrics.met_targets and metrics.iterations < 400 for metrics in result.metrics)
    checks = max(metrics.iterations for metrics in result.metrics) // 5
    assert len(sizes) == checks, "one measurement per check, none after the loop"
    monkeypatch.undo()
    again = measure_images(images, result.encrypted, embedding_target, key, "embedding")
    for mine, theirs in zip(again, result.metrics):
        assert mine["feature_distance"] == pytest.approx(theirs.feature_distance, abs=1e-5)
        assert mine["ssim_encrypted"] == pytest.approx(theirs.ssim_encrypted, abs=1e-6)
        assert mine["lowpass_correlation"] == pytest.approx(theirs.lowpass_correlation, abs=1e-6)


def test_distance_pull_pulls_as_hard_as_the_mean_square_at_its_distance_and_does_not_fade():
    objective = Objective.__new__(Objective)  # target_loss reads only the settings and the loss kind
    objective.loss_kind = "embedding"
    reference = torch.zeros(1, 128)
    direction = torch.nn.functional.normalize(torch.randn(1, 128, generator=torch.Generator().manual_seed(1)), dim=1)

    def pull(settings, distance):
        outputs = (reference + distance * direction).requires_grad_(True)
        objective.settings = settings
        (gradient,) = torch.autograd.grad(objective.target_loss(outputs, reference, None).sum(), outputs)
        return gradient.norm().item()

    squared, distance_form = AttackSettings(), AttackSettings(distance_pull=0.8)
    assert pull(distance_form, 0.8) == pytest.approx(pull(squared, 0.8), rel=1e-5)
    assert pull(distance_form, 0.1) == pytest.approx(pull(distance_form, 0.8), rel=1e-5)  # does not fade
    assert pull(squared, 0.1) == pytest.approx(pull(squared, 0.8) / 8, rel=1e-5)  # fades with the distance
    assert pull(distance_form, 0.0) == 0.0  # no NaN where f(x') is f(x)
    assert attack_settings("embedding", stop_past_original=True).distance_pull == 0.8  # dlib's tuned recipe
    assert attack_settings("embedding").distance_pull == 0.0  # mobilefacenet's: it was slower with the pull
    assert attack_settings("embedding", "research", stop_past_original=True).distance_pull == 0.0
    with pytest.raises(UsageError, match="distance pull"):
        AttackSettings(distance_pull=-1.0)


def test_leak_term_removes_the_layout_a_filter_would_show(embedding_target):
    images = originals(3)
    key = near_identity_key()
    plain = encrypt_batch(images, embedding_target, key, FAST, "embedding", [1, 2, 3])
    hidden = encrypt_batch(images, embedding_target, key, dataclasses.replace(FAST, leak_weight=10.0),
                           "embedding", [1, 2, 3])

    def leaks(result):
        return [float(metric(result.encrypted, images).abs().sum())
                for metric in (lowpass_correlation, bandpass_correlation, edge_correlation)]

    assert all(after < 0.5 * before for before, after in zip(leaks(plain), leaks(hidden))), (leaks(plain), leaks(hidden))


def test_leak_penalty_is_the_sum_of_squared_filter_correlations():
    from avpcli.engine import LeakPenalty

    generator = torch.Generator().manual_seed(5)
    images, ciphertexts = torch.rand(2, 3, 40, 36, generator=generator), torch.rand(2, 3, 40, 36, generator=generator)
    ciphertexts[1] = 0.7 * images[1] + 0.3 * ciphertexts[1]  # one that shows its original
    expected = sum(metric(ciphertexts, images) ** 2
                   for metric in (lowpass_correlation, bandpass_correlation, edge_correlation))
    penalty = LeakPenalty(images, sigma=3.0).penalty(ciphertexts, torch.arange(2))
    assert torch.allclose(penalty, expected, atol=1e-4)
    assert penalty[1] > 2 and penalty[0] < 0.1


class ScramblingKey(nn.Module):
    """A key with a preimage, like avp's KeyModel: here S is a fixed pixel reversal and G the identity."""

    scrambles = True

    def forward(self, images):
        return images.flip(-1).flip(-2)

    def preimage(self, originals):
        return originals.flip(-1).flip(-2)


def test_hold_colour_keeps_each_channels_mean_at_the_start(embedding_target):
    images = originals(2)
    settings = dataclasses.replace(FAST, iterations=20, hold_colour=True)
    start = torch.stack([torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]).clamp(0, 1)
    held = encrypt_batch(images, embedding_target, near_identity_key(), settings, "embedding", [1, 2])
    free = encrypt_batch(images, embedding_target, near_identity_key(), FAST, "embedding", [1, 2])
    start_means, held_means = start.mean(dim=(2, 3)), held.encrypted.mean(dim=(2, 3))
    assert torch.allclose(held_means, start_means, atol=2e-3)  # 8-bit rounding and the clamp's remainder
    assert (free.encrypted.mean(dim=(2, 3)) - start_means).abs().max() > 10 * (held_means - start_means).abs().max()


def test_preimage_start_begins_from_what_the_key_decrypts(embedding_target):
    images = originals(2)
    settings = AttackSettings(iterations=1, step_size=0.0, stop=None, initialization="preimage")
    result = encrypt_batch(images, embedding_target, ScramblingKey(), settings, "embedding", [1, 2])
    assert torch.allclose(result.encrypted, quantize(images.flip(-1).flip(-2)))
    assert all(m.ssim_decrypted > 0.99 for m in result.metrics)
    # A key without a preimage starts from noise, as the research recipe does.
    noise = encrypt_batch(images, embedding_target, near_identity_key(), settings, "embedding", [1, 2])
    from_noise = encrypt_batch(images, embedding_target, near_identity_key(),
                               dataclasses.replace(settings, initialization="noise"), "embedding", [1, 2])
    assert torch.equal(noise.encrypted, from_noise.encrypted)


def test_key_ssim_term_raises_decrypted_ssim(embedding_target):
    images = originals(3)
    key = near_identity_key()
    settings = dataclasses.replace(FAST, iterations=40)
    plain = encrypt_batch(images, embedding_target, key, settings, "embedding", [1, 2, 3])
    with_ssim = encrypt_batch(images, embedding_target, key, dataclasses.replace(settings, key_ssim_weight=1.0),
                              "embedding", [1, 2, 3])
    assert (sum(m.ssim_decrypted for m in with_ssim.metrics)
            > sum(m.ssim_decrypted for m in plain.metrics)), (plain.metrics, with_ssim.metrics)


def test_lowpass_bar_is_checked_only_when_set():
    unset = StopCriteria()
    strict = StopCriteria(max_lowpass_correlation=0.3)
    assert unset.accepts(0.05, 0.01, 0.95, None, 0.9)
    assert not strict.accepts(0.05, 0.01, 0.95, None, 0.9)
    assert not strict.accepts(0.05, 0.01, 0.95, None, -0.5), "a negative image shows the face too"
    assert strict.accepts(0.05, 0.01, 0.95, None, 0.1)
    per_sample = strict.accepts(torch.tensor([0.05, 0.05]), torch.tensor([0.01, 0.01]), torch.tensor([0.95, 0.95]),
                                None, torch.tensor([0.1, 0.6]))
    assert per_sample.tolist() == [True, False]


def test_start_side_bar_is_checked_only_when_given():
    bar = StopCriteria(max_start_side=0.0)
    assert StopCriteria().accepts(0.05, 0.01, 0.95, start_side=0.3)
    assert not bar.accepts(0.05, 0.01, 0.95, start_side=0.02)
    assert bar.accepts(0.05, 0.01, 0.95, start_side=-0.02), "past the original is fine"
    assert bar.accepts(0.05, 0.01, 0.95, start_side=None), "a ciphertext read back has no start to measure from"


def _start_side(target, images, settings, seeds, encrypted):
    """The component of f(x') − f(x) along the unit vector from f(x) toward f(x'_0), per image."""

    with torch.no_grad():
        reference = target(images)
        toward = target(_initial_images(images, settings, seeds, near_identity_key())) - reference
        toward = toward / toward.norm(dim=1, keepdim=True)
        return ((target(encrypted) - reference) * toward).sum(dim=1)


def test_start_side_term_brings_the_features_to_rest_beside_the_original_not_short_of_it(embedding_target):
    # Without the term, f(x') closes in on f(x) from the start's side and is still on it when the
    # iterations end; the term takes that component out faster than the rest of the residual.
    images, seeds = originals(3), [1, 2, 3]
    settings = dataclasses.replace(FAST, iterations=15)
    plain = encrypt_batch(images, embedding_target, near_identity_key(), settings, "embedding", seeds)
    weighted_settings = dataclasses.replace(settings, start_side_weight=30.0)
    weighted = encrypt_batch(images, embedding_target, near_identity_key(), weighted_settings, "embedding", seeds)
    plain_side = _start_side(embedding_target, images, settings, seeds, plain.encrypted)
    weighted_side = _start_side(embedding_target, images, settings, seeds, weighted.encrypted)
    assert (plain_side > 0).all(), plain_side
    relative = lambda side, result: side.abs() / torch.tensor([m.feature_distance for m in result.metrics])
    assert (relative(weighted_side, weighted) < relative(plain_side, plain)).all(), (plain_side, weighted_side)


def test_start_side_bar_holds_every_image_until_it_is_past_the_start_side(embedding_target):
    images, seeds = originals(3), [1, 2, 3]
    lenient = StopCriteria(max_feature_distance=0.5, max_ssim_encrypted=0.5, min_ssim_decrypted=-1.0)
    base = AttackSettings(iterations=400, key_weight=1.0, stop=lenient, check_every=1, start_side_weight=30.0)
    free = encrypt_batch(images, embedding_target, near_identity_key(), base, "embedding", seeds)
    held_settings = dataclasses.replace(base, stop=dataclasses.replace(lenient, max_start_side=0.0))
    held = encrypt_batch(images, embedding_target, near_identity_key(), held_settings, "embedding", seeds)
    free_side = _start_side(embedding_target, images, base, seeds, free.encrypted)
    held_side = _start_side(embedding_target, images, base, seeds, held.encrypted)
    assert (free_side > 0).all(), "without the bar the lenient stop comes on the start's side"
    for index, metrics in enumerate(held.metrics):
        assert metrics.met_targets and held_side[index] <= 0, (metrics, held_side)
        assert metrics.iterations > free.metrics[index].iterations


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")


@needs_cuda
@pytest.mark.parametrize("precision", [None, torch.bfloat16, torch.float16])
def test_cuda_path_optimizes_and_keeps_the_8bit_contract(embedding_target, precision):
    target = load_target("tiny-embedding").cuda()
    key = near_identity_key().cuda()
    target, key = prepare_models(target, key, "cuda")
    settings = dataclasses.replace(FAST, autocast_dtype=precision)
    images = originals().cuda()
    short = encrypt_batch(images, target, key, dataclasses.replace(settings, iterations=2), "embedding", [1, 2, 3])
    long = encrypt_batch(images, target, key, settings, "embedding", [1, 2, 3])
    assert long.encrypted.device.type == "cuda"
    assert torch.equal(long.encrypted, quantize(long.encrypted))
    for before, after in zip(short.metrics, long.metrics):
        assert after.feature_distance < before.feature_distance
    # The reported figures are full-precision measurements of the 8-bit images, whatever the forwards ran in.
    remeasured = measure_images(images.float(), long.encrypted, target, key, "embedding")
    for metrics, again in zip(long.metrics, remeasured):
        assert metrics.feature_distance == pytest.approx(again["feature_distance"], abs=1e-5)
        assert metrics.ssim_decrypted == pytest.approx(again["ssim_decrypted"], abs=1e-5)


@needs_cuda
def test_cuda_fp32_result_matches_the_cpu_result(embedding_target):
    # Same seeds, same objective: the GPU may differ from the CPU by float rounding only, so the
    # figures reached agree closely (the images can drift by a few 8-bit levels over 60 steps).
    settings = dataclasses.replace(FAST, iterations=30)
    on_cpu = encrypt_batch(originals(), embedding_target, near_identity_key(), settings, "embedding", [1, 2, 3])
    target = load_target("tiny-embedding").cuda()
    on_gpu = encrypt_batch(originals().cuda(), target, near_identity_key().cuda(), settings, "embedding", [1, 2, 3])
    for cpu_metrics, gpu_metrics in zip(on_cpu.metrics, on_gpu.metrics):
        assert gpu_metrics.feature_distance == pytest.approx(cpu_metrics.feature_distance, abs=0.02)
        assert gpu_metrics.ssim_decrypted == pytest.approx(cpu_metrics.ssim_decrypted, abs=0.02)
    assert (on_gpu.encrypted.cpu() - on_cpu.encrypted).abs().mean() < 0.02


@needs_cuda
def test_cuda_decryption_matches_cpu_decryption_to_one_level():
    key = near_identity_key()
    images = quantize(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)))
    on_cpu = decrypt_batch(images, key)
    on_gpu = decrypt_batch(images.cuda(), key.cuda()).cpu()
    assert (on_gpu - on_cpu).abs().max() <= 1 / 255 + 1e-6


def per_image_key() -> nn.Module:
    """avp's KeyModel with a per-image scramble in front of a tiny G."""
    import hashlib

    from avpcli.key import KeyGenerator, KeyModel
    from avpcli.scramble import PER_IMAGE_SCHEME, Scramble

    torch.manual_seed(5)
    return KeyModel(KeyGenerator(ngf=4, blocks=1, norm="none"),
                    Scramble(hashlib.sha256(b"engine test").digest(), PER_IMAGE_SCHEME)).freeze()


@pytest.mark.parametrize("initialization", ["preimage", "noise", "original"])
def test_a_per_image_scramble_keeps_each_images_nonce_through_the_attack(embedding_target, initialization):
    from avpcli.scramble import NONCE_PIXELS

    key = per_image_key()
    images = quantize(originals(2))
    settings = dataclasses.replace(FAST, iterations=15, initialization=initialization, hold_colour=True)
    result = encrypt_batch(images, embedding_target, key, settings, "embedding", [1, 2])
    # Whatever the start, every ciphertext carries its original's keyed nonce, exactly on the 8-bit grid,
    # so the key finds its plan in the ciphertext alone.
    assert key.scramble.nonces_of(result.encrypted) == key.scramble.nonces_for(images)
    assert torch.equal(result.encrypted[:, :, 0, :NONCE_PIXELS], key.stamp(images, images)[:, :, 0, :NONCE_PIXELS])
    # The rest of the image moved, and decryption (the key on the ciphertext alone) is what was measured.
    assert not torch.equal(result.encrypted, key.stamp(images, images))
    decrypted = decrypt_batch(result.encrypted, key)
    from avpcli.metrics import ssim

    assert torch.allclose(ssim(decrypted, images), torch.tensor([m.ssim_decrypted for m in result.metrics]), atol=1e-4)


class CornerPinnedKey(nn.Module):
    """A key whose output hangs on its 4 pinned corner pixels 10⁴ times more than on any other pixel."""

    def pinned(self, height, width, device):
        mask = torch.zeros(1, 1, height, width, dtype=torch.bool, device=device)
        mask[..., 0, :4] = True
        return mask

    def stamp(self, images, originals):
        return images

    def forward(self, images):
        return images + 1e4 * images[:, :, :1, :4].mean(dim=(2, 3), keepdim=True)


def test_pinned_pixels_neither_move_nor_shrink_the_step_of_the_others(embedding_target):
    images = originals(2)
    settings = AttackSettings(iterations=1, step_size=0.02, momentum=0.0, key_weight=1.0, stop=None,
                              initialization="original", hold_colour=False)
    key = CornerPinnedKey()
    result = encrypt_batch(images, embedding_target, key, settings, "embedding", [1, 2])
    moved = (result.encrypted - quantize(images)).abs()
    assert torch.equal(moved[:, :, 0, :4], torch.zeros_like(moved[:, :, 0, :4]))
    # One step of size 0.02 along the gradient normalized by its mean magnitude over the free pixels.
    assert float(moved[:, :, 1:].mean()) > 0.005

"""The paper's in-domain baselines as registered scorers, end to end on tiny synthetic data: the
session's surrogate (2 epochs, early checkpoint after 1: ``trained_run``); every method scores
the source through ``pipeline.score`` and is checked against a recomputation from its inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.pipeline.score import score
from ffcv_dp4tl.pipeline.scores_io import load_scores
from ffcv_dp4tl.scoring import select_samples
from ffcv_dp4tl.scoring.baselines import (moderate_class_band_scores, moderate_distances,
                                          random_scores)
from ffcv_dp4tl.scoring.registry import FEATURES, LOGITS, get_scorer, list_scorers
from tiny_data import SURROGATE_OVERRIDES, SYNTH, TRAIN

from .helpers import BIG_D, BIG_N, surrogate_context, traced_peak, write_big_features


@pytest.fixture(scope="module")
def env(tmp_path_factory, source_dir, trained_run):
    """(a scratch folder, the shared tiny source, the shared surrogate run: 2 epochs, early
    checkpoint after 1)."""
    return tmp_path_factory.mktemp("indomain"), source_dir, trained_run


def _score(env, method, name=None, **kw):
    tmp, source, sur = env
    out = tmp / (name or method)
    kw.setdefault("checkpoint", sur / "checkpoint.pt")
    meta = score(method, source_dir=source, out_dir=out, fmt="wds", num_workers=0,
                 progress=False, **kw)
    return meta, load_scores(out).scores, out


def _labels(source, split="train"):
    from ffcv_dp4tl.data import load_manifest

    return np.asarray(load_manifest(source).split(split).load_labels())


def _surrogate_ctx(env, method, name, checkpoint=None, **kw):
    """The test's own :class:`ScoringContext` over the shared source with ``checkpoint``
    (default: the session surrogate) loaded the way ``pipeline.score`` loads it: what the scorer
    saw, for recomputing its result independently."""
    tmp, source, sur = env
    return surrogate_context(method, source, tmp / name, checkpoint or sur / "checkpoint.pt", **kw)


def test_registered_with_units_needs_options():
    s = {n: get_scorer(n) for n in ("sp", "ssp", "forget", "infmax", "infsum")}
    assert all(x.unit == "sample" for x in s.values())
    assert s["sp"].needs == {LOGITS, FEATURES} and s["ssp"].needs == {FEATURES}
    assert s["forget"].needs == frozenset() and s["forget"].trains
    assert s["infmax"].needs == s["infsum"].needs == {LOGITS, FEATURES}
    assert "training run" in s["forget"].cost_summary()
    assert "early-training runs" in get_scorer("grand").cost_summary()
    assert get_scorer("grand").parse_options({"runs": "3", "grad": "full"})["runs"] == 3
    with pytest.raises(DP4TLError, match="grad='half' must be one of last, full"):
        get_scorer("grand").parse_options({"grad": "half"})
    with pytest.raises(DP4TLError, match="runs='x' must be an integer$"):
        get_scorer("el2n").parse_options({"runs": "x"})
    with pytest.raises(DP4TLError, match="damping='x' must be a number$"):
        get_scorer("infmax").parse_options({"damping": "x"})
    with pytest.raises(DP4TLError, match="normalize='x' must be true or false$"):
        get_scorer("sp").parse_options({"normalize": "x"})
    with pytest.raises(DP4TLError, match="moderate has no option k"):
        get_scorer("moderate").parse_options({"k": "3"})
    assert list_scorers().index("grand") < list_scorers().index("sp")


def test_sp_ssp_moderate_match_brute_force(env):
    _, source, _ = env
    labels = _labels(source)
    _, sp, out = _score(env, "sp")
    feats = np.load(out / "source_train_features.npy").astype(np.float64)
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    protos = np.stack([f[labels == c].mean(0) for c in range(labels.max() + 1)])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    np.testing.assert_allclose(sp, np.linalg.norm(f - protos[labels], axis=1), atol=1e-5)
    _, sp_easy, _ = _score(env, "sp", "sp-easy", options={"keep": "easy"})
    np.testing.assert_allclose(sp_easy, -sp)

    meta, ssp, out = _score(env, "ssp", options={"k": "4"})
    cent = np.load(out / "ssp_centroids.npy").astype(np.float64)
    assert meta["ssp_k"] == 4 and cent.shape[0] == 4
    unit = cent / np.linalg.norm(cent, axis=1, keepdims=True)
    d = np.linalg.norm(f[:, None] - unit[None], axis=2).min(1)
    np.testing.assert_allclose(ssp, d, atol=1e-5)
    assert meta["revision"] == 1
    assert isinstance(meta["kmeans_converged"], bool) and 0 < meta["kmeans_updates"] <= meta["iters"]

    _, mod, out = _score(env, "moderate")
    dist = moderate_distances(np.load(out / "source_train_features.npy"), labels)
    n = len(dist)
    ranks = np.empty(n, int)
    ranks[np.argsort(dist, kind="stable")] = np.arange(n)
    kept = select_samples(mod, 0.5)
    assert sorted(ranks[kept]) == list(range((n - len(kept)) // 2, (n - len(kept)) // 2 + len(kept)))
    _, mod_v, _ = _score(env, "moderate", "moderate-value", options={"band": "value"})
    np.testing.assert_allclose(mod_v, -np.abs(dist - np.median(dist)))
    # band=class, the paper-code protocol's default, is wired to the per-class band
    _, mod_c, _ = _score(env, "moderate", "moderate-class", options={"band": "class"})
    np.testing.assert_allclose(mod_c, moderate_class_band_scores(dist, labels))
    assert not np.array_equal(select_samples(mod_c, 0.5), kept)  # (else the check is moot)


def test_random_reads_the_runs_seed(env):
    """RANDOM's subset is the run's seed's: seeds 0 and 1 give the scores of
    ``random_scores(n, seed)``, and differ (a scorer that ignored ``ctx.seed`` would draw one
    subset for every seed, and the paired tests over seeds would compare it with itself)."""
    _, source, _ = env
    n = len(_labels(source))
    got = {seed: _score(env, "random", f"random-{seed}", checkpoint=None, seed=seed)[1]
           for seed in (0, 1)}
    for seed, scores in got.items():
        np.testing.assert_array_equal(scores, random_scores(n, seed))
    assert not np.array_equal(got[0], got[1])


def test_ssp_centroids_are_the_kmeans_of_the_normalised_features(env):
    """SSP measures distances on the unit sphere, so its prototypes must be the k-means
    centroids of the L2-normalised features (Sorscher et al.), not of the raw ones: the saved
    centroids equal the project's k-means rerun here on the normalised features, lie in the unit
    ball (means of unit vectors) and each is the mean of the normalised samples nearest to it."""
    from ffcv_dp4tl.scoring import kmeans

    meta, ssp, out = _score(env, "ssp", "ssp-centroids", options={"k": "4"})
    feats = np.load(out / "source_train_features.npy").astype(np.float64)
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    cent = np.load(out / "ssp_centroids.npy").astype(np.float64)
    ref = kmeans(f.astype(np.float32), 4, iters=meta["iters"], seed=0, backend="cpu")
    assert ref.converged  # (so the centroids are the means of their members)
    np.testing.assert_allclose(cent, ref.centroids, atol=1e-5)
    assert (np.linalg.norm(cent, axis=1) <= 1 + 1e-5).all()
    near = np.linalg.norm(f[:, None] - cent[None], axis=2).argmin(1)
    np.testing.assert_allclose(cent, [f[near == j].mean(0) for j in range(4)], atol=1e-5)


def test_ssp_is_the_cosine_distance_to_the_nearest_centroid(env):
    """Sorscher et al.'s SSP difficulty is the *cosine* distance to the nearest k-means
    prototype. The centroids are means of unit vectors, so their norms differ (< 1); a plain
    Euclidean distance to them picked another "nearest" centroid and could order two samples
    the other way round (audit: unit features a, b and centroids (1, 0), (0, 0.5) gave a the
    lower score although its cosine distance is the larger). The score is the distance on the
    unit sphere, sqrt(2 - 2 cos), so it orders samples exactly as 1 - max cos does; with
    ``normalize=false`` it is the Euclidean distance to the raw centroids of the raw features."""
    _, ssp, out = _score(env, "ssp", "ssp-cosine", options={"k": "4"})
    feats = np.load(out / "source_train_features.npy").astype(np.float64)
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    cent = np.load(out / "ssp_centroids.npy").astype(np.float64)
    assert not np.allclose(np.linalg.norm(cent, axis=1), 1.0)  # (else the case tests nothing)
    cos = (f @ (cent / np.linalg.norm(cent, axis=1, keepdims=True)).T).max(axis=1)
    np.testing.assert_allclose(ssp, np.sqrt(np.maximum(2 - 2 * cos, 0)), atol=1e-5)
    assert np.array_equal(np.argsort(ssp, kind="stable"), np.argsort(1 - cos, kind="stable"))

    _, raw, out = _score(env, "ssp", "ssp-raw", options={"k": "4", "normalize": "false"})
    feats = np.load(out / "source_train_features.npy").astype(np.float64)
    cent = np.load(out / "ssp_centroids.npy").astype(np.float64)
    np.testing.assert_allclose(raw, np.linalg.norm(feats[:, None] - cent[None], axis=2).min(1),
                               rtol=1e-5, atol=1e-4)


def test_ssp_k_defaults_to_the_number_of_source_classes(env):
    """``--opt k=0`` (the default) clusters into as many prototypes as the source has classes,
    as docs/scorers.md says; every other test passes k=4."""
    from ffcv_dp4tl.data import load_manifest

    meta, _, out = _score(env, "ssp", "ssp-default-k")
    classes = load_manifest(env[1]).num_classes
    assert meta["ssp_k"] == classes and np.load(out / "ssp_centroids.npy").shape[0] == classes


@pytest.mark.parametrize("method", ["sp", "ssp", "moderate"])
def test_feature_scorers_never_copy_the_source_features_to_float64(tmp_path, monkeypatch, method):
    """SP, SSP and MODERATE read the source features from a memory-mapped store; their own work
    stays below the size of one float64 copy of them (SP and SSP made two or more: 16 bytes per
    value, ~10.5 GB at ImageNet-1K x 512, 116 GB at ImageNet-21K). SSP's k-means (kernels, not
    measured here) is replaced by fixed centroids; its input, the normalised rows, is float32."""
    from types import SimpleNamespace

    from ffcv_dp4tl.scoring import baselines
    from ffcv_dp4tl.scoring.feature_mapping import KMeansResult
    from ffcv_dp4tl.scoring.methods import ssp

    f, y = write_big_features(tmp_path / "source_train_features.npy")
    monkeypatch.setattr(baselines, "CHUNK_BYTES", 1 << 20, raising=False)  # 64 MiB: over too
    cent = np.random.default_rng(0).standard_normal((2, BIG_D)).astype(np.float32)
    monkeypatch.setattr(ssp, "kmeans", lambda x, k, **kw: KMeansResult(
        centroids=cent[:k], labels=np.zeros(x.shape[0], dtype=np.int64)))
    scorer = get_scorer(method)
    ctx = SimpleNamespace(source_features=lambda split="train": f, train_labels=lambda: y,
                          opt=lambda name: scorer.options[name].default,
                          source=SimpleNamespace(num_classes=2), iters=1, seed=0, backend="cpu",
                          meta={}, out_dir=tmp_path)
    got = {}
    peak = traced_peak(lambda: got.setdefault("result", scorer.score(ctx)))
    assert got["result"].scores.shape == (BIG_N,)
    assert peak < BIG_N * BIG_D * 8, f"{method}: peak {peak / 1e6:.0f} MB"


def test_el2n_averages_runs_and_runs_1_scores_the_early_checkpoint(env):
    from ffcv_dp4tl.scoring.baselines import el2n_scores
    from ffcv_dp4tl.scoring.context import softmax
    from ffcv_dp4tl.training.finetune import load_pretrained
    from ffcv_dp4tl.training.models import get_head

    tmp, source, sur = env
    early = sur / "checkpoint_e1.pt"
    meta1, s1, _ = _score(env, "el2n", "el2n-1", trajectory=[early], options={"runs": 1})
    assert meta1["runs_scored"] == [str(early)]
    assert [r.get("reused") for r in meta1["training_runs"]] == ["surrogate"]
    meta2, s2, out = _score(env, "el2n", "el2n-2", trajectory=[early], options={"runs": 2})
    assert len(meta2["runs_scored"]) == 2 and meta2["runs_scored"][0] == str(early)
    run1 = meta2["training_runs"][1]
    assert run1["epochs"] == 1 and run1["seconds"] > 0 and meta2["training_seconds"] > 0
    assert meta2["selection_seconds"] >= meta2["training_seconds"]
    # recompute run 1 independently: the average is (run0 + run1) / 2
    model, _ = load_pretrained(meta2["runs_scored"][1], torch.device("cpu"))
    assert torch.load(meta2["runs_scored"][1], weights_only=False)["epoch"] == 1
    ctx = surrogate_context("el2n", source, out, early)
    p = ctx.model_predictions(model, get_head(model))
    e1 = el2n_scores(softmax(p.logits.astype(np.float64)), _labels(source))
    np.testing.assert_allclose(s2, (s1 + e1) / 2, rtol=1e-5)
    assert not np.allclose(s1, e1)


def test_rescoring_into_the_same_folder_at_an_earlier_epoch_trains_to_that_epoch(env):
    """``dp4tl score`` rerun into its ``--out`` with an earlier ``epoch``: each training run
    stops at the asked epoch (one folder per stop epoch), instead of resuming the folder of the
    first call, already past it, and scoring that later checkpoint."""
    tmp, source, sur = env
    early = sur / "checkpoint_e1.pt"
    late, _, _ = _score(env, "el2n", "el2n-rerun", trajectory=[early], options={"runs": 2, "epoch": 2})
    again, _, _ = _score(env, "el2n", "el2n-rerun", trajectory=[early], options={"runs": 2, "epoch": 1})
    for meta, epoch in ((late, 2), (again, 1)):
        assert [r["epochs"] for r in meta["training_runs"]] == [epoch, epoch]
        for ckpt in meta["runs_scored"]:
            assert torch.load(ckpt, weights_only=False)["epoch"] == epoch, ckpt


def test_grand_full_gradient_and_another_arch(env):
    _, s_last, _ = _score(env, "grand", "grand-last", options={"runs": 1})
    meta, s_full, _ = _score(env, "grand", "grand-full", options={"runs": 1, "grad": "full"})
    assert s_full.shape == s_last.shape and (s_full > 0).all()
    assert (s_full >= s_last * (1 - 1e-4)).mean() > 0.99  # the full gradient includes the head's
    meta, s34, _ = _score(env, "grand", "grand-r34", options={"runs": 1, "arch": "resnet34",
                                                               "epoch": 1})
    assert [r["arch"] for r in meta["training_runs"]] == ["resnet34"]
    assert "reused" not in meta["training_runs"][0]


def test_grand_last_layer_is_the_true_label_gradient_norm_of_the_head(env):
    """GraNd's default score (``grad=last``) of a sample is the norm of the cross-entropy
    gradient of its TRUE label w.r.t. the classifier's weight and bias: recomputed here by
    autograd through the scored checkpoint's own head on its penultimate features (the gradient
    for the predicted label would rank the samples the surrogate gets wrong differently)."""
    import copy

    _, source, _ = env
    meta, s, _ = _score(env, "grand", "grand-autograd", options={"runs": 1})
    (ckpt,) = meta["runs_scored"]
    ctx = _surrogate_ctx(env, "grand", "grand-autograd-ref", ckpt)
    p = ctx.model_predictions(ctx.surrogate.model, ctx.surrogate.head, features=True)
    labels = _labels(source)
    assert 0 < (p.logits.argmax(1) != labels).sum() < len(labels)  # some are misclassified
    head = copy.deepcopy(ctx.surrogate.head).double()
    h = torch.as_tensor(p.features, dtype=torch.float64)
    ref = []
    for i, y in enumerate(labels):
        head.zero_grad()
        torch.nn.functional.cross_entropy(head(h[i:i + 1]), torch.tensor([int(y)])).backward()
        ref.append(float(torch.sqrt(head.weight.grad.pow(2).sum() + head.bias.grad.pow(2).sum())))
    np.testing.assert_allclose(s, ref, rtol=1e-4, atol=1e-7)


def test_forget_trains_its_own_run_and_counts_forgetting(env):
    tmp, source, sur = env
    meta, s, _ = _score(env, "forget", checkpoint=None, train_recipe="resnet18_tiny_cpu",
                        train_overrides=SURROGATE_OVERRIDES)  # 2 epochs
    (run,) = meta["training_runs"]
    assert run["epochs"] == 2 and run["seconds"] > 0
    assert s.shape == (len(_labels(source)),) and (s >= 0).all()
    never = meta["never_learned"][0]
    assert (s == s.max()).sum() >= never  # never-learned samples carry the top score
    assert 0 <= meta["never_presented"][0] <= never  # (an unseen sample is never learned)
    with pytest.raises(DP4TLError, match="--recipe"):
        _score(env, "forget", "forget-x", checkpoint=None)


@pytest.mark.parametrize("recipe", [
    pytest.param([], id="eager"),
    # the hook is registered after torch.compile wrapped the model, and dynamo traces it into
    # the graph (state updates included) rather than breaking on it
    pytest.param(["train.compile=true"], id="compile"),
    # PGD's attack forwards run in eval mode: only the step's forward on the attacked batch counts
    pytest.param(["adv.steps=2", "adv.eps=8/255"], id="adversarial"),
])
def test_forgetting_recorder_in_a_real_run_matches_every_training_steps_logits(env, recipe):
    """FORGET's counts come from the training forward pass itself (the recorder hooks the
    model's forward and is fed each batch's indices): in a real 2-epoch run on the tiny source
    it must agree with forgetting events recomputed from the logits of every training step and
    the samples' true labels. A recorder that got correct/incorrect the wrong way round, or paired
    the logits with another batch's indices, disagrees; so does one that read an attack's forward
    (an adversarial recipe) or whose hook a compiled model skipped or replayed stale."""
    from tiny_data import TEST_OVERRIDES

    from ffcv_dp4tl.scoring.training_runs import ForgettingRecorder
    from ffcv_dp4tl.training.callbacks import Callback
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import train

    tmp, source, _ = env
    labels = _labels(source)
    n = len(labels)

    class StepLogits(Callback):
        """(sample indices, argmax of the training forward's logits) of every step."""

        def __init__(self):
            self.steps, self._pending, self._hook, self.train_forwards = [], None, None, 0

        def on_train_begin(self, model):
            self._hook = model.register_forward_hook(self._forward)

        def on_batch(self, epoch, batch):
            self._pending = batch.indices.cpu().numpy().copy()

        def _forward(self, module, args, output):
            self.train_forwards += module.training
            if self._pending is not None and module.training:
                self.steps.append((self._pending, output.detach().float().argmax(1).numpy()))
                self._pending = None

        def on_train_end(self):
            self._hook.remove()

    torch._dynamo.reset()  # (a fresh recompile budget for this run's model)
    rec, spy = ForgettingRecorder(n), StepLogits()
    out = tmp / f"forget-hook-{'-'.join(recipe) or 'eager'}"
    try:
        train(load_recipe("resnet18_tiny_cpu", [*TEST_OVERRIDES, *recipe]), source, out_dir=out,
              fmt="wds", device="cpu", progress=False, callbacks=[rec, spy])
    finally:
        torch._dynamo.reset()
    assert spy.train_forwards == len(spy.steps)  # one train-mode forward per step: the step's own
    prev, learned = np.zeros(n, bool), np.zeros(n, bool)
    events, seen = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for idx, pred in spy.steps:
        ok = pred == labels[idx]
        events[idx] += prev[idx] & ~ok
        learned[idx] |= ok
        prev[idx] = ok
        seen[idx] += 1
    assert learned.any() and not learned.all() and events.any()  # a case that tells them apart
    got_events, got_learned, got_seen = rec.result()
    np.testing.assert_array_equal(got_seen, seen)
    np.testing.assert_array_equal(got_learned, learned)
    np.testing.assert_array_equal(got_events, events)


def test_infmax_infsum_on_the_val_split(env):
    meta, imax, _ = _score(env, "infmax")
    _, isum, _ = _score(env, "infsum")
    _, isub, _ = _score(env, "infsum", "infsum-sub", options={"eval_samples": "5"})
    assert meta["influence_eval_samples"] == len(_labels(env[1], "val"))
    assert imax.shape == isum.shape and np.isfinite(imax).all()
    assert not np.allclose(isum, isub)
    # a train sample's max over val points is at least its mean (= sum / M)
    assert (imax >= isum / meta["influence_eval_samples"] - 1e-9).all()


def test_influence_hessian_option_reaches_the_solver(env):
    """``--opt hessian=exact|kfac`` picks the last-layer Hessian the influence is solved with:
    INFSUM/INFMAX equal the array-level ``influence_scores`` with that Hessian on the
    surrogate's own train/val logits and features, and the two solvers give different scores
    here, so a scorer ignoring the option cannot pass."""
    from ffcv_dp4tl.scoring.context import softmax
    from ffcv_dp4tl.scoring.influence import influence_scores

    _, source, _ = env
    ctx = _surrogate_ctx(env, "infsum", "infsum-ref")
    tr = ctx.source_predictions(features=True)
    ev = ctx.source_predictions(features=True, split="val")
    args = (tr.features, softmax(tr.logits.astype(np.float64)), _labels(source), ev.features,
            softmax(ev.logits.astype(np.float64)), _labels(source, "val"))
    damping = get_scorer("infsum").options["damping"].default
    ref = {}
    for method, hessian in (("infsum", "exact"), ("infsum", "kfac"), ("infmax", "exact")):
        _, got, _ = _score(env, method, f"{method}-{hessian}", options={"hessian": hessian})
        ref[method, hessian] = influence_scores(*args, damping=damping, hessian=hessian,
                                                aggregate=method[3:])
        np.testing.assert_allclose(got, ref[method, hessian], rtol=1e-6, atol=1e-12)
    assert not np.allclose(ref["infsum", "exact"], ref["infsum", "kfac"], rtol=1e-2)


def test_per_sample_grad_norms_match_a_backward_loop():
    from ffcv_dp4tl.data.sampling import Batch
    from ffcv_dp4tl.scoring.training_runs import per_sample_grad_norms

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    model.train()(torch.randn(8, 3, 6, 6))  # non-trivial BN running stats
    x, y = torch.randn(5, 3, 6, 6), torch.tensor([0, 1, 2, 1, 0])
    loader = [Batch(x[:3], y[:3], torch.tensor([4, 0, 2])), Batch(x[3:], y[3:], torch.tensor([1, 3]))]
    got = per_sample_grad_norms(model, loader, 5, micro_batch=2)
    assert model.training  # the mode it had is restored
    model.eval()
    order = [4, 0, 2, 1, 3]
    for i in range(5):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        ref = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
        assert got[order[i]] == pytest.approx(float(ref), rel=1e-5)


def test_pipeline_runs_forget_without_a_surrogate_and_fm_with_a_sample_budget(env, data_root):
    from ffcv_dp4tl.pipeline.config import PipelineConfig
    from ffcv_dp4tl.pipeline.run import run_pipeline

    tmp, source, _ = env
    runs = tmp / "runs"
    base = dict(ratio=0.5, source=SYNTH, target="", fmt="wds", finetune=(), device="cpu",
                data_root=data_root, runs_root=runs, overrides=TRAIN,
                surrogate_overrides=TRAIN)
    with pytest.raises(DP4TLError, match="el2n has no option nope"):
        run_pipeline(PipelineConfig(method="el2n", scorer_options=("nope=1",), **base),
                     log=lambda s: None)
    assert not runs.exists()  # refused before any work
    res = run_pipeline(PipelineConfig(method="forget", scorer_options=("epochs=1",), **base),
                       log=lambda s: None)
    assert list(res.stages) == ["score", "prune", "pretrain"]  # it trains its own run
    (run,) = res.stages["score"].values["training_runs"]
    assert run["epochs"] == 1 and res.stages["score"].values["options"]["epochs"] == 1
    n = len(_labels(source))
    assert res.stages["prune"].values["kept_sample_fraction"] == pytest.approx(round(0.5 * n) / n)
    res = run_pipeline(PipelineConfig(method="fm", k=6, budget="samples", **base),
                       log=lambda s: None)
    pr = res.stages["prune"].values
    assert pr["budget"] == "samples" and pr["unit"] == "cluster"
    assert abs(pr["train_kept"] - n / 2) <= max(np.bincount(
        load_scores(next(runs.glob("score-*/train_units.npy")).parent).train_units))
    report = Path(res.report).read_text()
    assert f"{pr['kept_sample_fraction']:.3f} of the train samples" in report
    assert "budget: samples" in report

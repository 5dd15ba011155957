"""scoring/inference.py and the scorers that read the surrogate batch by batch (EL2N, GraNd's
last-layer norm, LM): on a small random model and in-memory batches visited out of order, the
streamed scores equal the whole-matrix formulas; scoring N samples of C classes never holds
N × C floats; a loader yielding the wrong number of samples is still refused."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ffcv_dp4tl.data.sampling import Batch
from ffcv_dp4tl.scoring.baselines import el2n_scores, grand_last_layer_norms
from ffcv_dp4tl.scoring.context import ScoringContext, Surrogate, softmax
from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.scoring.inference import _span as batch_span
from ffcv_dp4tl.scoring.inference import predict
from ffcv_dp4tl.scoring.label_mapping import label_mapping_scores, softmax_mass
from ffcv_dp4tl.scoring.registry import get_scorer

from .helpers import traced_peak


class _Net(torch.nn.Module):
    """A cheap stand-in surrogate: features = relu(body(x)), logits = head(features)."""

    def __init__(self, d_in: int, d: int, c: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Linear(d_in, d)
        self.head = torch.nn.Linear(d, c)
        with torch.no_grad():  # logits spread over a few units: softmax far from uniform
            self.head.weight.mul_(8.0)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def _batches(n: int, d_in: int, sizes, *, shuffle: bool = True, seed: int = 0):
    """A loader's batches of ``n`` samples (sizes cycled), visiting the samples in a random
    order (``shuffle``) or in file order; each image is the same whatever the order."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, d_in, generator=g)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    out, start, i = [], 0, 0
    while start < n:
        idx = order[start:start + sizes[i % len(sizes)]]
        out.append(Batch(images=images[idx], labels=torch.zeros(len(idx), dtype=torch.int64),
                         indices=idx.to(torch.int64)))
        start, i = start + len(idx), i + 1
    return out


def _lazy_batches(n: int, d_in: int, size: int):
    """In-file-order batches made one at a time (no N-sized input is ever held)."""
    for start in range(0, n, size):
        g = torch.Generator().manual_seed(start)
        idx = torch.arange(start, min(n, start + size))
        yield Batch(images=torch.randn(len(idx), d_in, generator=g),
                    labels=torch.zeros(len(idx), dtype=torch.int64), indices=idx)


def _context(monkeypatch, tmp_path: Path, method: str, model: _Net, labels: np.ndarray,
             loader, *, num_samples: int | None = None, options=None) -> ScoringContext:
    """A :class:`ScoringContext` whose source (and target) is ``loader``'s samples, labelled
    ``labels``, with ``model`` as the surrogate and as EL2N/GraNd's only early-training run."""
    n = len(labels) if num_samples is None else num_samples
    split = SimpleNamespace(num_samples=n, load_labels=lambda: labels)
    manifest = SimpleNamespace(split=lambda _s: split, num_classes=model.head.out_features,
                               fingerprint="fp", name="fake")
    ckpt = tmp_path / "checkpoint_e1.pt"
    ctx = ScoringContext(method=method, source_dir=tmp_path, out_dir=tmp_path, checkpoint=ckpt,
                         targets=(tmp_path,), progress=False, options=dict(options or {}))
    ctx.surrogate = Surrogate(path=ckpt, model=model, head=model.head, checkpoint=None,
                              resolution=8, device=torch.device("cpu"))
    ctx.__dict__["source"] = manifest  # (the cached property, already read)
    ctx.loader = lambda *_a, **_k: loader() if callable(loader) else loader
    monkeypatch.setattr("ffcv_dp4tl.data.manifest.load_manifest", lambda _root: manifest)
    monkeypatch.setattr("ffcv_dp4tl.scoring.training_runs.early_training_checkpoints",
                        lambda c, *_a: [c.checkpoint])
    return ctx


def _score(method: str, ctx: ScoringContext, **options):
    scorer = get_scorer(method)
    ctx.options = {name: opt.default for name, opt in scorer.options.items()} | options
    return scorer.score(ctx)


N, D_IN, D, C = 203, 6, 9, 13
SIZES = (17, 1, 40, 64)


@pytest.fixture
def small():
    model = _Net(D_IN, D, C)
    labels = np.random.default_rng(0).integers(0, C, N)
    return model, labels, _batches(N, D_IN, SIZES)


def _old_predictions(model, batches, features=False):
    return predict(model, batches, head=model.head, want_features=features, num_samples=N,
                   progress=False)


def test_predict_places_each_batch_by_sample_index(small):
    model, _, batches = small
    want = np.zeros((N, C), np.float32)
    feats = np.zeros((N, D), np.float32)
    with torch.no_grad():
        for b in batches:
            h = torch.relu(model.body(b.images))
            want[b.indices.numpy()] = model.head(h).numpy()
            feats[b.indices.numpy()] = h.numpy()
    for known in (N, None):
        p = predict(model, batches, head=model.head, want_features=True, num_samples=known,
                    progress=False)
        np.testing.assert_array_equal(p.indices, np.arange(N))
        np.testing.assert_array_equal(p.logits, want)
        np.testing.assert_array_equal(p.features, feats)
    p = predict(model, batches, want_logits=False, want_features=True, head=model.head,
                progress=False)
    assert p.logits is None and p.features.shape == (N, D)


def test_streamed_el2n_and_grand_equal_the_whole_matrix_formulas(small, monkeypatch, tmp_path):
    """Per row the same float64 softmax and norms: equal to the last bit."""
    model, labels, batches = small
    p = _old_predictions(model, batches, features=True)
    probs = softmax(p.logits.astype(np.float64))
    ctx = _context(monkeypatch, tmp_path, "el2n", model, labels, batches)
    np.testing.assert_array_equal(_score("el2n", ctx, runs=1).scores, el2n_scores(probs, labels))
    ctx = _context(monkeypatch, tmp_path, "grand", model, labels, batches)
    np.testing.assert_array_equal(_score("grand", ctx, runs=1).scores,
                                  grand_last_layer_norms(p.features, probs, labels))


def test_streamed_lm_votes_equal_and_mass_close(small, monkeypatch, tmp_path):
    """The votes are the same counts; the softmax mass is summed batch by batch (another order
    of the float64 additions than over the whole matrix)."""
    model, labels, batches = small
    logits = _old_predictions(model, batches).logits
    res = _score("lm", _context(monkeypatch, tmp_path, "lm", model, labels, batches))
    assert res.scores.dtype == np.int64
    np.testing.assert_array_equal(res.scores, label_mapping_scores(logits.argmax(1), C))
    np.testing.assert_allclose(res.tiebreak, softmax_mass(logits), rtol=1e-12)


def test_predict_reduce_sums_and_rows_and_checks_rows(small):
    from ffcv_dp4tl.scoring.inference import BatchResult, predict_reduce

    model, _, batches = small

    def fn(idx, logits, features):
        return BatchResult(rows={"i": idx * 2, "f": features[:, :2]},
                           sums={"n": np.array([len(idx)]), "s": logits.sum(0)})

    r = predict_reduce(model, batches, fn, head=model.head, want_features=True, num_samples=N,
                       progress=False)
    np.testing.assert_array_equal(r.rows["i"], 2 * np.arange(N))
    assert r.sums["n"].dtype == np.int64 and r.sums["n"][0] == N
    assert r.sums["s"].dtype == np.float64 and r.rows["f"].shape == (N, 2)
    with pytest.raises(ValueError, match="has 1 rows for its 17 samples"):
        predict_reduce(model, batches, lambda i, lg, f: BatchResult(rows={"x": i[:1]}),
                       progress=False)
    with pytest.raises(ValueError, match="needs the model's classifier head"):
        predict_reduce(model, [], fn, want_features=True, progress=False)


@pytest.mark.parametrize("known", [None, N])
def test_rows_returned_for_some_batches_only_are_refused(small, known):
    """A batch function that returns a per-sample output for some batches and not others is
    refused naming how many samples got it, with or without the expected count: not a short
    array placed by index (an IndexError), nor rows left unset (whatever memory held)."""
    from ffcv_dp4tl.scoring.inference import BatchResult, predict_reduce

    model, _, batches = small
    seen = []

    def fn(idx, logits, features):
        seen.append(len(idx))
        return BatchResult(rows={"x": idx * 2} if len(seen) == 1 else {})

    with pytest.raises(ValueError, match=re.escape(
            f"the per-sample 'x' was returned for {SIZES[0]} of the {N} samples")):
        predict_reduce(model, batches, fn, num_samples=known, progress=False)
    assert len(seen) == len(batches)


def test_a_loader_far_past_the_expected_count_is_the_count_error(small):
    """Rows past the expected count are not kept, however many batches follow: a loader that
    yields several batches more than ``num_samples`` (here one batch's worth) is the count
    error, not numpy's broadcast error from a batch copied past the end."""
    from ffcv_dp4tl.scoring.inference import BatchResult, predict_reduce

    model, _, batches = small
    assert len(batches) >= 3
    known = len(batches[0].indices)
    msg = f"loader produced {N} samples, expected {known} \\(use drop_last=False"
    with pytest.raises(RuntimeError, match=msg):
        predict(model, batches, num_samples=known, progress=False)
    with pytest.raises(RuntimeError, match=msg):
        predict_reduce(model, batches, lambda i, lg, f: BatchResult(rows={"i": i}),
                       num_samples=known, progress=False)


@pytest.mark.parametrize("known", [N - 1, N + 1])
def test_a_wrong_number_of_samples_is_refused(small, monkeypatch, tmp_path, known):
    from ffcv_dp4tl.scoring.inference import BatchResult, predict_reduce

    model, labels, batches = small
    msg = f"loader produced {N} samples, expected {known} \\(use drop_last=False"
    with pytest.raises(RuntimeError, match=msg):
        predict(model, batches, num_samples=known, progress=False)
    with pytest.raises(RuntimeError, match=msg):
        predict_reduce(model, batches, lambda *a: BatchResult(), num_samples=known,
                       progress=False)
    for method in ("el2n", "grand", "lm"):
        ctx = _context(monkeypatch, tmp_path, method, model, labels, batches, num_samples=known)
        with pytest.raises(RuntimeError, match=msg):
            _score(method, ctx)


# -------------------------------------------------------------- memory: no N × C matrix held
BIG_N, BIG_C, BIG_BATCH = 20000, 2000, 200


@pytest.mark.parametrize("method", ["el2n", "grand", "lm"])
def test_scoring_never_holds_the_n_by_c_logits(method, monkeypatch, tmp_path):
    """20,000 samples of 2,000 classes: their float32 logits alone are 160 MB, the float64
    softmax 320 MB. Scored batch by batch, numpy's peak (tracemalloc traces its buffers) stays
    under a quarter of the logits."""
    import ffcv_dp4tl.training.finetune  # noqa: F401  (what scoring imports on its first run,
    import ffcv_dp4tl.training.models  # noqa: F401  imported before tracing: not measured)

    model = _Net(4, 8, BIG_C)
    labels = np.random.default_rng(1).integers(0, BIG_C, BIG_N)
    ctx = _context(monkeypatch, tmp_path, method, model, labels,
                   lambda: _lazy_batches(BIG_N, 4, BIG_BATCH))
    res = None

    def run():
        nonlocal res
        res = _score(method, ctx, **({} if method == "lm" else {"runs": 1}))

    peak = traced_peak(run)
    assert res.scores.shape == ((BIG_C,) if method == "lm" else (BIG_N,))
    assert peak < BIG_N * BIG_C * 4 / 4, f"{method}: numpy peak {peak / 1e6:.0f} MB"


def test_predict_holds_the_logits_once_when_the_loader_is_in_file_order():
    """Influence needs every logit: those are kept in one array of the split's rows, not also
    in a list of batches, a joined copy and a reordered one."""
    model = _Net(4, 8, BIG_C)
    p = None

    def run():
        nonlocal p
        p = predict(model, _lazy_batches(BIG_N, 4, BIG_BATCH), num_samples=BIG_N,
                    progress=False)

    peak = traced_peak(run)
    assert p.logits.shape == (BIG_N, BIG_C)
    assert peak < 1.25 * BIG_N * BIG_C * 4, f"numpy peak {peak / 1e6:.0f} MB"


def test_no_samples_is_an_error_not_an_empty_result(small):
    """An empty loader gave numpy's concatenate error; with the streaming path it returned
    nothing, and LM then failed on a missing sum (review)."""
    from ffcv_dp4tl.scoring.inference import BatchResult, predict_reduce

    model, _, _ = small
    with pytest.raises(RuntimeError, match="target x: the loader produced no samples"):
        predict(model, [], desc="target x", progress=False)
    with pytest.raises(RuntimeError, match="produced no samples"):
        predict_reduce(model, [], lambda *a: BatchResult(), progress=False)


def test_a_batch_error_names_the_samples_of_the_batch(small, monkeypatch, tmp_path):
    """LM's finite check runs on one batch at a time, so its "rows 0..3" are the batch's: the
    line says which samples (and which target) they are."""
    model, labels, batches = small
    bad = batches[2]
    poisoned = [b if b is not bad else b._replace(images=torch.full_like(b.images, float("nan")))
                for b in batches]
    ctx = _context(monkeypatch, tmp_path, "lm", model, labels, poisoned)
    with pytest.raises(DP4TLError, match=re.escape(
            f"the batch of samples {batch_span(bad.indices.numpy())}: logits contain NaN/Inf")):
        _score("lm", ctx)
    assert batch_span(np.arange(512, 768)) == "512..767" and batch_span(np.array([9, 3])) == "3, 9"
    assert batch_span(np.array([0, 0, 2, 3])) == "0, 0, 2, 3"  # (duplicates: not a range)
    assert batch_span(np.arange(0, 14, 2)) == "0, 2, 4, 6, 8, 10, ..."  # (7: six, then "...")
    assert batch_span(np.arange(0, 12, 2)) == "0, 2, 4, 6, 8, 10"

"""Both codecs round-trip: raw within float16, compact within half a quantisation step; decoding is exact
for ids whatever the vocabulary size."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lmdistill.capture.codec import LOGPROB_STEP, MAX_CODE, TopK, decode, encode


def _topk(n=300, k=16, vocab=49152, seed=0, examples=7) -> TopK:
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.choice(vocab, size=k, replace=False) for _ in range(n)]).astype(np.int64)
    ids[0, 0] = vocab - 1  # the largest id survives the gaps
    logits = rng.normal(size=(n, k)) * 3
    logprobs = np.sort(logits - np.log(np.exp(logits).sum(1, keepdims=True) * 1.5), axis=1)[:, ::-1]
    logprobs[1, -1] = -40.0  # below the compact codec's range: clamped to -255/16
    tail = np.log(1 - np.exp(logprobs).sum(1)).astype(np.float32)
    cuts = np.sort(rng.choice(np.arange(1, n), size=examples - 1, replace=False))
    counts = np.diff(np.concatenate([[0], cuts, [n]]))
    return TopK(ids, logprobs.astype(np.float32), tail, counts.astype(np.int64))


def _roundtrip(top: TopK, codec: str, vocab: int, tmp_path):
    arrays, meta = encode(top, codec, vocab)
    path = tmp_path / f"{codec}.safetensors"
    save_file(arrays, str(path), metadata=meta)
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as fh:
        stored_meta = fh.metadata()
    return decode(load_file(str(path)), stored_meta), path.stat().st_size


def _by_id(ids: np.ndarray, values: np.ndarray):
    order = np.argsort(ids, axis=1)
    return np.take_along_axis(ids, order, 1), np.take_along_axis(values, order, 1)


@pytest.mark.parametrize("vocab", [49152, 70000])
def test_raw_roundtrip_within_float16(vocab, tmp_path):
    top = _topk(vocab=vocab)
    dec, _ = _roundtrip(top, "raw", vocab, tmp_path)
    assert dec.ids.dtype == (np.uint16 if vocab <= 65536 else np.int32)
    np.testing.assert_array_equal(dec.ids.astype(np.int64), top.ids)  # order kept
    np.testing.assert_allclose(dec.values.astype(np.float32) * dec.scale, top.logprobs, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(dec.tail, top.tail)
    np.testing.assert_array_equal(dec.offsets, top.offsets)


@pytest.mark.parametrize("vocab", [49152, 70000])
def test_compact_roundtrip_within_half_a_step(vocab, tmp_path):
    top = _topk(vocab=vocab)
    dec, size = _roundtrip(top, "compact", vocab, tmp_path)
    ids, logprobs = _by_id(top.ids, top.logprobs)
    np.testing.assert_array_equal(dec.ids.astype(np.int64), ids)  # ascending per token
    got = dec.values.astype(np.float32) * dec.scale
    expected = np.maximum(logprobs, -MAX_CODE * LOGPROB_STEP)
    assert np.abs(got - expected).max() <= LOGPROB_STEP / 2 + 1e-6
    assert got.min() == pytest.approx(-MAX_CODE * LOGPROB_STEP)  # the -40 entry, clamped
    np.testing.assert_allclose(dec.tail.astype(np.float32), top.tail, rtol=1e-3)
    np.testing.assert_array_equal(dec.offsets, top.offsets)
    assert size < 300 * 16 * 4  # far below the raw size (4 bytes per entry) even for random ids


def test_unknown_codec_and_foreign_file_are_refused():
    with pytest.raises(ValueError, match="unknown codec"):
        encode(_topk(n=4, examples=2), "zip", 49152)
    with pytest.raises(ValueError, match="not a lmdistill-topk"):
        decode({}, {"format": "other"})

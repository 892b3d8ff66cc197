"""The Tatoeba English–French corpus (d2l's ``fra-eng``): find it, download it, read its pairs.

``locate_fra_eng`` returns the path of a readable ``fra.txt`` (``English<TAB>French`` per line,
UTF-8). It looks, in this order, at:

1. the ``path`` argument: a ``fra.txt``, a directory holding ``fra.txt`` or ``fra-eng/fra.txt``,
   or a ``fra-eng.zip`` (its SHA-1 is checked unless ``sha1=None``; it is extracted into
   ``<cache>/extracted/<its SHA-1>/fra.txt``, so another version never replaces the cached one);
2. the ``COURSE_FRA_ENG`` environment variable, with the same rules;
3. the cache, ``$COURSE_DATA_DIR`` or else ``~/.cache/seq2seq-course``: ``fra-eng/fra.txt``, or
   ``fra-eng.zip`` if its SHA-1 matches (it is then extracted to ``fra-eng/fra.txt``);
4. a download of ``FRA_ENG_URL`` into the cache (only with ``download=True``, the default).

A path given in 1 or 2 that does not exist raises ``FileNotFoundError``; the later steps are not
tried. A download is written to a temporary file and moved into place only once its SHA-1 is
right; a wrong checksum raises ``ValueError`` and leaves nothing behind. Offline, the download
fails within seconds (short connect timeout) with ``CorpusUnavailableError``, whose message says
how to point the loader at a copy you already have. Nothing is downloaded at import.

    from course_lib.data.fra_eng import load_fra_eng_pairs
    pairs = load_fra_eng_pairs(path="~/data/fra-eng.zip", max_pairs=1000)
    pairs[0]  # ('Go.', 'Va !')
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import requests

from course_lib.data.splits import PairSplits, split_pairs
from course_lib.data.text import parse_pairs, tokenize

__all__ = [
    "FRA_ENG_URL",
    "FRA_ENG_SHA1",
    "CorpusUnavailableError",
    "default_cache_dir",
    "locate_fra_eng",
    "load_fra_eng_pairs",
    "fra_eng_dataset",
    "benchmark_splits",
]

FRA_ENG_URL = "http://d2l-data.s3-accelerate.amazonaws.com/fra-eng.zip"
FRA_ENG_SHA1 = "94646ad1522d915e7b0f9296181140edcf86a4f5"

ENV_CORPUS = "COURSE_FRA_ENG"
ENV_CACHE_DIR = "COURSE_DATA_DIR"

_CONNECT_TIMEOUT = 3.0  # seconds; offline machines fail this fast instead of hanging
_CHUNK_SIZE = 1 << 16


class CorpusUnavailableError(RuntimeError):
    """The corpus is neither on this machine nor downloadable; the message says what to do."""

    def __init__(self, reason: str, cache_dir: Path | None = None):
        self.reason = reason
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        super().__init__(
            f"{reason}\n"
            "To use a copy of the corpus you already have, either pass its location:\n"
            "    load_fra_eng_pairs(path='/path/to/fra.txt')   # or locate_fra_eng(path=...)\n"
            "  (a fra.txt, a directory holding fra.txt or fra-eng/fra.txt, or fra-eng.zip),\n"
            f"or set the environment variable {ENV_CORPUS}=/path/to/fra.txt.\n"
            f"The cache is {self.cache_dir} (set {ENV_CACHE_DIR} to move it): a file at "
            f"{self.cache_dir / 'fra-eng' / 'fra.txt'} or {self.cache_dir / 'fra-eng.zip'} "
            "is found without any argument."
        )

    def __reduce__(self):
        """Pickle from the reason and cache directory, not from the finished message."""
        return type(self), (self.reason, self.cache_dir)


def default_cache_dir() -> Path:
    """Return ``$COURSE_DATA_DIR`` if it is set, else ``~/.cache/seq2seq-course``."""
    configured = os.environ.get(ENV_CACHE_DIR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "seq2seq-course"


def locate_fra_eng(path: str | os.PathLike[str] | None = None, *,
                   cache_dir: str | os.PathLike[str] | None = None, download: bool = True,
                   url: str = FRA_ENG_URL, sha1: str | None = FRA_ENG_SHA1,
                   timeout: float = 10.0) -> Path:
    """Return the path of a readable ``fra.txt``, downloading it only when nothing local exists."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if path is not None:
        return _resolve_given(Path(path).expanduser(), cache, sha1, origin="path")
    from_env = os.environ.get(ENV_CORPUS)
    if from_env:
        return _resolve_given(Path(from_env).expanduser(), cache, sha1,
                              origin=f"${ENV_CORPUS}")

    cached_txt = cache / "fra-eng" / "fra.txt"
    cached_zip = cache / "fra-eng.zip"
    if cached_txt.is_file():
        return cached_txt
    stale_note = ""
    if cached_zip.is_file():
        actual = _sha1_of(cached_zip)
        if sha1 is None or actual == sha1.strip().lower():
            return _extract_fra_txt(cached_zip, cache / "fra-eng", cache)
        stale_note = (f" The cached {cached_zip} has SHA-1 {actual}, not the expected {sha1}, "
                      "so it is not used.")
    if not download:
        raise CorpusUnavailableError(
            f"The fra-eng corpus is not in the cache and download=False.{stale_note}", cache)
    _download(url, cached_zip, sha1, timeout, cache)
    return _extract_fra_txt(cached_zip, cache / "fra-eng", cache)


def load_fra_eng_pairs(path: str | os.PathLike[str] | None = None, *,
                       max_pairs: int | None = None, on_bad_line: str = "error",
                       **locate_kwargs) -> list[tuple[str, str]]:
    """Return the corpus as raw (English, French) pairs, the first ``max_pairs`` if given."""
    if max_pairs is not None:
        if isinstance(max_pairs, bool) or not isinstance(max_pairs, int):
            raise TypeError(f"max_pairs must be a positive int or None, got {max_pairs!r}")
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be a positive int or None, got {max_pairs}")
    if on_bad_line not in ("error", "skip"):  # checked before any download
        raise ValueError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
    corpus = locate_fra_eng(path, **locate_kwargs)
    try:
        text = corpus.read_text(encoding="utf-8-sig")  # UTF-8; a leading BOM is dropped
    except UnicodeDecodeError as error:
        raise ValueError(f"{corpus} is not UTF-8 text: {error}") from error
    pairs = parse_pairs(text, on_bad_line=on_bad_line, source=str(corpus))
    return pairs if max_pairs is None else pairs[:max_pairs]


def fra_eng_dataset(path: str | os.PathLike[str] | None = None, *,
                    max_pairs: int | None = None, seed: int = 0, valid_fraction: float = 0.1,
                    test_fraction: float = 0.1, **locate_kwargs) -> PairSplits:
    """The corpus (its first ``max_pairs`` pairs: it runs from short to long sentences) split
    into train/valid/test so that no English sentence is in two splits."""
    pairs = load_fra_eng_pairs(path, max_pairs=max_pairs, **locate_kwargs)
    return split_pairs(pairs, valid_fraction=valid_fraction, test_fraction=test_fraction,
                       seed=seed, name="fra-eng", info={"max_pairs": max_pairs})


def benchmark_splits(pairs: list[tuple[str, str]], *, num_test: int = 1000,
                     max_test_tokens: int = 8, seed: int = 0) -> PairSplits:
    """The evidence benchmark's fixed protocol (``benchmarks/bench_fra_eng.py``), so that
    figures from different runs and models compare.

    Shuffle all pairs with ``random.Random(seed)``. The test split is the first ``num_test``
    pairs whose English, tokenised the d2l way (lowercase, a space before punctuation), has at
    most ``max_test_tokens`` tokens, with no English sentence twice. Every other pair whose
    English (tokenised the same way) equals a test pair's English is removed; what remains, in
    the shuffled order, is the training pool (``train``). ``valid`` is empty: held-out data for
    model selection, if a model wants it, comes out of the pool.
    """
    if num_test < 1 or max_test_tokens < 1:
        raise ValueError(f"need num_test >= 1 and max_test_tokens >= 1, got {num_test} and "
                         f"{max_test_tokens}")
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    keys = [" ".join(tokenize(english)) for english, _ in shuffled]
    test_keys: set[str] = set()
    test: list[tuple[str, str]] = []
    for pair, key in zip(shuffled, keys, strict=True):
        if len(test) == num_test:
            break
        if len(key.split(" ")) <= max_test_tokens and key not in test_keys:
            test_keys.add(key)
            test.append(pair)
    if len(test) < num_test:
        raise ValueError(f"only {len(test)} distinct English sentences of at most "
                         f"{max_test_tokens} tokens; the protocol needs {num_test}")
    pool = [pair for pair, key in zip(shuffled, keys, strict=True) if key not in test_keys]
    return PairSplits(train=pool, valid=[], test=test, name="fra-eng (benchmark protocol)",
                      info={"seed": seed, "num_test": num_test,
                            "max_test_tokens": max_test_tokens})


def _resolve_given(given: Path, cache: Path, sha1: str | None, *, origin: str) -> Path:
    """Turn a user-given fra.txt, directory or zip into the path of a fra.txt."""
    if not given.exists():
        raise FileNotFoundError(f"The fra-eng corpus given by {origin} does not exist: {given}")
    if given.is_dir():
        for candidate in (given / "fra.txt", given / "fra-eng" / "fra.txt"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"The directory given by {origin}, {given}, holds neither fra.txt nor fra-eng/fra.txt")
    if given.suffix.lower() == ".zip" and not zipfile.is_zipfile(given):
        raise ValueError(f"The file given by {origin}, {given}, is not a valid zip archive")
    if zipfile.is_zipfile(given):
        actual = _sha1_of(given)
        _check_sha1(given, expected=sha1, actual=actual, hint="pass sha1=None to accept it")
        return _extract_fra_txt(given, cache / "extracted" / actual, cache)
    return given


def _sha1_of(file: Path) -> str:
    """Return the hex SHA-1 of a file's bytes."""
    digest = hashlib.sha1()
    with file.open("rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha1(file: Path, *, expected: str | None, actual: str, hint: str) -> None:
    """Raise ``ValueError`` naming both hashes when ``expected`` is given and differs."""
    if expected is not None and actual != expected.strip().lower():
        raise ValueError(
            f"SHA-1 mismatch for {file}: expected {expected.strip().lower()}, got {actual}; {hint}."
        )


def _download(url: str, dest: Path, sha1: str | None, timeout: float, cache: Path) -> None:
    """Stream ``url`` to a temporary file beside ``dest``; move it to ``dest`` once verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"Downloading {url} to {dest} ...", flush=True)
    handle, temp_name = tempfile.mkstemp(prefix=".fra-eng-", suffix=".part", dir=dest.parent)
    temp = Path(temp_name)
    try:
        digest = hashlib.sha1()
        with os.fdopen(handle, "wb") as out:
            try:
                with requests.get(url, stream=True,
                                  timeout=(min(_CONNECT_TIMEOUT, timeout), timeout)) as response:
                    response.raise_for_status()
                    for chunk in response.iter_content(chunk_size=_CHUNK_SIZE):
                        out.write(chunk)
                        digest.update(chunk)
            except requests.RequestException as error:
                raise CorpusUnavailableError(
                    f"Could not download the fra-eng corpus from {url}: {error}", cache
                ) from error
        _check_sha1(temp, expected=sha1, actual=digest.hexdigest(),
                    hint="the download was deleted; try again or give a local copy")
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)  # a failed or rejected download leaves nothing behind


def _check_members(archive: zipfile.ZipFile, source: Path) -> None:
    """Refuse an archive with a member that would land outside the extraction directory."""
    for name in archive.namelist():
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise ValueError(f"{source} holds a member outside its own directory: {name!r}")


def _extract_fra_txt(archive_path: Path, target_dir: Path, cache: Path) -> Path:
    """Extract the archive's fra.txt to ``target_dir/fra.txt`` via a temporary directory."""
    target = target_dir / "fra.txt"
    if target.is_file():
        return target
    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{archive_path} is not a valid zip archive: {error}") from error
    with archive:
        _check_members(archive, archive_path)
        names = set(archive.namelist())
        member = next((n for n in ("fra-eng/fra.txt", "fra.txt") if n in names), None)
        if member is None:
            raise ValueError(f"{archive_path} holds neither fra-eng/fra.txt nor fra.txt")
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".extract-", dir=cache) as temp_dir:
            extracted = Path(archive.extract(member, temp_dir))
            if not extracted.resolve().is_relative_to(Path(temp_dir).resolve()):
                raise ValueError(f"{archive_path}: {member!r} would be extracted outside {cache}")
            target_dir.mkdir(parents=True, exist_ok=True)
            os.replace(extracted, target)  # atomic: fra.txt is either absent or complete
    return target

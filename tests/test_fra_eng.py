"""Tests for course_lib.data.fra_eng: local lookup, download from a local server, the cache.

No test reaches the internet: downloads go to an HTTP server on 127.0.0.1 that the test starts,
and every other call passes download=False. The tests on the real corpus read
``../shared/data/fra-eng/fra.txt`` (or ``$COURSE_SHARED_DIR/data/fra-eng/fra.txt``) and are
skipped where it is absent.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from conftest import shared_fra_txt

from course_lib.data.fra_eng import (
    FRA_ENG_SHA1,
    FRA_ENG_URL,
    CorpusUnavailableError,
    benchmark_splits,
    default_cache_dir,
    fra_eng_dataset,
    load_fra_eng_pairs,
    locate_fra_eng,
)
from course_lib.data.splits import PairSplits
from course_lib.data.text import preprocess, tokenize
from course_lib.data.translation import TranslationData

SAMPLE = "Go.\tVa !\nRun!\tCours\u202f!\nWho?\tQui ?\nI'm OK.\tJe vais bien.\n"
SAMPLE_PAIRS = [("Go.", "Va !"), ("Run!", "Cours\u202f!"), ("Who?", "Qui ?"),
                ("I'm OK.", "Je vais bien.")]


REAL_CORPUS = shared_fra_txt()
needs_real_corpus = pytest.mark.skipif(
    not REAL_CORPUS.is_file(),
    reason=f"the real fra-eng corpus is not at {REAL_CORPUS} (set COURSE_SHARED_DIR to the "
           "directory holding data/fra-eng/fra.txt)",
)


def make_zip(path: Path, members: dict[str, str]) -> Path:
    """Write a zip holding ``members`` (name -> UTF-8 text) and return its path."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text.encode("utf-8"))
    return path


def sha1_of(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Keep the real cache and environment out, and refuse any request not to 127.0.0.1."""
    monkeypatch.delenv("COURSE_FRA_ENG", raising=False)
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "default-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    real_get = requests.get

    def local_get(url, *args, **kwargs):
        assert url.startswith("http://127.0.0.1:"), f"test tried to reach {url}"
        return real_get(url, *args, **kwargs)

    monkeypatch.setattr(requests, "get", local_get)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def sample_zip(tmp_path) -> Path:
    return make_zip(tmp_path / "fra-eng.zip", {"fra-eng/fra.txt": SAMPLE,
                                               "fra-eng/_about.txt": "test corpus\n"})


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 serving ``files`` (URL path -> bytes) and logging requests."""
    files: dict[str, bytes] = {}
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    port = httpd.server_address[1]
    yield SimpleNamespace(files=files, requests=seen,
                          url=lambda path: f"http://127.0.0.1:{port}{path}")
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def free_port() -> int:
    """A port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- constants and defaults ---------------------------------------------------------------------

def test_constants():
    assert FRA_ENG_URL == "http://d2l-data.s3-accelerate.amazonaws.com/fra-eng.zip"
    assert FRA_ENG_SHA1 == "94646ad1522d915e7b0f9296181140edcf86a4f5"


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("COURSE_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "seq2seq-course"


# --- download from a local server ---------------------------------------------------------------

def test_download_then_cache(server, sample_zip, cache, capsys):
    server.files["/fra-eng.zip"] = sample_zip.read_bytes()
    kwargs = dict(cache_dir=cache, url=server.url("/fra-eng.zip"), sha1=sha1_of(sample_zip))

    first = locate_fra_eng(**kwargs)
    assert server.requests == ["/fra-eng.zip"]
    assert first == cache / "fra-eng" / "fra.txt"
    assert (cache / "fra-eng.zip").read_bytes() == sample_zip.read_bytes()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("Downloading ")
    assert str(cache / "fra-eng.zip") in out

    assert load_fra_eng_pairs(**kwargs) == SAMPLE_PAIRS  # U+202F kept: preprocessing is later
    assert server.requests == ["/fra-eng.zip"]  # no second request
    assert capsys.readouterr().out == ""
    assert files_under(cache) == [cache / "fra-eng" / "fra.txt", cache / "fra-eng.zip"]


def test_cached_zip_is_extracted_without_download(sample_zip, cache):
    cache.mkdir()
    (cache / "fra-eng.zip").write_bytes(sample_zip.read_bytes())
    found = locate_fra_eng(cache_dir=cache, download=False, sha1=sha1_of(sample_zip))
    assert found == cache / "fra-eng" / "fra.txt"
    assert found.read_text(encoding="utf-8") == SAMPLE


def test_wrong_checksum_leaves_nothing(server, sample_zip, cache):
    server.files["/fra-eng.zip"] = sample_zip.read_bytes()
    wrong = "0" * 40
    with pytest.raises(ValueError) as info:
        locate_fra_eng(cache_dir=cache, url=server.url("/fra-eng.zip"), sha1=wrong)
    assert wrong in str(info.value) and sha1_of(sample_zip) in str(info.value)
    assert files_under(cache) == []


def test_cached_zip_with_wrong_checksum_is_not_trusted(server, sample_zip, tmp_path, cache):
    cache.mkdir()
    other = make_zip(tmp_path / "other.zip", {"fra-eng/fra.txt": "Stale.\tPérimé.\n"})
    (cache / "fra-eng.zip").write_bytes(other.read_bytes())
    sha1 = sha1_of(sample_zip)

    with pytest.raises(CorpusUnavailableError, match="not the expected"):
        locate_fra_eng(cache_dir=cache, download=False, sha1=sha1)

    server.files["/fra-eng.zip"] = sample_zip.read_bytes()
    pairs = load_fra_eng_pairs(cache_dir=cache, url=server.url("/fra-eng.zip"), sha1=sha1)
    assert pairs == SAMPLE_PAIRS
    assert server.requests == ["/fra-eng.zip"]
    assert sha1_of(cache / "fra-eng.zip") == sha1


def test_http_404_is_corpus_unavailable(server, cache):
    with pytest.raises(CorpusUnavailableError) as info:
        locate_fra_eng(cache_dir=cache, url=server.url("/missing.zip"), sha1=None)
    assert isinstance(info.value.__cause__, requests.HTTPError)
    assert "404" in str(info.value)
    assert files_under(cache) == []


def test_connection_refused_fails_fast_with_help(cache):
    url = f"http://127.0.0.1:{free_port()}/fra-eng.zip"
    start = time.monotonic()
    with pytest.raises(CorpusUnavailableError) as info:
        locate_fra_eng(cache_dir=cache, url=url)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "path=" in message and "COURSE_FRA_ENG" in message and str(cache) in message
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert files_under(cache) == []


def test_read_timeout_is_corpus_unavailable(cache):
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/fra-eng.zip"
        start = time.monotonic()
        with pytest.raises(CorpusUnavailableError) as info:
            locate_fra_eng(cache_dir=cache, url=url, timeout=0.5)
        assert time.monotonic() - start < 5
    assert isinstance(info.value.__cause__, requests.Timeout)
    assert files_under(cache) == []


def test_no_download_and_empty_cache(cache, capsys):
    with pytest.raises(CorpusUnavailableError, match="download=False") as info:
        locate_fra_eng(cache_dir=cache, download=False)
    assert "COURSE_FRA_ENG" in str(info.value) and "path=" in str(info.value)
    assert capsys.readouterr().out == ""


def test_error_pickles_with_its_message(cache):
    error = CorpusUnavailableError("offline", cache)
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and str(cache / "fra-eng.zip") in str(again)


# --- local copies -------------------------------------------------------------------------------

def test_path_to_fra_txt(tmp_path, cache):
    corpus = tmp_path / "mine.txt"
    corpus.write_text(SAMPLE, encoding="utf-8")
    assert locate_fra_eng(corpus, cache_dir=cache, download=False) == corpus
    assert load_fra_eng_pairs(str(corpus), cache_dir=cache, download=False) == SAMPLE_PAIRS
    assert files_under(cache) == []


@pytest.mark.parametrize("layout", ["fra.txt", "fra-eng/fra.txt"])
def test_path_to_directory(tmp_path, cache, layout):
    corpus = tmp_path / "data" / layout
    corpus.parent.mkdir(parents=True)
    corpus.write_text(SAMPLE, encoding="utf-8")
    assert locate_fra_eng(tmp_path / "data", cache_dir=cache, download=False) == corpus


def test_directory_without_corpus(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match="neither fra.txt"):
        locate_fra_eng(tmp_path, cache_dir=cache, download=False)


def test_path_to_zip(sample_zip, cache):
    sha1 = sha1_of(sample_zip)
    found = locate_fra_eng(sample_zip, cache_dir=cache, download=False, sha1=sha1)
    assert found.is_relative_to(cache) and found.name == "fra.txt"
    assert found.read_text(encoding="utf-8") == SAMPLE
    assert load_fra_eng_pairs(sample_zip, cache_dir=cache, download=False, sha1=sha1) \
        == SAMPLE_PAIRS
    # A zip that is not the official corpus never becomes the cached corpus.
    assert not (cache / "fra-eng" / "fra.txt").exists()


def test_path_to_zip_checks_sha1(sample_zip, cache):
    with pytest.raises(ValueError, match=FRA_ENG_SHA1) as info:
        locate_fra_eng(sample_zip, cache_dir=cache, download=False)  # default: official SHA-1
    assert sha1_of(sample_zip) in str(info.value)
    assert files_under(cache) == []
    assert locate_fra_eng(sample_zip, cache_dir=cache, sha1=None).is_file()


def test_env_var(monkeypatch, tmp_path, cache, sample_zip):
    corpus = tmp_path / "env.txt"
    corpus.write_text(SAMPLE, encoding="utf-8")
    monkeypatch.setenv("COURSE_FRA_ENG", str(corpus))
    assert locate_fra_eng(cache_dir=cache, download=False) == corpus
    assert load_fra_eng_pairs(cache_dir=cache, download=False, max_pairs=2) == SAMPLE_PAIRS[:2]
    # An explicit path wins over the environment variable.
    found = locate_fra_eng(sample_zip, cache_dir=cache, download=False, sha1=None)
    assert found != corpus and found.is_relative_to(cache)


def test_env_var_to_missing_path(monkeypatch, tmp_path, cache):
    missing = tmp_path / "nowhere" / "fra.txt"
    monkeypatch.setenv("COURSE_FRA_ENG", str(missing))
    with pytest.raises(FileNotFoundError, match="COURSE_FRA_ENG") as info:
        locate_fra_eng(cache_dir=cache)
    assert str(missing) in str(info.value)


def test_missing_path(tmp_path, cache):
    missing = tmp_path / "no-such-fra.txt"
    with pytest.raises(FileNotFoundError) as info:
        load_fra_eng_pairs(missing, cache_dir=cache)
    assert str(missing) in str(info.value)


def test_not_a_zip(tmp_path, cache):
    fake = tmp_path / "fra-eng.zip"
    fake.write_text("not a zip", encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid zip"):
        locate_fra_eng(fake, cache_dir=cache, sha1=None)


@pytest.mark.parametrize("evil", ["../evil.txt", "fra-eng/../../evil.txt", "/tmp/evil.txt"])
def test_zip_member_escaping_is_refused(tmp_path, cache, evil):
    archive = make_zip(tmp_path / "evil.zip", {"fra-eng/fra.txt": SAMPLE, evil: "gotcha\n"})
    with pytest.raises(ValueError, match="outside"):
        locate_fra_eng(archive, cache_dir=cache, sha1=None)
    assert [p for p in tmp_path.rglob("evil.txt")] == []
    assert files_under(cache) == []


def test_zip_without_corpus(tmp_path, cache):
    archive = make_zip(tmp_path / "empty.zip", {"readme.txt": "nothing here\n"})
    with pytest.raises(ValueError, match="fra-eng/fra.txt"):
        locate_fra_eng(archive, cache_dir=cache, sha1=None)


# --- reading ------------------------------------------------------------------------------------

def test_bad_line(tmp_path, cache):
    corpus = tmp_path / "fra.txt"
    corpus.write_text("Go.\tVa !\nno tab here\nHi.\tSalut.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2") as info:
        load_fra_eng_pairs(corpus, cache_dir=cache)
    assert str(corpus) in str(info.value)
    assert load_fra_eng_pairs(corpus, cache_dir=cache, on_bad_line="skip") \
        == [("Go.", "Va !"), ("Hi.", "Salut.")]


def test_not_utf8(tmp_path, cache):
    corpus = tmp_path / "fra.txt"
    corpus.write_bytes("Go.\tVa !\nHi.\tÇa va ?\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_fra_eng_pairs(corpus, cache_dir=cache)


def test_max_pairs(tmp_path, cache):
    corpus = tmp_path / "fra.txt"
    corpus.write_text(SAMPLE, encoding="utf-8")
    assert load_fra_eng_pairs(corpus, max_pairs=1) == SAMPLE_PAIRS[:1]
    assert load_fra_eng_pairs(corpus, max_pairs=100) == SAMPLE_PAIRS


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "3"])
def test_max_pairs_is_validated(bad, cache):
    with pytest.raises((TypeError, ValueError), match="max_pairs"):
        load_fra_eng_pairs(max_pairs=bad, cache_dir=cache, download=False)


def test_on_bad_line_is_validated_before_lookup(cache):
    with pytest.raises(ValueError, match="on_bad_line"):
        load_fra_eng_pairs(on_bad_line="ignore", cache_dir=cache, download=False)


# --- the real corpus ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_pairs(tmp_path_factory) -> list[tuple[str, str]]:
    if not REAL_CORPUS.is_file():
        pytest.skip(f"the real fra-eng corpus is not at {REAL_CORPUS}")
    return load_fra_eng_pairs(REAL_CORPUS, cache_dir=tmp_path_factory.mktemp("unused"),
                              download=False)


@pytest.fixture(scope="module")
def real_text() -> str:
    if not REAL_CORPUS.is_file():
        pytest.skip(f"the real fra-eng corpus is not at {REAL_CORPUS}")
    with open(REAL_CORPUS, encoding="utf-8") as file:  # as d2l reads it
        return file.read()


def assert_same_tokens(ours: list[list[str]], theirs: list[list[str]], what: str) -> None:
    """Compare token lists sentence by sentence, reporting how many differ and a few examples."""
    assert len(ours) == len(theirs), f"{what}: {len(ours)} sentences, d2l has {len(theirs)}"
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    examples = "; ".join(f"#{i}: ours {a!r}, d2l {b!r}" for i, a, b in differ[:3])
    assert not differ, f"{what}: {len(differ)} sentences tokenised differently, e.g. {examples}"


@pytest.fixture(scope="module")
def our_tokens(real_pairs) -> tuple[list[list[str]], list[list[str]]]:
    return [tokenize(en) for en, _ in real_pairs], [tokenize(fr) for _, fr in real_pairs]


@needs_real_corpus
def test_real_corpus_shape(real_pairs):
    assert len(real_pairs) == 76_036
    assert real_pairs[0] == ("Go.", "Va !")
    assert all(en.strip() and fr.strip() for en, fr in real_pairs)
    assert any("\u202f" in fr for _, fr in real_pairs)


@needs_real_corpus
def test_real_corpus_tokens_match_d2l_mtfraeng(our_tokens, real_text, d2l):
    # d2l's methods use self for nothing: call them unbound with self=None.
    src, tgt = d2l.MTFraEng._tokenize(None, d2l.MTFraEng._preprocess(None, real_text), None)
    assert all(s[-1] == "<eos>" for s in src) and all(t[-1] == "<eos>" for t in tgt)
    assert_same_tokens(our_tokens[0], [s[:-1] for s in src], "English vs MTFraEng")
    assert_same_tokens(our_tokens[1], [t[:-1] for t in tgt], "French vs MTFraEng")


@needs_real_corpus
def test_real_corpus_tokens_match_d2l_nmt(our_tokens, real_text, d2l):
    source, target = d2l.tokenize_nmt(d2l.preprocess_nmt(real_text))
    assert_same_tokens(our_tokens[0], [[t for t in s if t] for s in source],
                       "English vs tokenize_nmt")
    assert_same_tokens(our_tokens[1], [[t for t in s if t] for s in target],
                       "French vs tokenize_nmt")


@needs_real_corpus
def test_real_corpus_splits_never_share_an_english_sentence(tmp_path):
    splits = fra_eng_dataset(REAL_CORPUS, max_pairs=20_000, seed=0, cache_dir=tmp_path,
                             download=False)
    assert isinstance(splits, PairSplits)
    assert len(splits.train) + len(splits.valid) + len(splits.test) == 20_000

    def english(pairs):
        return {" ".join(preprocess(en).split()) for en, _ in pairs}

    train, valid, test = english(splits.train), english(splits.valid), english(splits.test)
    assert not train & test and not train & valid and not valid & test
    # The corpus repeats English sentences with several translations, so the split is by
    # sentence, not by pair: some sentences must have more than one pair.
    assert len(train) < len(splits.train)
    data = TranslationData(splits, num_steps=10, min_freq=2)
    assert len(data.src_vocab) > 1000 and data.src_vocab["go"] != data.src_vocab.unk


def test_benchmark_splits_follow_the_protocol_on_a_small_corpus():
    pairs = [("Go.", "Va !"), ("Hi.", "Salut !"), ("go .", "Bouge !"), ("Run!", "Cours !"),
             ("This sentence has far too many words to be tested.", "Trop long."),
             ("Hi.", "Salut."), ("Who?", "Qui ?"), ("Wow!", "Ça alors !")]
    splits = benchmark_splits(pairs, num_test=3, max_test_tokens=3, seed=0)
    shuffled = list(pairs)
    random.Random(0).shuffle(shuffled)
    expected_test, seen = [], set()
    for english, french in shuffled:  # the protocol, read literally
        key = tuple(tokenize(english))
        if len(expected_test) < 3 and len(key) <= 3 and key not in seen:
            seen.add(key)
            expected_test.append((english, french))
    assert splits.test == expected_test
    assert splits.train == [p for p in shuffled if tuple(tokenize(p[0])) not in seen]
    assert splits.valid == []
    test_english = {tuple(tokenize(e)) for e, _ in splits.test}
    assert len(test_english) == 3
    assert not test_english & {tuple(tokenize(e)) for e, _ in splits.train}
    assert len(splits.train) + len(splits.test) <= len(pairs)
    with pytest.raises(ValueError, match="only 5 distinct English sentences"):
        benchmark_splits(pairs, num_test=6, max_test_tokens=2)


def test_benchmark_splits_on_the_real_corpus(fra_txt):
    pairs = load_fra_eng_pairs(fra_txt)
    splits = benchmark_splits(pairs)
    assert len(splits.test) == 1000
    assert all(len(tokenize(e)) <= 8 for e, _ in splits.test)
    test_english = {" ".join(tokenize(e)) for e, _ in splits.test}
    assert len(test_english) == 1000
    assert not any(" ".join(tokenize(e)) in test_english for e, _ in splits.train)
    assert len(splits.train) == 73_644  # 76,036 pairs less 1,000 test and 1,392 duplicates
    assert splits.test[0] == ("What a prospect!", "Quelle perspective !")

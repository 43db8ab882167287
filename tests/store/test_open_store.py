"""open_store: store URLs, and a clear error for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from notebookops import ConfigurationError
from notebookops.store import MemoryRunStore, RedisRunStore, SQLiteRunStore, open_store


async def test_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_store(f"sqlite://{tmp_path}/runs.db")
    assert isinstance(absolute, SQLiteRunStore)
    assert absolute.path == tmp_path / "runs.db"
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:state/runs.db")
    assert isinstance(relative, SQLiteRunStore)
    assert relative.path == tmp_path / "state" / "runs.db"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = open_store("SQLITE:~/runs.db")
    assert isinstance(home, SQLiteRunStore)
    assert home.path == tmp_path / "home" / "runs.db"
    async with relative as store:
        assert (await store.reserve("k", "fp", owner="o", lease=1.0, retention=60.0)).created
    assert (tmp_path / "state" / "runs.db").exists()


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380/1", "unix:///run/r.sock"]
)
async def test_redis_urls(url: str) -> None:
    store = open_store(url)
    assert isinstance(store, RedisRunStore)
    await store.aclose()  # never connected


async def test_memory_url_gives_a_new_store() -> None:
    first, second = open_store("memory:"), open_store("memory:")
    assert isinstance(first, MemoryRunStore)
    assert first is not second
    # Nothing is shared between instances (no module-level state).
    await first.reserve("k", "fp", owner="o", lease=1.0, retention=60.0)
    assert await second.get("k") is None


@pytest.mark.parametrize(
    "url",
    ["postgres://db/runs", "runs.db", "/var/lib/runs.db", "", "file:///runs.db", "memory:x"],
)
def test_an_unknown_scheme_is_a_configuration_error_naming_the_schemes(url: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown run store URL") as caught:
        open_store(url)
    for form in ("sqlite:///", "redis://", "memory:"):
        assert form in str(caught.value)


def test_an_unknown_scheme_never_shows_credentials() -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store("postgres://user:s3cret@db/runs")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("url", ["sqlite://host/runs.db", "sqlite://", "sqlite:", "sqlite:///"])
def test_a_sqlite_url_needs_a_local_file(url: str) -> None:
    with pytest.raises(ConfigurationError, match="sqlite"):
        open_store(url)


def test_a_url_must_be_a_string() -> None:
    with pytest.raises(ConfigurationError, match="string"):
        open_store(Path("runs.db"))  # type: ignore[arg-type]

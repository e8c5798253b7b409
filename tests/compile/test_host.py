"""The host target helpers: what TVM's thread pool is configured with before it exists."""

from __future__ import annotations

import os

import pytest

from repfx_deploy.compile.host import (
    DEFAULT_SPIN_COUNT,
    ensure_thread_pool_capacity,
    normalize_triple,
)


def test_ensure_thread_pool_capacity_bounds_the_worker_spin_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TVM_THREAD_POOL_SPIN_COUNT", raising=False)
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    ensure_thread_pool_capacity()
    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == str(DEFAULT_SPIN_COUNT)
    assert int(os.environ["TVM_NUM_THREADS"]) == (os.cpu_count() or 1)


def test_ensure_thread_pool_capacity_keeps_the_user_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TVM_THREAD_POOL_SPIN_COUNT", "0")
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    ensure_thread_pool_capacity()
    assert (os.environ["TVM_THREAD_POOL_SPIN_COUNT"], os.environ["TVM_NUM_THREADS"]) == ("0", "1")


def test_normalize_triple_drops_the_conda_vendor_only() -> None:
    assert normalize_triple("x86_64-conda-linux-gnu") == "x86_64-linux-gnu"
    assert normalize_triple("aarch64-linux-gnu") == "aarch64-linux-gnu"

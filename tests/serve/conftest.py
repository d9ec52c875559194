"""Fixtures for the server tests: a tiny saved teacher served on loopback, and an OpenAI client for it."""

from __future__ import annotations

import pytest

MODEL_NAME = "tiny-teacher"


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Keep the tiny models light on a shared machine (every server test)."""


def load_teacher(folder, *, batch_size: int = 8):
    from lmdistill.models import load_model, load_tokenizer
    from lmdistill.teachers.local import LocalTeacher

    model = load_model(folder)
    return LocalTeacher(model, load_tokenizer(folder), name=MODEL_NAME, batch_size=batch_size)


@pytest.fixture
def teacher(tiny_model_dirs):
    return load_teacher(tiny_model_dirs[0])


@pytest.fixture
def app(teacher):
    from lmdistill.serve import create_app

    # a generous wait, so that requests from the concurrency test meet in one batch even on a busy machine
    return create_app(teacher, model_name=MODEL_NAME, max_batch=8, max_wait_ms=50.0)


@pytest.fixture
def server(app):
    from lmdistill.serve import ServerThread

    with ServerThread(app) as running:
        yield running


@pytest.fixture
def client(server):
    import openai

    with openai.OpenAI(base_url=server.url, api_key="EMPTY", max_retries=0, timeout=60.0) as c:
        yield c

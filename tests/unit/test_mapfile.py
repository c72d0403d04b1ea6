"""Any mapping-file problem is one sentence naming the file, the line and the key."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Literal

import pytest
import yaml

from connector.engine import load_scoring
from connector.mapfile import MappingError, Strict, load_model
from connector.mappings.routing import load_routing


class Rule(Strict):
    name: str
    points: int
    op: Literal["equals", "in"]


class File(Strict):
    version: str
    rules: list[Rule]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: x\nrules:\n  - name: a\n    points: 3\n    op: nope\n",
         "line 5, key 'rules[0].op': must be one of 'equals' or 'in'"),
        ("version: x\nrules:\n  - name: a\n    points: three\n    op: in\n",
         "line 4, key 'rules[0].points': input should be a valid integer"),
        ("version: x\nrules:\n  - name: a\n    points: 3\n    op: in\n    extra: 1\n",
         "line 6, key 'rules[0].extra': unknown key"),
        ("version: x\nrules:\n  - name: a\n    op: in\n", "line 3, key 'rules[0].points': this key is required"),
        ("version: x\nversion: y\n", "line 2, key 'version': this key appears twice"),
        ("rules: [\n", "line 2: is not valid YAML"),
    ],
)
def test_a_bad_file_is_reported_with_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(MappingError) as info:
        load_model(path, File)
    assert str(info.value).startswith(f"{path}, {message}")


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="does not exist"):
        load_model(tmp_path / "none.yaml", File)


def test_a_good_file_loads_into_typed_objects(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("version: x\nrules:\n  - name: a\n    points: 3\n    op: equals\n")
    assert load_model(path, File).rules[0].points == 3


def test_a_file_read_leaves_nothing_of_its_yaml_behind_however_often_it_is_read() -> None:
    """A long-running worker reads its mappings once and away.yaml at each change: none of it may stay."""
    mappings = Path(__file__).resolve().parents[2] / "mappings"

    def read() -> None:
        load_scoring(mappings / "scoring.yaml")
        load_routing(mappings / "routing.yaml")
        gc.collect()

    read()  # the first read fills what the process keeps once (imports, compiled patterns)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            read()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert not [o for o in gc.get_objects() if isinstance(o, yaml.Node)], "YAML nodes outlived their read"
    assert grown < 100_000, f"5 reads kept {grown:,} bytes"  # each read of the two kept about 1 MB before

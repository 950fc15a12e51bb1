"""neatt.fileio.write_json_atomic: a write that fails halfway leaves the previous file whole and no debris."""
import json

import pytest

from neatt.fileio import write_json_atomic


def test_writes_json_and_creates_the_folder(tmp_path):
    path = tmp_path / 'sub' / 'out.json'
    write_json_atomic({'a': 1, 'p': tmp_path}, path, indent=1)
    assert json.loads(path.read_text()) == {'a': 1, 'p': str(tmp_path)}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / 'out.json'
    write_json_atomic({'version': 1}, path)

    class Boom:  # json calls default=str on it, and str raises midway through the dump
        def __str__(self):
            raise RuntimeError('interrupted')

    with pytest.raises(RuntimeError, match='interrupted'):
        write_json_atomic({'version': 2, 'x': Boom()}, path)
    assert json.loads(path.read_text()) == {'version': 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.json']

"""Every notebook in colabs/ runs top to bottom in its reduced mode (ALIGNJAX_NOTEBOOK_QUICK=1),
and the committed notebooks are what colabs/make_notebooks.py writes, without outputs.

The kernels inherit this session's environment: its cache of starting points (the tiny SFT
policy and reward model other tests train too) and its XLA compilation cache. Runs go to one
directory in that cache, so the ranking-accuracy notebook reuses the direct-alignment notebook's
DPO run (common.run locks a workdir while it trains, across xdist workers too).
"""

import glob
import importlib.util
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, 'colabs')
NOTEBOOKS = sorted(
    os.path.basename(p)[:-len('.ipynb')] for p in glob.glob(os.path.join(COLABS, '*.ipynb')))


def _generator():
    spec = importlib.util.spec_from_file_location('make_notebooks',
                                                  os.path.join(COLABS, 'make_notebooks.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_reproduction_has_a_committed_notebook_from_the_generator():
    gen = _generator()
    repro = sorted(
        os.path.basename(p)[:-3]
        for p in glob.glob(os.path.join(ROOT, 'alignjax', 'repro', '*.py')))
    repro = [m for m in repro if m not in ('__init__', 'common', 'best_of_n')]
    assert sorted(gen.NOTEBOOKS) == repro == NOTEBOOKS
    for name in NOTEBOOKS:
        nb = nbformat.read(os.path.join(COLABS, f'{name}.ipynb'), as_version=4)
        nbformat.validate(nb)
        expected = gen.notebook(name, gen.NOTEBOOKS[name])
        assert [c.source for c in nb.cells] == [c.source for c in expected.cells], \
            f'{name}.ipynb is stale: run python colabs/make_notebooks.py'
        badge = f'colab.research.google.com/github/alignjax/alignjax/blob/main/colabs/{name}.ipynb'
        assert nb.cells[0].cell_type == 'markdown' and badge in nb.cells[0].source
        assert 'except ImportError' in nb.cells[1].source and 'pip install' in nb.cells[1].source
        for cell in nb.cells:
            if cell.cell_type == 'code':
                assert not cell.outputs and cell.execution_count is None, \
                    f'{name}.ipynb is committed with outputs'


@pytest.fixture(scope='module')
def repro_dir():
    cache = os.environ.get('ALIGNJAX_CACHE') or os.path.expanduser('~/.cache/alignjax')
    path = os.path.join(cache, 'notebook-runs')
    os.makedirs(path, exist_ok=True)
    return path


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_in_reduced_mode(name, repro_dir, tmp_path, monkeypatch):
    monkeypatch.setenv('ALIGNJAX_NOTEBOOK_QUICK', '1')
    monkeypatch.setenv('ALIGNJAX_REPRO_DIR', repro_dir)
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    # This checkout's alignjax, installed or not (the install cell is skipped when it imports).
    monkeypatch.setenv('PYTHONPATH',
                       os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH', '')])))
    nb = nbformat.read(os.path.join(COLABS, f'{name}.ipynb'), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name='python3',
                   resources={'metadata': {'path': str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
    assert not [o for o in outputs if o.output_type == 'error']
    assert any('image/png' in o.get('data', {}) for o in outputs), 'no plot shown'
    assert os.path.exists(os.path.join(repro_dir, f'{name}.png'))

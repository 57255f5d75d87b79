"""The layers import downwards only (issue 11): training/ never imports edm_spectral or a CLI,
and torch_utils/ and dnnlib/ import neither training nor edm_spectral. Every import counts,
including those inside functions."""

import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIS = {'train', 'fine_tune', 'generate', 'fid', 'dataset_tool'}

# Top-level names of the modules a file imports (relative imports stay inside the package).
def imported_roots(path):
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read(), filename=path)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split('.')[0])
        elif isinstance(node, ast.Call) and getattr(node.func, 'attr', getattr(node.func, 'id', None)) in ('import_module', '__import__') \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names.add(node.args[0].value.split('.')[0])
    return names

LAYERS = [('training', {'edm_spectral'} | CLIS), ('torch_utils', {'training', 'edm_spectral'} | CLIS), ('dnnlib', {'training', 'edm_spectral'} | CLIS)]

@pytest.mark.parametrize('package, forbidden', LAYERS, ids=[p for p, _ in LAYERS])
def test_layers_import_downwards(package, forbidden):
    files = sorted(glob.glob(os.path.join(ROOT, package, '**', '*.py'), recursive=True))
    assert files, package
    wrong = {os.path.relpath(f, ROOT): sorted(imported_roots(f) & forbidden) for f in files}
    assert {f: names for f, names in wrong.items() if names} == {}

# The checker itself sees imports in functions, from-imports and import_module calls.
def test_checker_sees_every_import(tmp_path):
    path = tmp_path / 'm.py'
    path.write_text('import os\ndef f():\n    from edm_spectral.checkpoints import load_snapshot\n    import train\n'
        'class C:\n    def g(self):\n        return importlib.import_module("fid")\nfrom . import sibling\n')
    assert imported_roots(str(path)) == {'os', 'edm_spectral', 'train', 'fid'}

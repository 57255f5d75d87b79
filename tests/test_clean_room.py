"""The tree shares no run of 6+ code lines with NVlabs/edm, edm2 or the StyleGAN code.
The checker (shared/clean-room/check.py, hashes only) sits beside the checkout in the project's
workspace; an outside clone does not have it and skips."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKER = os.path.join(ROOT, '..', 'shared', 'clean-room', 'check.py')

@pytest.mark.skipif(not os.path.isfile(CHECKER), reason='shared/clean-room/check.py is not beside this checkout')
def test_no_run_shared_with_nvlabs_code():
    result = subprocess.run([sys.executable, CHECKER, ROOT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert 'clean-room check: 0 shared runs' in output, output[-4000:]

"""edm_spectral.cli's --resume: the state that resume_option reads to check it (before the run
folder is made) is the one the training loop's reader then takes, so the file is read once and
a trusted pickle's code runs once; a changed file, another path or another trust setting is
read again."""

import os

import pytest

from edm_spectral import checkpoints, cli

@pytest.fixture
def counted_loads(monkeypatch):
    loads = []
    def fake_load(path, trust_code=False, mmap=False):
        loads.append((os.path.basename(path), trust_code))
        return dict(read=len(loads))
    monkeypatch.setattr(checkpoints, 'load_training_state', fake_load)
    return loads

def test_checked_state_is_handed_to_the_loop_once(tmp_path, counted_loads):
    state = tmp_path / 'training-state-000010.pt'
    state.write_bytes(b'stand-in')
    assert cli.resume_option(str(state))['resume_state_dump'] == str(state)
    reader = cli.training_readers('--resume')['load_training_state']
    assert reader(str(state)) == dict(read=1) and counted_loads == [('training-state-000010.pt', False)]
    assert reader(str(state)) == dict(read=2)   # handed over once; a second read is a read

    cli.resume_option(str(state), trust_code=True)
    assert cli.training_readers('--resume')['load_training_state'](str(state)) == dict(read=4)   # not trusted: read again
    assert cli.training_readers('--resume', trust_code=True)['load_training_state'](str(state)) == dict(read=3)

    cli.resume_option(str(state))
    os.utime(state, ns=(1, 1))   # the file changed after the check
    assert cli.training_readers('--resume')['load_training_state'](str(state)) == dict(read=6)   # read again, not the 5th

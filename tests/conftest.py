"""Fixtures shared by the test files."""

import pickle

import pytest

#----------------------------------------------------------------------------
# Hostile pickles: unpickling the payload runs code that writes a marker file, so a test can
# tell whether a loader executed it. Only a loader told to trust the file may.

class HostilePayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f'open({self.marker!r}, "w").write("payload ran")',))

class HostileFiles:
    def __init__(self, root):
        self.root = root
        self.marker = root / 'payload-ran'

    def payload(self):
        return HostilePayload(self.marker)

    # A plain pickle; `wrap` puts the payload inside a container (e.g. a snapshot-shaped dict).
    def pickle(self, name='evil.pkl', wrap=lambda payload: dict(ema=payload)):
        path = self.root / name
        with open(path, 'wb') as f:
            pickle.dump(wrap(self.payload()), f)
        return str(path)

    # A torch.save file, shaped like a training state.
    def torch_save(self, name='training-state-000000.pt', wrap=lambda payload: dict(net=payload, optimizer_state={})):
        import torch
        path = self.root / name
        torch.save(wrap(self.payload()), path)
        return str(path)

    def ran(self):
        return self.marker.exists()

@pytest.fixture
def hostile(tmp_path):
    root = tmp_path / 'hostile'
    root.mkdir()
    return HostileFiles(root)

#----------------------------------------------------------------------------

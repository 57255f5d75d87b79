"""The espeak-ng corpus and the audio demo end to end (smoke preset). Skipped, with the reason,
where espeak-ng is not installed."""

import json
import os
import shutil

import numpy as np
import pytest

from edm_spectral.audio import data as data_lib
from edm_spectral.audio import make_corpus

needs_espeak = pytest.mark.skipif(shutil.which('espeak-ng') is None,
    reason='espeak-ng is not installed (apt-get install espeak-ng); the embedded audio corpus needs it')

def test_clip_ids_split():
    ids = make_corpus.clip_ids(10, 3)
    assert len(set(ids)) == 10
    assert sum(i.startswith(('LJ001', 'LJ002')) for i in ids) == 3
    with pytest.raises(ValueError, match='heldout'):
        make_corpus.make_corpus('/nonexistent', 4, 4)

# --noise-floor adds white noise of that RMS on its own random stream: texts, voices and the
# speech itself are those of the silent corpus.
@needs_espeak
def test_corpus_noise_floor(tmp_path):
    from click.testing import CliRunner
    for name, floor in [('silent', '0'), ('floor', '0.001')]:
        res = CliRunner().invoke(make_corpus.main, [f'--outdir={tmp_path / name}', '--clips=3', '--heldout=1', f'--noise-floor={floor}'])
        assert res.exit_code == 0, res.output
    assert open(tmp_path / 'silent' / 'metadata.csv').read() == open(tmp_path / 'floor' / 'metadata.csv').read()
    for (_, silent), (_, floor) in zip(data_lib.list_clips(str(tmp_path / 'silent'), 'all'), data_lib.list_clips(str(tmp_path / 'floor'), 'all')):
        a, b = data_lib.read_wav(silent)[0], data_lib.read_wav(floor)[0]
        assert len(a) == len(b) and abs(float(np.std(b - a)) - 1e-3) < 1e-4
    res = CliRunner().invoke(make_corpus.main, [f'--outdir={tmp_path / "bad"}', '--clips=3', '--heldout=1', '--noise-floor=0.5'])
    assert res.exit_code != 0 and 'noise-floor' in res.output

@needs_espeak
def test_demo_smoke(tmp_path):
    from edm_spectral.audio import demo
    out = str(tmp_path / 'demo')
    summary = demo.run_demo(out, preset='smoke', device='cpu', verbose=False)
    clips = data_lib.list_clips(os.path.join(out, 'corpus'), 'all')
    assert len(clips) == demo.PRESETS['smoke']['clips']
    audio, rate = data_lib.read_wav(clips[0][1], expected_rate=22050)
    assert len(audio) > rate // 2 # espeak-ng produced speech of a sensible length.
    cfg = demo.PRESETS['smoke']
    assert set(summary['variants']) == set(demo.VARIANTS)
    assert set(summary['base']['mel_reliance']) == {'own', 'other', 'zero'}
    for name, variant in summary['variants'].items():
        # Per variant: one value per fine-tuning run, each the mean over the sampling seeds.
        m = variant['metrics']
        assert m['mrstft']['mean'] > 0 and len(m['mrstft']['values']) == len(cfg['ft_seeds'])
        assert [r['train_seed'] for r in variant['runs']] == cfg['ft_seeds']
        for run in variant['runs']:
            assert len(run['metrics']['mrstft']['values']) == len(cfg['seeds'])
            assert run['weights_moved'] > 0
            assert (run['final_spectral'] is None) == (name == 'baseline')
            gain = run['mel_reliance']['other'] - run['mel_reliance']['own']
            assert gain in m['mel_gain']['values']
        # Different training seeds give different fine-tuned models.
        assert len(set(m['mrstft']['values'])) == len(cfg['ft_seeds'])
    base = summary['variants']['baseline']['metrics']
    for name in set(demo.VARIANTS) - {'baseline'}:
        delta = summary['paired_differences'][f'{name} - baseline']
        other = summary['variants'][name]['metrics']
        assert delta['mrstft']['values'] == [a - b for a, b in zip(other['mrstft']['values'], base['mrstft']['values'])]
    assert json.load(open(os.path.join(out, 'summary.json')))['preset'] == 'smoke'
    md = open(os.path.join(out, 'summary.md')).read()
    assert '| baseline |' in md and '| wavelet-haar - baseline |' in md
    assert os.path.isfile(os.path.join(out, 'spectrograms.png')) and os.path.isfile(os.path.join(out, 'psd.png'))

#----------------------------------------------------------------------------

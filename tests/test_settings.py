"""Run settings through the public surface: finite numbers only (NaN and Infinity are JSON that `--set` reads);
where descriptions come from enters the reason key by content, never by place; EgoCVR's scope and clip table."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import json
import shutil
import subprocess
import pytest
from r3covr.core import ConfigError
from r3covr.pipeline import run
from r3covr.settings import key_inputs, parse_sets, run_config

NOT_FINITE = ['weight=NaN', 'gate=NaN', 'pool_temperature=Infinity', 'margin=-Infinity',
              'route_weights={"direct": NaN}', 'vlm.temperature=NaN']


@pytest.mark.parametrize('pair', NOT_FINITE)
def test_nan_and_infinity_are_refused_naming_the_setting(pair):
    with pytest.raises(ConfigError) as e: run_config(preset='toy', **parse_sets([pair]))
    msg = str(e.value)
    assert f"setting {pair.split('=')[0]}=" in msg and 'finite' in msg and '\n' not in msg, msg


def test_finite_numbers_still_pass():
    cfg = run_config(preset='toy', routes=['direct', 'description'], weight=1, gate=-0.25,
                     route_weights={'direct': 2}, pool_temperature=0.1)
    assert (cfg['weight'], cfg['gate'], cfg['route_weights'], cfg['pool_temperature']) == (1., -.25, {'direct': 2.}, .1)


@pytest.mark.parametrize('pair', ['weight=NaN', 'route_weights={"direct": NaN}'])
def test_cli_refuses_nan_in_one_line_and_writes_nothing(pair, tmp_path):
    out = tmp_path/'run'
    p = subprocess.run(['r3covr', 'run', '--preset', 'toy', '--n', '2', '--out', str(out), '--set', pair],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'HF_HUB_OFFLINE': '1', 'R3COVR_CACHE': str(tmp_path/'cache')})
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert 'Traceback' not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr[-2000:]
    assert f"{pair.split('=')[0]}=" in p.stderr and 'finite' in p.stderr, p.stderr
    assert not (out/'config.json').exists()


def test_scope_and_clips_are_checked_and_scope_enters_the_retrieve_key(tmp_path):
    with pytest.raises(ConfigError, match='scope=.nearby.: expected one of global, local'):
        run_config(preset='toy', scope='nearby')
    with pytest.raises(ConfigError, match='clips=.*expected the path of an existing file'):
        run_config(preset='toy', clips=str(tmp_path/'no-such.csv'))
    (tmp_path/'clips.csv').write_text('clip_name,narration_text,video_uid\n')
    assert run_config(preset='toy', clips=str(tmp_path/'clips.csv'))['clips'] == str(tmp_path/'clips.csv')
    base = key_inputs(run_config(preset='toy'), 'retrieve')
    assert 'scope' not in base                                       # global: the keys of earlier runs stay
    assert key_inputs(run_config(preset='toy', scope='local'), 'retrieve') == {**base, 'scope': 'local'}


def test_a_missing_descriptions_file_is_one_line_at_the_cli(tmp_path):
    p = subprocess.run(['r3covr', 'run', '--preset', 'toy', '--n', '2', '--out', str(tmp_path/'run'),
                        '--set', f'descriptions={tmp_path/"gone.jsonl"}'], capture_output=True, text=True,
                       timeout=300, env={**os.environ, 'HF_HUB_OFFLINE': '1', 'R3COVR_CACHE': str(tmp_path/'cache')})
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr[-2000:]
    assert 'gone.jsonl' in p.stderr and 'Traceback' not in p.stderr


def _keys(folder, src, **kw):
    "The stage keys a toy run with descriptions from `src` writes into its config.json (no description route)."
    run(folder, preset='toy', n=4, routes=['direct'], rerank=False, baselines=False, descriptions=str(src), **kw)
    return json.loads((folder/'config.json').read_text())['keys']


def test_the_reason_key_follows_the_file_content_not_its_place(tmp_path, monkeypatch):
    monkeypatch.setenv('R3COVR_CACHE', str(tmp_path/'cache'))
    src = tmp_path/'a'/'descriptions.jsonl'; src.parent.mkdir()
    src.write_text('{"id": "q0000", "description": "a blue square moves slowly"}\n')
    first = _keys(tmp_path/'r1', src)
    moved = tmp_path/'b'/'renamed.jsonl'; moved.parent.mkdir(); shutil.move(src, moved)
    assert _keys(tmp_path/'r2', moved) == first                         # moved: the same content, the same keys
    moved.write_text('{"id": "q0000", "description": "a green square moves slowly to the left"}\n')
    edited = _keys(tmp_path/'r3', moved)
    assert edited['reason'] != first['reason'] and edited['generate'] == first['generate']
    run(tmp_path/'r4', preset='toy', n=4, routes=['direct'], rerank=False, baselines=False)
    plain = json.loads((tmp_path/'r4'/'config.json').read_text())['keys']           # generated descriptions
    assert plain['reason'] not in (first['reason'], edited['reason'])

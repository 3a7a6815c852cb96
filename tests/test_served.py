"""The `openai` backend against a real server: llama.cpp's OpenAI-compatible server (llama-cpp-python, the `serve`
extra) with SmolLM2-135M on 127.0.0.1, compared with the in-process `CausalLM` on ten dev500 queries (synthetic ones
where the data is absent); and the faults: no server at start, a server killed mid-run (through `r3covr run`, then
restarted and resumed), slow and malformed answers (a stand-in server). Every server it starts, it stops. Not skipped:
without llama-cpp-python the tests fail and say how to install it."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import base64
import collections
import io
import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
import numpy as np
import pytest
from r3covr.core import ConfigError, R3Error, ServiceError, read_jsonl
from r3covr.lm import Chat, VideoPart
from r3covr.models import create_vlm
from r3covr.reason import PROMPTS, clean_description, says_nothing, template_phrases
from r3covr.rerank import judge_prompt
from r3covr.served import (LocalServer, OpenAIVLM, Retryable, StubServer, call, chat_body, chat_completion, free_port,
                           with_retries)

DEV500 = Path(__file__).resolve().parents[1].parent/'shared'/'data'/'webvid-covr'/'webvid8m-covr_test.dev500.csv'
SMOL = 'HuggingFaceTB/SmolLM2-135M-Instruct'
MAX_DP = 0.15      # |dP(yes)| bound: log-probs differ by <= ~0.26 nats (Q4_1 x Q8_1 kernels vs fp32 torch),
                   # and the sigmoid's slope is at most 1/4
NEAR_TIE = 0.6     # nats: greedy texts may fork only where the top two tokens are closer than twice that shift


@pytest.fixture(scope='module')
def server():
    with LocalServer(SMOL) as srv: yield srv


def ten_queries():
    "(query, reference video, [target + 3 other gallery videos]) of 10 dev500 rows (or 10 synthetic ones)."
    if DEV500.exists():
        from r3covr.data import load_webvid_covr
        ds = load_webvid_covr(DEV500)
    else:
        from r3covr.synthetic import make_synthetic
        ds = make_synthetic(n_queries=10)
    others = lambda q: [g for g in ds.gallery_for(q) if g != q.target][:3]
    return [(q, ds.videos[q.reference], [ds.videos[c] for c in [q.target] + others(q)])
            for q in ds.queries[:10]]


def caption(v): return VideoPart(caption=v.caption, video_id=v.id)


@pytest.fixture(scope='module')
def compared(server):
    "Both backends on the same prompts: rewrite-caption@1 descriptions (72 new tokens, as in the cpu preset), judges."
    qs, t = ten_queries(), {}
    local, served = create_vlm('cpu'), create_vlm('cpu-served', base_url=server.url)
    gen = [PROMPTS['rewrite-caption@1'].chat(caption(ref), edit=q.edit) for q, ref, _ in qs]
    local.batch_size = len(gen)                                  # one batch: 72 steps, not twice that
    t0 = time.time(); texts_local = local.generate(gen, 72); t['generate in-process'] = time.time() - t0
    local.batch_size = 8
    t0 = time.time(); texts_served = served.generate(gen, 72); t['generate served'] = time.time() - t0
    descs = []
    for (q, _, _), raw in zip(qs, texts_local):
        d = clean_description(raw, template_phrases(PROMPTS['rewrite-caption@1'], edit=q.edit))
        descs.append(q.edit if says_nothing(d) else d)
    judges = [judge_prompt(q.edit, d, caption(c)) for (q, _, cands), d in zip(qs, descs) for c in cands]
    t0 = time.time(); p_local = local.score(judges); t['judge in-process'] = time.time() - t0
    t0 = time.time(); p_served = served.score(judges); t['judge served'] = time.time() - t0
    print(f'\n{"dev500" if DEV500.exists() else "synthetic"}: {len(qs)} queries, {len(judges)} judge prompts; seconds',
          {k: round(v, 1) for k, v in t.items()})
    return dict(local=local, served=served, gen=gen, texts_local=texts_local, texts_served=texts_served, judges=judges,
                p_local=p_local, p_served=p_served, n=len(qs))


def test_the_server_reads_the_same_tokens(compared):
    "The server's chat template gives the prompt the in-process tokenizer gives: same token count for every prompt."
    local, served = compared['local'], compared['served']
    for chat in compared['gen'] + compared['judges'][::8]:
        used = call(f'{served.base_url}/chat/completions', chat_body(chat, served.name, 1))['usage']['prompt_tokens']
        assert used == len(local.tok(local.chat_text(chat), add_special_tokens=False)['input_ids'])


def top_two(lp:dict) -> tuple:
    "The two most likely (token, logprob) of a {token: logprob} map, and the gap between them in nats."
    (a, x), (b, y) = sorted(lp.items(), key=lambda t: -t[1])[:2]
    return (a, round(x, 3)), (b, round(y, 3)), x - y


def fork(tok, a:str, b:str) -> int:
    "How many of text `a`'s tokens spell a prefix of text `b`: where greedy decoding forked."
    ia = tok(a, add_special_tokens=False)['input_ids']
    return max(i for i in range(len(ia) + 1) if b.startswith(tok.decode(ia[:i])))


def test_greedy_descriptions_identical_or_forked_at_a_near_tie(compared, server):
    "Greedy texts: identical, or they fork where the two likeliest next tokens are within NEAR_TIE nats, on both sides."
    import torch
    local, tok = compared['local'], compared['local'].tok
    same = [a == b for a, b in zip(compared['texts_local'], compared['texts_served'])]
    print(f'\ngreedy descriptions identical: {sum(same)}/{len(same)}')
    for chat, a, b, s in zip(compared['gen'], compared['texts_local'], compared['texts_served'], same):
        if s: continue
        k = fork(tok, a, b)
        prefix = local.chat_text(chat) + tok.decode(tok(a, add_special_tokens=False)['input_ids'][:k])
        served = call(f'{server.url}/completions', dict(prompt=prefix, max_tokens=1, temperature=0, logprobs=5))
        with torch.inference_mode():
            lp = local.model(**tok(prefix, return_tensors='pt', add_special_tokens=False)).logits[0, -1].log_softmax(-1)
        v, i = lp.topk(5)
        *two_l, gap_l = top_two({tok.decode([int(j)]): float(x) for x, j in zip(v, i)})
        *two_s, gap_s = top_two(served['choices'][0]['logprobs']['top_logprobs'][0])
        print(f'- fork after {k} tokens: in-process next {two_l} (gap {gap_l:.3f} nats), '
              f'served next {two_s} (gap {gap_s:.3f})\n'
              f'    in-process: {a!r}\n    served:     {b!r}')
        assert gap_l < NEAR_TIE and gap_s < NEAR_TIE, (a, b)


def test_p_yes_close_and_rankings(compared):
    pl, ps, n = compared['p_local'], compared['p_served'], compared['n']
    d = np.abs(pl - ps)
    order = lambda p: [tuple(np.argsort(-r, kind='stable')) for r in p.reshape(n, -1)]
    changed = sum(a != b for a, b in zip(order(pl), order(ps)))
    top1 = sum(a[0] != b[0] for a, b in zip(order(pl), order(ps)))
    spread = np.median(np.ptp(pl.reshape(n, -1), axis=1))
    i = d.argmax()
    print(f'\nP(yes) over {len(d)} judge prompts: max |dP| {d.max():.4f} (prompt {i}: in-process {pl[i]:.4f}, '
          f'served {ps[i]:.4f}), mean {d.mean():.4f}; rankings of the 4 candidates changed in {changed} of {n} '
          f'queries (top-1 in {top1}); median in-process P(yes) spread within a query {spread:.4f}')
    assert d.max() < MAX_DP
    assert ((0 < ps) & (ps < 1)).all()


# ---------------------------------------------------------------- faults

def closed_url() -> str: return f'http://127.0.0.1:{free_port()}/v1'


def test_no_server_at_start_fails_in_seconds():
    url, t0 = closed_url(), time.time()
    with pytest.raises(ServiceError, match=f'no model server answers at {url}'): OpenAIVLM(base_url=url)
    with pytest.raises(ServiceError, match='connection refused|Connection refused'): OpenAIVLM.weights_of(base_url=url)
    assert time.time() - t0 < 2


def env(cache, **more): return {**os.environ, 'R3COVR_CACHE': str(cache), 'HF_HUB_OFFLINE': '1', **more}


def run_cli(url, out, cache, n=6, sets=(), more_env=None, **kw):
    return subprocess.Popen(['r3covr', 'run', '--dataset', 'synthetic', '--n', str(n), '--preset', 'cpu-served',
                             '--out', str(out), '--set', f'vlm.base_url={url}', 'batch_size=2', 'rerank_k=3', 'k=10',
                             *sets], env=env(cache, **(more_env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def last_line(text:str) -> str: return [l for l in text.replace('\r', '\n').splitlines() if l.strip()][-1]


def test_no_server_at_start_cli_one_line(tmp_path):
    t0 = time.time()
    p = run_cli(closed_url(), tmp_path/'run', tmp_path/'cache'); _, err = p.communicate(timeout=300)
    print(f'\nexit {p.returncode} after {time.time() - t0:.1f} s: {last_line(err)}')
    assert p.returncode == 2 and 'Traceback' not in err
    assert last_line(err).startswith('r3covr run: error: no model server answers at http://127.0.0.1:')
    assert not list((tmp_path/'run').glob('generations-*.jsonl'))


def lines(out, stage): return sum(len(read_jsonl(f)) for f in out.glob(f'{stage}-*.jsonl'))


def test_server_killed_mid_run_stops_then_resumes(tmp_path):
    "Kill the server once generations are on disk: exit 2, one line; restart, rerun: each query once per stage file."
    out, cache = tmp_path/'run', tmp_path/'cache'
    with LocalServer(SMOL) as srv:
        p, t0 = run_cli(srv.url, out, cache), time.time()
        while p.poll() is None and lines(out, 'generations') < 2 and time.time() - t0 < 600: time.sleep(0.05)
        assert p.poll() is None, 'the run ended before the server was killed'
        srv.kill(); t_kill = time.time()
        _, err = p.communicate(timeout=120)
        print(f'\nkilled after {lines(out, "generations")} generations; '
              f'the run stopped {time.time() - t_kill:.1f} s later, '
              f'exit {p.returncode}: {last_line(err)}')
        assert p.returncode == 2 and 'Traceback' not in err
        assert last_line(err).startswith(f'r3covr run: error: {srv.url}/chat/completions ')
        before = lines(out, 'generations')
        srv.start()                                                   # the same port and model name: the same keys
        t0 = time.time(); p = run_cli(srv.url, out, cache); o, err = p.communicate(timeout=900)
        print(f'rerun: exit {p.returncode} in {time.time() - t0:.1f} s')
        assert p.returncode == 0, err[-3000:]
    cfg = json.loads((out/'config.json').read_text())
    assert cfg['weights']['vlm'] == {'name': SMOL, 'source': 'served', 'served_model': SMOL, 'owned_by': 'me'}
    for stage in ('generations', 'descriptions', 'judge'):
        files = list(out.glob(f'{stage}-*.jsonl'))
        ids = collections.Counter(r['id'] for r in read_jsonl(files[0]))
        assert len(files) == 1 and len(ids) == 6 and set(ids.values()) == {1}, (stage, files, ids)
    assert lines(out, 'generations') == 6 and before >= 2
    assert json.loads((out/'metrics.json').read_text())['n_errors'] == 0


def judge_chat(): return judge_prompt('make it red', 'a red car', VideoPart(caption='a blue car', video_id='vid-42'))


def test_slow_answers_time_out_naming_the_query():
    with StubServer(lambda path, body: (200, chat_completion('Yes', [('Yes', -0.1)]), 3.0)) as stub:
        vlm, t0 = OpenAIVLM(base_url=stub.url, timeout=0.3, retries=1), time.time()
        with pytest.raises(ServiceError) as e: vlm.score([judge_chat()])
    msg = str(e.value)
    assert 'did not answer within 0.3 s (2 tries)' in msg and 'vid-42' in msg and '\n' not in msg, msg
    assert time.time() - t0 < 3


MALFORMED = {   # answer of /chat/completions -> what the error must say
    'not json': ((200, b'<html>oops</html>'), 'not JSON'),
    'no choices': ((200, {'object': 'chat.completion'}), 'malformed answer: no choices[0]'),
    'no logprobs (transformers serve)': ((200, chat_completion('No')), 'no log-probabilities'),
    'entries without logprob': ((200, {'choices': [{'logprobs': {'content': [{'top_logprobs': [{'token': 'No'}]}]}}]}),
                                'no choices[0].logprobs.content[0].top_logprobs[0].logprob (a finite number)'),
    'server error, retried': ((500, {'error': {'message': 'boom\nTraceback (most recent call last): ...'}}),
                              'HTTP 500: boom (3 tries)'),
    'no such model': ((404, {'detail': 'Not Found'}), 'HTTP 404: Not Found'),
}


@pytest.mark.parametrize('case', MALFORMED)
def test_malformed_answers_are_one_line_service_errors(case):
    answer, says = MALFORMED[case]
    with StubServer(lambda path, body: answer) as stub:
        vlm = OpenAIVLM(base_url=stub.url, retries=2)
        with pytest.raises(ServiceError) as e: vlm.score([judge_chat()])
    msg = str(e.value)
    assert says in msg and 'vid-42' in msg and '\n' not in msg and 'Traceback' not in msg, msg
    assert len(stub.requests) == 1 + (3 if answer[0] >= 500 else 1)     # /models, then the request (and its retries)


def test_a_refused_prompt_is_the_querys_failure_not_the_servers():
    "HTTP 400 (a prompt over the context length, say): an R3Error the run records for the query, not a ServiceError."
    too_long = (400, {'error': {'message': "This model's maximum context length is 512 tokens"}})
    with StubServer(lambda path, body: too_long) as stub:
        with pytest.raises(R3Error) as e: OpenAIVLM(base_url=stub.url).generate([judge_chat()])
    assert not isinstance(e.value, ServiceError)
    assert 'maximum context length' in str(e.value) and 'vid-42' in str(e.value)


def test_models_listing_checked():
    with StubServer(lambda *a: (200, {}), models=['other/model']) as stub:
        with pytest.raises(ServiceError, match="serves other/model, not 'HuggingFaceTB/SmolLM2-135M-Instruct'"):
            OpenAIVLM(SMOL, base_url=stub.url)
        assert OpenAIVLM(base_url=stub.url).name == 'other/model'


def test_serve_prints_the_url_and_stops_on_sigterm(tmp_path):
    "`r3covr serve`: the URL on stdout, a server that answers there, a clean stop on SIGTERM."
    port = free_port()
    cli = 'import sys; from r3covr.cli import main; sys.exit(main(sys.argv[1:]))'
    p = subprocess.Popen([sys.executable, '-c', cli, 'serve', '--preset', 'cpu', '--port', str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(tmp_path/'cache'))
    try:
        ready, _, _ = select.select([p.stdout], [], [], 120)
        first = p.stdout.readline() if ready else ''
        url = f'http://127.0.0.1:{port}/v1'
        assert first.startswith(f'serving {SMOL} at {url}'), (first, p.stderr.read() if p.poll() is not None else '')
        assert call(url + '/models')['data'][0]['id'] == SMOL
        p.send_signal(signal.SIGTERM); rc = p.wait(20)
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert rc == 0, p.stderr.read()[-2000:]
    with pytest.raises(ServiceError): OpenAIVLM(base_url=url)         # the server went with it


# ---------------------------------------------------------------- issue 22: keys stay home

KEY = 'sk-r3-test-secret'


def completion(path, body):
    "A stub's answer: a judge's when log-probabilities are asked (yes likelier), else a description."
    if body and body.get('logprobs'): return 200, chat_completion('Yes', [('Yes', -0.3), ('No', -1.5)])
    return 200, chat_completion('a red car on a wet road')


def auth(stub): return [h.get('Authorization') for _, _, h in stub.requests]


def test_no_default_key_variable(monkeypatch):
    "An OpenAI key in the environment is not sent anywhere unless the user names its variable."
    monkeypatch.setenv('OPENAI_API_KEY', KEY)
    with StubServer(completion, models=[SMOL]) as stub:
        create_vlm('cpu-served', base_url=stub.url).generate([judge_chat()])
        OpenAIVLM.weights_of(base_url=stub.url)
    assert auth(stub) == [None] * 3


def test_a_named_key_goes_to_its_server(monkeypatch):
    monkeypatch.setenv('R3COVR_API_KEY', KEY)
    with StubServer(completion) as stub:
        OpenAIVLM(base_url=stub.url, api_key_env='R3COVR_API_KEY').generate([judge_chat()])
    assert auth(stub) == [f'Bearer {KEY}'] * 2


@pytest.mark.parametrize('url', ['http://gpu-host:8000/v1', 'http://10.1.2.3:8000/v1'])
def test_no_key_in_clear_text_to_another_machine(monkeypatch, url):
    "Plain http to a non-loopback host with a key: refused before anything is sent, naming the option."
    monkeypatch.setenv('R3COVR_API_KEY', KEY)
    t0 = time.time()
    for make in (lambda: OpenAIVLM(base_url=url, api_key_env='R3COVR_API_KEY'),
                 lambda: OpenAIVLM.weights_of(base_url=url, api_key_env='R3COVR_API_KEY')):
        with pytest.raises(ConfigError) as e: make()
        msg = str(e.value)
        assert 'vlm.allow_insecure_key=true' in msg and '$R3COVR_API_KEY' in msg and KEY not in msg, msg
    assert time.time() - t0 < 1                                  # no connection was tried


def test_no_key_in_clear_text_cli_one_line(tmp_path):
    p = run_cli('http://gpu-host:8000/v1', tmp_path/'run', tmp_path/'cache', sets=['vlm.api_key_env=R3COVR_API_KEY'],
                more_env={'R3COVR_API_KEY': KEY})
    o, err = p.communicate(timeout=300)
    assert p.returncode == 2 and 'Traceback' not in err and KEY not in o + err, err[-2000:]
    assert 'set vlm.allow_insecure_key=true' in last_line(err), last_line(err)


def test_key_dropped_on_a_redirect_to_another_origin(monkeypatch):
    "A 302 to another port: followed, as a GET, without the key."
    monkeypatch.setenv('R3COVR_API_KEY', KEY)
    with StubServer(completion) as there:
        moved = lambda path, body: (302, {}, {'Location': there.url + '/chat/completions'})
        with StubServer(moved) as here:
            texts = OpenAIVLM(base_url=here.url, api_key_env='R3COVR_API_KEY').generate([judge_chat()])
    assert texts == ['a red car on a wet road']
    assert auth(here) == [f'Bearer {KEY}'] * 2 and auth(there) == [None]


@pytest.mark.parametrize('status', [307, 308])
def test_a_redirect_that_would_carry_the_prompt_elsewhere_is_refused(monkeypatch, status):
    "307 and 308 keep the POST and its body (the prompt, frames): to another origin, refused in one line."
    monkeypatch.setenv('R3COVR_API_KEY', KEY)
    with StubServer(completion) as there:
        moved = lambda path, body: (status, {}, {'Location': there.url + '/chat/completions'})
        with StubServer(moved) as here:
            with pytest.raises(ServiceError) as e:
                OpenAIVLM(base_url=here.url, api_key_env='R3COVR_API_KEY').generate([judge_chat()])
    assert f'(HTTP {status}) to another server, http://127.0.0.1:' in str(e.value) and KEY not in str(e.value)
    assert there.requests == []


def test_key_kept_on_a_redirect_within_its_origin(monkeypatch):
    monkeypatch.setenv('R3COVR_API_KEY', KEY)
    answer = lambda path, body: (completion(path, body) if path.endswith('/moved') else
                                 (307, {}, {'Location': '/v1/moved'}))
    with StubServer(answer) as stub:
        texts = OpenAIVLM(base_url=stub.url, api_key_env='R3COVR_API_KEY').generate([judge_chat()])
    assert texts == ['a red car on a wet road'] and auth(stub) == [f'Bearer {KEY}'] * 3
    assert [path for path, _, _ in stub.requests] == ['/v1/models', '/v1/chat/completions', '/v1/moved']


@pytest.mark.parametrize('echo', [(401, {'error': {'message': f'Incorrect API key provided: {KEY}'}}),
                                  (200, {'choices': [{'message': KEY}]})])
def test_key_never_in_an_error(monkeypatch, echo):
    "A server that echoes the key (in an error, in a malformed answer): the message shows <key>."
    monkeypatch.setenv('R3COVR_API_KEY', KEY)
    with StubServer(lambda path, body: echo) as stub:
        vlm = OpenAIVLM(base_url=stub.url, api_key_env='R3COVR_API_KEY')
        with pytest.raises(ServiceError) as e: vlm.generate([judge_chat()])
    assert KEY not in str(e.value) and '<key>' in str(e.value), str(e.value)


def test_key_never_written_or_logged(tmp_path):
    "A whole run with a key: config.json names the variable; no file, no output holds the key."
    out, cache = tmp_path/'run', tmp_path/'cache'
    with StubServer(completion, models=[SMOL]) as stub:
        p = run_cli(stub.url, out, cache, n=4, sets=['vlm.api_key_env=R3COVR_API_KEY'],
                    more_env={'R3COVR_API_KEY': KEY})
        o, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert set(auth(stub)) == {f'Bearer {KEY}'} and len(stub.requests) > 4
    assert json.loads((out/'config.json').read_text())['vlm']['api_key_env'] == 'R3COVR_API_KEY'
    holding = [f.relative_to(tmp_path) for f in tmp_path.rglob('*') if f.is_file() and KEY.encode() in f.read_bytes()]
    assert holding == [] and KEY not in o + err


# ---------------------------------------------------------------- issue 22: any server answer

BAD_SHAPES = {   # a judge's answer of the wrong shape -> what the one-line error says
    'logprobs: [1]': ({'choices': [{'logprobs': [1]}]}, 'top_logprobs (a list)'),
    'content: [1]': ({'choices': [{'logprobs': {'content': [1]}}]}, 'top_logprobs (a list)'),
    'logprob: "NaN"': (chat_completion('Yes', [('Yes', 'NaN'), ('No', -1.)]), 'logprob (a finite number)'),
    'logprob: NaN': (chat_completion('Yes', [('Yes', float('nan')), ('No', -1.)]), 'not JSON'),
    'logprob: Infinity': (chat_completion('Yes', [('Yes', -1.), ('No', float('-inf'))]), 'not JSON'),
    'logprob: true': (chat_completion('Yes', [('Yes', True), ('No', -1.)]), 'logprob (a finite number)'),
    'top_logprobs: "Yes"': ({'choices': [{'logprobs': {'content': [{'top_logprobs': 'Yes'}]}}]}, '(a list)'),
    'token: 1': (chat_completion('Yes', [(1, -1.), ('No', -1.)]), 'token (a string)'),
    'logprob: 400 digits': (chat_completion('Yes', [('Yes', 10**400), ('No', -1.)]), 'logprob (a finite number)'),
}


@pytest.mark.parametrize('case', BAD_SHAPES)
def test_any_judge_answer_is_a_number_or_a_one_line_error(case):
    answer, says = BAD_SHAPES[case]
    data = json.dumps(answer).encode()                          # NaN and Infinity as JSON's non-standard literals
    with StubServer(lambda path, body: (200, data)) as stub:
        with pytest.raises(ServiceError) as e: OpenAIVLM(base_url=stub.url).score([judge_chat()])
    msg = str(e.value)
    assert says in msg and 'vid-42' in msg and '\n' not in msg, msg


@pytest.mark.parametrize('message', [{'content': ['a']}, {'content': {'text': 'a'}}, 'hello', None])
def test_any_generation_answer_is_text_or_a_one_line_error(message):
    with StubServer(lambda path, body: (200, {'choices': [{'message': message}]})) as stub:
        with pytest.raises(ServiceError, match=r'malformed answer: no choices\[0\]\.message'):
            OpenAIVLM(base_url=stub.url).generate([judge_chat()])


def test_a_models_listing_of_the_wrong_shape():
    with StubServer(completion, models=[5]) as stub:
        with pytest.raises(ServiceError, match=r'malformed answer: no data\[0\]\.id \(a string\)'):
            OpenAIVLM(base_url=stub.url)


def test_a_nan_server_stops_the_run_in_one_line(tmp_path):
    "Through `r3covr run`: a judge answering NaN is a one-line error (exit 2), not NaN scores in metrics.json."
    nan = json.dumps(chat_completion('Yes', [('Yes', float('nan')), ('No', -1.)])).encode()
    answer = lambda path, body: (200, nan) if body.get('logprobs') else completion(path, body)
    with StubServer(answer, models=[SMOL]) as stub:
        p = run_cli(stub.url, tmp_path/'run', tmp_path/'cache', n=4); _, err = p.communicate(timeout=600)
    assert p.returncode == 2 and 'Traceback' not in err, err[-3000:]
    assert 'not JSON' in last_line(err) and not (tmp_path/'run'/'metrics.json').exists(), last_line(err)


def test_answers_over_the_size_cap_are_refused():
    big = lambda n: lambda path, body: (200, chat_completion('x' * n))
    with StubServer(big(300_000)) as stub:
        vlm = OpenAIVLM(base_url=stub.url, max_answer_bytes=100_000, retries=2)
        with pytest.raises(ServiceError, match='more than the 100,000 bytes allowed'): vlm.generate([judge_chat()])
        assert len(stub.requests) == 2                             # /models, one request: not retried
    with StubServer(big(17 * 2**20)) as stub:                      # the default cap: 16 MiB
        with pytest.raises(ServiceError, match='more than the 16,777,216 bytes allowed'):
            OpenAIVLM(base_url=stub.url).generate([judge_chat()])


def test_a_server_that_drips_is_cut_off_at_the_deadline():
    "A valid answer, 8 bytes every 0.1 s (~2 s in all): each read succeeds, the 0.5 s deadline still holds."
    whole = json.dumps(chat_completion('slow')).encode()
    drip = [whole[i:i + 8] for i in range(0, len(whole), 8)]
    with StubServer(lambda path, body: (200, drip, 0.1)) as stub:
        vlm, t0 = OpenAIVLM(base_url=stub.url, timeout=0.5, retries=0), time.time()
        with pytest.raises(ServiceError, match=r'did not answer within 0\.5 s \(1 tries\)'):
            vlm.generate([judge_chat()])
    assert time.time() - t0 < 1.5 and len(drip) * 0.1 > 1.5


def test_retry_after_is_obeyed():
    times = []
    def busy(path, body):
        times.append(time.monotonic())
        return (429, {'error': {'message': 'slow down'}}, {'Retry-After': '1'}) if len(times) == 1 else \
            completion(path, body)
    with StubServer(busy) as stub: texts = OpenAIVLM(base_url=stub.url, retries=1).generate([judge_chat()])
    assert texts == ['a red car on a wet road'] and len(times) == 2
    assert 0.95 <= times[1] - times[0] < 3, times


def test_backoff_is_jittered_exponential_and_capped():
    def pauses(fault, **kw):
        waits = []
        def fail(): raise fault
        with pytest.raises(ServiceError, match=r'\(4 tries\)'): with_retries(fail, 3, sleep=waits.append, **kw)
        return waits
    runs = [pauses(Retryable('busy'), backoff=1.) for _ in range(5)]
    assert all(b / 2 <= w <= b for r in runs for w, b in zip(r, (1, 2, 4))), runs
    assert len({tuple(r) for r in runs}) == 5                      # jittered
    assert pauses(Retryable('busy'), backoff=20., cap=30.)[2] == 30.
    assert pauses(Retryable('later', retry_after=2.)) == [2.] * 3
    assert pauses(Retryable('in an hour', retry_after=3600.), cap=30.) == [30.] * 3


# ---------------------------------------------------------------- issue 22: no orphan server

def alive(pid:int) -> bool:
    "Whether process `pid` runs (a zombie does not)."
    try: return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError): return False


def children(pid:int) -> list:
    "The live processes whose parent is `pid`."
    out = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try: state, ppid = stat.read_text().rsplit(')', 1)[1].split()[:2]
        except (OSError, IndexError, ValueError): continue
        if int(ppid) == pid and state != 'Z': out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='the guard is Linux prctl')
def test_serve_killed_with_sigkill_leaves_no_server(tmp_path):
    "`r3covr serve` killed with -9 (no handler runs): its llama.cpp server goes within seconds, the port is free."
    port, kids = free_port(), []
    cli = 'import sys; from r3covr.cli import main; sys.exit(main(sys.argv[1:]))'
    p = subprocess.Popen([sys.executable, '-c', cli, 'serve', '--preset', 'cpu', '--port', str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(tmp_path/'cache'))
    try:
        ready, _, _ = select.select([p.stdout], [], [], 120)
        assert ready and p.stdout.readline().startswith(f'serving {SMOL}'), p.stderr.read()[-2000:]
        kids = children(p.pid)
        assert len(kids) == 1 and alive(kids[0]), kids
        p.kill(); p.wait()
        t0 = time.time()
        while alive(kids[0]) and time.time() - t0 < 5: time.sleep(0.05)
        print(f'\nthe server went {time.time() - t0:.2f} s after its parent')
        assert not alive(kids[0])
        with pytest.raises(ServiceError): OpenAIVLM(base_url=f'http://127.0.0.1:{port}/v1')
    finally:
        if p.poll() is None: p.kill(); p.wait()
        for k in kids:
            if alive(k): os.kill(k, signal.SIGKILL)


# ---------------------------------------------------------------- issue 22: served frames resized

def stub_frames(stub) -> list:
    "The (width, height) of every frame the stub was sent, from images or video parts."
    sizes = []
    for _, body, _ in stub.requests:
        for part in (body or {}).get('messages', [{}])[-1].get('content', []):
            if not isinstance(part, dict) or part['type'] == 'text': continue
            url = part.get('image_url', part.get('video_url'))['url']
            sizes += [frame_size(j) for j in url.split(',', 1)[1].split(',')]
    return sizes


def frame_size(b64:str) -> tuple:
    from PIL import Image
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def test_served_frames_are_resized_to_the_pixel_budget():
    "r3covr-served sends 1080p frames at 597 x 336 (<= 448 x 448 pixels, aspect kept); max_pixels=None: native size."
    from r3covr.video import Frames
    frames = Frames(np.zeros((2, 1080, 1920, 3), np.uint8), (0, 1), (0., .04), 25., 2)
    chat = Chat(('Reference video: ', VideoPart(frames=frames, video_id='v1'), '\nIs it red?'))
    qwen = 'Qwen/Qwen3-VL-8B-Instruct'
    with StubServer(completion, models=[qwen]) as stub:
        create_vlm('r3covr-served', base_url=stub.url).generate([chat])
        resized = stub_frames(stub)
    with StubServer(completion, models=[qwen]) as stub:
        create_vlm('r3covr-served', base_url=stub.url, max_pixels=None, frames_as='images').generate([chat])
        native = stub_frames(stub)
    assert resized == [(597, 336)] * 2 and native == [(1920, 1080)] * 2, (resized, native)


def test_a_key_echoed_past_the_cut_of_an_error_message_is_redacted(monkeypatch):
    "A server that echoes the key where the error message is cut: no part of the key survives the cut."
    key = 'sk-' + 'k' * 60
    monkeypatch.setenv('R3COVR_TEST_KEY', key)
    echo = lambda path, body: (400, {'error': {'message': 'x' * 170 + ' bad key ' + key}})
    with StubServer(echo) as stub:
        vlm = OpenAIVLM(base_url=stub.url, api_key_env='R3COVR_TEST_KEY')
        with pytest.raises(R3Error) as e: vlm.generate([judge_chat()])
    assert 'sk-k' not in str(e.value) and 'kkkk' not in str(e.value), str(e.value)


@pytest.mark.parametrize('host,local', [('localhost', True), ('127.0.0.1', True), ('::1', True),
                                        ('gpu.localhost', False), ('localhost.example.com', False)])
def test_only_this_machine_counts_as_loopback(host, local):
    "A name under .localhost may resolve anywhere: only localhost itself and loopback addresses are this machine."
    from r3covr.served import is_loopback
    assert is_loopback(host) == local

"""Replies decoded together by `DecodeBatcher` are the replies `decode` gives each alone."""

import threading
import time

import pytest
import torch
from transformers import Qwen2ForCausalLM

import tiny
from blsp_emo.decoding.batching import DecodeBatcher
from blsp_emo.decoding.generation import GenerationOptions, decode, new_cache

STOP = frozenset({0})


@pytest.fixture(scope="module")
def llm():
    torch.manual_seed(0)
    return Qwen2ForCausalLM(tiny.llm_config(64)).eval()


def _prefill(llm, ids):
    cache = new_cache(llm)
    with torch.inference_mode():
        logits = llm(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True).logits[:, -1]
    return logits, cache


PROMPTS = [[5, 9, 3], [7] * 11, [2, 4, 6, 8, 10, 12, 14], [33, 1]]
OPTIONS = [
    GenerationOptions(greedy=True, max_new_tokens=12, min_new_tokens=12),
    GenerationOptions(max_new_tokens=9, temperature=1.0, top_p=0.9),
    GenerationOptions(greedy=True, max_new_tokens=5),
    GenerationOptions(max_new_tokens=20, temperature=0.7, top_p=1.0, min_new_tokens=20),
]


def _alone(llm, ids, options, seed):
    logits, cache = _prefill(llm, ids)
    tokens = list(decode(llm, logits, cache, options, STOP, seed))
    return tokens, cache


def _together(batcher, llm, runs):
    """Start every reply, then read them in lockstep from their own threads."""
    out = [None] * len(runs)
    start = threading.Barrier(len(runs))

    def run(i, ids, options, seed):
        logits, cache = _prefill(llm, ids)
        start.wait()
        out[i] = (list(batcher.decode(logits, cache, options, STOP, seed)), cache)

    threads = [threading.Thread(target=run, args=(i, *r)) for i, r in enumerate(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_replies_decoded_together_equal_each_alone_and_leave_the_same_cache(llm):
    runs = [(ids, options, seed) for seed, (ids, options) in enumerate(zip(PROMPTS, OPTIONS))]
    batcher = DecodeBatcher(llm)
    together = _together(batcher, llm, runs)
    assert batcher.largest_batch > 1  # they really shared forwards
    for (ids, options, seed), (tokens, cache) in zip(runs, together):
        want, want_cache = _alone(llm, ids, options, seed)
        assert tokens == want
        assert cache.get_seq_length() == len(ids) + len(want) == want_cache.get_seq_length()
        for got, ref in zip(cache.layers, want_cache.layers):
            torch.testing.assert_close(got.keys, ref.keys, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got.values, ref.values, rtol=1e-4, atol=1e-5)
    batcher.close()


def test_a_reply_alone_is_exactly_decode(llm):
    batcher = DecodeBatcher(llm)
    options = GenerationOptions(max_new_tokens=15, temperature=1.0, top_p=1.0)
    logits, cache = _prefill(llm, PROMPTS[1])
    got = list(batcher.decode(logits, cache, options, STOP, 3))
    want, want_cache = _alone(llm, PROMPTS[1], options, 3)
    assert got == want and batcher.largest_batch == 1
    assert all(torch.equal(a.keys, b.keys) for a, b in zip(cache.layers, want_cache.layers))
    batcher.close()


def test_an_abandoned_reply_leaves_and_the_others_go_on(llm):
    batcher = DecodeBatcher(llm)
    long = GenerationOptions(greedy=True, max_new_tokens=30, min_new_tokens=30)
    logits, cache = _prefill(llm, PROMPTS[0])
    stream = batcher.decode(logits, cache, long, STOP, 0)
    assert isinstance(next(stream), int)  # picked from the prefill's logits: no forward yet
    stream.close()  # a visitor who left; alone, it decodes in this thread, so nothing steps it any more
    assert cache.get_seq_length() == len(PROMPTS[0])
    tokens, _ = _together(batcher, llm, [(PROMPTS[2], long, 1)])[0]
    assert tokens == _alone(llm, PROMPTS[2], long, 1)[0]
    # The abandoned reply was gone before the next one came: that one decoded alone, in its caller's thread.
    assert batcher.largest_batch == 1 and batcher._worker is None
    assert cache.get_seq_length() == len(PROMPTS[0])
    batcher.close()


def _wait_until(condition, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {seconds:g} s for {what}"
        time.sleep(0.001)


def test_a_reply_abandoned_in_the_worker_leaves_at_its_next_step(llm):
    """The worker does not wait for readers (tokens queue up ahead of them), so here each of its forwards
    waits for a permit: the test knows which forward is in flight when the visitor leaves."""
    batcher = DecodeBatcher(llm)
    sizes, gate, step = [], threading.Semaphore(0), batcher.step

    def gated(tokens, *args):
        if threading.current_thread().name == "decode-batcher":
            assert gate.acquire(timeout=60), "no permit came for this forward"
        sizes.append(len(tokens))
        return step(tokens, *args)

    batcher.step = gated
    long = GenerationOptions(greedy=True, max_new_tokens=30, min_new_tokens=30)
    logits, cache = _prefill(llm, PROMPTS[0])
    leaving = batcher.decode(logits, cache, long, STOP, 0)
    staying = batcher.decode(*_prefill(llm, PROMPTS[2]), long, STOP, 1)
    heard = [next(leaving)]  # alone, in this thread
    kept = [next(staying)]  # the worker picked it and now waits in its first forward, [staying]
    joining = threading.Thread(target=lambda: heard.append(next(leaving)))  # steps, then hands itself over
    joining.start()

    def handed_over():
        with batcher._lock:  # the hand-over puts it in the worker's queue under the lock
            return batcher._queued == 2

    _wait_until(handed_over, "the first reply to join the worker")
    gate.release()  # the worker's first forward; its next one steps both replies and waits
    joining.join(timeout=60)
    assert not joining.is_alive() and len(heard) == 2
    leaving.close()  # the visitor leaves while the forward of [staying, leaving] waits
    gate.release(100)  # every later forward
    kept += list(staying)
    assert kept == _alone(llm, PROMPTS[2], long, 1)[0]
    # The forward in flight when it left fed its second token, then it was dropped: its cache holds the
    # prompt and the two tokens it heard, and no later forward stepped it.
    assert cache.get_seq_length() == len(PROMPTS[0]) + len(heard)
    assert sizes.count(2) == 1 and sizes[-1] == 1
    batcher.close()


def test_a_closed_batcher_serves_again_with_a_new_worker(llm):
    batcher = DecodeBatcher(llm)
    options = GenerationOptions(greedy=True, max_new_tokens=3, min_new_tokens=3)
    first = list(batcher.decode(*_prefill(llm, PROMPTS[0]), options, STOP, 0))
    batcher.close()
    again = list(batcher.decode(*_prefill(llm, PROMPTS[0]), options, STOP, 0))
    assert first == again == _alone(llm, PROMPTS[0], options, 0)[0]
    batcher.close()
    batcher.close()  # closing twice is harmless


def test_a_failing_forward_reaches_the_waiting_reply_and_the_worker_survives(llm):
    batcher = DecodeBatcher(llm)
    options = GenerationOptions(greedy=True, max_new_tokens=4, min_new_tokens=4)
    _, cache = _prefill(llm, PROMPTS[0])
    beyond = torch.zeros((1, 80))
    beyond[0, 70] = 1.0  # picks token 70, which the 64-token LLM has no embedding for
    with pytest.raises(RuntimeError, match="decoding failed"):
        list(batcher.decode(beyond, cache, options, STOP, 0))
    tokens, _ = _together(batcher, llm, [(PROMPTS[3], options, 2)])[0]
    assert tokens == _alone(llm, PROMPTS[3], options, 2)[0]
    batcher.close()


def test_at_most_max_batch_replies_share_a_forward(llm):
    batcher = DecodeBatcher(llm, max_batch=2)
    options = GenerationOptions(greedy=True, max_new_tokens=6, min_new_tokens=6)
    runs = [(PROMPTS[i % 4], options, i) for i in range(5)]
    together = _together(batcher, llm, runs)
    assert batcher.largest_batch == 2
    assert [t for t, _ in together] == [_alone(llm, *r)[0] for r in runs]
    batcher.close()
    with pytest.raises(ValueError, match="max_batch"):
        DecodeBatcher(llm, max_batch=0)


def _stepping_threads(batcher):
    """Record the thread of every forward the batcher's step runs."""
    threads, step = [], batcher.step

    def recorded(*args):
        threads.append(threading.current_thread())
        return step(*args)

    batcher.step = recorded
    return threads


def test_a_reply_alone_decodes_in_its_callers_thread(llm):
    batcher = DecodeBatcher(llm)
    threads = _stepping_threads(batcher)
    options = GenerationOptions(greedy=True, max_new_tokens=8, min_new_tokens=8)
    got = list(batcher.decode(*_prefill(llm, PROMPTS[0]), options, STOP, 0))
    assert got == _alone(llm, PROMPTS[0], options, 0)[0]
    assert threads and set(threads) == {threading.current_thread()}
    assert batcher._worker is None  # no hand-over to another thread for a lone reply
    batcher.close()


def test_a_reply_decoding_alone_joins_the_batch_when_another_comes(llm):
    batcher = DecodeBatcher(llm)
    threads = _stepping_threads(batcher)
    short = GenerationOptions(greedy=True, max_new_tokens=12, min_new_tokens=12)
    long = GenerationOptions(max_new_tokens=400, min_new_tokens=400, temperature=1.0, top_p=1.0)
    logits, cache = _prefill(llm, PROMPTS[0])
    first = batcher.decode(logits, cache, short, STOP, 0)
    tokens = [next(first), next(first)]  # decoding alone, in this thread
    second = {}
    other = threading.Thread(
        target=lambda: second.update(tokens=list(batcher.decode(*_prefill(llm, PROMPTS[2]), long, STOP, 1)))
    )
    other.start()
    _wait_until(lambda: batcher._queued > 0, "the second reply to reach the worker")
    tokens += list(first)  # the first hands itself over after its next step, then reads the worker
    other.join()
    want, want_cache = _alone(llm, PROMPTS[0], short, 0)
    assert tokens == want and second["tokens"] == _alone(llm, PROMPTS[2], long, 1)[0]
    assert batcher.largest_batch == 2 and len(set(threads)) == 2
    for got, ref in zip(cache.layers, want_cache.layers):
        torch.testing.assert_close(got.keys, ref.keys, rtol=1e-4, atol=1e-5)
    batcher.close()


def test_a_reply_with_no_token_left_when_it_reaches_the_worker_still_ends(llm):
    """A lone reply hands itself over after stepping its last token when another comes; the worker
    then has nothing to pick for it and must still end it (it once left it waiting forever)."""
    batcher = DecodeBatcher(llm)
    two = GenerationOptions(greedy=True, max_new_tokens=2, min_new_tokens=2)
    long = GenerationOptions(greedy=True, max_new_tokens=400, min_new_tokens=400)
    first = batcher.decode(*_prefill(llm, PROMPTS[0]), two, STOP, 0)
    tokens = [next(first), next(first)]  # both tokens out; the second is not stepped yet
    other = threading.Thread(target=lambda: list(batcher.decode(*_prefill(llm, PROMPTS[2]), long, STOP, 1)))
    other.start()
    _wait_until(lambda: batcher._queued > 0, "the second reply to reach the worker")
    rest = []
    reader = threading.Thread(target=lambda: rest.append(list(first)), daemon=True)  # steps, hands over, reads
    reader.start()
    reader.join(timeout=30)
    other.join()
    assert not reader.is_alive() and rest == [[]]
    assert tokens == _alone(llm, PROMPTS[0], two, 0)[0]
    batcher.close()

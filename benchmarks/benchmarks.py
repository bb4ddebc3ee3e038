"""asv suite: the whole engine, measured through the same code path as ``lumi bench``.

One asv parameter per shipped config (``configs/*.yaml``, the file stem), and only the
first point of each config's cross product (llama-bench style axes would multiply the
history's series). Every timed call is a real ``lumi.generate`` generation on the seeded
benchmark prompt (``runner.prompt_ids``), greedy with EOS ignored, BLAS threads held by
``runner.thread_limit`` -- exactly what ``Session.repetition`` runs for ``lumi bench``.

Benchmarks (larger is worse for all of them, as asv assumes):

- ``Decode.time_decode_s_per_token``    seconds per single-token decode step
- ``Prefill.time_prefill_s_per_token``  seconds per prompt token (prefill + first sample,
                                         the same span as ``lumi bench``'s ``prefill_s``)
- ``TimeToFirstToken.time_ttft``        seconds from ``generate()`` to the first token
- ``Memory.peakmem_generate``           peak resident set of a process that loaded the
                                         model and ran one generation

Configs this lumi or this machine cannot run (``check_supported`` raises ``ConfigError``:
a key an older commit does not know, numba kernels without numba), GPU configs on a
machine without a GPU, and commits that predate ``lumi.bench`` are skipped
(``NotImplementedError`` in setup, which asv records as "skipped", not as a failure).

Routine runs select the small configs with ``--bench``, e.g.
``asv run --bench '\\((?:stories15M-fp32|stories110M-fp32|stories260K-fp32|default)\\)'``
(see tox.ini); the big ones stay in the suite for nightly/local runs.
"""

from __future__ import annotations

import time
from pathlib import Path

# Guarded imports (scipy's ``safe_import`` style): asv imports this file in environments
# built from old commits too, where ``lumi.bench`` (or one of its pieces) does not exist
# yet. The suite must still import there; each benchmark then skips in ``setup``.
try:
    from lumi.bench.config import ConfigError, load_config
    from lumi.bench.runner import Session, prompt_ids, thread_limit
    from lumi.generate import generate
except ImportError as e:  # pragma: no cover - exercised by asv on old commits
    _IMPORT_ERROR: Exception | None = e
else:
    _IMPORT_ERROR = None
try:  # newer than the rest: older commits measure without the answer check
    from lumi.bench.runner import check_reference
except ImportError:  # pragma: no cover
    check_reference = None


class WrongAnswer(RuntimeError):
    """The engine's greedy ids miss the config's reference: asv records a failure, and lumi regress fails on it."""

# The parameter list comes from the files in the repository's configs/ (this checkout's,
# so old commits are measured against today's configs), never from the hardware: a
# config that cannot run here is skipped, not left out, so every machine reports the
# same parameter set.
_REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CONFIG_NAMES = sorted(p.stem for p in _REPO_CONFIGS.glob("*.yaml"))


def _has_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device
        return False


# Module-level cache: the model is loaded once per benchmark process, not in every
# setup (asv re-runs setup before every sample). A config that cannot run is cached as
# its reason, so later setups skip at once.
_CACHE: dict[str, object] = {}


def _session(name: str):
    """(session, point) for a config, or raise NotImplementedError saying why it is skipped."""
    if name not in _CACHE:
        _CACHE[name] = _load(name)
    entry = _CACHE[name]
    if isinstance(entry, str):
        raise NotImplementedError(entry)
    if isinstance(entry, Exception):
        raise entry
    return entry


def _load(name: str):
    if _IMPORT_ERROR is not None:
        return f"this lumi has no benchmark API ({_IMPORT_ERROR})"
    try:
        cfg = load_config(_REPO_CONFIGS / f"{name}.yaml")
        if cfg.backend == "cupy" and not _has_gpu():
            return f"{name}: needs a GPU (backend cupy), none found"
        session = Session(cfg)  # check_supported() first: raises ConfigError before loading
    except ConfigError as e:
        return f"not runnable here: {e}"
    reference = check_reference(session) if check_reference is not None else None
    if reference is not None and not reference["valid"]:  # speed never at the cost of the answer
        return WrongAnswer(f"{name}: only {reference['agreed']} of {reference['prefix']} greedy ids agree with "
                           f"{reference['file']}")
    return session, cfg.points()[0]


class _Suite:
    params = [CONFIG_NAMES]
    param_names = ["config"]

    # Fixed so that editing this file (comments, refactors) does not orphan the history;
    # bump it only when what is measured changes.
    version = "lumi-bench-1"
    # Sampling: asv runs `rounds` processes per benchmark (interleaved across commits by
    # `asv continuous`/`--interleave-rounds`); each process takes one warm-up sample
    # (warmup_time is tiny, and asv's warm-up loop runs at least one call and stops once
    # it has passed), then `repeat` timed samples, each one call (`number = 1`) after a
    # fresh setup. 6 x 2 = 12 samples per commit: Mann-Whitney U needs >= 6 per side
    # before any p-value can fall below asv's threshold of 0.002. Many short rounds rather
    # than few long ones: samples of one process move together (on the 2-core box a
    # process's stories260K prefill ran at either ~47 or ~100 us/token, all its samples
    # alike), so the test's samples are only as independent as the processes they came
    # from, and interleaving is only as fine as the rounds.
    number = 1
    repeat = 2
    rounds = 6
    warmup_time = 0.001
    # Per process (one round); tinyllama-1.1B fp32 takes minutes, everything routine seconds.
    timeout = 900

    def _prepare(self, name):
        self.session, self.point = _session(name)
        self.ids = prompt_ids(self.point.prompt_tokens, self.session.model.config.vocab_size)
        self._threads = thread_limit(self.point.threads)
        self._threads.__enter__()
        self._tokens = None

    def _start(self):
        """A fresh generation, exactly as Session.repetition starts one (not yet iterated)."""
        gen = generate(self.session.model, self.ids, self.point.gen_tokens, ignore_eos=True)
        self._tokens = iter(gen)
        return self._tokens

    def teardown(self, name):
        if getattr(self, "_tokens", None) is not None:
            self._tokens.close()
            self._tokens = None
        if getattr(self, "_threads", None) is not None:
            self._threads.__exit__(None, None, None)
            self._threads = None

    # asv computes a sample as (timer() after - timer() before) / number with number = 1.
    # A per-token metric therefore needs a timer in per-token units: perf_counter()
    # divided by the token count of the timed span (set in setup, constant per config).
    _per = 1

    def timer(self):
        return time.perf_counter() / self._per


class Decode(_Suite):
    """Decode sec/token: setup prefills and takes the first token (untimed); the timed call
    is pure decode, the gen_tokens - 1 single-token steps that lumi bench divides by."""

    def setup(self, name):
        self._prepare(name)
        self._per = self.point.gen_tokens - 1
        if self._per < 1:
            raise NotImplementedError(f"{name}: gen_tokens = 1 has no decode step")
        next(self._start())  # prefill + first sample, not timed

    def time_decode_s_per_token(self, name):
        for _ in self._tokens:
            pass


class Prefill(_Suite):
    """Prefill sec/token: the timed call is the first step of a fresh generation (the
    prompt's forward pass and the first sample, the span of lumi bench's prefill_s),
    divided by the prompt tokens."""

    def setup(self, name):
        self._prepare(name)
        self._per = self.point.prompt_tokens
        self._start()

    def time_prefill_s_per_token(self, name):
        next(self._tokens)


class TimeToFirstToken(_Suite):
    """Time to first token in seconds: generate() (argument checks) plus prefill and the
    first sample, the span of Session.repetition's ttft_s."""

    def setup(self, name):
        self._prepare(name)

    def time_ttft(self, name):
        self._tokens = iter(generate(self.session.model, self.ids, self.point.gen_tokens, ignore_eos=True))
        next(self._tokens)


class Memory(_Suite):
    """Peak resident set (bytes) of the benchmark process after loading the model and
    running one whole generation through Session.repetition."""

    def setup(self, name):
        self._prepare(name)

    def peakmem_generate(self, name):
        self.session.repetition(self.point)

"""The ``lumi`` command line.

    lumi generate MODEL (--prompt TEXT | --prompt-file PATH|- | --prompt-ids 1,2,3) [-n N] ...

Errors a user can fix print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap

from . import __version__
from .chat import TEMPLATES
from .errors import LumiError, UsageError
from .backends.numba import KERNELS
from .storage import STORAGE_DTYPES

EXIT_INVALID = 1  # lumi bench: a result whose greedy ids miss its reference
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line on stderr and exit status 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _kernels_option(p) -> None:
    p.add_argument("--kernels", default="auto", choices=["auto", *KERNELS],
                   help="auto (default): numba for fp16 weights when numba is installed, else numpy; "
                        "numpy: the pure NumPy path; numba: fused one-pass kernels for decode's "
                        "products (16-bit and int8 weights read once, no float32 copy; needs lumi[fused])")


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text (or token ids) from a prompt",
                       description="Generate from a llama2.c .bin checkpoint, a Hugging Face model directory "
                                   "(config.json + safetensors), a GGUF file, or synthetic:PRESET[?seed=N].")
    p.add_argument("model", metavar="MODEL", help="a .bin, a Hugging Face directory, a .gguf, or "
                   "synthetic:PRESET[?seed=N] (no download)")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.model (sentencepiece), tokenizer.bin (llama2.c), "
                   "tokenizer.json (lumi[tokenizers]) or a .gguf; default: a GGUF file's own vocabulary, or one "
                   "beside the checkpoint whose vocabulary matches")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="prompt text (needs a tokenizer); BOS is prepended")
    src.add_argument("--prompt-file", metavar="PATH", help="read the prompt text from a file, or - for stdin")
    src.add_argument("--prompt-ids", metavar="IDS", help="comma-separated token ids, used as given (e.g. 1 for BOS)")
    p.add_argument("-n", "--max-new-tokens", type=int, default=256, metavar="N", help="tokens to generate (default 256)")
    p.add_argument("--max-seq-len", type=int, metavar="N", help="cap the context (and the KV cache) below the model's")
    p.add_argument("--dtype", default="fp32", choices=list(STORAGE_DTYPES),
                   help="weight storage: fp32 (default), fp16/bf16 (16 bits, widened block by block), "
                        "int8 (blocks of 32 with float32 scales); compute is float32 either way")
    p.add_argument("--threads", type=int, metavar="N", help="BLAS threads (threadpoolctl); default: the library's own")
    _kernels_option(p)
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"], help="numpy (default) or cupy (a GPU)")
    p.add_argument("--gpu-layers", type=int, default=-1, metavar="N",
                   help="with --backend cupy: the first N layers on the GPU (-1, the default: all, with the "
                        "embedding and classifier; 0: none)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (default 1: off)")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely tokens (default 0: off)")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="seed of the sampler's random generator")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.set_defaults(run=_run_generate)


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise UsageError("--prompt-ids", f"expected comma-separated integers, got {text!r}") from None


def _resolve_tokenizer(args, model):
    """The tokenizer to use, or None (ids only); warnings go to stderr."""
    from .tokenizer import check_vocab, find_tokenizer, load_tokenizer

    vocab = model.config.vocab_size
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
        check_vocab(tok, vocab)
        return tok
    if args.model.startswith("synthetic:"):
        return None
    tok, warning = find_tokenizer(args.model, vocab)
    if warning:
        print(f"lumi: warning: {warning}", file=sys.stderr)
    return tok


def _prompt_ids(args, tokenizer) -> list[int]:
    if args.prompt_ids is not None:
        return _parse_ids(args.prompt_ids)
    option = "--prompt" if args.prompt is not None else "--prompt-file"
    if tokenizer is None:
        why = "synthetic models have no tokenizer" if args.model.startswith("synthetic:") else \
            "no tokenizer matching the model's vocabulary was found beside it"
        raise UsageError(option, f"text needs a tokenizer: {why}; pass --tokenizer PATH, or give --prompt-ids")
    if args.prompt is not None:
        text = args.prompt
    elif args.prompt_file == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError("--prompt-file", f"{args.prompt_file}: {e.strerror if isinstance(e, OSError) else e}") from None
    return tokenizer.encode(text, bos=True)


def _run_generate(args) -> int:
    from .backends.cpu import thread_limit

    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads", f"must be >= 1, got {args.threads}")
    with thread_limit(args.threads):
        return _generate(args)


def _generate(args) -> int:
    from . import load_model
    from .generate import generate
    from .sampler import SamplingParams

    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    model = load_model(args.model, max_seq_len=args.max_seq_len, dtype=args.dtype, backend=args.backend,
                       gpu_layers=args.gpu_layers, kernels=args.kernels)
    tokenizer = _resolve_tokenizer(args, model)
    gen = generate(model, _prompt_ids(args, tokenizer), args.max_new_tokens, sampling=sampling,
                   seed=args.seed, ignore_eos=args.ignore_eos)
    out = sys.stdout
    stream = None
    if tokenizer is not None:  # primed with the prompt, so the first new word keeps its leading space
        stream = tokenizer.stream()
        for token in gen.prompt_ids:
            stream.push(token)
        stream.flush()
    pieces = []
    interrupted = False
    try:
        for i, token in enumerate(gen):
            piece = stream.push(token) if stream else f"{' ' if i else ''}{token}"
            pieces.append(piece)
            if not args.json:
                out.write(piece)
                out.flush()
    except KeyboardInterrupt:
        interrupted = True
    tail = stream.flush() if stream else ""
    if args.json:
        result = {"prompt_ids": gen.prompt_ids, "generated_ids": gen.generated_ids}
        if tokenizer is not None:
            result["text"] = "".join(pieces) + tail
        result["finish_reason"] = "interrupted" if interrupted else gen.finish_reason
        result["stats"] = gen.stats.as_dict()
        out.write(json.dumps(result) + "\n")
    else:
        out.write(tail + "\n")
        out.flush()
        print(("interrupted: " if interrupted else "") + gen.stats.summary(), file=sys.stderr)
    out.flush()
    return EXIT_INTERRUPTED if interrupted else 0


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model, keeping the KV cache across turns",
                       description="Interactive chat: one user turn per line on stdin (EOF ends the chat).")
    p.add_argument("model", metavar="MODEL", help="checkpoint path, or synthetic:PRESET[?seed=N]")
    p.add_argument("--template", required=True, choices=sorted(TEMPLATES),
                   help="chat format: llama2 (Llama 2 chat), llama3 (Llama 3 instruct), tinyllama (TinyLlama chat), "
                        "chatml (Qwen2 instruct)")
    p.add_argument("--tokenizer", metavar="PATH", help="default: the one beside the checkpoint")
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    p.add_argument("-n", "--max-new-tokens", type=int, default=512, metavar="N", help="longest reply (default 512)")
    p.add_argument("--max-seq-len", type=int, metavar="N", help="cap the context (and the KV cache)")
    p.add_argument("--dtype", default="fp32", choices=list(STORAGE_DTYPES), help="weight storage")
    _kernels_option(p)
    p.add_argument("--temperature", type=float, default=0.7, metavar="T", help="default 0.7; 0 = greedy")
    p.add_argument("--top-p", type=float, default=0.9, metavar="P", help="default 0.9")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="default 0: off")
    p.add_argument("--seed", type=int, default=None, metavar="S")
    p.set_defaults(run=_run_chat)


def _run_chat(args) -> int:
    from . import load_model
    from .chat import ChatSession
    from .sampler import SamplingParams

    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    model = load_model(args.model, max_seq_len=args.max_seq_len, dtype=args.dtype, kernels=args.kernels)
    tokenizer = _resolve_tokenizer(args, model)
    if tokenizer is None:
        raise UsageError("--tokenizer", "chat needs a tokenizer matching the model's vocabulary")
    session = ChatSession(model, tokenizer, TEMPLATES[args.template], system=args.system, sampling=sampling,
                          seed=args.seed, max_new_tokens=args.max_new_tokens)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            break
        if not line:
            break
        if not line.strip():
            continue
        turn = session.reply(line.rstrip("\n"))
        stream = tokenizer.stream()
        try:
            for token in turn:
                if token not in session.stop_ids:
                    sys.stdout.write(stream.push(token))
                    sys.stdout.flush()
        except KeyboardInterrupt:  # stops this reply; the chat goes on
            pass
        sys.stdout.write(stream.flush() + "\n")
        sys.stdout.flush()
        print(f"[{turn.stats.summary()}; context {session.position}/{model.max_seq_len}]", file=sys.stderr)
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a model: architecture, parameters, bytes, memory a run needs",
                       description="Describe a checkpoint or synthetic:PRESET without running it.")
    p.add_argument("model", metavar="MODEL", help="checkpoint path, or synthetic:PRESET[?seed=N]")
    p.add_argument("--dtype", default="fp32", choices=list(STORAGE_DTYPES), help="storage to plan for")
    p.add_argument("--max-seq-len", type=int, metavar="N", help="context to plan the KV cache for")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    from .info import describe, render

    info = describe(args.model, args.dtype, args.max_seq_len)
    sys.stdout.write(json.dumps(info, indent=1) + "\n" if args.json else render(info))
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure configs from configs/*.yaml",
                       description="Run benchmark configs (default: the 'default' config), each in a fresh process.")
    p.add_argument("configs", nargs="*", metavar="CONFIG", help="a YAML file, or the name of a shipped config")
    fmt = p.add_mutually_exclusive_group()
    for name in ("json", "csv", "markdown"):
        fmt.add_argument(f"--{name}", dest="format", action="store_const", const=name, help=f"print {name}")
    p.add_argument("--output", "-o", metavar="FILE", help="write the result there (whole or not at all); "
                   "the table still goes to stdout")
    p.add_argument("--profile", action="store_true",
                   help="also time each decode step per op kind (matmul, attention, norm, rope, sampling, Python)")
    p.set_defaults(run=_run_bench, format="table")
    plain_help = p.format_help

    def format_help() -> str:  # the shipped configs are read only when help is asked for
        from .bench.config import TIERS, tier_configs

        lines = ["shipped configs, by tier (configs/*.yaml):"]
        for tier in TIERS:
            lines.append(f"  {tier + ':':9}" + " ".join(p.stem for p in tier_configs(tier)))
        return plain_help() + "\n" + "\n".join(textwrap.fill(line, 100, subsequent_indent=" " * 11)
                                              for line in lines) + "\n"

    p.format_help = format_help


def _run_bench(args) -> int:
    from .bench import report
    from .bench.config import load_config, resolve
    from .bench.env import environment, measure_bandwidth
    from .bench.runner import check_supported, run_config

    configs = [load_config(resolve(c)) for c in (args.configs or ["default"])]
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise UsageError("--output", f"no such directory for {args.output}")
    for cfg in configs:
        check_supported(cfg)
    progress = _Progress()
    doc = {"schema_version": report.SCHEMA_VERSION, "complete": False, "env": environment(), "bandwidth": {},
           "results": []}
    code = 0
    try:
        for threads in sorted({t for cfg in configs for t in cfg.threads}):
            progress(f"measuring GEMV bandwidth with {threads} thread(s)")
            doc["bandwidth"][str(threads)] = measure_bandwidth(threads)
        for i, cfg in enumerate(configs, 1):
            for result in run_config(cfg, lambda msg: progress(f"[{i}/{len(configs)}] {msg}"), args.profile):
                bandwidth = (result.get("device_copy_bytes_per_s")  # a GPU run: its own copy bandwidth
                             or doc["bandwidth"][str(result["threads"])]["gemv_bytes_per_s"])
                result["bandwidth_fraction"] = (
                    result["weight_bytes_per_token"] / result["decode_s_per_token"] / bandwidth)
                if "device_copy_bytes_per_s" not in result:  # the host's sgemm rate: a CPU prompt's floor
                    rate = doc["bandwidth"][str(result["threads"])]["sgemm_flops_per_s"]
                    result["prefill_sgemm_fraction"] = (
                        result["prefill_flops_per_token"] * result["prefill_tokens_per_s"] / rate)
                doc["results"].append(result)
        doc["complete"] = True
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        print("lumi: interrupted: reporting the configs that finished", file=sys.stderr)
    finally:
        progress.done()
    text = report.FORMATS[args.format](doc)
    if args.output:
        try:
            report.write_atomic(args.output, text)
        except OSError as e:
            raise UsageError("--output", f"cannot write {args.output}: {e.strerror}") from None
        if args.format != "table":
            text = report.table(doc)
    sys.stdout.write(text)
    invalid = [r["config"] for r in doc["results"] if not r.get("valid", True)]
    if invalid and not code:
        print(f"lumi: error: greedy ids differ from the reference for {', '.join(sorted(set(invalid)))}: "
              "those results are invalid", file=sys.stderr)
        code = EXIT_INVALID
    return code


def _add_regress(sub) -> None:
    from .bench import gate  # the CLI is the harness's entry point: its defaults are the gate's

    p = sub.add_parser(
        "regress", help="the regression gate: is HEAD slower, wrong or heavier than BASE?",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill("Measure two commits side by side (git worktrees under .lumi-regress/, a fresh process per "
                    "sample, rounds of base, head, head, base; at least 2 rounds, then until every metric is "
                    "decided or the budget is spent) and decide from the 95% Hodges-Lehmann interval of "
                    "head/base seconds per token (> 1: head is slower) against each config's tolerance (its YAML's, 0.10 when "
                    "unset). Beside "
                    "time: allocations, float64 operations and host reads per decode step, weight bytes per "
                    "storage kind, and the greedy ids. Needs git and nothing beyond lumi's own dependencies "
                    "(numba for a numba config). Or compare two asv result files (lumi[bench]).", 100),
        epilog="verdicts and exit statuses:\n"
               "  0  ok            every interval at or below 1 + tolerance, no counter grew\n"
               "  1  regressed     an interval wholly above 1 + tolerance\n"
               "  2  usage         bad input: an unknown commit, config or option\n"
               "  3  inconclusive  the budget ran out with an interval straddling 1 + tolerance (never a pass:\n"
               "                   the output says what budget would settle it)\n"
               "  4  counters      a deterministic counter grew from base to head\n"
               "  5  wrong         a config with reference ids: head's greedy ids differ from base's\n"
               "A gate over several configs exits with its most severe verdict (wrong, regressed, counters,\n"
               "inconclusive, ok). Two asv result files: 0 or 1, by median and a one-sided Mann-Whitney U test.")
    p.add_argument("base", metavar="BASE", help="a commit (or an asv result file: results/<machine>/<commit>-<env>.json)")
    p.add_argument("head", metavar="HEAD", help="a commit (or an asv result file)")
    p.add_argument("--config", dest="configs", action="append", metavar="NAME",
                   help="a config to gate (repeatable; a shipped name or a file; default: every config of --tier)")
    p.add_argument("--tier", default="ci", choices=("ci", "nightly", "gpu"),
                   help="the shipped configs whose 'tier' this is (default ci)")
    p.add_argument("--budget", type=float, default=gate.DEFAULT_BUDGET_S, metavar="SECONDS",
                   help=f"measuring time per config, after one warm-up process a side (default {gate.DEFAULT_BUDGET_S:g})")
    p.add_argument("--markdown", metavar="FILE", help="also write the verdicts as Markdown (e.g. $GITHUB_STEP_SUMMARY)")
    p.add_argument("--json", metavar="FILE", help="also write every sample's summary, interval and counter as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per round on stderr (default: one status line)")
    p.add_argument("--alpha", type=float, default=0.01, metavar="P",
                   help="asv result files: significance of the one-sided Mann-Whitney U test (default 0.01)")
    p.set_defaults(run=_run_regress)


def _run_regress(args) -> int:
    from .bench import regress

    return regress.run(args)


def _add_dashboard(sub) -> None:
    p = sub.add_parser("dashboard", help="build the benchmark dashboard (asv publish, complete offline)",
                       description=textwrap.fill(
                           "Build asv's HTML dashboard from results/ into html/, with its JavaScript copied in (no "
                           "CDN: it renders with no network) and lumi's overview page (sec/token per config by tier, "
                           "configs without points and why, asv's regressions). Run from the repository's root.", 100))
    p.add_argument("--results", default="results", metavar="DIR", help="asv's results folder (default results)")
    p.add_argument("--html", default="html", metavar="DIR", help="where the pages go (default html)")
    p.add_argument("--merge", action="append", default=[], metavar="DIR",
                   help="first copy the <machine>/ folders of another runner's results folder into --results "
                        "(repeatable; a file that differs from one already there is an error)")
    p.add_argument("--keep-first", action="store_true",
                   help="with --merge: where two sources measured one commit on one machine, keep the file "
                        "already there (results/, then the --merge folders in order) and say so")
    p.add_argument("--serve", nargs="?", const=8080, type=int, metavar="PORT",
                   help="then serve the pages on http://127.0.0.1:PORT/ (default 8080) until interrupted")
    p.set_defaults(run=_run_dashboard)


def _run_dashboard(args) -> int:
    from pathlib import Path

    from .bench import dashboard

    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    index = dashboard.build(Path(args.results), Path(args.html), merge=[Path(m) for m in args.merge],
                            keep_first=args.keep_first, log=log)
    log(f"wrote {index} (overview: {index.parent / 'overview.html'}; no external references)")
    if args.serve is not None:
        dashboard.serve(index.parent, args.serve, log=log)
    return 0


class _Progress:
    """One status line on stderr: rewritten in place on a terminal, plain lines otherwise."""

    def __init__(self):
        self.tty = sys.stderr.isatty()

    def __call__(self, message: str) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K" + message)
        else:
            sys.stderr.write(message + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="write any supported model as a Hugging Face directory (safetensors)",
                       description="Read SRC (a llama2.c .bin, a Hugging Face directory, synthetic:PRESET...) and "
                                   "write DST: config.json + model.safetensors (or shards and an index). "
                                   "Interleaved-RoPE q/k rows are permuted to Hugging Face's half layout. "
                                   "Tokenizer files beside SRC are copied.")
    p.add_argument("src", metavar="SRC", help="checkpoint path, Hugging Face directory, or synthetic:PRESET[?seed=N]")
    p.add_argument("dst", metavar="DST", help="output directory (must not exist, or be empty)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="convert every tensor to this dtype (default: keep each tensor's stored dtype)")
    p.add_argument("--shard-size", type=int, default=None, metavar="MB",
                   help="split the weights into shards of at most MB megabytes (default: one file)")
    p.set_defaults(run=_run_convert)


# A tokenizer file and the files that belong with it, copied by `lumi convert`.
TOKENIZER_COPY = {"tokenizer.model": ("tokenizer.model",), "tokenizer.bin": ("tokenizer.bin",),
                  "tokenizer.json": ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")}


def _run_convert(args) -> int:
    from .formats import load_checkpoint
    from .formats.hf import copy_tokenizer_files, write_hf_dir

    dst = args.dst
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise UsageError("DST", f"{dst} exists and is not an empty directory")
    if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
        raise UsageError("DST", f"no such directory for {dst}")
    if args.shard_size is not None and args.shard_size <= 0:
        raise UsageError("--shard-size", f"must be a positive number of megabytes, got {args.shard_size}")
    config, weights = load_checkpoint(args.src)
    try:
        write_hf_dir(dst, config, weights, dtype=args.dtype,
                     shard_bytes=None if args.shard_size is None else args.shard_size << 20)
    except OSError as e:
        raise UsageError("DST", f"cannot write {dst}: {e.strerror or e}") from None
    copied = []
    if not args.src.startswith("synthetic:"):  # the tokenizer that fits the model, never a mismatched one
        from .tokenizer import find_tokenizer

        tokenizer, warning = find_tokenizer(args.src, config.vocab_size)
        if warning:
            print(f"lumi: warning: {warning}", file=sys.stderr)
        if tokenizer is not None:  # a GGUF's own vocabulary has no file to copy
            names = TOKENIZER_COPY.get(os.path.basename(tokenizer.path), ())
            copied = copy_tokenizer_files(os.path.dirname(tokenizer.path), dst, names)
    print(f"wrote {dst} ({config.n_params()} parameters, {args.dtype or 'stored dtypes'}"
          f"{', with ' + ', '.join(copied) if copied else ''})", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lumi", description="A Llama-family inference engine in NumPy, and its benchmark harness.")
    parser.add_argument("--version", action="version", version=f"lumi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_generate(sub)
    _add_chat(sub)
    _add_info(sub)
    _add_bench(sub)
    _add_convert(sub)
    _add_regress(sub)
    _add_dashboard(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    log = logging.getLogger("lumi")  # notices on long work (e.g. drawing a big synthetic model once) go to stderr
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("lumi: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except LumiError as e:
        print(f"lumi: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `lumi generate ... | head`
        return 0

"""Large synthetic raw inputs for the data-prep benchmarks.

The shipped sample is a few hundred lines; throughput and memory limits only show at a million
records (about 1 GB). This writes such a file in seconds, deterministically for a seed, with the
defects the pipeline must handle in realistic proportions: about 2% exact duplicates, 2% near
duplicates (a few words changed), 1% records carrying PII and 1% malformed lines, over a mix of
all four raw shapes (see `include.data.records`).

Text is assembled from pools of pre-built clauses over a technical vocabulary, so two distinct
records share almost no word trigrams (near-duplicate detection must not see everything as one
cluster) while each record costs only a dozen random draws and a bytes join. All vocabulary is
plain words without quotes or backslashes, which is why lines can be built as bytes without
`json.dumps`.

    python -m benchmarks.synthetic --records 1000000 --out .data/bench/raw.jsonl --seed 0
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# Share of records per kind; whatever is left is a fresh, well-formed record.
DUPLICATE_RATE = 0.02
NEAR_DUPLICATE_RATE = 0.02
PII_RATE = 0.01
MALFORMED_RATE = 0.01

# Malformed kinds, named by the quarantine reason the pipeline should give them.
MALFORMED_KINDS = (
    "malformed_json",
    "not_an_object",
    "unknown_shape",
    "wrong_type",
    "empty_answer",
    "invalid_encoding",
)

_POOL_BITS = 16  # 65,536 clauses and as many questions: each reused rarely across a million records
_RECENT_BITS = 12  # duplicates come from 4,096 earlier records; once full, a random slot is replaced

_NOUNS = """
pod node kubelet scheduler controller deployment replicaset statefulset daemonset job cronjob
service ingress endpoint namespace configmap secret volume claim snapshot quota priorityclass
taint toleration affinity selector label annotation webhook operator manifest chart release
cluster nodepool nodeclass provisioner consolidation interruption budget instance subnet
gateway loadbalancer route certificate role policy identity token sidecar container image
registry layer runtime cgroup kernel driver toolkit plugin exporter gpu accelerator tensor
kernel-launch stream partition slice fabric interconnect switch adapter bandwidth throughput
latency queue batch microbatch shard replica checkpoint optimizer gradient activation
embedding tokenizer vocabulary sequence prompt completion adapter rank alpha dropout
learning-rate warmup scheduler-step epoch iteration loss perplexity benchmark evaluator
judge metric faithfulness relevancy recall precision retriever reranker index corpus
document chunk passage context answer question dataset manifest partition parquet schema
record quarantine lineage artifact experiment run parameter registry alias version
deployment-slot canary rollout rollback traffic endpoint-group autoscaler replica-count
dag task operator sensor trigger triggerer asset xcom pool executor worker api-server
dag-processor backfill callback retry timeout heartbeat lease lock bucket prefix object
stream-buffer cache kv-cache block-table prefix-cache sampler decoder encoder attention
head layer-norm projection quantizer calibration weight bias precision-mode scaler
allocator fragment page-table watermark threshold alarm dashboard trace span log-stream
facade
""".split()

_ADJECTIVES = """
idle busy spot on-demand reserved preemptible elastic regional zonal private public
internal external stale fresh cold warm hot pending running failed succeeded evicted
orphaned pinned shared dedicated isolated fractional partitioned sharded replicated
quantized distilled pruned frozen trainable low-rank mixed-precision half-precision
deterministic stochastic greedy speculative chunked paged cached prefetched streamed
batched asynchronous synchronous deferrable mapped dynamic static versioned immutable
mutable signed encrypted redacted tokenized normalized deduplicated curated filtered
noisy sparse dense multimodal multilingual instruction-tuned aligned calibrated
underutilized overcommitted throttled saturated degraded healthy unhealthy draining
cordoned tainted labelled annotated scheduled unschedulable bursty steady latent
regressed promoted archived champion challenger baseline candidate nightly weekly naive
""".split()

_VERBS = [
    ("schedules", "schedule"), ("evicts", "evict"), ("replicates", "replicate"),
    ("quantizes", "quantize"), ("shards", "shard"), ("caches", "cache"), ("streams", "stream"),
    ("drains", "drain"), ("cordons", "cordon"), ("provisions", "provision"),
    ("consolidates", "consolidate"), ("interrupts", "interrupt"), ("reconciles", "reconcile"),
    ("watches", "watch"), ("mounts", "mount"), ("exports", "export"), ("scrapes", "scrape"),
    ("allocates", "allocate"), ("partitions", "partition"), ("throttles", "throttle"),
    ("batches", "batch"), ("tokenizes", "tokenize"), ("embeds", "embed"), ("retrieves", "retrieve"),
    ("reranks", "rerank"), ("evaluates", "evaluate"), ("registers", "register"),
    ("promotes", "promote"), ("rolls back", "roll back"), ("deploys", "deploy"),
    ("routes", "route"), ("rejects", "reject"), ("quarantines", "quarantine"),
    ("deduplicates", "deduplicate"), ("redacts", "redact"), ("normalizes", "normalize"),
    ("validates", "validate"), ("checkpoints", "checkpoint"), ("resumes", "resume"),
    ("restarts", "restart"), ("preempts", "preempt"), ("tolerates", "tolerate"),
    ("selects", "select"), ("annotates", "annotate"), ("labels", "label"), ("patches", "patch"),
    ("rotates", "rotate"), ("signs", "sign"), ("encrypts", "encrypt"), ("compresses", "compress"),
    ("prefetches", "prefetch"), ("overlaps", "overlap"), ("reduces", "reduce"),
    ("gathers", "gather"), ("broadcasts", "broadcast"), ("scatters", "scatter"),
    ("accumulates", "accumulate"), ("clips", "clip"), ("warms up", "warm up"),
    ("decays", "decay"), ("samples", "sample"), ("decodes", "decode"), ("prefills", "prefill"),
    ("pages", "page"), ("swaps", "swap"), ("spills", "spill"), ("logs", "log"),
    ("traces", "trace"), ("alerts on", "alert on"), ("backfills", "backfill"),
    ("triggers", "trigger"), ("defers", "defer"), ("maps over", "map over"), ("expands", "expand"),
    ("retries", "retry"), ("times out", "time out"), ("heartbeats", "heartbeat"),
]

_PREPOSITIONS = """
on in across behind before after during without within between under over against through
""".split()

_QUANTITIES = """
8 16 32 64 80 96 128 141 256 512 1024 2048 4096 8192 0.5 0.9 1e-4 3e-5 v1.31 v1.32 v2.10
p5.48xlarge p4d.24xlarge g5.12xlarge g6e.xlarge bf16 fp8 int4 us-east-1 eu-west-1
eu-central-2 Z\u00fcrich
""".split()

_OPENERS = [b"Why does", b"How does", b"When does", b"Under what conditions does", b"Where does"]
_INSTRUCTIONS = [b"Explain why", b"Summarize how", b"Describe when", b"Clarify whether",
                 b"Outline why", b"Explain to an on-call engineer how"]
_SYSTEMS = [b"You are a concise MLOps assistant.", b"You are an SRE for GPU clusters on Amazon EKS.",
            b"Answer with facts from the platform runbooks.", b"You help data scientists ship models."]

_FIRST = "ana bram chen dara emil fatima goran hana ivan jun kofi lena mateo nadia omar priya".split()
_LAST = "silva okafor tanaka novak garcia haddad ivanova kim mensah larsen rossi patel".split()
_DOMAINS = "example.com example.org corp.example.net mail.example.io".split()
_ALNUM_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _clause(rng: random.Random, base: bool) -> tuple[bytes, bytes]:
    """(subject, rest) of one clause; `base` gives the verb form that follows does/to."""
    c = rng.choice
    subject = f"the {c(_ADJECTIVES)} {c(_NOUNS)}"
    third, bare = c(_VERBS)
    rest = f"{bare if base else third} the {c(_NOUNS)} {c(_PREPOSITIONS)} {c(_ADJECTIVES)} {c(_NOUNS)}"
    if rng.random() < 0.5:
        rest += f" with {c(_QUANTITIES)} {c(_NOUNS)}"
    if rng.random() < 0.35:
        rest += f" so the {c(_NOUNS)} {c(_VERBS)[0]} {c(_ADJECTIVES)} {c(_NOUNS)}"
    return subject.encode(), rest.encode()


class _Pools:
    """Pre-built text: per-record work is indexing into these lists, not composing words."""

    def __init__(self, rng: random.Random):
        size = 1 << _POOL_BITS
        sentences, clauses, questions = [], [], []
        for _ in range(size):
            subject, rest = _clause(rng, base=False)
            sentences.append(subject[:1].upper() + subject[1:] + b" " + rest + b".")
            clauses.append(subject + b" " + rest)
            subject, rest = _clause(rng, base=True)
            questions.append(rng.choice(_OPENERS) + b" " + subject + b" " + rest + b"?")
        self.sentences, self.clauses, self.questions = sentences, clauses, questions
        self.words = [w.encode() for w in _NOUNS + _ADJECTIVES if w.isalpha()]


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):  # the check digit will sit to the right
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i:i + 4] for i in range(0, 16, 4))


def _pii_sentence(rng: random.Random) -> bytes:
    r = rng.randrange
    kind = r(6)
    if kind == 0:
        s = (f"Escalate to {rng.choice(_FIRST)}.{rng.choice(_LAST)}@{rng.choice(_DOMAINS)} "
             f"if the rollout fails again.")
    elif kind == 1:
        s = f"Page the on-call engineer at +1 ({r(200, 990)}) 555-{r(100, 10000):04d} before draining nodes."
    elif kind == 2:
        s = f"The billing smoke test charged card {_luhn_card(rng)} for the GPU reservation."
    elif kind == 3:
        s = f"The node at 10.{r(256)}.{r(256)}.{r(1, 255)} stopped sending heartbeats."
    elif kind == 4:
        groups = ":".join(f"{r(65536):x}" for _ in range(6))
        s = f"The endpoint resolved to 2001:db8:{groups} during the canary."
    else:
        key = "AKIA" + "".join(rng.choice(_ALNUM_UPPER) for _ in range(16))
        while True:
            secret = "".join(rng.choice(_BASE64) for _ in range(40))
            if (any(ch.isupper() for ch in secret) and any(ch.islower() for ch in secret)
                    and any(ch.isdigit() for ch in secret)):
                break
        s = f"The job leaked access key id {key} with secret key {secret} in its logs."
    return s.encode()


def _record(rng: random.Random, pools: _Pools, pii: bytes = b"") -> bytes:
    """One well-formed record in a random shape; `pii`, when given, lands in its context."""
    g = rng.getrandbits
    S, C, Q = pools.sentences, pools.clauses, pools.questions
    context = b" ".join([S[g(_POOL_BITS)] for _ in range(5 + g(2))])
    answer = b" ".join([S[g(_POOL_BITS)] for _ in range(2 + g(1))])
    if pii:
        context += b" " + pii
    shape = g(4)
    if shape < 10:  # ~62%: question/context/answer
        return b'{"question": "%s", "context": "%s", "answer": "%s"}\n' % (
            Q[g(_POOL_BITS)], context, answer)
    if shape == 10:  # ~6%: question/contexts (a retrieved list)/answer
        return b'{"question": "%s", "contexts": ["%s", "%s"], "answer": "%s"}\n' % (
            Q[g(_POOL_BITS)], context, S[g(_POOL_BITS)], answer)
    if shape < 13:  # ~12%: instruction/input/output
        return b'{"instruction": "%s %s.", "input": "%s", "output": "%s"}\n' % (
            rng.choice(_INSTRUCTIONS), C[g(_POOL_BITS)], context, answer)
    if shape == 13:  # ~6%: prompt/completion with the context folded into the prompt
        return b'{"prompt": "Context: %s\\n\\nQuestion: %s\\nAnswer:", "completion": " %s"}\n' % (
            context, Q[g(_POOL_BITS)], answer)
    # ~12%: chat messages, sometimes with an earlier exchange
    turns = [b'{"role": "system", "content": "%s"}' % rng.choice(_SYSTEMS)]
    if g(1):
        turns.append(b'{"role": "user", "content": "%s"}' % Q[g(_POOL_BITS)])
        turns.append(b'{"role": "assistant", "content": "%s"}' % S[g(_POOL_BITS)])
    turns.append(b'{"role": "user", "content": "%s %s"}' % (context, Q[g(_POOL_BITS)]))
    turns.append(b'{"role": "assistant", "content": "%s"}' % answer)
    return b'{"messages": [%s]}\n' % b", ".join(turns)


def _near_duplicate(rng: random.Random, pools: _Pools, line: bytes) -> bytes:
    """Swap two or three plain words: high trigram overlap with `line`, but not byte-identical."""
    tokens = line.split(b" ")
    changed = 0
    for _ in range(64):
        i = rng.randrange(len(tokens))
        word = rng.choice(pools.words)
        if tokens[i].isalpha() and tokens[i] != word:  # quotes, keys and punctuation stay put
            tokens[i] = word
            changed += 1
            if changed >= 2 + rng.randrange(2):
                break
    return b" ".join(tokens)


def _malformed(rng: random.Random, pools: _Pools, kind: str) -> bytes:
    S, Q, g = pools.sentences, pools.questions, rng.getrandbits
    if kind == "malformed_json":  # a writer killed mid-line
        line = _record(rng, pools)
        return line[: 20 + rng.randrange(len(line) // 2)] + b"\n"
    if kind == "not_an_object":
        return rng.choice([b'["%s", "%s"]\n' % (Q[g(_POOL_BITS)], S[g(_POOL_BITS)]),
                           b'"%s"\n' % S[g(_POOL_BITS)], b"42\n", b"null\n"])
    if kind == "unknown_shape":
        return b'{"text": "%s %s", "meta": {"source": "crawl"}}\n' % (S[g(_POOL_BITS)], S[g(_POOL_BITS)])
    if kind == "wrong_type":
        return b'{"question": "%s", "context": "%s", "answer": %d}\n' % (
            Q[g(_POOL_BITS)], S[g(_POOL_BITS)], rng.randrange(1000))
    if kind == "empty_answer":
        return b'{"question": "%s", "context": "%s", "answer": "%s"}\n' % (
            Q[g(_POOL_BITS)], S[g(_POOL_BITS)], rng.choice([b"", b"   "]))
    # invalid_encoding: Latin-1 bytes and a stray continuation byte in an otherwise good line
    line = _record(rng, pools)
    cut = line.rindex(b'"')  # inside the last string value: the answer, output or final turn
    return line[:cut] + b" caf\xe9 \x80\xff" + line[cut:]


def generate_labelled(n: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """Yield (kind, line) for `n` lines; kind is good, pii, duplicate, near_duplicate or a
    quarantine reason for malformed lines. Tests check each kind; `generate_lines` drops it."""
    rng = random.Random(seed)
    pools = _Pools(rng)
    recent: list[bytes] = []
    full = 1 << _RECENT_BITS
    rand, g = rng.random, rng.getrandbits
    dup_cut = DUPLICATE_RATE
    near_cut = dup_cut + NEAR_DUPLICATE_RATE
    pii_cut = near_cut + PII_RATE
    bad_cut = pii_cut + MALFORMED_RATE
    for _ in range(n):
        r = rand()
        if r >= bad_cut or (r < near_cut and not recent):  # nothing to copy yet on the first line
            line = _record(rng, pools)
            if len(recent) < full:
                recent.append(line)
            else:
                recent[g(_RECENT_BITS)] = line
            yield "good", line
        elif r < near_cut:
            earlier = recent[rng.randrange(len(recent))]
            if r < dup_cut:
                yield "duplicate", earlier
            else:
                yield "near_duplicate", _near_duplicate(rng, pools, earlier)
        elif r < pii_cut:
            yield "pii", _record(rng, pools, pii=_pii_sentence(rng))
        else:
            kind = MALFORMED_KINDS[rng.randrange(len(MALFORMED_KINDS))]
            yield kind, _malformed(rng, pools, kind)


def generate_lines(n: int, seed: int = 0) -> Iterator[bytes]:
    """Yield `n` JSONL lines (bytes ending in a newline), the same lines for the same seed."""
    for _, line in generate_labelled(n, seed):
        yield line


def write(path: str, n: int, seed: int = 0, chunk: int = 10_000) -> int:
    """Write `n` lines to a local path or file:// URI (other URIs through fsspec); returns bytes."""
    lines = generate_lines(n, seed)
    if path.startswith("file://"):
        path = path[len("file://"):]
    if "://" in path:
        import fsspec

        opener = fsspec.open(path, "wb")
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        opener = open(path, "wb")
    written = 0
    with opener as f:
        while block := b"".join(itertools.islice(lines, chunk)):
            written += f.write(block) or len(block)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, required=True, help="number of JSONL lines to write")
    parser.add_argument("--out", required=True, help="output path (local path, file:// or an fsspec URI)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    args = parser.parse_args(argv)
    if args.records < 0:
        parser.error("--records must be >= 0")
    start = time.perf_counter()
    size = write(args.out, args.records, args.seed)
    took = time.perf_counter() - start
    print(f"wrote {args.records:,} records, {size / 1e6:,.1f} MB to {args.out} in {took:.1f}s "
          f"({args.records / max(took, 1e-9):,.0f} records/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

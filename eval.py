"""Evaluate a model: exact loss, perplexity and bits per byte on stories, and the quality of its own stories.

  python eval.py --out_dir=out/smoke                        # best.pt on the val split of the data it trained
  on
  python eval.py --out_dir=out/smoke --ckpt=ckpt.pt         # the latest checkpoint instead
  python eval.py --out_dir=out/smoke --input=TinyStories-valid.txt --output=results/eval.json
  python eval.py --hf_dir=path/to/any-hf-causal-lm --input=TinyStories-valid.txt

Models: a checkpoint (--out_dir, --ckpt), a Hugging Face Llama (loaded as ours), or any other Hugging Face
causal LM (through transformers, with its own tokenizer). Text: a split of prepare.py's output (--data_dir,
--split; by default the checkpoint's data_dir and its val split), or raw stories in any format prepare.py
reads
(--input), tokenized with the model's tokenizer. Every story is scored on its own after <|endoftext|>, and
every token once (metrics.py says how); bits per byte = total nats / ln 2 / the stories' UTF-8 bytes.

Story quality (--samples, 0 turns it off): stories sampled from built-in openings with sample.py's settings,
their length and how many end, distinct-1/2/3, repeated 4-grams, articles, and the longest run of words copied
from the training stories; --reference puts the same figures for real stories beside them.
"""

import datetime
import itertools
import json
import math
import os
import sys
import time

import torch

import data
import runs
import tokenizer
from configurator import SAMPLING, SAMPLING_CHECKS, configure, fail
from device import DTYPES, choose
from fastdecode import QUANTIZE, load_for_decoding
from generate import GREEDY_BELOW, encode_prompt, stream
from hf import HFError, read_hf_tokenizer, read_json
from metrics import longest_copy, sample_stories, score, story_figures, token_nll

# -----------------------------------------------------------------------------
out_dir = "out"  # the training run to evaluate
ckpt = ""  # file in out_dir; '' takes best.pt when it exists, else ckpt.pt
hf_dir = ""  # or a Hugging Face directory: a Llama, or any causal LM (through transformers)
data_dir = ""  # prepare.py's output to score; '' with --out_dir and no --input: the checkpoint's data_dir
split = "val"  # val or train
input = ""  # or raw stories: paths or globs, comma-separated, in any format prepare.py reads
max_stories = 0  # score the first N stories only; 0: all
batch_size = 16  # windows scored together, and samples decoded together; the LM figures do not depend on it
samples = 50  # stories sampled for the quality figures; 0: none
max_new_tokens = SAMPLING["max_new_tokens"]
temperature = SAMPLING["temperature"]  # 0: greedy
top_k = SAMPLING["top_k"]  # 0: off
top_p = SAMPLING["top_p"]  # 1.0: off
repetition_penalty = SAMPLING["repetition_penalty"]  # 1.0: off
seed = 1337  # sample i is seeded seed + i
train_input = (
    ""  # training stories for the memorisation figure; '': the data_dir's train split, if there is one
)
reference = ""  # real stories (files like --input): their story figures are printed beside the samples'
output = ""  # also write every figure, the model, the settings and the date to this .json file
device = ""  # '' picks cuda, then mps, then cpu
dtype = "float32"  # float32 gives the exact figures; bfloat16 is faster on GPUs
quantize = ""  # CPU, our models: bf16 or int8 scores the model as sample.py --quantize decodes it
# -----------------------------------------------------------------------------
checks = {
    "split": ("val", "train"),
    "max_stories": "[0, inf)",
    "batch_size": "[1, inf)",
    "samples": "[0, inf)",
}
settings = configure(globals(), checks={**SAMPLING_CHECKS, **checks, "quantize": QUANTIZE})
MAX_BYTES_PER_TOKEN = 16  # English text runs 3.5-4.5 bytes a token in GPT-2-like vocabularies; past 16 a
# tokenizer must be dropping text it cannot encode, and bits per byte would come out far too low


class Ours:
    """Our Llama, from a checkpoint or a Hugging Face Llama directory, with its tiktoken tokenizer."""

    kind = "llama"
    LOGIT_ROWS = 2048  # positions whose logits are alive at once: 2048 x 50257 fp32 is 0.4 GB

    def __init__(self, model, enc, facts):
        self.model, self.enc, self.n_params = model, enc, facts["parameters"]
        self.spec = facts["spec"]
        self.eot, self.window, self.vocab = enc.eot_token, model.config.max_seq_len, enc.n_vocab

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode(ids)

    def prompt(self, text):
        return encode_prompt(self.enc, text, self.window)[
            0
        ]  # <|endoftext|> and the text, cropped to the context

    def nll(self, idx, targets):
        """The head runs on a slice of positions at a time, so the (B, T, V) logits never exist at once."""
        h = self.model.hidden(idx)
        step = max(1, self.LOGIT_ROWS // len(idx))
        pieces = range(0, idx.shape[1], step)
        return torch.cat(
            [token_nll(self.model.lm_head(h[:, t : t + step]), targets[:, t : t + step]) for t in pieces], 1
        )

    def sample(self, idx, seed, settings):
        """(B, up to max_new_tokens) new tokens; row i is seeded seed + i (generate.stream)."""
        return torch.cat(list(stream(self.model, idx, eos_id=self.eot, seed=seed, **settings)), dim=1)


class Transformers:
    """Any other Hugging Face causal LM, through transformers, with its own tokenizer and its own sampler."""

    kind = "transformers"

    def __init__(self, path, config, torch_device, torch_dtype):
        names = config.get("architectures") or []
        what = f"a {config.get('model_type')!r} model"
        if not any(str(name).endswith(("ForCausalLM", "LMHeadModel")) for name in names):
            named = ", ".join(map(str, names)) or "its config.json names no architectures"
            fail(f"--hf_dir={path} holds {what} ({named}), not a causal language model")
        try:
            import transformers
        except ImportError:
            fail(
                f"--hf_dir={path} holds {what}, which is evaluated through transformers: pip install "
                "transformers"
            )
        transformers.logging.set_verbosity_error()  # no warnings about stories longer than its max length
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError) as e:
            fail(f"transformers cannot load --hf_dir={path} ({' '.join(str(e).split())[:300]})")
        self.model = model.to(torch_device).eval()
        self.eot, self.vocab = self.tokenizer.eos_token_id, len(self.tokenizer)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        if self.eot is None:
            fail(f"--hf_dir={path}: its tokenizer has no end-of-text (eos) token to separate stories with")
        if self.vocab > self.model.config.vocab_size:
            fail(
                f"--hf_dir={path}: its tokenizer has {self.vocab} ids, more than the model's "
                f"{self.model.config.vocab_size}"
            )
        # models without learned positions (Mamba, RWKV) have no limit: each story is one window
        self.window = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        # the tokenizer spec prepare.py would write, if it is one of ours: data_dir tokens are then its ids
        try:
            self.spec = read_hf_tokenizer(path)
        except HFError:
            self.spec = None

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids):
        return self.tokenizer.decode(ids)

    def prompt(self, text):
        return [self.eot] + self.encode(text)

    def nll(self, idx, targets):
        return token_nll(self.model(idx).logits, targets)

    def sample(self, idx, seed, settings):
        """transformers' generate with the same settings; rows share one random stream seeded with seed."""
        torch.manual_seed(seed)
        sampling = {"do_sample": False}
        if settings["temperature"] >= GREEDY_BELOW:
            sampling = {"do_sample": True, **{k: settings[k] for k in ("temperature", "top_k", "top_p")}}
        out = self.model.generate(
            idx,
            attention_mask=torch.ones_like(idx),
            max_new_tokens=settings["max_new_tokens"],
            repetition_penalty=settings["repetition_penalty"],
            eos_token_id=self.eot,
            pad_token_id=self.eot,
            **sampling,
        )
        return out[:, idx.shape[1] :]


def load_model():
    """(model, facts): --hf_dir's non-Llama models go to transformers; checkpoints and Llamas are ours."""
    config_path = os.path.join(hf_dir, "config.json")
    config = read_json(config_path) if hf_dir and os.path.isfile(config_path) else None
    if isinstance(config, dict) and config.get("model_type") != "llama":
        if quantize:
            fail(f"--quantize is for our Llama models; {hf_dir} is a {config.get('model_type')} model")
        torch_device, dtype_name = choose(device, dtype)
        return Transformers(hf_dir, config, torch_device, DTYPES[dtype_name]), {"source": hf_dir}
    model, enc, facts, _ = load_for_decoding(out_dir, ckpt, hf_dir, device, dtype, quantize, compile=False)
    return Ours(model, enc, facts), facts


def text_to_score(lm, facts):
    """(stories as token ids without end-of-text, their UTF-8 bytes, where they come from)."""
    if input:
        texts = data.read_stories(input, max_stories)
        return [lm.encode(t) for t in texts], sum(len(t.encode("utf-8")) for t in texts), {"source": input}
    text_dir = data_dir or facts.get("data_dir")
    if not text_dir:
        fail("nothing to score: give --data_dir=DIR (prepare.py's output) or --input=FILES (raw stories)")
    if not data_dir and not os.path.isdir(text_dir):
        fail(
            f"the checkpoint was trained on data_dir '{text_dir}', which is not here: give --data_dir or "
            "--input"
        )
    meta = data.read_meta(text_dir)
    if lm.spec != meta["tokenizer"]:
        model_side = (
            f"a {lm.vocab}-id {tokenizer.spec_kind(lm.spec)}" if lm.spec else f"its own {lm.vocab}-id"
        )
        fail(
            f"tokenizer mismatch: {text_dir} holds tokens of a {meta['vocab_size']}-id "
            f"{tokenizer.spec_kind(meta['tokenizer'])} tokenizer, but the model uses {model_side} tokenizer; "
            "score raw stories with --input=FILES instead (tokenized with the model's own tokenizer)"
        )
    stories = list(itertools.islice(data.read_split(text_dir, meta, split), max_stories or None))
    enc = tokenizer.load_tokenizer(meta["tokenizer"])
    n_bytes = sum(len(enc.decode_bytes(ids.tolist())) for ids in stories)
    return stories, n_bytes, {"source": f"{text_dir} {split}", "data_dir": text_dir, "split": split}


def training_texts(facts):
    """A function giving the training stories for the memorisation figure (--train_input, else the train split
    of --data_dir or of the checkpoint's data_dir), or None when there are none."""
    if train_input:
        return lambda: (
            story for batch in data.read_files(data.expand_inputs(train_input)) for story in batch
        )
    train_dir = data_dir or facts.get("data_dir")
    if train_dir and os.path.isfile(os.path.join(train_dir, "train.bin")):
        meta = data.read_meta(train_dir)
        enc = tokenizer.load_tokenizer(meta["tokenizer"])
        return lambda: (enc.decode(ids.tolist()) for ids in data.read_split(train_dir, meta, "train"))
    print(
        "no training stories (--train_input, or a data_dir with train.bin): no memorisation figure",
        file=sys.stderr,
    )
    return None


def memorisation(stories, training):
    n, text = longest_copy(stories, training()) if training else (None, None)
    return {"longest_copy": n, "longest_copy_text": text}


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_report(result):
    model, text, lm = result["model"], result["text"], result["lm"]
    about = f"{model['kind']}, {model['parameters'] / 1e6:.2f}M parameters, context {model['context']}"
    if model.get("iter_num") is not None:
        about += f", iter {model['iter_num']}"
    if model.get("val_bpb") is not None:
        about += f"; train.py's val bpb {model['val_bpb']:.4f}"
    print(f"model       {model['source']} ({about})")
    print(
        f"text        {text['source']}: {lm['stories']:,} stories, {lm['tokens']:,} tokens, {lm['bytes']:,} "
        "bytes "
        f"({lm['bytes_per_token']:.3f} bytes/token)"
    )
    if lm["long_stories"]:
        windows = f"windows of {lm['window']} tokens advancing by {lm['stride']}"
        print(f"            {lm['long_stories']:,} stories longer than the context: {windows}")
    print(f"loss        {lm['loss']:.4f} nats/token")
    print(f"perplexity  {lm['perplexity']:.3f}")
    print(f"bpb         {lm['bpb']:.4f} bits/byte")
    rows = [(name, result[name]) for name in ("samples", "reference") if result[name]]
    if not rows:
        return
    s = result["settings"]
    print(
        f"\nstories sampled with temperature {s['temperature']}, top_k {s['top_k']}, top_p {s['top_p']}, "
        f"repetition_penalty {s['repetition_penalty']}, max_new_tokens {s['max_new_tokens']}, seed "
        f"{s['seed']}"
    )
    lines = [
        ("stories", "stories", "d"),
        ("reach <|endoftext|>", "reach_end", ".3f"),
        ("mean length (words)", "mean_words", ".1f"),
        ("distinct-1", "distinct_1", ".4f"),
        ("distinct-2", "distinct_2", ".4f"),
        ("distinct-3", "distinct_3", ".4f"),
        ("repeated 4-grams", "repeated_4grams", ".4f"),
        ("article presence", "article_presence", ".3f"),
        ("articles / 100 words", "articles_per_100_words", ".2f"),
        ("longest copied run (words)", "longest_copy", "d"),
    ]
    print(f"{'':<28}" + "".join(f"{name:>12}" for name, _ in rows))
    for label, key, spec in lines:
        print(f"{label:<28}" + "".join(f"{fmt(figures[key], spec):>12}" for _, figures in rows))
    for name, figures in rows:
        if figures["longest_copy_text"]:
            print(f'longest copied run, {name}: "{figures["longest_copy_text"]}"')


# ----------------------------------------------------------------------------- the run

if data_dir and input:
    fail("give --data_dir (prepared tokens) or --input (raw stories), not both")
for files in (input, train_input, reference):
    if files:
        data.expand_inputs(files)
if output:
    runs.check_output(output, b"{", "--output")  # a new file, or an earlier eval.py output
if reference and not data.read_stories(reference, 1):
    fail(f"--reference={reference} holds no stories")
torch.manual_seed(seed)
lm, facts = load_model()
stories, n_bytes, text = text_to_score(lm, facts)
tokens = sum(len(ids) + 1 for ids in stories)
if not stories or n_bytes == 0:
    fail(f"no stories to score in {text['source']}" + (" (they are all empty)" if stories else ""))
if any(len(ids) == 0 for ids in stories) or n_bytes / tokens > MAX_BYTES_PER_TOKEN:
    fail(
        f"the model's tokenizer gives {n_bytes / tokens:.1f} bytes per token on {text['source']}"
        + (", and no tokens at all for some stories" if any(len(ids) == 0 for ids in stories) else "")
        + f": it cannot encode this text (above {MAX_BYTES_PER_TOKEN} bytes a token no tokenizer keeps all "
        "of it)"
    )
device_name = next(lm.model.parameters()).device
began = time.perf_counter()
nll = score(lm, stories, batch_size, device_name).sum().item()
seconds = time.perf_counter() - began
print(f"scored {tokens:,} tokens in {seconds:.2f} s ({tokens / seconds:,.0f} tokens/s)", file=sys.stderr)
lm_figures = {
    "stories": len(stories),
    "tokens": tokens,
    "bytes": n_bytes,
    "bytes_per_token": n_bytes / tokens,
    "loss": nll / tokens,
    "perplexity": math.exp(nll / tokens),
    "bpb": nll / math.log(2) / n_bytes,
    "window": lm.window,
    "stride": max(1, lm.window // 2),
    "long_stories": sum(len(ids) + 1 > lm.window for ids in stories),
    "seconds": seconds,
}

training = training_texts(facts) if samples or reference else None
sampled = real = None
if samples:
    began = time.perf_counter()
    sample_settings = {key: settings[key] for key in SAMPLING}
    texts, continuations, ended = sample_stories(lm, samples, seed, batch_size, sample_settings, device_name)
    seconds = time.perf_counter() - began
    print(f"sampled {samples} stories in {seconds:.1f} s", file=sys.stderr)
    # copies are looked for in the continuations only: the openings are ours
    sampled = {**story_figures(texts, ended), **memorisation(continuations, training), "seconds": seconds}
    sampled["texts"] = texts
if reference:  # as many real stories as samples, since distinct-n falls as the text grows
    real_stories = data.read_stories(reference, samples)
    real = {**story_figures(real_stories), **memorisation(real_stories, training)}

model_facts = {"source": facts["source"], "kind": lm.kind, "parameters": lm.n_params, "context": lm.window}
model_facts |= {k: facts[k] for k in ("iter_num", "val_loss", "val_bpb") if k in facts}
result = {
    "model": model_facts,
    "text": text,
    "lm": lm_figures,
    "samples": sampled,
    "reference": real,
    "settings": {**settings, "device": str(device_name), "dtype": dtype},
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
}
print_report(result)
if output:
    runs.write_atomically(output, json.dumps(result, indent=1, ensure_ascii=False))
    print(f"wrote {output}", file=sys.stderr)

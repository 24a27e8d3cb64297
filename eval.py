"""Evaluate a model: exact loss, perplexity and bits per byte on stories, and the quality of its own stories.

  python eval.py --out_dir=out/smoke                        # best.pt on the val split of the data it trained on
  python eval.py --out_dir=out/smoke --ckpt=ckpt.pt         # the latest checkpoint instead
  python eval.py --out_dir=out/smoke --input=TinyStories-valid.txt --output=results/eval.json
  python eval.py --hf_dir=path/to/any-hf-causal-lm --input=TinyStories-valid.txt

Models: a checkpoint (--out_dir, --ckpt), a Hugging Face Llama (loaded as ours), or any other Hugging Face
causal LM (through transformers, with its own tokenizer). Text: a split of prepare.py's output (--data_dir,
--split; by default the checkpoint's data_dir and its val split), or raw stories in any format prepare.py reads
(--input), tokenized with the model's tokenizer.

Every story is scored on its own, preceded by <|endoftext|> as in training, and every token counts once, the
<|endoftext|> that closes the story included. loss is nats per token, perplexity exp(loss), and bits per byte
the total nats / ln 2 / the stories' UTF-8 bytes (end-of-text markers not counted), as in train.py and
meta.json. A story longer than the context is read in windows of the context's length: the first scores all
its tokens, each next one advances by half a context and scores only its new tokens, so every token is scored
once with at least half a context before it. The figures do not depend on --batch_size.

train.py's val figure is the mean over fixed windows of block_size tokens cut from the concatenated val stream:
a window starts anywhere in a story and may run into the next, so its first tokens see little context and the
windows sample the tokens rather than count each once. It is therefore a little higher than this file's
per-story figure, which gives every token its whole story (up to the context) before it.

Story quality (--samples, 0 turns it off): stories sampled from built-in openings with generate.py's settings,
their length and how many end, distinct-1/2/3, repeated 4-grams, articles, and the longest run of words copied
from the training stories; --reference puts the same figures for real stories beside them.
"""

import datetime
import itertools
import json
import math
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import prepare
import tokenizer
from checkpoint import CheckpointError, load_model
from configurator import configure, fail
from device import DTYPES, choose
from generate import DEFAULTS, check_quantize, check_settings, encode_prompt, prepare_for_decoding, stream
from hf import HFError, read_hf_tokenizer, read_json

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
max_new_tokens = DEFAULTS["max_new_tokens"]
temperature = DEFAULTS["temperature"]  # 0: greedy
top_k = DEFAULTS["top_k"]  # 0: off
top_p = DEFAULTS["top_p"]  # 1.0: off
repetition_penalty = DEFAULTS["repetition_penalty"]  # 1.0: off
seed = 1337  # sample i is seeded seed + i
train_input = (
    ""  # training stories for the memorisation figure; '': the data_dir's train split, when there is one
)
reference = ""  # real stories (files like --input): their story figures are printed beside the samples'
output = ""  # also write every figure, the model, the settings and the date to this .json file
device = ""  # '' picks cuda, then mps, then cpu
dtype = "float32"  # float32 gives the exact figures; bfloat16 is faster on GPUs
quantize = ""  # CPU, our models: bf16 or int8 scores the model as sample.py --quantize decodes it
# -----------------------------------------------------------------------------

# openings written for this file, in the style of TinyStories; the empty one starts a fresh story
OPENINGS = (
    "",
    "Once upon a time, there was a little girl named Lily.",
    "One day, a small dog named Max found a big red ball in the park.",
    "Tom and his mom went to the store to buy apples.",
    "There was a tiny bird who could not fly.",
    "Sara had a new toy car. She loved to play with it every day.",
    "It was a rainy day, and Ben was sad because he could not go outside.",
    "In a small town, there lived a kind old man who liked to help everyone.",
    "The sun was shining and the flowers in the garden were happy.",
    "Mia wanted to bake a cake for her friend's birthday.",
    "A big bear lived in the forest. He was very hungry.",
)
WORD = re.compile(
    r"\w+(?:'\w+)*"
)  # a word: letters and digits, with inner apostrophes (don't); no punctuation
ARTICLES = {"a", "an", "the"}
LOGIT_ROWS = 2048  # positions whose logits are alive at once: 2048 x 50257 fp32 is 0.4 GB
SCAN_TOKENS = 1 << 24  # tokens of a .bin searched for end-of-text at once


def token_nll(logits, targets):
    """(B, T) -log p of each target under (B, T, V) logits, in float32; 0 where the target is -1."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1, reduction="none"
    ).view(targets.shape)


class Ours:
    """Our Llama, from a checkpoint or a Hugging Face Llama directory, with its tiktoken tokenizer."""

    kind = "llama"

    def __init__(self, model, spec, quantize=""):
        self.n_params = model.num_params()  # before prepare_for_decoding unties a head or quantizes
        self.model, self.spec = prepare_for_decoding(model, quantize), spec
        self.enc = tokenizer.load_tokenizer(spec)
        self.eot, self.window, self.vocab = self.enc.eot_token, model.config.max_seq_len, self.enc.n_vocab

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
        step = max(1, LOGIT_ROWS // len(idx))
        return torch.cat(
            [
                token_nll(self.model.lm_head(h[:, t : t + step]), targets[:, t : t + step])
                for t in range(0, idx.shape[1], step)
            ],
            dim=1,
        )

    def sample(self, idx, seed, settings):
        """(B, up to max_new_tokens) new tokens; row i is seeded seed + i (generate.stream)."""
        return torch.cat(list(stream(self.model, idx, eos_id=self.eot, seed=seed, **settings)), dim=1)


class Transformers:
    """Any other Hugging Face causal LM, through transformers, with its own tokenizer and its own sampler."""

    kind = "transformers"

    def __init__(self, path, config, torch_device, torch_dtype):
        architectures = config.get("architectures") or []
        if not any(str(name).endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
            fail(
                f"--hf_dir={path} holds a {config.get('model_type')!r} model "
                f"({', '.join(map(str, architectures)) or 'its config.json names no architectures'}), "
                "not a causal language model"
            )
        try:
            import transformers
        except ImportError:
            fail(
                f"--hf_dir={path} holds a {config.get('model_type')!r} model, which is evaluated through "
                "transformers: pip install transformers"
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
        # models without learned positions (Mamba, RWKV) have no limit: each story is one window
        self.window = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        try:  # the tokenizer spec prepare.py would write, if it is one of ours: data_dir tokens are then its ids
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
        sampling = (
            {
                "do_sample": True,
                "temperature": settings["temperature"],
                "top_k": settings["top_k"],
                "top_p": settings["top_p"],
            }
            if settings["temperature"] > 0
            else {"do_sample": False}
        )
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


def load(torch_device, torch_dtype):
    """(model, facts): --hf_dir's non-Llama models go to transformers; checkpoints and Llamas are ours."""
    config_path = os.path.join(hf_dir, "config.json")
    config = read_json(config_path) if hf_dir and os.path.isfile(config_path) else None
    if isinstance(config, dict) and config.get("model_type") != "llama":
        if quantize:
            fail(f"--quantize is for our Llama models; {hf_dir} is a {config.get('model_type')} model")
        return Transformers(hf_dir, config, torch_device, torch_dtype), {"source": hf_dir}
    model, spec, facts = load_model(out_dir, ckpt, hf_dir)
    return Ours(model.to(device=torch_device, dtype=torch_dtype), spec, quantize), facts


# ----------------------------------------------------------------------------- text


def read_stories(files, limit=0):
    """Stories from raw files through prepare.py's readers: the first `limit` (0: all)."""
    stories = []
    for batch in prepare.read_files(prepare.expand_inputs(files)):
        stories += batch
        if limit and len(stories) >= limit:
            return stories[:limit]
    return stories


def read_meta(directory):
    """meta.json of a prepare.py output directory, checked."""
    path = os.path.join(directory, "meta.json")
    if not os.path.isfile(path):
        fail(
            f"data_dir '{directory}' has no meta.json: run prepare.py first (python prepare.py --out_dir={directory})"
        )
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        tokenizer.stored_spec(meta, path)
        if not isinstance(meta["eot_id"], int) or not isinstance(meta["vocab_size"], int):
            raise ValueError("eot_id and vocab_size must be integers")
        np.dtype(meta["dtype"])
    except (ValueError, KeyError, TypeError, tokenizer.TokenizerError) as e:
        fail(f"{path} is damaged or not prepare.py's ({type(e).__name__}: {e}); run prepare.py again")
    return meta


def read_split(directory, meta, name):
    """The stories of a prepared split, one at a time: token arrays without the <|endoftext|> that follows each.

    The stream is searched for end-of-text a block at a time, so even a 470M-token train split costs little memory.
    """
    path = os.path.join(directory, f"{name}.bin")
    if not os.path.isfile(path):
        fail(
            f"data_dir '{directory}' has no {name}.bin: run prepare.py first (python prepare.py --out_dir={directory})"
        )
    if os.path.getsize(path) == 0:
        return
    data = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
    start = 0
    for offset in range(0, len(data), SCAN_TOKENS):
        for end in (np.flatnonzero(data[offset : offset + SCAN_TOKENS] == meta["eot_id"]) + offset).tolist():
            yield data[start:end]
            start = end + 1


def training_stories(directory, meta):
    """A prepared train split as texts, decoded one story at a time."""
    enc = tokenizer.load_tokenizer(meta["tokenizer"])
    return (enc.decode(ids.tolist()) for ids in read_split(directory, meta, "train"))


# ----------------------------------------------------------------------------- language-model figures


def windows(n, window):
    """(begin, end, first) for a story of n inputs: the model reads inputs begin:end and the predictions at
    positions first:end are scored. The first window scores all it reads; each next one advances by half a
    window, scores only its new positions and reads as far back as the window allows."""
    spans, end = [], 0
    while end < n:
        new_end = min(end + (window if end == 0 else max(1, window // 2)), n)
        spans.append((max(0, new_end - window), new_end, end))
        end = new_end
    return spans


@torch.no_grad()
def score(lm, stories, batch_size, torch_device):
    """Per story (a sequence of token ids), the summed -log p of its tokens and of the <|endoftext|> after it,
    read after an <|endoftext|>; float64.

    Windows are sorted by length, longest first, and batched with padding (target -1): the order depends only
    on the stories, so each story's sum is added up in the same order whatever the batch size.
    """
    seqs = [np.concatenate(([lm.eot], ids, [lm.eot])).astype(np.int64) for ids in stories]
    spans = sorted(
        ((i, *span) for i, seq in enumerate(seqs) for span in windows(len(seq) - 1, lm.window)),
        key=lambda span: span[1] - span[2],
    )  # begin - end: the longest first
    totals = torch.zeros(len(stories), dtype=torch.float64)
    for b in range(0, len(spans), batch_size):
        batch = spans[b : b + batch_size]
        width = max(end - begin for _, begin, end, _ in batch)
        idx = np.full((len(batch), width), lm.eot)
        targets = np.full((len(batch), width), -1)
        for row, (i, begin, end, first) in enumerate(batch):
            idx[row, : end - begin] = seqs[i][begin:end]
            targets[row, first - begin : end - begin] = seqs[i][first + 1 : end + 1]
        nll = lm.nll(torch.from_numpy(idx).to(torch_device), torch.from_numpy(targets).to(torch_device))
        totals.index_add_(0, torch.tensor([s[0] for s in batch]), nll.double().sum(1).cpu())
    return totals


# ----------------------------------------------------------------------------- story figures


def words(text):
    return WORD.findall(text.lower())


def ngrams(ws, n):
    return [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]


def share(part, whole):
    return part / whole if whole else None


def longest_copy(stories, training):
    """(n, text): the longest run of n words of `stories` that also occurs in one of `training` (texts).

    The training stories stream by once, and only the stories' (n + 1)-grams are held: a training story raises
    n while it shares an (n + 1)-gram with them. That stops at its longest shared run, since a shared run of m
    words contains shared runs of every length below m, so after the last story n is the longest of all.
    """
    split = [words(s) for s in stories]
    n, example, grams = 0, "", {g for ws in split for g in ngrams(ws, 1)}
    for story in training:
        ws = words(story)
        while shared := grams.intersection(ngrams(ws, n + 1)):
            n, example = n + 1, " ".join(min(shared))
            grams = {g for w in split for g in ngrams(w, n + 1)}
    return n, example


def story_figures(stories, ended=None):
    """Figures over texts; words are lowercased runs of letters and digits (see WORD).

    ended: whether each story reached <|endoftext|> (samples). distinct-n: distinct word n-grams / all n-grams,
    over all stories together (n-grams do not cross stories). repeated_4grams: the share of 4-grams that already
    occurred earlier in the same story, pooled over all stories. article_presence: the share of stories with
    a, an or the (seed 003's figure).
    """
    split = [words(s) for s in stories]
    n_words = sum(map(len, split))
    figures = {
        "stories": len(stories),
        "reach_end": share(sum(ended), len(ended)) if ended is not None else None,
        "mean_words": share(n_words, len(stories)),
    }
    for n in (1, 2, 3):
        grams = [g for ws in split for g in ngrams(ws, n)]
        figures[f"distinct_{n}"] = share(len(set(grams)), len(grams))
    fours = [ngrams(ws, 4) for ws in split]
    figures["repeated_4grams"] = share(sum(len(g) - len(set(g)) for g in fours), sum(map(len, fours)))
    figures["article_presence"] = share(sum(any(w in ARTICLES for w in ws) for ws in split), len(stories))
    articles = sum(w in ARTICLES for ws in split for w in ws)
    figures["articles_per_100_words"] = share(100 * articles, n_words)
    return figures


def memorisation(stories, training):
    """The longest copied run for the figures; training: a function giving the training texts, or None."""
    n, text = longest_copy(stories, training()) if training else (None, None)
    return {"longest_copy": n, "longest_copy_text": text}


def sample_stories(lm, n, seed, batch_size, settings, torch_device):
    """(texts, continuations, ended): story i continues OPENINGS[i * len(OPENINGS) // n] and is seeded
    seed + i; the stories of one opening are decoded together, batch_size at a time. A text is the opening
    and its continuation, the model's own words."""
    texts, continuations, ended = [], [], []
    for opening, group in itertools.groupby(range(n), key=lambda i: i * len(OPENINGS) // n):
        group = list(group)
        prompt = lm.prompt(OPENINGS[opening])
        for start in range(0, len(group), batch_size):
            rows = group[start : start + batch_size]
            idx = torch.tensor([prompt] * len(rows), device=torch_device)
            for ids in lm.sample(idx, seed + rows[0], settings).tolist():
                end = ids.index(lm.eot) if lm.eot in ids else len(ids)
                continuations.append(lm.decode(ids[:end]))
                texts.append(OPENINGS[opening] + continuations[-1])
                ended.append(end < len(ids))
    return texts, continuations, ended


# ----------------------------------------------------------------------------- report


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
        f"text        {text['source']}: {lm['stories']:,} stories, {lm['tokens']:,} tokens, {lm['bytes']:,} bytes "
        f"({lm['bytes_per_token']:.3f} bytes/token)"
    )
    if lm["long_stories"]:
        print(
            f"            {lm['long_stories']:,} stories longer than the context: windows of {lm['window']} "
            f"tokens advancing by {lm['stride']}"
        )
    print(f"loss        {lm['loss']:.4f} nats/token")
    print(f"perplexity  {lm['perplexity']:.3f}")
    print(f"bpb         {lm['bpb']:.4f} bits/byte")
    rows = [("samples", result["samples"]), ("reference", result["reference"])]
    rows = [(name, figures) for name, figures in rows if figures]
    if not rows:
        return
    settings = result["settings"]
    print(
        f"\nstories sampled with temperature {settings['temperature']}, top_k {settings['top_k']}, "
        f"top_p {settings['top_p']}, repetition_penalty {settings['repetition_penalty']}, "
        f"max_new_tokens {settings['max_new_tokens']}, seed {settings['seed']}"
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


def write_json(path, result):
    """Temporary file, then rename: a reader never sees half a file."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
        os.replace(tmp, path)
    except OSError as e:
        fail(f"cannot write --output={path}: {e.strerror}")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------- main


def check_options():
    """Mistakes in the options stop the run before any work: (device, dtype name)."""
    try:
        check_settings(temperature, top_k, top_p, repetition_penalty, max_new_tokens)
        torch_device, dtype_name = choose(device, dtype)
        check_quantize(quantize, torch_device)
    except ValueError as e:
        fail(str(e))
    if samples < 0 or max_stories < 0:
        fail(f"--samples={samples} and --max_stories={max_stories} must not be negative (0: none, 0: all)")
    if batch_size < 1:
        fail(f"--batch_size={batch_size} must be at least 1")
    if split not in ("val", "train"):
        fail(f"--split={split}: use val or train")
    if data_dir and input:
        fail("give --data_dir (prepared tokens) or --input (raw stories), not both")
    for files in (input, train_input, reference):
        if files:
            prepare.expand_inputs(files)
    if output:
        if os.path.isdir(output):
            fail(f"--output={output} is a directory: name a .json file")
        try:
            os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
        except OSError as e:
            fail(f"cannot create the directory of --output={output}: {e.strerror}")
    return torch_device, dtype_name


def text_to_score(lm, facts):
    """(stories as token ids without end-of-text, their UTF-8 bytes, where they come from)."""
    if input:
        texts = read_stories(input, max_stories)
        return [lm.encode(t) for t in texts], sum(len(t.encode("utf-8")) for t in texts), {"source": input}
    text_dir = data_dir or facts.get("data_dir")
    if not text_dir:
        fail("nothing to score: give --data_dir=DIR (prepare.py's output) or --input=FILES (raw stories)")
    if not data_dir and not os.path.isdir(text_dir):
        fail(
            f"the checkpoint was trained on data_dir '{text_dir}', which is not here: "
            "give --data_dir=DIR or --input=FILES"
        )
    meta = read_meta(text_dir)
    if lm.spec != meta["tokenizer"]:
        model_side = (
            f"a {lm.vocab}-id {tokenizer.spec_kind(lm.spec)}" if lm.spec else f"its own {lm.vocab}-id"
        )
        fail(
            f"tokenizer mismatch: {text_dir} holds tokens of a {meta['vocab_size']}-id "
            f"{tokenizer.spec_kind(meta['tokenizer'])} tokenizer, but the model uses {model_side} tokenizer; "
            "score raw stories with --input=FILES instead (tokenized with the model's own tokenizer)"
        )
    stories = list(itertools.islice(read_split(text_dir, meta, split), max_stories or None))
    enc = tokenizer.load_tokenizer(meta["tokenizer"])
    n_bytes = sum(len(enc.decode_bytes(ids.tolist())) for ids in stories)
    return stories, n_bytes, {"source": f"{text_dir} {split}", "data_dir": text_dir, "split": split}


def lm_figures(lm, stories, n_bytes, torch_device):
    began = time.perf_counter()
    nll = score(lm, stories, batch_size, torch_device).sum().item()
    seconds = time.perf_counter() - began
    tokens = sum(len(ids) + 1 for ids in stories)
    print(f"scored {tokens:,} tokens in {seconds:.2f} s ({tokens / seconds:,.0f} tokens/s)", file=sys.stderr)
    return {
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


def training_texts(facts):
    """A function giving the training stories for the memorisation figure (--train_input, else the train
    split of --data_dir or of the checkpoint's data_dir), or None when there are none."""
    if train_input:
        return lambda: (
            story for batch in prepare.read_files(prepare.expand_inputs(train_input)) for story in batch
        )
    train_dir = data_dir or facts.get("data_dir")
    if train_dir and os.path.isfile(os.path.join(train_dir, "train.bin")):
        return lambda: training_stories(train_dir, read_meta(train_dir))
    print(
        "no training stories (--train_input, or a data_dir with train.bin): no memorisation figure",
        file=sys.stderr,
    )
    return None


def evaluate(settings):
    torch_device, dtype_name = check_options()
    torch.manual_seed(seed)
    lm, facts = load(torch_device, DTYPES[dtype_name])
    stories, n_bytes, text = text_to_score(lm, facts)
    if not stories:
        fail(f"no stories to score in {text['source']}")
    if n_bytes == 0:
        fail(f"the stories in {text['source']} are all empty")
    figures = lm_figures(lm, stories, n_bytes, torch_device)

    training = training_texts(facts) if samples or reference else None
    sampled = real = None
    if samples:
        began = time.perf_counter()
        sample_settings = {key: settings[key] for key in DEFAULTS}
        texts, continuations, ended = sample_stories(
            lm, samples, seed, batch_size, sample_settings, torch_device
        )
        seconds = time.perf_counter() - began
        print(f"sampled {samples} stories in {seconds:.1f} s", file=sys.stderr)
        # copies are looked for in the continuations only: the openings are ours
        sampled = {
            **story_figures(texts, ended),
            **memorisation(continuations, training),
            "seconds": seconds,
            "texts": texts,
        }
    if reference:  # as many real stories as samples, since distinct-n falls as the text grows
        real_stories = read_stories(reference, samples)
        real = {**story_figures(real_stories), **memorisation(real_stories, training)}

    model = {
        "source": facts["source"],
        "kind": lm.kind,
        "parameters": lm.n_params,
        "context": lm.window,
        **{k: facts[k] for k in ("iter_num", "val_loss", "val_bpb") if k in facts},
    }
    result = {
        "model": model,
        "text": text,
        "lm": figures,
        "samples": sampled,
        "reference": real,
        "settings": {**settings, "device": torch_device, "dtype": dtype_name},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    print_report(result)
    if output:
        write_json(output, result)
        print(f"wrote {output}", file=sys.stderr)


def main(argv=None):
    settings = configure(globals(), argv)
    try:
        evaluate(settings)
    except (prepare.PrepareError, CheckpointError, HFError, tokenizer.TokenizerError) as e:
        fail(str(e))


if __name__ == "__main__":
    main()
